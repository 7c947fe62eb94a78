"""The ledger as a DuckDB table: read from a CSV, Parquet or Excel file or a SQLAlchemy database, checked, cached.

A ledger source is given by a step's parameters: `{"path": "ledger.csv"}` (a file under a data
root; CSV, Parquet or Excel .xlsx, told apart by content, not by name: see `ledger_format`) or
`{"source": "books", "table": "entries"}` (a database the server names; see
`auditflow.sources`). `open_ledger` reads it once per
process into an in-memory DuckDB table `ledger` (columns `row_no, entry_id, posting_date
DATE, vendor, account, cents BIGINT, currency, description, created_by, approved_by`, and
`amount DECIMAL(38, 6)` with `scale`, the decimals it is written with, for exact totals) and
keeps it in a small cache keyed by the source (for files: path, size and modification time),
so that the chunks of a plan's steps do not read the file again. Every format goes through the
same conversions and checks, so the procedures find the same things in each. Any problem
(missing file or columns, an amount or date that does not parse, no rows, not UTF-8, not a
ledger at all) is a `CriticalError` that names the source, the line (CSV) or row and the
problem.

`check_source` is the cheap part of that, for `validate` at CreateWorkflow: the source is
there, readable, has a header (CSV, UTF-8; Excel's first sheet) or schema (Parquet, SQL table)
with every column.

`Ledger.chunks(key, rows)` cuts the ledger into contiguous ranges of `key` (vendor or account)
values of about `rows` rows each, never splitting one key value; the cut depends only on the
data, so a run that resumes in another process cuts the same chunks.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from auditflow import sources
from auditflow.errors import FieldViolation
from auditflow.fingerprints import VERIFIER, Fingerprint, Identity, Mismatch
from auditflow.procedures import CriticalError, SourceChanged, current_run

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = (
    "entry_id",
    "posting_date",
    "vendor",
    "account",
    "amount",
    "currency",
    "description",
    "created_by",
    "approved_by",
)
SAMPLE_BYTES = 64 * 1024  # what CreateWorkflow reads of a CSV ledger to check it
PARQUET_MAGIC = b"PAR1"
ZIP_MAGIC = b"PK\x03\x04"
FORMATS = "a ledger is a CSV (UTF-8, comma-separated, a header line), Parquet or Excel (.xlsx) file"
CACHE_SIZE = 2
logger = logging.getLogger(__name__)
# What DuckDB may hold in memory per ledger; past it, the table spills to a temporary
# directory of its own, so that a ledger of ten million entries runs in a processor under 1 GiB.
DUCKDB_MEMORY = os.environ.get("AUDITFLOW_DUCKDB_MEMORY", "512MB")
DUCKDB_THREADS = int(os.environ.get("AUDITFLOW_DUCKDB_THREADS", "2"))


def money(cents: int) -> str:
    """Cents as a decimal string: 123456 -> '1234.56', -5 -> '-0.05'."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


# --- sources ---------------------------------------------------------------------------------


def ledger_format(path: Path) -> str:
    """What a ledger file is, by its content, whatever its name: "parquet" (the magic bytes
    PAR1), "xlsx" (a ZIP holding an Excel workbook) or "csv" (anything else, checked as CSV)."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic == PARQUET_MAGIC:
            return "parquet"
        if magic == ZIP_MAGIC and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "xl/workbook.xml" in archive.namelist():
                    return "xlsx"
    except (OSError, zipfile.BadZipFile):
        pass
    return "csv"


def _sql_label(name: str, table: str) -> str:
    """How a database ledger is named in messages: by its source name, never its URL."""
    return f"data source {name!r} table {table!r}"


def check_source(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    """The violations that can be seen without reading the whole ledger (the source is one
    this server may read, is there, has a header or schema with every column)."""
    path, name, table = parameters.get("path"), parameters.get("source"), parameters.get("table")
    if "url" in parameters:
        yield FieldViolation(
            "parameters.url",
            "database URLs are not accepted in a plan: name a data source configured on the server "
            "(parameters source and table)",
        )
        return
    if path is None and name is None:
        yield FieldViolation("parameters.path", "required: a CSV, Parquet or Excel ledger file (or source and table)")
        return
    if path is not None:
        if name is not None or table is not None:
            yield FieldViolation("parameters", "give either path, or source and table, not both")
            return
        if not isinstance(path, str) or not path:
            yield FieldViolation("parameters.path", "required: a CSV, Parquet or Excel ledger file under a data root")
            return
        try:
            file = sources.current().file(path)
        except sources.Refused as exc:
            yield FieldViolation("parameters.path", str(exc))
            return
        yield from _check_file(file, sources.current().shown(file))
        return
    if not isinstance(name, str) or not name:
        yield FieldViolation("parameters.source", "the name of a data source configured on the server")
        return
    if not isinstance(table, str) or not table:
        yield FieldViolation("parameters.table", "required with source: the table that holds the ledger")
        return
    try:
        url = sources.current().url(name)
    except sources.Refused as exc:
        yield FieldViolation("parameters.source", str(exc))
        return
    yield from _check_sql(url, name, table)


def _check_file(file: Path, given: str) -> Iterator[FieldViolation]:
    kind = ledger_format(file)
    if kind == "xlsx":
        yield from _check_xlsx(file, given)
        return
    if kind == "parquet":
        try:
            with _connect() as con:
                names = [
                    row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(file)]).fetchall()
                ]
                counted = con.execute("SELECT count(*) FROM read_parquet(?)", [str(file)]).fetchone()  # (metadata)
        except duckdb.Error as exc:
            reason = _first_line(exc).replace(str(file), given)
            yield FieldViolation("parameters.path", f"{given} is not a readable Parquet file: {reason}")
            return
        yield from _missing(names, given)
        if not counted or not counted[0]:
            yield FieldViolation("parameters.path", f"{given}: the ledger has no entries (no rows)")
        return
    try:
        with file.open("rb") as handle:
            sample = handle.read(SAMPLE_BYTES)
            whole = not handle.read(1)
    except OSError as exc:
        yield FieldViolation("parameters.path", f"cannot read {given}: {exc.strerror}")
        return
    problem = sample_problem(sample, whole=whole)
    if problem:
        yield FieldViolation("parameters.path", f"{given}: {problem}")
        return
    header = next(csv.reader([sample.split(b"\n", 1)[0].decode("utf-8")]), [])
    yield from _missing([name.strip().lstrip("\ufeff") for name in header], given)


def sample_problem(sample: bytes, *, whole: bool) -> str | None:
    """What the first bytes of a CSV ledger show to be wrong, cheaply: binary content or no
    line break (not a CSV ledger at all), not UTF-8 (with the line, column and byte offset),
    no header, another separator than the comma, a header and no entries (when the sample is
    the whole file). None when nothing shows."""
    if not sample.strip():
        return f"the file is empty: expected a header line with {', '.join(COLUMNS)}"
    if (nul := sample.find(b"\0")) >= 0:
        return f"not a CSV ledger: binary content (a NUL byte at byte offset {nul}); {FORMATS}"
    if b"\n" not in sample and not whole:
        return (
            f"not a CSV ledger: no line break in its first {len(sample) // 1024} KiB, where a CSV ledger "
            f"has its header line; {FORMATS}"
        )
    lines = sample.split(b"\n")
    if not whole and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut in the middle of a character
    offset = 0
    for number, raw in enumerate(lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"line {number} is not UTF-8 ({not_utf8(raw, exc, offset)}): save the ledger as UTF-8"
        offset += len(raw) + 1
    header = lines[0].decode("utf-8").strip().lstrip("\ufeff")
    names = next(csv.reader([header]), [])
    if len(names) == 1 and (separator := _other_separator(header)):
        return (
            f"the header has one column; the file looks {separator}-separated, "
            "and a ledger must be comma-separated (CSV)"
        )
    if whole and not any(line.strip() for line in lines[1:]) and not [c for c in COLUMNS if c not in names]:
        return "the ledger has no entries (a header line only)"
    return None


def not_utf8(line: bytes, exc: UnicodeDecodeError, offset: int) -> str:
    """Where a byte that is not UTF-8 is: its value, column in the line, offset in the file
    (`offset`: where the line starts), so that an editor or `xxd` finds it."""
    return f"the byte {line[exc.start]:#04x} at column {exc.start + 1}, byte offset {offset + exc.start}"


def _other_separator(header: str) -> str | None:
    for separator, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
        if header.count(separator) >= len(COLUMNS) - 1:
            return name
    return None


def _check_xlsx(file: Path, given: str) -> Iterator[FieldViolation]:
    """An Excel ledger's first sheet has a header row with every column and an entry."""
    try:
        rows = _xlsx_rows(file)
        header = next(rows, None)
        first = next(rows, None)
    except CriticalError as exc:
        yield FieldViolation("parameters.path", f"{given}: {exc}")
        return
    if header is None:
        yield FieldViolation("parameters.path", f"{given}: the first sheet is empty: expected a header row")
        return
    yield from _missing([name.strip() for name in header], given)
    if first is None:
        yield FieldViolation("parameters.path", f"{given}: the ledger has no entries (a header row only)")


def _xlsx_rows(path: Path) -> Iterator[list[str]]:
    """The rows of an Excel workbook's first sheet as text (dates ISO, whole numbers without
    '.0'), read by calamine; a workbook it cannot read is a `CriticalError`."""
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        sheet = CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0)
        rows = sheet.iter_rows()
    except (CalamineError, OSError, ValueError, IndexError) as exc:
        raise CriticalError(f"not a readable Excel (.xlsx) workbook: {_first_line(exc)}") from exc
    return ([_text(value) for value in row] for row in rows)


def _check_sql(url: str, name: str, table: str) -> Iterator[FieldViolation]:
    """The table exists and has the columns. The URL is the operator's: messages name the
    source, never the URL or what the driver said about it."""
    import sqlalchemy

    label = _sql_label(name, table)
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception:
        yield FieldViolation("parameters.source", f"data source {name!r} is misconfigured on the server")
        return
    try:
        try:
            columns = sqlalchemy.inspect(engine).get_columns(table)
        except sqlalchemy.exc.NoSuchTableError:
            yield FieldViolation("parameters.table", f"no table {table!r} in data source {name!r}")
            return
        except sqlalchemy.exc.SQLAlchemyError:
            yield FieldViolation("parameters.source", f"data source {name!r} cannot be read now; try again later")
            return
        yield from _missing([c["name"] for c in columns], label, field="parameters.table")
    finally:
        engine.dispose()


def _missing(names: list[str], label: str, field: str = "parameters.path") -> Iterator[FieldViolation]:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        yield FieldViolation(field, f"{label}: missing columns: {', '.join(missing)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- the ledger table ------------------------------------------------------------------------


def _connect(spill: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB within the memory limit; with `spill`, the directory it spills to.
    Insertion order is kept (DuckDB's default, made explicit): a table's rowid then numbers
    its rows in the order they were read, which `_load` relies on."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "threads": DUCKDB_THREADS,
        "memory_limit": DUCKDB_MEMORY,
        "preserve_insertion_order": True,
    }
    if spill is not None:
        config["temp_directory"] = spill
    return duckdb.connect(":memory:", config=config)


@dataclass
class Ledger:
    """A checked ledger in DuckDB. Query it through `cursor()` (one per thread)."""

    label: str
    con: duckdb.DuckDBPyConnection
    rows: int
    cuts: dict[tuple[str, int], list[tuple[str, str, int]]] = field(default_factory=dict, repr=False, compare=False)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def chunks(self, key: str, rows: int) -> list[tuple[str, str]]:
        """Ranges [low, high] of `key` values, each about `rows` rows (a key value is never split).
        Kept per (key, rows): every chunk call of every step asks, and the table never changes."""
        return [(low, high) for low, high, _size in self._cuts(key, rows)]

    def chunk_sizes(self, key: str, rows: int) -> list[int]:
        """The number of rows of each of `chunks(key, rows)`."""
        return [size for _low, _high, size in self._cuts(key, rows)]

    def _cuts(self, key: str, rows: int) -> list[tuple[str, str, int]]:
        if key not in ("vendor", "account"):
            raise ValueError(key)
        if (key, rows) not in self.cuts:
            self.cuts[key, rows] = self._cut(key, rows)
        return self.cuts[key, rows]

    def _cut(self, key: str, rows: int) -> list[tuple[str, str, int]]:
        counts = self.cursor().execute(f"SELECT {key}, count(*) FROM ledger GROUP BY 1 ORDER BY 1").fetchall()
        chunks: list[tuple[str, str, int]] = []
        low: str | None = None
        size = 0
        for value, count in counts:
            if low is None:
                low = value
            size += count
            if size >= rows:
                chunks.append((low, value, size))
                low, size = None, 0
        if low is not None:
            chunks.append((low, counts[-1][0], size))
        return chunks


_cache: OrderedDict[tuple[Any, ...], Ledger] = OrderedDict()
_lock = threading.Lock()


def open_ledger(parameters: dict[str, Any]) -> Ledger:
    """The checked ledger named by the parameters (read once, then cached)."""
    path, name, table = parameters.get("path"), parameters.get("source"), parameters.get("table")
    access = sources.current()
    key: tuple[Any, ...]
    approved: Fingerprint | None = None
    try:
        if path is not None:
            file = access.file(str(path))
            approved = approved_source(str(path))
            if approved is not None:
                checked = verified(file, approved)
                key = ("file", str(file), *checked)
            else:
                stat = file.stat()
                key = ("file", str(file), stat.st_size, stat.st_mtime_ns)
        elif isinstance(name, str) and isinstance(table, str):
            url = access.url(name)
            key = ("sql", url, table)
        else:
            raise CriticalError("no ledger: give path, or source and table")
    except sources.Refused as exc:
        raise CriticalError(f"cannot read the ledger: {exc}") from exc
    except OSError as exc:  # (its message would name the absolute path)
        raise CriticalError(f"cannot read the ledger: {exc.strerror}") from exc
    with _lock:
        ledger = _cache.get(key)
        if ledger is not None:
            _cache.move_to_end(key)
            return ledger
        ledger = _load_file(file, access.shown(file)) if path is not None else _load_sql(url, str(name), str(table))
        if approved is not None:
            try:  # the bytes loaded are the ones hashed: the file was not touched in between
                VERIFIER.unchanged(file, approved, checked)
            except Mismatch as exc:
                ledger.con.close()
                raise SourceChanged(str(exc)) from None
        if ledger.rows > access.max_ledger_rows:
            ledger.con.close()
            raise CriticalError(
                f"{ledger.label}: {ledger.rows} entries; the server reads at most {access.max_ledger_rows}"
            )
        _cache[key] = ledger
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return ledger


def approved_source(given: str) -> Fingerprint | None:
    """The approved fingerprint of the file `given`, when a run's step reads it."""
    run = current_run()
    return run.source(given) if run is not None else None


def verified(file: Path, approved: Fingerprint) -> Identity:
    """The file's identity once its bytes are known to be the approved ones; SourceChanged if not."""
    try:
        return VERIFIER.check(file, approved)
    except Mismatch as exc:
        raise SourceChanged(str(exc)) from None


def _load_file(path: Path, label: str) -> Ledger:
    kind = ledger_format(path)
    if kind == "parquet":
        return _load(path, label, kind="parquet")
    if kind == "xlsx":
        return _load_xlsx(path, label)
    return _load_csv(path, label)


def _load_xlsx(path: Path, label: str) -> Ledger:
    """The first sheet, as text columns (the values as a CSV would hold them), into DuckDB in
    one Arrow table: the same conversions and checks as a CSV ledger, rows named as the
    spreadsheet numbers them."""
    import pyarrow as pa

    try:
        rows = _xlsx_rows(path)
        header = next(rows, None)
    except CriticalError as exc:
        raise CriticalError(f"{label}: {exc}") from exc
    if header is None:
        raise CriticalError(f"{label}: the first sheet is empty: expected a header row")
    names = [name.strip() for name in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise CriticalError(f"{label}: missing columns: {', '.join(missing)} (found: {', '.join(names) or 'none'})")
    index = {c: names.index(c) for c in COLUMNS}
    columns: dict[str, list[str]] = {c: [] for c in COLUMNS}
    for row in rows:
        for column, i in index.items():
            columns[column].append(row[i] if i < len(row) else "")
    return _load(path, label, kind="xlsx", table=pa.table(columns))


def _load_csv(path: Path, label: str) -> Ledger:
    header = _csv_header(path, label)
    try:
        return _load(path, label, kind="csv", names=header)
    except CriticalError:
        raise
    except duckdb.Error as exc:
        # DuckDB says what, the csv module says where: re-read to report the line.
        read_ledger(path, label)
        raise CriticalError(f"{label}: cannot read the ledger: {_first_line(exc)}") from exc


def _csv_header(path: Path, label: str) -> list[str]:
    """The header of a CSV ledger, after the cheap checks of its first bytes (the same as at
    CreateWorkflow): a binary or newline-free file is not a CSV ledger, whatever its columns."""
    try:
        with path.open("rb") as handle:
            sample = handle.read(SAMPLE_BYTES)
            whole = not handle.read(1)
    except OSError as exc:
        raise CriticalError(f"{label}: cannot read the ledger: {exc.strerror or exc}") from exc
    problem = sample_problem(sample, whole=whole)
    if problem:
        raise CriticalError(f"{label}: {problem}")
    header = next(csv.reader([sample.split(b"\n", 1)[0].decode("utf-8")]), [])
    names = [name.strip().lstrip("\ufeff") for name in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise CriticalError(f"{label}: missing columns: {', '.join(missing)} (found: {', '.join(names) or 'none'})")
    return names


def _load(
    path: Path, label: str, *, kind: str, names: list[str] | None = None, table: pa.Table | None = None
) -> Ledger:
    """Read the file (CSV, Parquet, or the Arrow `table` of an Excel sheet) into `ledger`: its
    rows converted and checked, numbered in the file's order (`row_no`) and stored by vendor (a
    chunk's range of vendors then reads its own row groups, not the whole table). `raw` is a
    view of the file, read again only to quote a bad value. The tables spill past the memory
    limit to a directory of their own, removed with the ledger.

    A ledger that fits in memory is read in two passes that all of DuckDB's threads share: its
    rows into `entries` in the file's order (the rowid numbers them), then sorted into `ledger`.
    A larger one is read in one pass that numbers the rows as it reads (a window over the file,
    which runs on one thread), so that no second copy of it spills to disk. Either way it is
    sorted by vendor alone: a vendor's entries are in no particular order, every procedure
    orders what it reports by row_no itself, and the sort on one key is the cheaper one."""
    spill = tempfile.mkdtemp(prefix="auditflow-duckdb-")
    try:
        con = _connect(spill)
    except BaseException:
        shutil.rmtree(spill, ignore_errors=True)
        raise
    try:
        _raw_view(con, path, label, kind=kind, names=names, table=table)
        types = {row[0]: str(row[1]) for row in con.execute("DESCRIBE raw").fetchall()}
        missing = [c for c in COLUMNS if c not in types]
        if missing:
            raise CriticalError(f"{label}: missing columns: {', '.join(missing)}")
        if _fits(con, path, kind, table):
            con.execute(f"CREATE TABLE entries AS SELECT {_converted(types)} FROM raw")
            con.execute("CREATE TABLE ledger AS SELECT rowid + 1 AS row_no, * FROM entries ORDER BY vendor")
            con.execute("DROP TABLE entries")
        else:
            con.execute(f"CREATE TABLE ledger AS SELECT row_no, {_converted(types)} FROM ({NUMBERED}) ORDER BY vendor")
        _check_entries(con, path, label, kind)
        con.execute("DROP VIEW raw")
        if kind == "xlsx":
            con.unregister("sheet")
        count = con.execute("SELECT count(*) FROM ledger").fetchone()
        rows = int(count[0]) if count else 0
        if rows == 0:
            raise CriticalError(f"{label}: the ledger has no entries (a header line only)")
        ledger = Ledger(label, con, rows)
        weakref.finalize(ledger, _discard, con, spill)
        return ledger
    except BaseException:
        _discard(con, spill)
        raise


NUMBERED = "SELECT row_number() OVER () AS row_no, * FROM raw"  # the file's rows, numbered from 1
UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _fits(con: duckdb.DuckDBPyConnection, path: Path, kind: str, table: pa.Table | None) -> bool:
    """Whether the ledger can be read in two passes (see `_load`) without spilling: its size as
    text (the file's; a Parquet file's uncompressed pages; an Excel sheet's Arrow table) is at
    most a quarter of DuckDB's memory limit, room for both copies and the sort between them."""
    if kind == "xlsx" and table is not None:
        size = int(table.nbytes)
    elif kind == "parquet":
        row = con.execute(
            f"SELECT coalesce(sum(total_uncompressed_size), 0) FROM parquet_metadata({_quoted(path)})"
        ).fetchone()
        size = int(row[0]) if row else 0
    else:
        size = path.stat().st_size
    return size * 4 <= _memory_limit(con)


def _memory_limit(con: duckdb.DuckDBPyConnection) -> int:
    """DuckDB's memory limit in bytes, from the setting as it shows it ("488.2 MiB")."""
    row = con.execute("SELECT current_setting('memory_limit')").fetchone()
    number, _, unit = str(row[0] if row else "").partition(" ")
    try:
        return int(float(number) * UNITS[unit])
    except (ValueError, KeyError):
        return 0  # unknown: read in one pass, as a large ledger is


def _raw_view(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    label: str,
    *,
    kind: str,
    names: list[str] | None,
    table: pa.Table | None,
) -> None:
    """`raw`: the file's rows as they are, in the file's order."""
    if kind == "parquet":
        try:
            con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet({_quoted(path)})")
            con.execute("DESCRIBE raw")
        except duckdb.Error as exc:
            raise CriticalError(f"{label}: cannot read the Parquet ledger: {_first_line(exc)}") from exc
    elif kind == "xlsx":
        con.register("sheet", table)
        con.execute("CREATE VIEW raw AS SELECT * FROM sheet")
    else:
        columns = ", ".join(f"{_quoted(n)}: 'VARCHAR'" for n in names or [])
        con.execute(
            f"CREATE VIEW raw AS SELECT * FROM read_csv({_quoted(path)}, header = true, all_varchar = true, "
            "delim = ',', quote = '\"', escape = '\"', strict_mode = true, encoding = 'utf-8', "
            f"auto_detect = false, columns = {{{columns}}})"
        )


def _converted(types: dict[str, str]) -> str:
    """The select list of `ledger` but row_no, from `raw`, whose columns have `types`: a value
    that does not convert is NULL, found by `_check_entries`."""

    def text(column: str) -> str:
        return f"coalesce(CAST(\"{column}\" AS VARCHAR), '')"

    def parsed(column: str, target: str) -> str:
        inner = f'trim("{column}")' if types[column] == "VARCHAR" else f'"{column}"'
        return f"TRY_CAST({inner} AS {target})"

    return f"""{text("entry_id")} AS entry_id, {parsed("posting_date", "DATE")} AS posting_date,
        coalesce(nullif(CAST(vendor AS VARCHAR), ''), '(none)') AS vendor, {text("account")} AS account,
        {whole_cents(parsed("amount", "DECIMAL(18, 6)"), parsed("amount", "DECIMAL(38, 6)"))} AS cents,
        {parsed("amount", "DECIMAL(38, 6)")} AS amount, {written_decimals(text("amount"))} AS scale,
        {text("currency")} AS currency, {text("description")} AS description,
        {text("created_by")} AS created_by, {text("approved_by")} AS approved_by"""


def whole_cents(narrow: str, wide: str) -> str:
    """SQL for an amount in whole cents (BIGINT), rounded half away from zero, from the same
    text parsed as DECIMAL(18, 6) (`narrow`) and as DECIMAL(38, 6) (`wide`). The narrow one is
    64-bit arithmetic throughout: rounding it to two decimals keeps DECIMAL(18, 2), and times
    100 keeps that type, far cheaper than the wide one's 128-bit arithmetic on every entry. Only
    an amount of 10^12 or more, which the narrow one cannot hold, is rounded as the wide one."""
    return f"coalesce(CAST(round({narrow}, 2) * 100 AS BIGINT), CAST(round({wide} * 100) AS BIGINT))"


def _check_entries(con: duckdb.DuckDBPyConnection, path: Path, label: str, kind: str) -> None:
    """A `CriticalError` for the first entry whose amount or date did not convert, naming its
    line (CSV) or row and quoting the value as the file has it."""
    bad = con.execute(
        """SELECT row_no, cents IS NULL FROM ledger WHERE cents IS NULL OR posting_date IS NULL
           ORDER BY row_no LIMIT 1"""
    ).fetchone()
    if bad is None:
        return
    row_no, bad_amount = bad
    amount, posting_date = con.execute(
        f"SELECT CAST(amount AS VARCHAR), CAST(posting_date AS VARCHAR) FROM ({NUMBERED}) WHERE row_no = ?", [row_no]
    ).fetchone() or (None, None)
    if kind == "csv":
        read_ledger(path, label)  # the csv module's message, with the line
        where = f"{label}:{row_no + 1}"
    elif kind == "xlsx":
        where = f"{label}: row {row_no + 1}"  # as the spreadsheet numbers it, after the header
    else:
        where = f"{label}: row {row_no}"
    if bad_amount:
        raise CriticalError(f"{where}: amount {amount!r} is not a number")
    raise CriticalError(f"{where}: posting_date {posting_date!r} is not an ISO date (YYYY-MM-DD)")


def _discard(con: duckdb.DuckDBPyConnection, spill: str) -> None:
    """Close a ledger's database and remove what it spilled."""
    con.close()
    shutil.rmtree(spill, ignore_errors=True)


def _quoted(value: object) -> str:
    """A SQL string literal (a view's definition cannot take parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


def written_decimals(amount: str) -> str:
    """SQL for the decimals an amount is written with ('300' 0, '80.05' 2, '1.5e3' 0), at most 6:
    the totals of `ledger_summary` and `vendor_totals` are printed with as many decimals as their
    most precise amount, as a sum of Python Decimals would be. (An exponent is looked for with
    `contains`, not a regular expression: every entry of a ledger goes through this.)"""
    text = f"trim({amount})"
    decimals = f"length(regexp_extract({text}, '\\.([0-9]*)', 1))"
    exponent = f"coalesce(TRY_CAST(regexp_extract({text}, '[eE]([+-]?[0-9]+)$', 1) AS INTEGER), 0)"
    plain = f"CASE WHEN position('.' IN {text}) > 0 THEN length({text}) - position('.' IN {text}) ELSE 0 END"
    return (
        f"CAST(least(6, CASE WHEN contains({text}, 'e') OR contains({text}, 'E') "
        f"THEN greatest(0, {decimals} - {exponent}) "
        f"ELSE {plain} END) AS UTINYINT)"
    )


def _load_sql(url: str, name: str, table: str) -> Ledger:
    """Stream the table into a temporary CSV (values as text), then load that like a file;
    at most the server's row limit (more is an error, found before the whole table is read)."""
    import sqlalchemy

    label = _sql_label(name, table)
    limit = sources.current().max_ledger_rows
    fd, name = tempfile.mkstemp(prefix="auditflow-ledger-", suffix=".csv")
    temp = Path(name)
    try:
        engine = sqlalchemy.create_engine(url)
        try:
            meta = sqlalchemy.MetaData()
            source = sqlalchemy.Table(table, meta, autoload_with=engine)
            missing = [c for c in COLUMNS if c not in source.c]
            if missing:
                raise CriticalError(f"{label}: missing columns: {', '.join(missing)}")
            query = sqlalchemy.select(*(source.c[c] for c in COLUMNS))
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle, engine.connect() as conn:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(COLUMNS)
                result = conn.execution_options(stream_results=True, yield_per=50_000).execute(query.limit(limit + 1))
                for partition in result.partitions():
                    writer.writerows([_text(v) for v in row] for row in partition)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # (the driver's message may name hosts and users: only the log gets it)
            logger.warning("%s: cannot read the ledger: %s", label, _first_line(exc))
            raise CriticalError(f"{label}: cannot read the ledger; see the processor log") from exc
        finally:
            engine.dispose()
        try:
            ledger = _load_csv(temp, str(temp))
            ledger.label = label
            return ledger
        except CriticalError as exc:
            # Line n of the temporary CSV is row n - 1 of the table.
            text = re.sub(re.escape(str(temp)) + r":(\d+):", lambda m: f"{label}: row {int(m[1]) - 1}:", str(exc))
            raise CriticalError(text.replace(str(temp), label)) from exc
    finally:
        temp.unlink(missing_ok=True)


def _text(value: Any) -> str:
    """A database or spreadsheet value as a CSV ledger would write it: dates ISO, whole
    numbers without '.0'."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- the exact reader, for error messages ----------------------------------------------------


def read_ledger(path: Path, label: str | None = None) -> int:
    """Read and check a whole CSV ledger row by row; any problem is a `CriticalError` that says
    where (file and line). Returns the number of entries. Used to locate the problems DuckDB
    reports, so only on the error path."""
    label = label or str(path)
    count = 0
    reader = None
    try:
        with path.open("rb") as handle:
            reader = csv.reader(_decoded(handle, label))
            header = next(reader, None)
            if header is None:
                raise CriticalError(f"{label}: the ledger is empty (no header line)")
            names = [name.strip().lstrip("\ufeff") for name in header]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise CriticalError(f"{label}: missing columns: {', '.join(missing)}")
            width = len(header)
            i_date, i_amount = names.index("posting_date"), names.index("amount")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise CriticalError(f"{label}:{line}: expected {width} fields, found {len(row)}")
                try:
                    date.fromisoformat(row[i_date].strip())
                except ValueError as exc:
                    raise CriticalError(
                        f"{label}:{line}: posting_date {row[i_date]!r} is not an ISO date (YYYY-MM-DD)"
                    ) from exc
                try:
                    value = Decimal(row[i_amount].strip())
                except InvalidOperation as exc:
                    raise CriticalError(f"{label}:{line}: amount {row[i_amount]!r} is not a number") from exc
                if not value.is_finite():
                    raise CriticalError(f"{label}:{line}: amount {row[i_amount]!r} is not a number")
                count += 1
    except OSError as exc:
        raise CriticalError(f"{label}: cannot read the ledger: {exc}") from exc
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise CriticalError(f"{label}:{line}: not valid CSV: {exc}") from exc
    if not count:
        raise CriticalError(f"{label}: the ledger has no entries (a header line only)")
    return count


def _decoded(handle: Iterable[bytes], label: str) -> Iterator[str]:
    """The file's lines as text, a byte that is not UTF-8 named by its line, column and offset."""
    offset = 0
    for number, raw in enumerate(handle, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CriticalError(
                f"{label}:{number}: not UTF-8 ({not_utf8(raw, exc, offset)}); save the ledger as UTF-8"
            ) from None
        offset += len(raw)
