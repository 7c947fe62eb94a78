"""The audit procedures find every anomaly the generator plants, nothing on a clean ledger, and
fail clearly on a malformed one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditflow import synthetic
from auditflow.procedures import AUDIT_PROCEDURES, CriticalError, load
from auditflow.procedures.checks.base import order
from auditflow.procedures.table import money

AUDIT = AUDIT_PROCEDURES  # the seven audit procedures
DETERMINISTIC = ("duplicate_payments", "round_amounts", "weekend_postings", "split_purchases", "segregation_of_duties")
SAMPLE = Path(__file__).resolve().parents[2] / "auditflow" / "samples" / "ledger.csv"
HEADER = "entry_id,posting_date,vendor,account,amount,currency,description,created_by,approved_by\n"


def write(tmp_path: Path, rows: int, seed: int, *, clean: bool = False) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / f"ledger-{rows}-{seed}-{clean}.csv"
    assert synthetic.main(["--rows", str(rows), "--seed", str(seed), "--out", str(path)] + ["--clean"] * clean) == 0
    return path, json.loads(path.with_suffix(".truth.json").read_text())


def run(name: str, path: Path, truth: dict[str, Any] | None = None, **parameters: Any) -> dict[str, Any]:
    procedure = load().get(name)
    assert procedure is not None and procedure.validate is not None
    parameters = {"path": str(path), **parameters}
    if name == "weekend_postings" and truth:
        parameters["holidays"] = truth["holidays"]
    assert list(procedure.validate(parameters)) == []
    return procedure.run(parameters)


def missed(name: str, result: dict[str, Any], truth: dict[str, Any]) -> list[dict[str, Any]]:
    found = [set(f["entry_ids"]) for f in result["findings"]]
    lost = []
    for anomaly in truth["anomalies"]:
        if anomaly["procedure"] != name:
            continue
        if "digits" in anomaly:
            if not set(anomaly["digits"]) <= set(result["summary"]["digits"]):
                lost.append(anomaly)
        elif not any(set(anomaly["entry_ids"]) <= ids for ids in found):
            lost.append(anomaly)
    return lost


@pytest.mark.parametrize(("rows", "seed"), [(240, 7), (600, 1), (3000, 2)])
@pytest.mark.parametrize("name", AUDIT)
def test_every_planted_anomaly_is_found(tmp_path: Path, rows: int, seed: int, name: str) -> None:
    path, truth = write(tmp_path, rows, seed)
    assert sum(1 for a in truth["anomalies"] if a["procedure"] == name) >= 1
    result = run(name, path, truth)
    assert missed(name, result, truth) == []
    for finding in result["findings"]:
        assert finding["procedure"] == name
        assert finding["severity"] in ("high", "medium", "low")
        assert finding["explanation"]
        assert isinstance(finding["amount"], str)
    assert result["summary"]["entries"] == rows


@pytest.mark.parametrize(("rows", "seed"), [(240, 7), (2000, 5)])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_a_clean_ledger_has_no_findings(tmp_path: Path, rows: int, seed: int, name: str) -> None:
    path, truth = write(tmp_path, rows, seed, clean=True)
    assert truth["anomalies"] == []
    result = run(name, path, truth)
    assert result["findings"] == [] and result["summary"]["findings"] == 0


def test_a_clean_ledger_conforms_to_benford(tmp_path: Path) -> None:
    """By the MAD (Nigrini's verdict); the chi-square of a realistic ledger may reject."""
    path, _ = write(tmp_path, 2000, 5, clean=True)
    result = run("benford_first_digit", path)
    summary = result["summary"]
    assert summary["conformity"] in ("close conformity", "acceptable conformity"), summary
    assert summary["digits"] == [] and result["findings"] == []


def test_the_generator_is_seeded(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, truth_a = write(tmp_path / "a", 300, 9)
    b, truth_b = write(tmp_path / "b", 300, 9)
    assert a.read_bytes() == b.read_bytes() and truth_a == truth_b
    assert len(a.read_text().splitlines()) == 301


def test_the_sample_ledger_has_planted_anomalies() -> None:
    truth = json.loads(SAMPLE.with_suffix(".truth.json").read_text())
    assert truth["rows"] == 240
    for name in AUDIT:
        assert missed(name, run(name, SAMPLE, truth), truth) == []


def test_every_finding_is_handed_over_and_the_summary_stays_small(tmp_path: Path) -> None:
    path, truth = write(tmp_path, 600, 1)
    result = run("weekend_postings", path, truth)
    assert len(result["findings"]) == 3
    summary = result["summary"]
    assert summary["findings"] == 3 and "shown" not in summary
    assert summary["by_severity"] == {"high": 0, "medium": 1, "low": 2}
    assert [f["severity"] for f in summary["top"]] == ["medium", "low", "low"]  # the holiday first
    assert sorted(summary["top"], key=order) == summary["top"]


def test_a_plan_with_max_findings_is_told_it_is_not_needed(tmp_path: Path) -> None:
    path, _ = write(tmp_path, 240, 7)
    procedure = load().get("round_amounts")
    assert procedure is not None and procedure.validate is not None
    [violation] = procedure.validate({"path": str(path), "max_findings": 200})
    assert violation.field == "parameters.max_findings" and "every finding is stored" in violation.description


def test_duplicates_exact_and_near(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        HEADER
        + "JE-1,2026-01-05,Acme,6100,100.10,EUR,inv 1,a,b\n"
        + "JE-2,2026-01-07,Acme,6100,100.10,EUR,inv 1,a,b\n"
        + "JE-3,2026-01-05,Globex,6100,250.00,EUR,inv 2,a,b\n"
        + "JE-4,2026-01-09,Globex,6100,250.00,EUR,inv 3,a,b\n"
        + "JE-5,2026-03-09,Globex,6100,250.00,EUR,inv 4,a,b\n"
        + "JE-6,2026-03-10,Globex,6100,251.00,EUR,inv 5,a,b\n"
    )
    findings = run("duplicate_payments", path)["findings"]
    assert [(f["severity"], f["entry_ids"], f["amount"]) for f in findings] == [
        ("high", ["JE-1", "JE-2"], "100.10"),
        ("medium", ["JE-3", "JE-4"], "250.00"),
    ]
    near = run("duplicate_payments", path, tolerance=0.01)["findings"]
    assert ["JE-5", "JE-6"] in [f["entry_ids"] for f in near]


def test_helpers() -> None:
    assert money(123456) == "1234.56" and money(-5) == "-0.05" and money(0) == "0.00"


# --- malformed ledgers -----------------------------------------------------------------------

GOOD = "JE-1,2026-01-05,Acme,6100,100.10,EUR,inv 1,alice,bob\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty: expected a header line"),
        (HEADER.encode(), "the ledger has no entries"),
        (b"entry_id,posting_date,account,amount\nJE-1,2026-01-01,6100,1\n", "missing columns: vendor, currency"),
        ((HEADER + "JE-1,2026-01-05,Acme,6100,ten,EUR,a,b,c\n").encode(), r":2: amount 'ten' is not a number"),
        ((HEADER + GOOD + "JE-2,2026-01-05,Acme,6100,NaN,EUR,a,b,c\n").encode(), r":3: amount 'NaN' is not a number"),
        ((HEADER + "JE-1,05/01/2026,Acme,6100,1,EUR,a,b,c\n").encode(), "posting_date '05/01/2026' is not an ISO date"),
        ((HEADER + "JE-1,2026-01-05,Acme\n").encode(), ":2: expected 9 fields, found 3"),
        (
            (HEADER + "JE-1,2026-01-05,Caf\xe9,6100,1,EUR,a,b,c\n").encode("latin-1"),
            r"line 2 is not UTF-8 \(the byte 0xe9 at column 20, byte offset 107\)",
        ),
        (  # far past what CreateWorkflow samples: the run names the line
            (HEADER + GOOD * 5000 + "JE-9,2026-01-05,Caf\xe9,6100,1,EUR,a,b,c\n").encode("latin-1"),
            rf":5002: not UTF-8 \(the byte 0xe9 at column 20, byte offset {len(HEADER) + len(GOOD) * 5000 + 19}\)",
        ),
        (b"\x00\x01\x02" * 1000, "not a CSV ledger: binary content"),
        (b"x" * 200_000, "not a CSV ledger: no line break in its first 64 KiB"),
        (  # a 5 MB line: its number, not only the reader's complaint
            (HEADER + GOOD + "JE-2,2026-01-05,Acme,6100,1,EUR," + "x" * 5_000_000 + ",a,b\n" + GOOD).encode(),
            r"bad.csv:3: not valid CSV: field larger than field limit",
        ),
    ],
)
@pytest.mark.parametrize("name", AUDIT)
def test_a_malformed_ledger_is_a_clear_critical_error(tmp_path: Path, content: bytes, message: str, name: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    procedure = load().get(name)
    assert procedure is not None
    with pytest.raises(CriticalError, match=message):
        procedure.run({"path": str(path)})


@pytest.mark.parametrize("name", AUDIT)
def test_parameters_and_the_ledger_header_are_checked_before_anything_runs(tmp_path: Path, name: str) -> None:
    procedure = load().get(name)
    assert procedure is not None and procedure.validate is not None
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    assert list(procedure.validate({"path": str(good)})) == []
    assert [v.field for v in procedure.validate({})] == ["parameters.path"]
    assert [v.field for v in procedure.validate({"path": str(tmp_path / "nope.csv")})] == ["parameters.path"]
    assert [v.field for v in procedure.validate({"path": str(good), "bogus": 1})] == ["parameters"]
    assert [v.field for v in procedure.validate({"path": str(good), "max_findings": 0})] == ["parameters.max_findings"]
    for content, why in (
        (b"", "is empty"),
        (b"entry_id,amount\n", "missing columns: posting_date"),
        ("entry_id,Caf\xe9\n".encode("latin-1"), "line 1 is not UTF-8 (the byte 0xe9 at column 13, byte offset 12)"),
        (b"\x00\x01" * 100, "not a CSV ledger: binary content (a NUL byte at byte offset 0)"),
        (b"x" * 200_000, "not a CSV ledger: no line break"),
        (HEADER.encode() + GOOD.encode() + "JE-9,2026-01-02,Caf\xe9,1,2,EUR,,a,b\n".encode("latin-1"), "line 3 is not"),
        (HEADER.replace(",", ";").encode() + GOOD.replace(",", ";").encode(), "looks semicolon-separated"),
        (HEADER.replace(",", "\t").encode(), "looks tab-separated"),
        (HEADER.encode() + b"\n", "no entries (a header line only)"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_bytes(content)
        violations = list(procedure.validate({"path": str(bad)}))
        assert [v.field for v in violations] == ["parameters.path"] and why in violations[0].description


@pytest.mark.parametrize(
    ("name", "parameters", "field"),
    [
        ("duplicate_payments", {"days": -1}, "parameters.days"),
        ("duplicate_payments", {"tolerance": "a"}, "parameters.tolerance"),
        ("benford_first_digit", {"alpha": 0.5}, "parameters.alpha"),
        ("round_amounts", {"multiple": 0}, "parameters.multiple"),
        ("weekend_postings", {"holidays": ["2026-13-01"]}, "parameters.holidays"),
        ("split_purchases", {"approval_limit": True}, "parameters.approval_limit"),
        ("split_purchases", {"min_payments": 1}, "parameters.min_payments"),
        ("split_purchases", {"min_share": 1}, "parameters.min_share"),
        ("split_purchases", {"max_payments": 3, "min_payments": 4}, "parameters.max_payments"),
        ("split_purchases", {"max_payments": 1}, "parameters.max_payments"),
        ("outliers", {"side": "up"}, "parameters.side"),
        ("outliers", {"alpha": 0.9}, "parameters.alpha"),
        ("outliers", {"by": "currency"}, "parameters.by"),
        ("outliers", {"scale": "sqrt"}, "parameters.scale"),
    ],
)
def test_bad_parameters_are_refused(tmp_path: Path, name: str, parameters: dict[str, Any], field: str) -> None:
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    procedure = load().get(name)
    assert procedure is not None and procedure.validate is not None
    assert [v.field for v in procedure.validate({"path": str(good), **parameters})] == [field]


@pytest.mark.parametrize("name", AUDIT)
def test_each_chunk_says_how_many_rows_it_read(tmp_path: Path, name: str) -> None:
    """The rows of every chunk add up to the ledger's: a cycle's trace span shows them."""
    path, truth = write(tmp_path, 3000, 2)
    procedure = load().get(name)
    assert procedure is not None and procedure.chunk is not None
    parameters: dict[str, Any] = {"path": str(path), "chunk_rows": 700}
    if name == "weekend_postings":
        parameters["holidays"] = truth["holidays"]
    state, rows, calls = None, [], 0
    while True:
        chunk = procedure.chunk(parameters, state)
        rows.append(chunk.rows)
        calls += 1
        if chunk.result is not None:
            break
        state = chunk.state
    assert calls > 2 and all(r > 0 for r in rows) and sum(rows) == 3000, rows
