"""Ledgers from Parquet files and SQL tables give the findings of the same ledger as CSV; chunked
runs give the findings of whole runs; bad sources are refused or fail clearly."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy

from auditflow import sources, synthetic
from auditflow.procedures import AUDIT_PROCEDURES, CriticalError, load
from auditflow.procedures.checks.base import order
from auditflow.procedures.table import COLUMNS

AUDIT = AUDIT_PROCEDURES  # the seven audit procedures
HEADER = ",".join(COLUMNS) + "\n"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("ledger") / "ledger.csv"
    assert synthetic.main(["--rows", "3000", "--seed", "4", "--out", str(path)]) == 0
    return path, json.loads(path.with_suffix(".truth.json").read_text())


def to_parquet(csv_path: Path, out: Path, *, typed: bool = True) -> Path:
    source = "read_csv(?, all_varchar = true)"
    select = "* REPLACE (CAST(amount AS DECIMAL(18, 2)) AS amount, CAST(posting_date AS DATE) AS posting_date)"
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT {select if typed else '*'} FROM {source}) TO '{out}' (FORMAT parquet)", [str(csv_path)]
        )
    return out


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process's named data sources (name -> URL), for these tests to fill; files stay
    readable anywhere (confinement to data roots has tests of its own)."""
    urls: dict[str, str] = {}
    monkeypatch.setattr(sources, "_current", sources.DataAccess(urls=urls, confined=False))
    return urls


def to_sqlite(rows: list[list[str]], out: Path, table: str = "entries") -> str:
    url = f"sqlite:///{out}"
    engine = sqlalchemy.create_engine(url)
    meta = sqlalchemy.MetaData()
    entries = sqlalchemy.Table(table, meta, *(sqlalchemy.Column(c, sqlalchemy.String) for c in COLUMNS))
    meta.create_all(engine)
    with engine.begin() as conn:
        if rows:
            conn.execute(entries.insert(), [dict(zip(COLUMNS, row, strict=True)) for row in rows])
    engine.dispose()
    return url


def run(name: str, truth: dict[str, Any], **source: Any) -> dict[str, Any]:
    procedure = load().get(name)
    assert procedure is not None and procedure.validate is not None
    parameters = {**source}
    if name == "weekend_postings":
        parameters["holidays"] = truth["holidays"]
    assert list(procedure.validate(parameters)) == []
    result = procedure.run(parameters)
    return {**result, "findings": sorted(result["findings"], key=order)}  # (chunks find in other orders)


@pytest.mark.parametrize("name", AUDIT)
def test_parquet_sql_and_chunks_give_the_findings_of_the_csv(
    tmp_path: Path, ledger: tuple[Path, dict[str, Any]], name: str, named: dict[str, str]
) -> None:
    path, truth = ledger
    expected = run(name, truth, path=str(path))
    assert expected["summary"]["findings"] > 0
    parquet = to_parquet(path, tmp_path / "ledger.parquet")
    assert run(name, truth, path=str(parquet)) == expected
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    named["books"] = to_sqlite(rows, tmp_path / "books.db")
    assert run(name, truth, source="books", table="entries") == expected
    assert run(name, truth, path=str(path), chunk_rows=200) == expected


def test_a_chunked_procedure_goes_chunk_by_chunk_from_its_state(ledger: tuple[Path, dict[str, Any]]) -> None:
    path, _ = ledger
    procedure = load().get("round_amounts")
    assert procedure is not None and procedure.chunk is not None
    parameters = {"path": str(path), "chunk_rows": 500}
    first = procedure.chunk(parameters, None)
    assert first.result is None and first.done == 1 and first.total > 2
    snapshot = json.dumps(first.state)
    again = procedure.chunk(parameters, json.loads(snapshot))  # at least once: the same call again
    assert procedure.chunk(parameters, first.state).state == again.state
    assert json.dumps(first.state) == snapshot  # the state passed in is not changed
    state, result = again.state, again.result
    while result is None:
        step = procedure.chunk(parameters, state)
        state, result = step.state, step.result
    assert result == {k: v for k, v in procedure.run({"path": str(path)}).items() if k != "findings"}


@pytest.mark.parametrize("name", AUDIT)
def test_every_state_is_json_and_resumes_from_its_checkpoint(ledger: tuple[Path, dict[str, Any]], name: str) -> None:
    """The processor checkpoints each state as JSON: it must survive the round trip."""
    path, truth = ledger
    procedure = load().get(name)
    assert procedure is not None and procedure.chunk is not None
    parameters: dict[str, Any] = {"path": str(path), "chunk_rows": 500}
    if name == "weekend_postings":
        parameters["holidays"] = truth["holidays"]
    state, result, found = None, None, []
    while result is None:
        step = procedure.chunk(parameters, state)
        state, result = json.loads(json.dumps(step.state)), step.result
        found += step.findings
    assert json.loads(json.dumps(result)) == result
    assert {**result, "findings": found} == procedure.run(parameters)


def violations(name: str, **parameters: Any) -> list[tuple[str, str]]:
    procedure = load().get(name)
    assert procedure is not None and procedure.validate is not None
    return [(v.field, v.description) for v in procedure.validate(parameters)]


def test_bad_sources_are_refused_at_create(
    tmp_path: Path, ledger: tuple[Path, dict[str, Any]], named: dict[str, str]
) -> None:
    path, _ = ledger
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_bytes(b"PAR1 but not really")
    [(field, why)] = violations("round_amounts", path=str(not_parquet))
    assert field == "parameters.path" and "not a readable Parquet file" in why
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT 1 AS entry_id, 2 AS amount) TO '{tmp_path / 'few.parquet'}' (FORMAT parquet)")
    [(field, why)] = violations("round_amounts", path=str(tmp_path / "few.parquet"))
    assert field == "parameters.path" and "missing columns: posting_date, vendor" in why
    url = named["books"] = to_sqlite([], tmp_path / "books.db")
    named["broken"] = "nonsense://"
    assert violations("round_amounts", source="books", table="entries") == []
    assert [f for f, _ in violations("round_amounts", source="books")] == ["parameters.table"]
    assert [f for f, _ in violations("round_amounts", source="books", table="nope")] == ["parameters.table"]
    [(field, why)] = violations("round_amounts", source="ledgerdb", table="t")
    assert field == "parameters.source" and "no data source named 'ledgerdb' (known: books, broken)" in why
    [(field, why)] = violations("round_amounts", source="broken", table="t")
    assert field == "parameters.source" and "nonsense" not in why
    [(field, why)] = violations("round_amounts", url=url, table="entries")
    assert field == "parameters.url" and "name a data source" in why
    fields = [f for f, _ in violations("round_amounts", source="books", table="entries", path=str(path))]
    assert fields == ["parameters"]
    assert [f for f, _ in violations("round_amounts", path=str(path), chunk_rows=0)] == ["parameters.chunk_rows"]
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE few (entry_id TEXT, amount TEXT)"))
    engine.dispose()
    [(field, why)] = violations("round_amounts", source="books", table="few")
    assert field == "parameters.table" and "missing columns: posting_date" in why


GOOD = ["JE-1", "2026-01-05", "Acme", "6100", "100.10", "EUR", "inv 1", "alice", "bob"]


@pytest.mark.parametrize("name", ["round_amounts", "outliers"])
def test_bad_rows_from_parquet_and_sql_fail_the_run_clearly(tmp_path: Path, name: str, named: dict[str, str]) -> None:
    procedure = load().get(name)
    assert procedure is not None
    bad_amount = [*GOOD[:4], "ten", *GOOD[5:]]
    bad_date = [GOOD[0], "05/01/2026", *GOOD[2:]]
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(HEADER + ",".join(GOOD) + "\n" + ",".join(bad_amount) + "\n")
    parquet = to_parquet(csv_path, tmp_path / "bad.parquet", typed=False)
    with pytest.raises(CriticalError, match=r"bad.parquet: row 2: amount 'ten' is not a number"):
        procedure.run({"path": str(parquet)})
    named["books"] = to_sqlite([GOOD, bad_date], tmp_path / "books.db")
    with pytest.raises(CriticalError, match=r"table 'entries': row 2: posting_date '05/01/2026' is not an ISO date"):
        procedure.run({"source": "books", "table": "entries"})
    named["empty"] = to_sqlite([], tmp_path / "empty.db")
    with pytest.raises(CriticalError, match="the ledger has no entries"):
        procedure.run({"source": "empty", "table": "entries"})
