"""The same ledger as CSV, Parquet and Excel (.xlsx): told apart by content, not by name, and
every procedure finds the same things in each.

The Parquet and Excel files are made here from a generated CSV ledger with planted
anomalies: Parquet with DuckDB (typed columns: DATE, DECIMAL), Excel with openpyxl (dates as
date cells, amounts as numbers), each under a name that does not say its format.
"""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import openpyxl
import pytest

from auditflow import synthetic
from auditflow.procedures import AUDIT_PROCEDURES, CriticalError, load, table
from auditflow.procedures.table import COLUMNS, ledger_format, whole_cents
from tests.unit.test_audit_procedures import run

# The procedures that read a ledger: the built-in ones (other modules of the suite may have
# registered test procedures in this process, which read none).
NAMES = ("ledger_summary", "vendor_totals", *AUDIT_PROCEDURES)


def to_xlsx(rows: list[list[Any]], path: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Journal"
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def typed(row: dict[str, str]) -> list[Any]:
    """A CSV row as a spreadsheet holds it: a date cell, a number."""
    values: list[Any] = [row[c] for c in COLUMNS]
    values[COLUMNS.index("posting_date")] = date.fromisoformat(row["posting_date"])
    values[COLUMNS.index("amount")] = float(Decimal(row["amount"]))
    return values


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("formats")
    source = folder / "ledger.csv"
    assert synthetic.main(["--rows", "3000", "--seed", "5", "--out", str(source)]) == 0
    truth = json.loads(source.with_suffix(".truth.json").read_text())
    parquet = folder / "ledger-a.dat"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT * REPLACE (CAST(posting_date AS DATE) AS posting_date, "
            "CAST(amount AS DECIMAL(18, 2)) AS amount) FROM read_csv(?, all_varchar = true)) TO '"
            + str(parquet)
            + "' (FORMAT parquet)",
            [str(source)],
        )
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    xlsx = to_xlsx([list(COLUMNS), *(typed(r) for r in rows)], folder / "ledger-b.dat")
    return {"truth": truth, "csv": source, "parquet": parquet, "xlsx": xlsx}


def test_the_format_is_told_by_content(ledgers: dict[str, Any]) -> None:
    assert [ledger_format(ledgers[k]) for k in ("csv", "parquet", "xlsx")] == ["csv", "parquet", "xlsx"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["parquet", "xlsx"])
def test_every_procedure_finds_the_same_in_every_format(ledgers: dict[str, Any], name: str, kind: str) -> None:
    expected = run(name, ledgers["csv"], ledgers["truth"])
    got = run(name, ledgers[kind], ledgers["truth"])
    if name in ("ledger_summary", "vendor_totals"):  # (no findings: the whole result)
        assert got == expected
        return
    assert got["findings"] == expected["findings"]
    assert got["summary"] == expected["summary"]
    planted = [a for a in ledgers["truth"]["anomalies"] if a["procedure"] == name and "entry_ids" in a]
    assert bool(got["findings"]) == bool(planted)


def test_a_bad_spreadsheet_row_is_named_as_the_spreadsheet_numbers_it(tmp_path: Path) -> None:
    good = ["JE-1", date(2026, 1, 5), "Acme", "6100", 100.1, "EUR", "inv 1", "alice", "bob"]
    bad = ["JE-2", date(2026, 1, 6), "Acme", "6100", "ten", "EUR", "inv 2", "alice", "bob"]
    path = to_xlsx([list(COLUMNS), good, bad], tmp_path / "ledger.xlsx")
    procedure = load().get("duplicate_payments")
    assert procedure is not None
    with pytest.raises(CriticalError, match=r"ledger.xlsx: row 3: amount 'ten' is not a number"):
        procedure.run({"path": str(path)})


def test_a_spreadsheet_is_checked_at_submission(tmp_path: Path) -> None:
    procedure = load().get("round_amounts")
    assert procedure is not None and procedure.validate is not None
    cases = {
        "missing columns: vendor": [["entry_id", "posting_date", "amount"], ["JE-1", date(2026, 1, 5), 1.0]],
        "no entries (a header row only)": [list(COLUMNS)],
    }
    for why, rows in cases.items():
        path = to_xlsx(rows, tmp_path / "ledger.xlsx")
        violations = list(procedure.validate({"path": str(path)}))
        assert [v.field for v in violations] == ["parameters.path"] and why in violations[0].description, violations
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(to_xlsx([list(COLUMNS)], tmp_path / "x.xlsx").read_bytes()[:2000])  # cut short
    violations = list(procedure.validate({"path": str(broken)}))
    assert [v.field for v in violations] == ["parameters.path"], violations


def read_both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """The `ledger` table, read in two passes (a ledger that fits in memory) and in one (a
    larger one), by row_no, after checking that each is stored by vendor (a vendor's entries
    in no particular order)."""
    tables = []
    for fits in (True, False):
        monkeypatch.setattr(table, "_fits", lambda *_args, fits=fits: fits)
        ledger = table._load_file(path, path.name)
        try:
            stored = ledger.cursor().execute("SELECT vendor, row_no FROM ledger ORDER BY rowid").fetchall()
            assert stored == sorted(stored, key=lambda row: row[0])  # sorted() is stable
            tables.append(ledger.cursor().execute("SELECT * FROM ledger ORDER BY row_no").fetchall())
        finally:
            ledger.con.close()
    return tables[0], tables[1]


AMOUNTS = [
    "0",
    "12.34",
    "-12.34",
    "0.005",
    "-0.005",
    "1.015",
    "-2.675",
    "12.3449999",
    "0.0049995",
    "7.1250004",
    "999999999999.995",
    "-999999999999.994",
    "1000000000000.005",
    "-92233720368547.755",
    "4.2e3",
    " 3.5 ",
]


def test_whole_cents_round_half_away_from_zero_at_any_size() -> None:
    """The amount parsed to six decimals, then rounded to cents, as Decimal would: both the
    64-bit path (under 10^12) and the 128-bit one above it."""
    parsed = [f"TRY_CAST(trim(a) AS DECIMAL({width}, 6))" for width in (18, 38)]
    with duckdb.connect() as con:
        found = con.execute(f"SELECT {whole_cents(*parsed)} FROM unnest(CAST(? AS VARCHAR[])) t(a)", [AMOUNTS])
        cents = [row[0] for row in found.fetchall()]
    six = [Decimal(a.strip()).quantize(Decimal("0.000001"), ROUND_HALF_UP) for a in AMOUNTS]
    assert cents == [int((d * 100).quantize(Decimal(1), ROUND_HALF_UP)) for d in six]


@pytest.mark.parametrize("kind", ["csv", "parquet", "xlsx"])
def test_both_ways_of_reading_store_the_same_ledger(
    ledgers: dict[str, Any], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    two, one = read_both_ways(ledgers[kind], monkeypatch)
    assert two == one and len(two) == 3000


def test_entries_are_numbered_in_the_files_order_when_read_in_parallel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several row groups, read by several threads: row_no is still the entry's place in the
    file, and the table is stored by vendor (see `read_both_ways`)."""
    path = tmp_path / "ledger.csv"
    with duckdb.connect() as con:
        con.execute(
            f"""COPY (SELECT 'JE-' || i AS entry_id, DATE '2026-01-01' + CAST(i % 300 AS INTEGER) AS posting_date,
                       'Vendor ' || (i * 7919 % 1000) AS vendor, '6100' AS account, (i % 9000) + 1.25 AS amount,
                       'EUR' AS currency, 'invoice ' || i AS description, 'alice' AS created_by,
                       'bob' AS approved_by
                FROM range(300000) r(i)) TO '{path}' (HEADER)"""
        )
    two, one = read_both_ways(path, monkeypatch)
    assert two == one
    assert all(row[1] == f"JE-{row[0] - 1}" for row in two)  # row_no 1 is the first entry


def test_a_bad_entry_is_named_the_same_whichever_way_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.parquet"
    with duckdb.connect() as con:
        con.execute(
            f"""COPY (SELECT 'JE-' || i AS entry_id, '2026-01-05' AS posting_date, 'Acme' AS vendor,
                       '6100' AS account, CASE WHEN i = 41 THEN 'ten' ELSE '100.10' END AS amount,
                       'EUR' AS currency, '' AS description, 'alice' AS created_by, 'bob' AS approved_by
                FROM range(50) r(i)) TO '{path}' (FORMAT parquet)"""
        )
    for fits in (True, False):
        monkeypatch.setattr(table, "_fits", lambda *_args, fits=fits: fits)
        with pytest.raises(CriticalError, match=r"ledger.parquet: row 42: amount 'ten' is not a number"):
            table._load_file(path, path.name)


def test_a_ledger_is_read_in_two_passes_when_a_quarter_of_the_memory_limit_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    path.write_bytes(b"x" * 1000)
    with duckdb.connect(config={"memory_limit": "8MB"}) as con:
        assert abs(table._memory_limit(con) - 8_000_000) < 100_000
        assert table._fits(con, path, "csv", None)
        path.write_bytes(b"x" * 2_100_000)
        assert not table._fits(con, path, "csv", None)
