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
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.dml import UpdateBase

Processor = Callable[[Any], Any] | None


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
    def __init__(self, statement: UpdateBase, dialect: Dialect, name: str) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positional
        names = list(compiled.positiontup or ()) if self.positional else list(compiled.binds)
        # (name, fixed value or _FROM_PARAMS, bind processor) in the order the driver wants.
        self.binds: list[tuple[str, Any, Processor]] = []
        for bind_name in names:
            bind = compiled.binds[bind_name]
            fixed = _FROM_PARAMS if bind.value is None and not bind.callable else bind.effective_value
            self.binds.append((bind_name, fixed, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        self.names = [name for name, _fixed, _process in self.binds]
        returning: list[ColumnElement[Any]] = list(compiled.returning or ())
        self.row_type: Any = namedtuple(name, [c.key for c in returning]) if returning else None  # type: ignore[misc]
        self.result_processors: list[Processor] = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in returning
        ]

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        values = [
            (params[name] if fixed is _FROM_PARAMS else fixed) if process is None
            else process(params[name] if fixed is _FROM_PARAMS else fixed)
            for name, fixed, process in self.binds
        ]  # fmt: skip
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.positional:
                cursor.execute(self.sql, values)
            else:
                cursor.execute(self.sql, dict(zip(self.names, values, strict=True)))
            if self.row_type is None:
                return None
            raw = cursor.fetchone()
        finally:
            cursor.close()
        if raw is None:
            return None
        return self.row_type._make(
            value if process is None else process(value)
            for value, process in zip(raw, self.result_processors, strict=True)
        )


class _FromParams:
    """Marker: the value comes from the caller's params."""


_FROM_PARAMS = _FromParams()
