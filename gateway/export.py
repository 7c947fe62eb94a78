"""Findings as a file, written page by page: CSV, JSON (an array) or Parquet.

An export of a million findings is never held in memory: the gateway asks the processor for
one page at a time (`pages`), and each encoder turns a page into the next bytes of the file
and hands them on at once (Parquet writes a row group per page with pyarrow, whose file
format puts its footer last, so a Parquet file can be streamed too).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from auditflow.errors import invalid
from auditflow.v1 import workflow_pb2 as pb

FORMATS = {  # (the names are auditflow.findings_contract.EXPORT_FORMATS)
    "csv": ("text/csv; charset=utf-8", "csv"),
    "json": ("application/json", "json"),
    "parquet": ("application/vnd.apache.parquet", "parquet"),
}
COLUMNS = ("finding_id", "step", "procedure", "severity", "amount", "entry_count", "entry_ids", "explanation")
SCHEMA = pa.schema(
    [
        ("finding_id", pa.string()),
        ("step", pa.int32()),
        ("procedure", pa.string()),
        ("severity", pa.string()),
        ("amount", pa.string()),
        ("entry_count", pa.int32()),
        ("entry_ids", pa.list_(pa.string())),
        ("explanation", pa.string()),
    ]
)


def check_format(text: str) -> str:
    name = text or "csv"
    if name not in FORMATS:
        raise invalid("format", f"one of {', '.join(FORMATS)}")
    return name


def content_type(name: str) -> str:
    return FORMATS[name][0]


def filename(workflow_id: str, name: str) -> str:
    return f"{workflow_id}-findings.{FORMATS[name][1]}"


class Encoder(Protocol):
    def page(self, findings: list[pb.Finding]) -> bytes: ...

    def end(self) -> bytes: ...


async def encode(name: str, pages: AsyncIterator[list[pb.Finding]]) -> AsyncIterator[bytes]:
    """The file, chunk by chunk: one chunk per page (a header first, a footer last). Encoding
    a page is CPU work: it runs on a worker thread, never on the event loop."""
    encoder = ENCODERS[name]()
    async for findings in pages:
        data = await asyncio.to_thread(encoder.page, findings)
        if data:
            yield data
    data = await asyncio.to_thread(encoder.end)
    if data:
        yield data


def _row(f: pb.Finding) -> tuple[object, ...]:
    ids = " ".join(f.entry_ids)
    return (f.finding_id, f.step, f.procedure, f.severity, f.amount, f.entry_count, ids, f.explanation)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def defuse(cell: object) -> object:
    """A text cell a spreadsheet would run as a formula, made inert (OWASP's CSV injection
    guidance): a cell beginning with =, +, -, @, tab or carriage return gets a leading single
    quote, which spreadsheets show as text; the writer quotes the cell and doubles its quotes.
    A plain decimal number such as an amount of -10.50 is no formula and stays as it is.
    (defusedcsv misses the tab and the carriage return, so this is done here.)"""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


class CsvEncoder:
    def __init__(self) -> None:
        self._header = True

    def page(self, findings: list[pb.Finding]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        if self._header:
            writer.writerow(COLUMNS)
            self._header = False
        writer.writerows([defuse(cell) for cell in _row(f)] for f in findings)
        return out.getvalue().encode()

    def end(self) -> bytes:
        return self.page([]) if self._header else b""


class JsonEncoder:
    def __init__(self) -> None:
        self._first = True

    def page(self, findings: list[pb.Finding]) -> bytes:
        parts = []
        for f in findings:
            parts.append(("[" if self._first else ",") + json.dumps(_object(f), ensure_ascii=False))
            self._first = False
        return "\n".join(parts).encode()

    def end(self) -> bytes:
        return b"[]\n" if self._first else b"]\n"


def _object(f: pb.Finding) -> dict[str, object]:
    return {
        "finding_id": f.finding_id,
        "step": f.step,
        "procedure": f.procedure,
        "severity": f.severity,
        "amount": f.amount,
        "entry_count": f.entry_count,
        "entry_ids": list(f.entry_ids),
        "explanation": f.explanation,
    }


class _Sink(io.RawIOBase):
    """Where pyarrow writes: bytes collected until the encoder hands them on."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)

    def take(self) -> bytes:
        taken = bytes(self.data)
        self.data.clear()
        return taken


class ParquetEncoder:
    def __init__(self) -> None:
        self._sink = _Sink()
        self._writer = pq.ParquetWriter(pa.PythonFile(self._sink, mode="w"), SCHEMA, compression="zstd")

    def page(self, findings: list[pb.Finding]) -> bytes:
        if findings:
            columns = list(zip(*(_columns(f) for f in findings), strict=True))
            arrays = [pa.array(c, type=field.type) for c, field in zip(columns, SCHEMA, strict=True)]
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA))
        return self._sink.take()

    def end(self) -> bytes:
        self._writer.close()
        return self._sink.take()


def _columns(f: pb.Finding) -> Iterator[object]:
    yield from (f.finding_id, f.step, f.procedure, f.severity, f.amount, f.entry_count, list(f.entry_ids))
    yield f.explanation


ENCODERS: dict[str, Callable[[], Encoder]] = {"csv": CsvEncoder, "json": JsonEncoder, "parquet": ParquetEncoder}
