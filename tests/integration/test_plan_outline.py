"""A list's rows carry each plan's outline, made by the database (`store.PlanOutline`): the
same on SQLite and on PostgreSQL, in the plan's order, the sources whole, no parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Text, create_engine, literal, select

from auditflow import convert
from gateway import store
from tests.support.postgres import database_of_kind

SOURCE = {
    "parameter": "path",
    "path": "données/ledger 2026.csv",
    "size_bytes": 12_345_678_901,
    "sha256": "ab" * 32,
    "modified_ns": 1_764_000_000_123_456_789,  # (past 2^53: a float would round it)
}
PLAN = [
    {"procedure": "vendor_totals", "parameters": {"note": "x" * 5_000, "nested": {"a": [1, 2]}}},
    {"procedure": "benford_first_digit", "parameters": {"path": SOURCE["path"]}, "sources": [SOURCE]},
    {"procedure": "vendor_totals", "parameters": {}},
]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_database_outlines_a_plan_in_order_with_its_sources_and_without_parameters(
    kind: str, tmp_path: Path
) -> None:
    text = json.dumps(PLAN, sort_keys=True)
    with database_of_kind(kind, tmp_path, "outline") as url:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                outline = conn.execute(select(store.PlanOutline(literal(text, Text())))).scalar_one()
                empty = conn.execute(select(store.PlanOutline(literal("[]", Text())))).scalar_one()
        finally:
            engine.dispose()
    assert json.loads(outline) == [
        {"procedure": "vendor_totals", "sources": []},
        {"procedure": "benford_first_digit", "sources": [SOURCE]},
        {"procedure": "vendor_totals", "sources": []},
    ]
    assert json.loads(empty) == []
    steps = convert.plan_outline(outline)
    assert steps == convert.plan_outline(text)
    assert not any(step.HasField("parameters") for step in steps)
    assert steps[1].sources[0].modified_at.nanos == 123_456_789
