"""Commit latency beside a principal storing large plans: SQLite's log checkpointed inside
the commits (SQLite's default) or by the Database's checkpoint thread.

In one process, on real SQLite files (WAL, synchronous=FULL) with the gateway's schema and
writer, one principal stores 64 KiB plans from `--flood` concurrent callers as fast as the
writer takes them while three others each store a small plan twice a second and time it
(the load of `bench/writer_share.py`). Rounds alternate between two databases: one as the
service runs it (commits never checkpoint; `auditflow/checkpoint.py` does it on a thread) and
one whose commits checkpoint inline once the log passes 1,000 pages (SQLite's default, no
thread), so that both see the machine alike.

Reported: the three people's write latency (p50, p99) alone and beside the flood, how many
plans the flood stored, and the checkpoints the thread ran.

    python bench/checkpoints.py                # 3 rounds of 8 s phases
    python bench/checkpoints.py --quick        # 1 round of 2 s phases, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.db import Database  # noqa: E402
from auditflow.fairwrites import DEFAULT_SHARE, FairWrites  # noqa: E402
from bench.writer_share import arguments, phase, summarise  # noqa: E402
from gateway import store  # noqa: E402

SQLITE_DEFAULT_PAGES = 1000


def _inline_checkpoints(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_DEFAULT_PAGES}")


def database(path: str, *, inline: bool) -> Database:
    db = Database(
        f"sqlite:///{path}", store.metadata, migrations="gateway:migrations", writes=FairWrites(DEFAULT_SHARE)
    )
    if inline:
        db.checkpointer = None
        event.listen(db.write_engine, "connect", _inline_checkpoints)  # (after the service's own pragmas)
    return db


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {}
    stored: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="auditflow-checkpoints-") as tmp:
        dbs = {
            "thread": database(f"{tmp}/thread.db", inline=False),
            "inline": database(f"{tmp}/inline.db", inline=True),
        }
        for db in dbs.values():
            await asyncio.to_thread(db.start)
        for _ in range(args.rounds):  # alternating, so that both see the machine alike
            for label, db in dbs.items():
                for loaded in (False, True):
                    took, count = await phase(db, args.seconds, args.flood if loaded else 0)
                    latencies.setdefault(f"{label}, {'beside the flood' if loaded else 'alone'}", []).extend(took)
                    stored[label] = stored.get(label, 0) + count
        checkpoints = dbs["thread"].checkpointer.checkpoints if dbs["thread"].checkpointer else 0
        for db in dbs.values():
            await asyncio.to_thread(db.close)
    figures = summarise(latencies)
    figures["plans_stored_by_the_flood"] = stored
    figures["checkpoints_by_the_thread"] = checkpoints
    figures["load_average"] = list(os.getloadavg())
    return figures


def main() -> None:
    args = arguments(__doc__, "both databases")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
