"""Approve's own code without gRPC: how much of the gateway's CPU per approval is ours.

Builds a real gateway (`gateway.server.create_server`, SQLite with synchronous=FULL, its
processor unreachable so that the outbox only parks rows, as in the "gateway alone" phase of
`bench/approve.py`), then calls `WorkflowService.Approve` directly from concurrent tasks on
the same event loop and serializes each answer, as gRPC would. What it prints is the CPU
time per approval of the handler, the writer thread (statements and group commit, fsync
included) and the answer: the part of `bench/approve.py`'s "gw CPU us/call" that is not
gRPC's or asyncio's per-call machinery.

    python bench/handler.py            # 12,800 approvals, 64 concurrent callers
    python bench/handler.py --quick    # 1,280
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow import principal  # noqa: E402
from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from bench.approve import SAMPLE  # noqa: E402
from gateway import workflows  # noqa: E402
from gateway.server import Gateway, create_server  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.grpc_helpers import free_port  # noqa: E402

PLAN = json.dumps([{"parameters": {"path": str(SAMPLE)}, "procedure": "ledger_summary"}])


async def create(gateway: Gateway, count: int, concurrency: int) -> list[tuple[str, str]]:
    """(workflow id, etag) of `count` new workflows."""
    creator = principal.Principal("alice", frozenset({"submitter"}), via="bench")
    new = workflows.NewWorkflow("bench", PLAN, 1, "plan", 15, creator, "")
    ids: list[tuple[str, str]] = []
    for _ in range(count // concurrency):
        batch = [gateway.db.write(lambda c: workflows.create(c, new)) for _ in range(concurrency)]
        ids.extend((o.record.workflow_id, o.record.etag) for o in await asyncio.gather(*batch))
    return ids


async def approve_all(gateway: Gateway, ids: list[tuple[str, str]], concurrency: int) -> dict[str, Any]:
    queue = list(reversed(ids))

    async def caller() -> None:
        # What the interceptor does once it has authenticated the caller.
        principal.set_current(principal.Principal("bench-approver", frozenset({"approver"}), via="bench"))
        while queue:
            workflow_id, etag = queue.pop()  # an approval bound to the plan, as the CLI and the page send
            answer = await gateway.api.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag))
            answer.SerializeToString()

    commits, cpu, wall = gateway.db.commits, time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "approvals": len(ids),
        "callers": concurrency,
        "cpu_us_per_approval": cpu / len(ids) * 1e6,
        "approvals_per_second": len(ids) / wall,
        "approvals_per_commit": len(ids) / (gateway.db.commits - commits),
    }


async def measure(count: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="auditflow-bench-") as tmp:
        settings = Settings(
            **auth.gateway_settings(),
            database_url=f"sqlite:///{Path(tmp) / 'gateway.db'}",
            processor_target=f"127.0.0.1:{free_port()}",  # nobody listens: the outbox parks rows
            rest_port=None,
            log_level="ERROR",
        )
        gateway = create_server("127.0.0.1:0", settings)
        await gateway.start()
        try:
            ids = await create(gateway, count, concurrency)
            return await approve_all(gateway, ids, concurrency)
        finally:
            await gateway.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--approvals", type=int, default=12_800)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the outbox warns that the processor is away: expected
    if args.quick:
        args.approvals = 1_280
    figures = asyncio.run(measure(args.approvals, args.callers))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"Approve's own code, no gRPC, {figures['callers']} concurrent callers: "
        f"{figures['cpu_us_per_approval']:.0f} us CPU per approval "
        f"({figures['approvals_per_second']:.0f}/s, {figures['approvals_per_commit']:.0f} approvals per commit)"
    )


if __name__ == "__main__":
    main()
