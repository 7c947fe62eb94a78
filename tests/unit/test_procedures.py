"""The built-in ledger procedures compute the right figures and fail clearly on bad ledgers."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditflow import sources
from auditflow.procedures import CriticalError, load

HEADER = "entry_id,posting_date,vendor,account,amount,currency,description,created_by,approved_by\n"
ROWS = [
    "JE-1,2026-01-05,Acme,6100,100.10,EUR,a,alice,bob",
    "JE-2,2026-01-20,Globex,6200,50.00,EUR,b,bob,carol",
    "JE-3,2026-02-02,Acme,6100,-20.05,EUR,c,carol,alice",
    "JE-4,2026-03-31,Initech,6300,300,EUR,d,alice,carol",
]


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n")
    return path


def run(name: str, **parameters: object) -> dict[str, object]:
    procedure = load().get(name)
    assert procedure is not None
    return procedure.run(dict(parameters))


def test_ledger_summary_totals_per_account_and_month(ledger: Path) -> None:
    result = run("ledger_summary", path=str(ledger))
    assert result["rows"] == 4
    assert result["total"] == "430.05"
    assert result["per_account"] == {"6100": "80.05", "6200": "50.00", "6300": "300"}
    assert result["per_month"] == {"2026-01": "150.10", "2026-02": "-20.05", "2026-03": "300"}


def test_vendor_totals_ranks_vendors(ledger: Path) -> None:
    result = run("vendor_totals", path=str(ledger), top=2)
    assert result["vendors"] == 3
    assert result["top"] == [
        {"vendor": "Initech", "total": "300", "entries": 1, "share": 0.6976},
        {"vendor": "Acme", "total": "80.05", "entries": 2, "share": 0.1861},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("entry_id,posting_date,account\nJE-1,2026-01-01,6100\n", "missing columns: amount"),
        (HEADER + "JE-1,2026-01-01,Acme,6100,ten,EUR,a,b,c\n", ":2: amount 'ten' is not a number"),
        (HEADER + "JE-1,01/02/2026,Acme,6100,10,EUR,a,b,c\n", "posting_date '01/02/2026' is not an ISO date"),
    ],
)
def test_a_bad_ledger_is_a_critical_error_that_says_why(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(CriticalError, match=message):
        run("ledger_summary", path=str(path))


def test_totals_keep_the_decimals_of_the_most_precise_amount(tmp_path: Path) -> None:
    """As a sum of Python Decimals: '300' + '0.5' is '300.5', sub-cent amounts are kept, no '-0'."""
    path = tmp_path / "ledger.csv"
    rows = [
        "JE-1,2026-01-05,Acme,6100,300,EUR,a,alice,bob",
        "JE-2,2026-01-06,Acme,6100,0.5,EUR,b,alice,bob",
        "JE-3,2026-02-02,Globex,6200,10.005,EUR,c,alice,bob",
        "JE-4,2026-02-03,Globex,6200,-10.005,EUR,d,alice,bob",
        "JE-5,2026-03-03,Initech,6300, 1.5e3 ,EUR,e,alice,bob",
    ]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    result = run("ledger_summary", path=str(path))
    assert result["per_account"] == {"6100": "300.5", "6200": "0.000", "6300": "1500"}
    assert result["per_month"] == {"2026-01": "300.5", "2026-02": "0.000", "2026-03": "1500"}
    assert result["total"] == "1800.500" and result["rows"] == 5
    top = run("vendor_totals", path=str(path), top=3)["top"]
    assert [(v["vendor"], v["total"], v["share"]) for v in top] == [
        ("Initech", "1500", 0.8331),
        ("Acme", "300.5", 0.1669),
        ("Globex", "0.000", 0.0),
    ]


def test_the_summaries_read_every_ledger_source(ledger: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same sources as the audit procedures: a Parquet file, a SQL table (a named source)."""
    import duckdb
    import sqlalchemy

    expected = run("ledger_summary", path=str(ledger)), run("vendor_totals", path=str(ledger), top=2)
    parquet = tmp_path / "ledger.parquet"
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * FROM read_csv(?, all_varchar = true)) TO '{parquet}' (FORMAT parquet)", [str(ledger)]
        )
    assert (run("ledger_summary", path=str(parquet)), run("vendor_totals", path=str(parquet), top=2)) == expected
    url = f"sqlite:///{tmp_path / 'books.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(f"CREATE TABLE entries ({', '.join(c + ' TEXT' for c in HEADER.strip().split(','))})")
        )
        for row in ROWS:
            values = ", ".join(f"'{v}'" for v in row.split(","))
            conn.execute(sqlalchemy.text(f"INSERT INTO entries VALUES ({values})"))
    engine.dispose()
    monkeypatch.setattr(sources, "_current", sources.DataAccess(urls={"books": url}, confined=False))
    source = {"source": "books", "table": "entries"}
    assert (run("ledger_summary", **source), run("vendor_totals", **source, top=2)) == expected
    summary = load().get("ledger_summary")
    assert summary is not None and summary.validate is not None
    assert list(summary.validate(source)) == []


def test_a_csv_with_only_the_summaries_own_columns_is_still_summarised(tmp_path: Path) -> None:
    """The audit procedures need all nine columns; a summary only its own, as it always did."""
    path = tmp_path / "few.csv"
    path.write_text(
        "entry_id,posting_date,account,amount,vendor\n"
        + "\n".join(",".join(row.split(",")[i] for i in (0, 1, 3, 4, 2)) for row in ROWS)
        + "\n"
    )
    assert run("ledger_summary", path=str(path)) == run("ledger_summary", path=str(full(tmp_path)))
    assert run("vendor_totals", path=str(path), top=2) == run("vendor_totals", path=str(full(tmp_path)), top=2)
    registry = load()
    for name, ok in (("ledger_summary", True), ("vendor_totals", True), ("round_amounts", False)):
        procedure = registry.get(name)
        assert procedure is not None and procedure.validate is not None
        assert (list(procedure.validate({"path": str(path)})) == []) is ok, name
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("entry_id,posting_date,account,amount\nJE-1,2026-01-05,6100,100.10\n")
    assert run("ledger_summary", path=str(fewer))["per_account"] == {"6100": "100.10"}
    vendors = registry.get("vendor_totals")
    assert vendors is not None and vendors.validate is not None
    [violation] = vendors.validate({"path": str(fewer)})
    assert violation.description.endswith("missing columns: vendor")
    with pytest.raises(CriticalError, match=r"missing columns: vendor$"):
        run("vendor_totals", path=str(fewer))
    bad = tmp_path / "bad.csv"
    bad.write_text("entry_id,posting_date,account,amount\nJE-1,2026-01-05,6100,1\nJE-2,2026-01-05,6100,ten\n")
    with pytest.raises(CriticalError, match=r"bad.csv:3: amount 'ten' is not a number"):
        run("ledger_summary", path=str(bad))


def full(tmp_path: Path) -> Path:
    path = tmp_path / "full.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n")
    return path


def test_a_non_utf8_ledger_is_a_critical_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "JE-1,2026-01-01,Caf\xe9,6100,10,EUR,a,b,c\n").encode("latin-1"))
    with pytest.raises(
        CriticalError, match=r"latin1.csv: line 2 is not UTF-8 \(the byte 0xe9 at column 20, byte offset 107\)"
    ):
        run("ledger_summary", path=str(path))


def test_parameters_are_validated_before_anything_runs(ledger: Path) -> None:
    registry = load()
    summary = registry.get("ledger_summary")
    vendors = registry.get("vendor_totals")
    assert summary is not None and vendors is not None and summary.validate and vendors.validate
    assert [v.field for v in summary.validate({})] == ["parameters.path"]
    assert [v.field for v in summary.validate({"path": "/nope.csv"})] == ["parameters.path"]
    assert [v.field for v in summary.validate({"path": str(ledger), "x": 1})] == ["parameters"]
    assert list(vendors.validate({"path": str(ledger), "top": 3})) == []
    assert [v.field for v in vendors.validate({"path": str(ledger), "top": 0})] == ["parameters.top"]
    assert [v.field for v in vendors.validate({"path": str(ledger), "top": True})] == ["parameters.top"]
    assert [v.field for v in summary.validate({"path": str(ledger), "source": "books", "table": "t"})] == ["parameters"]
    assert [v.field for v in summary.validate({"url": "sqlite://", "table": "t"})] == ["parameters.url"]


def test_plan_checks_scan_the_installed_orchestrators_once(ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scanning entry points takes milliseconds; it used to happen on every Enqueue."""
    import importlib.metadata

    from auditflow import plans
    from auditflow.v1 import workflow_pb2 as pb

    scans: list[str] = []
    real = importlib.metadata.entry_points

    def counting(**kwargs: str) -> importlib.metadata.EntryPoints:
        scans.append(kwargs.get("group", ""))
        return real(**kwargs)

    monkeypatch.setattr(plans, "entry_points", counting)
    plans.orchestrator_names.cache_clear()
    step = pb.PlanStep(procedure="ledger_summary")
    step.parameters.update({"path": str(ledger)})
    for _ in range(3):
        plans.check_plan("t", [step], 0, "plan")
    with pytest.raises(plans.InvalidArgument, match="unknown orchestrator 'nope' \\(known: plan\\)"):
        plans.check_plan("t", [step], 0, "nope")
    assert scans == [plans.ORCHESTRATOR_GROUP]


def test_a_bad_ledger_is_reported_once_per_plan(tmp_path: Path) -> None:
    """Every step of the sample plan reads the same ledger: its problem is said once, at the
    first step, naming the others, not nine times."""
    from auditflow import plans
    from auditflow.v1 import workflow_pb2 as pb

    bad = tmp_path / "ledger.csv"
    bad.write_bytes(b"\x00\x01binary" * 100)
    steps = []
    for name in ("duplicate_payments", "benford_first_digit", "round_amounts"):
        step = pb.PlanStep(procedure=name)
        step.parameters.update({"path": str(bad)})
        steps.append(step)
    with pytest.raises(plans.InvalidArgument) as caught:
        plans.check_plan("t", steps, 0, "plan")
    [violation] = caught.value.violations
    assert violation.field == "plan[0].parameters.path"
    assert "not a CSV ledger" in violation.description
    assert violation.description.endswith("(the same for plan[1], plan[2])")
