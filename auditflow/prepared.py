"""Prepared statements for the hot path: a Core statement compiled once per dialect and run
straight on the DB-API cursor of a SQLAlchemy connection, inside its transaction.

Why: the writer thread shares the interpreter lock with the event loop, so every microsecond
of Python it spends per request is taken from the gRPC server. `Connection.execute` costs
about four times the SQL itself for a small statement (execution context, parameter and
result processing, `Row` objects). A `Prepared` statement keeps what matters: SQLAlchemy
still writes the SQL (so it stays portable between SQLite and PostgreSQL) and still
converts the values (its bind and result processors), but nothing else runs per call.

Use it only for a few statements that run on every request; everything else stays plain Core.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.dml import UpdateBase


class Prepared:
    """`statement` compiled for each dialect it meets; `run(conn, params)` returns the first
    row of its RETURNING clause (a named tuple, values converted as Core would) or None."""

    def __init__(self, statement: UpdateBase, name: str = "Row") -> None:
        self._statement = statement
        self._name = name
        self._compiled: dict[str, _Compiled] = {}

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            compiled = self._compiled[conn.dialect.name] = _Compiled(self._statement, conn.dialect, self._name)
        return compiled.run(conn, params)


class _Compiled:
    """One statement for one dialect: the SQL, where each bound value comes from, and how the
    values are converted, all worked out once so that a run does only what varies."""

    def __init__(self, statement: UpdateBase, dialect: Dialect, name: str) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names = list(compiled.positiontup or ()) if self.positional else list(compiled.binds)
        # A value fixed in the statement is converted now; the caller's values at run time.
        self.fixed: dict[str, Any] = {}
        self.converted: list[tuple[int, Callable[[Any], Any]]] = []
        for index, bind_name in enumerate(self.names):
            bind = compiled.binds[bind_name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.value is not None or bind.callable:
                value = bind.effective_value
                self.fixed[bind_name] = value if process is None else process(value)
            elif process is not None:
                self.converted.append((index, process))
        self.take = _getter(self.names)
        returning: list[ColumnElement[Any]] = list(compiled.returning or ())
        self.row_type: Any = namedtuple(name, [c.key for c in returning]) if returning else None  # type: ignore[misc]
        self.results: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(returning):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is not None:
                self.results.append((index, process))

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        values = self.take({**params, **self.fixed} if self.fixed else params)
        for index, process in self.converted:
            values[index] = process(values[index])
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, values if self.positional else dict(zip(self.names, values, strict=True)))
            if self.row_type is None:
                return None
            raw = cursor.fetchone()
        finally:
            cursor.close()
        if raw is None:
            return None
        if self.results:
            raw = list(raw)
            for index, process in self.results:
                raw[index] = process(raw[index])
        return self.row_type._make(raw)


def _getter(names: list[str]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """The values of `names` in a mapping, as a list (one C call: `itemgetter`)."""
    if not names:
        return lambda params: []
    if len(names) == 1:
        (only,) = names
        return lambda params: [params[only]]
    take = itemgetter(*names)
    return lambda params: list(take(params))
