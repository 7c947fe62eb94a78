"""How soon an open work queue shows a new plan: WatchWorkflows' live-update latency.

A real gateway and processor (subprocesses, SQLite). `--watchers` approvers keep a
WatchWorkflows stream open on "awaiting my approval" (gRPC, one client process); a submitter
then creates `--plans` plans one after the other. For each plan and watcher, the latency is the
time from the CreateWorkflow answer (the plan is committed then) to the change's arrival on
the watcher's stream. It prints p50, p99 and max for each number of watchers, and whether
every watcher saw every plan.

    python bench/collection.py                      # 1 and 100 watchers, 50 plans
    python bench/collection.py --watchers 1 500 --plans 100
    python bench/collection.py --quick              # 1 and 20 watchers, 10 plans
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc  # noqa: E402
from bench._loadgen import percentile  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.cluster import running_pair  # noqa: E402
from tests.support.grpc_helpers import step  # noqa: E402


async def _watcher(
    stub: wpb_grpc.WorkflowServiceStub,
    index: int,
    synced: asyncio.Event,
    ready: list[int],
    seen: dict[str, list[float]],
    expected: int,
) -> None:
    request = wpb.WatchWorkflowsRequest(awaiting_my_approval=True)
    stream = stub.WatchWorkflows(request, metadata=auth.bearer(f"approver-{index}", ("approver",)))
    got, listed = 0, False
    async for message in stream:
        if message.HasField("synced"):
            ready.append(index)
            listed = True
            synced.set()
        elif listed and message.HasField("change") and message.change.type == wpb.CHANGE_TYPE_ADDED:
            seen.setdefault(message.change.workflow.workflow_id, []).append(time.perf_counter())
            got += 1
            if got == expected:
                stream.cancel()
                return


async def measure(target: str, watchers: int, plans: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        ready: list[int] = []
        synced = asyncio.Event()
        seen: dict[str, list[float]] = {}
        tasks = [asyncio.create_task(_watcher(stub, i, synced, ready, seen, plans)) for i in range(watchers)]
        while len(ready) < watchers:
            synced.clear()
            waiting = asyncio.ensure_future(synced.wait())
            done, _ = await asyncio.wait([*tasks, waiting], timeout=60, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            for task in done & set(tasks):
                task.result()  # a watcher that ended before the list says why
            if not done:
                raise TimeoutError(f"{len(ready)} of {watchers} watchers synced in 60 s")
        answered: dict[str, float] = {}
        submitter = auth.bearer("bench-submitter", ("submitter",))
        for n in range(plans):
            request = wpb.CreateWorkflowRequest(title=f"queued {n}", plan=[step("test_noop")])
            created = await stub.CreateWorkflow(request, metadata=submitter)
            answered[created.workflow.workflow_id] = time.perf_counter()
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    latencies = [(t - answered[w]) * 1000 for w, times in seen.items() for t in times]
    return {
        "watchers": watchers,
        "plans": plans,
        "deliveries": len(latencies),
        "complete": len(latencies) == watchers * plans,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, nargs="+", default=[1, 100], help="open queues (default 1 100)")
    parser.add_argument("--plans", type=int, default=50, help="plans created (default 50)")
    parser.add_argument("--quick", action="store_true", help="1 and 20 watchers, 10 plans")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    counts, plans = ([1, 20], 10) if args.quick else (args.watchers, args.plans)
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="auditflow-collection-") as tmp,
        running_pair(Path(tmp) / "pair") as pair,
    ):
        for watchers in counts:
            results.append(asyncio.run(measure(pair.gateway.target, watchers, plans)))
    if args.json:
        print(json.dumps({"collection": results}))
        return 0
    print("WatchWorkflows live update: CreateWorkflow answered -> change on each open queue")
    for r in results:
        print(
            f"  {r['watchers']:>5} watchers x {r['plans']} plans: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"max {r['max_ms']} ms, {'every change seen' if r['complete'] else 'CHANGES MISSING'}"
        )
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
