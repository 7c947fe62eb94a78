"""The gateway's database writer, alone: does one principal storing its largest plans hold up
another principal's write?

In one process, on real SQLite files (WAL, synchronous=FULL) with the gateway's schema, one
principal stores 64 KiB plans (four steps of 16 KB parameters, the largest the default limits
allow) from `--flood` concurrent callers, as fast as the writer takes them, while three others
each store a small plan twice a second and time it. Rounds alternate between a writer with
the default `--write-share` (64 KiB: the principals in turn) and one without (first come,
first served), each on a database of its own, so that both see the machine alike.

Reported: the three people's write latency (p50, p99) with and without the share, alone and
beside the flood, and how many plans the flood stored.

    python bench/writer_share.py                # 3 rounds of 8 s phases
    python bench/writer_share.py --quick        # 1 round of 2 s phases, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow import principal  # noqa: E402
from auditflow.db import Database  # noqa: E402
from auditflow.fairwrites import DEFAULT_SHARE, FairWrites  # noqa: E402
from auditflow.principal import Principal  # noqa: E402
from bench._loadgen import percentile  # noqa: E402
from gateway import store, workflows  # noqa: E402

PEOPLE = ("alice", "bob", "carol")
PACE = 0.5  # seconds between two writes of one person
BIG = json.dumps([{"procedure": "test_noop", "parameters": {"note": "x" * 16_000}} for _ in range(4)])
SMALL = json.dumps([{"procedure": "test_noop", "parameters": {}}])


def new_plan(name: str, plan_json: str) -> Callable[[Any], Any]:
    who = Principal(name, frozenset({"submitter"}), via="bench")
    new = workflows.NewWorkflow("bench", plan_json, 1, "plan", 15, who, "")
    return lambda conn: workflows.create(conn, new)


async def as_(name: str, body: Callable[[], Any]) -> Any:
    principal.set_current(Principal(name, frozenset({"submitter"}), via="bench"))
    return await body()


async def person(db: Database, name: str, until: float, out: list[float]) -> None:
    start = time.monotonic()
    for n in itertools.count():
        due = start + n * PACE
        if due >= until:
            return
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        sent = time.perf_counter()
        await db.write(new_plan(name, SMALL))
        out.append(time.perf_counter() - sent)


async def flood(db: Database, stop: asyncio.Event, stored: list[int]) -> None:
    while not stop.is_set():
        await db.write(new_plan("flood", BIG), cost=len(BIG))
        stored[0] += 1


async def phase(db: Database, seconds: float, flooders: int) -> tuple[list[float], int]:
    until = time.monotonic() + seconds
    latencies: list[float] = []
    stop, stored = asyncio.Event(), [0]
    floods = [asyncio.create_task(as_("flood", lambda: flood(db, stop, stored))) for _ in range(flooders)]
    await asyncio.gather(*(as_(name, lambda n=name: person(db, n, until, latencies)) for name in PEOPLE))  # type: ignore[misc]
    stop.set()
    await asyncio.gather(*floods)
    return latencies, stored[0]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {}
    stored: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="auditflow-writer-") as tmp:
        dbs = {}
        for label, share in (("share", DEFAULT_SHARE), ("first come", 0)):
            db = Database(
                f"sqlite:///{tmp}/{share}.db", store.metadata, migrations="gateway:migrations", writes=FairWrites(share)
            )
            await asyncio.to_thread(db.start)
            dbs[label] = db
        for _ in range(args.rounds):  # alternating, so that both see the machine alike
            for label, db in dbs.items():
                for loaded in (False, True):
                    latencies, count = await phase(db, args.seconds, args.flood if loaded else 0)
                    key = f"{label}, {'beside the flood' if loaded else 'alone'}"
                    results.setdefault(key, {"all": []})["all"].extend(latencies)
                    stored[label] = stored.get(label, 0) + count
        for db in dbs.values():
            await asyncio.to_thread(db.close)
    figures = summarise({key: v["all"] for key, v in results.items()})
    figures["plans_stored_by_the_flood"] = stored
    return figures


def summarise(latencies: dict[str, list[float]]) -> dict[str, Any]:
    """Writes, p50 and p99 (ms) of each phase's latencies (s)."""
    return {
        key: {"writes": len(v), "p50_ms": percentile(v, 0.5) * 1000, "p99_ms": percentile(v, 0.99) * 1000}
        for key, v in latencies.items()
    }


def arguments(doc: str | None, each: str) -> argparse.Namespace:
    """The command line of a writer benchmark (`each`: what every round runs)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds, each with {each}")
    parser.add_argument("--flood", type=int, default=4, help="the flood's concurrent callers")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s phases (smoke test)")
    parser.add_argument("--json", action="store_true", help="(the figures are always printed as JSON)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    return args


def main() -> None:
    args = arguments(__doc__, "both writers")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
