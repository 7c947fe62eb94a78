"""A submitter's plans awaiting approval (the quota, checked in the writer on every new plan)
are counted from an index alone. Counted from the rows, SQLite walked each stored plan to
reach the status (a large plan is kept inline, before it): 6 MB read for a principal at its
quota of 64 KiB plans, on every plan it submitted, while every other write waited."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from auditflow import migrations
from auditflow.principal import Principal
from gateway import quota
from tests.support.postgres import database_of_kind


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_pending_plans_of_a_submitter_are_counted_from_an_index(kind: str, tmp_path: Path) -> None:
    with database_of_kind(kind, tmp_path, "pending") as url:
        engine = create_engine(url)
        try:
            migrations.upgrade(engine, "gateway:migrations")
            with engine.connect() as conn:
                if kind == "postgresql":  # (an empty table: without this, a scan costs less)
                    conn.execute(text("SET enable_seqscan = off"))
                statement = quota.PENDING.params(b_key="alice").compile(conn, compile_kwargs={"literal_binds": True})
                explain = "EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN "
                explained = conn.exec_driver_sql(explain + str(statement)).all()
                count = quota.pending(conn, Principal("alice", frozenset(), via="test"))
        finally:
            engine.dispose()
    plan = " ".join(str(part) for row in explained for part in row)
    assert "ix_workflows_creator_status" in plan, plan
    assert ("COVERING INDEX" in plan) if kind == "sqlite" else ("Index Only Scan" in plan), plan
    assert count == 0
