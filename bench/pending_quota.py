"""What a new plan costs the database writer when its submitter already has plans awaiting
approval: the quota's count, which runs in the writer's transaction before every new plan.

On a real SQLite file with the gateway's schema, one principal has `--pending` plans of
64 KiB awaiting approval (four steps of 16 KB parameters, the largest the default limits
allow). The count is timed two ways on the same database, alternating: as the gateway runs
it (from the index on the creator and the status), and as it ran before that index, through
the status index and the rows (`INDEXED BY ix_workflows_status`: SQLite keeps a large plan
inline in its row, before the status, and walks it to reach the status). Then the whole new
plan's write (count, insert, revision; no commit) is timed as the gateway runs it.

Reported for each number of pending plans: p50 of each count and their ratio, and the p50 of
a new plan's write.

    python bench/pending_quota.py                    # 10, 100 and 1000 plans awaiting approval
    python bench/pending_quota.py --pending 100      # one size
    python bench/pending_quota.py --quick --json     # 10 and 100, fewer runs, as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from sqlalchemy import Connection, create_engine, text  # noqa: E402

from auditflow import migrations  # noqa: E402
from auditflow.principal import Principal  # noqa: E402
from auditflow.v1 import workflow_pb2 as pb  # noqa: E402
from gateway import quota, workflows  # noqa: E402

PLAN = json.dumps([{"procedure": "test_noop", "parameters": {"note": "x" * 16_000}} for _ in range(4)])
SUBMITTER = Principal("flood", frozenset({"submitter"}), via="bench")
UNLIMITED = quota.PlanLimits(max_pending_plans=0)
# The count as it ran before the creator's index: through the status index, then each row
# (quota.PENDING with SQLite's INDEXED BY, which SQLAlchemy's hints do not render for SQLite).
THROUGH_ROWS = text(
    "SELECT count(*) FROM workflows INDEXED BY ix_workflows_status WHERE status = :status AND created_by_key = :key"
)


def new_plan() -> workflows.NewWorkflow:
    return workflows.NewWorkflow("flood", PLAN, 4, "plan", 10, SUBMITTER, "")


def timed(conn: Connection, work: Callable[[], Any], repeat: int) -> float:
    """The median seconds of `work`, each run in a transaction rolled back afterwards."""
    took = []
    for _ in range(repeat):
        transaction = conn.begin()
        started = time.perf_counter()
        work()
        took.append(time.perf_counter() - started)
        transaction.rollback()
    return statistics.median(took)


def measure(pending: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="auditflow-pending-") as tmp:
        engine = create_engine(f"sqlite:///{tmp}/gateway.db")
        try:
            migrations.upgrade(engine, "gateway:migrations")
            with engine.begin() as conn:
                for _ in range(pending):
                    workflows.create(conn, new_plan())
            with engine.connect() as conn:
                count = quota.pending(conn, SUBMITTER)
                assert count == pending, (count, pending)
                conn.rollback()
                awaiting = {"status": pb.WORKFLOW_STATUS_AWAITING_APPROVAL, "key": SUBMITTER.key}
                by_index = by_rows = 0.0
                for _ in range(3):  # (alternating, so that both see the machine alike)
                    by_index += timed(conn, lambda: quota.pending(conn, SUBMITTER), repeat)
                    by_rows += timed(conn, lambda: conn.execute(THROUGH_ROWS, awaiting).scalar_one(), repeat)
                write = timed(conn, lambda: quota.create(conn, new_plan(), UNLIMITED), repeat)
        finally:
            engine.dispose()
    return {
        "pending": pending,
        "count_from_index_ms": by_index / 3 * 1000,
        "count_through_rows_ms": by_rows / 3 * 1000,
        "ratio": by_rows / by_index,
        "new_plan_write_ms": write * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, action="append", help="plans awaiting approval (repeatable)")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs of each measurement")
    parser.add_argument("--quick", action="store_true", help="10 and 100 plans, 5 runs each (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.pending, args.repeat = args.pending or [10, 100], 5
    results = [measure(pending, args.repeat) for pending in args.pending or [10, 100, 1000]]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for figures in results:
        pending = figures["pending"]
        print(
            f"{pending:>5} plans awaiting approval: count {figures['count_from_index_ms']:.3f} ms from the index, "
            f"{figures['count_through_rows_ms']:.3f} ms through the rows ({figures['ratio']:.1f}x); "
            f"a new plan's write {figures['new_plan_write_ms']:.2f} ms"
        )


if __name__ == "__main__":
    main()
