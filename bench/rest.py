"""REST Approve through the gateway, next to the seed's design, measured in the same run.

The seed served its UI from a FastAPI app that kept the workflows in a dict and processed an
approval with `asyncio.create_task` in the same process: nothing durable, nothing to
dispatch. This starts both:
- the real pair (processor + gateway subprocesses, SQLite with synchronous=FULL, their
  defaults), the gateway serving REST on a free port: `POST /workflows/{id}/approve` goes
  REST -> gRPC (same process) -> durable decision + outbox -> processor;
- the seed's design: a minimal FastAPI app under uvicorn (its defaults), with an in-memory
  dict of workflows and `asyncio.create_task` background processing, answering the same JSON;
and prints Approve latency p50/p99 and requests/s at 1 and at 64 concurrent callers for each,
and the ratio.

    python bench/rest.py            # defaults below
    python bench/rest.py --quick    # a smaller run, for a smoke test

The callers (aiohttp) run in `--client-processes` separate processes so that the client is
not the bottleneck; both servers are loaded the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI, HTTPException, Request  # the seed's stack (FastAPI + uvicorn), for the comparison

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from bench._loadgen import run_load  # noqa: E402
from tests.support.cluster import Pair, wait_http  # noqa: E402
from tests.support.grpc_helpers import free_port  # noqa: E402

SAMPLE = ROOT / "auditflow" / "samples" / "ledger.csv"
CREATOR = {"X-Auditflow-User": "bench-creator"}
APPROVER = {"X-Auditflow-User": "bench-approver"}  # not the creator: separation of duties


def seed_app() -> Any:
    """FastAPI, a dict of workflows, `asyncio.create_task` for the background processing."""
    app = FastAPI()
    workflows: dict[str, dict[str, Any]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def now() -> str:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")

    async def process(workflow_id: str) -> None:
        workflow = workflows[workflow_id]
        workflow.update(status="WORKFLOW_STATUS_RUNNING", is_processing=True, background_processing=True)
        total = len(workflow["plan"])
        for done in range(1, total + 1):
            await asyncio.sleep(1.0)  # one cycle a second, as the processor's default cycle delay
            workflow["progress"] = {"done": done, "total": total}
            workflow["updated_at"] = workflow["last_update"] = now()
        workflow.update(status="WORKFLOW_STATUS_COMPLETED", is_processing=False, is_completed=True)

    @app.post("/workflows")
    async def create(request: Request) -> dict[str, Any]:
        body = await request.json()
        workflow_id = f"wf_{uuid.uuid4().hex}"
        stamp = now()
        workflows[workflow_id] = {
            "workflow_id": workflow_id,
            "title": body.get("title", ""),
            "plan": body.get("plan", []),
            "created_by": request.headers.get("x-auditflow-user", "anonymous"),
            "status": "WORKFLOW_STATUS_AWAITING_APPROVAL",
            "progress": {"done": 0, "total": len(body.get("plan", []))},
            "is_processing": False,
            "is_completed": False,
            "background_processing": False,
            "created_at": stamp,
            "updated_at": stamp,
            "last_update": stamp,
        }
        return {"workflow": workflows[workflow_id]}

    @app.post("/workflows/{workflow_id}/approve")
    async def approve(workflow_id: str, request: Request) -> dict[str, Any]:
        workflow = workflows.get(workflow_id)
        if workflow is None:
            raise HTTPException(404, "workflow not found")
        if workflow["status"] != "WORKFLOW_STATUS_AWAITING_APPROVAL":
            raise HTTPException(409, "already decided")
        workflow.update(
            status="WORKFLOW_STATUS_APPROVED",
            decided_by=request.headers.get("x-auditflow-user", "anonymous"),
            updated_at=now(),
            is_processing=True,
            background_processing=True,
        )
        task = asyncio.create_task(process(workflow_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return {
            "status": "success",
            "workflow_id": workflow_id,
            "approved": True,
            "immediate_response": True,
            "background_processing_started": True,
            "processing_message": "Workflow approved; processing in the background",
            "workflow_status": workflow["status"],
            "updated_at": workflow["updated_at"],
            "workflow": workflow,
        }

    return app


def serve_seed(port: int) -> None:
    import uvicorn

    uvicorn.run(seed_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def running_seed() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-seed", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/openapi.json")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --- the real pair ----------------------------------------------------------------------


@contextlib.contextmanager
def running_pair(workdir: Path) -> Iterator[str]:
    """Processor + gateway subprocesses with their defaults; REST on a free port."""
    workdir.mkdir(parents=True)
    pair = Pair(workdir, log_level="WARNING").start()
    url = f"http://127.0.0.1:{pair.gateway.rest_port}"
    try:
        wait_http(f"{url}/openapi.json")
        yield url
    finally:
        pair.stop()


# --- load (runs in client processes) ----------------------------------------------------


async def _load(url: str, ids: list[str], concurrency: int) -> tuple[list[float], float, float]:
    latencies: list[float] = []
    queue = list(reversed(ids))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as http:

        async def caller() -> None:
            while queue:
                workflow_id = queue.pop()
                started = time.perf_counter()
                async with http.post(f"/workflows/{workflow_id}/approve", json={}, headers=APPROVER) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"approve answered {response.status}: {body[:200]!r}")
                latencies.append(time.perf_counter() - started)

        first = time.time()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        last = time.time()
    return latencies, first, last


def _client(args: tuple[str, list[str], int]) -> tuple[list[float], float, float]:
    return asyncio.run(_load(*args))


async def create_many(url: str, count: int) -> list[str]:
    body = {"title": "bench", "plan": [{"procedure": "ledger_summary", "parameters": {"path": str(SAMPLE)}}]}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(url) as http:

        async def one() -> str:
            async with sem, http.post("/workflows", json=body, headers=CREATOR) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"create answered {response.status}: {answer}")
                return str(answer["workflow"]["workflow_id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    run_load(_client, (url,), asyncio.run(create_many(url, 200)), 8, 1)  # warm up
    for callers, calls in ((1, args.calls_1), (64, args.calls_64)):
        processes = 1 if callers == 1 else args.client_processes
        ids = asyncio.run(create_many(url, calls))
        figures[f"approve@{callers}"] = run_load(_client, (url,), ids, callers, processes)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls-1", type=int, default=1000, help="approvals at 1 caller")
    parser.add_argument("--calls-64", type=int, default=10000, help="approvals at 64 callers")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve-seed", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_seed:
        serve_seed(args.serve_seed)
        return
    if args.quick:
        args.calls_1, args.calls_64 = 100, 1000
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="auditflow-bench-rest-") as tmp:
        with running_seed() as url:
            figures["seed (FastAPI, in-memory)"] = measure(url, args)
        with running_pair(Path(tmp) / "pair") as url:
            figures["auditflow REST (pair)"] = measure(url, args)
    report(figures, as_json=args.json)


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    print(f"\n{'POST /workflows/{id}/approve':38}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, load in figures.items():
        for key in ("approve@1", "approve@64"):
            f = load[key]
            print(f"  {name + ' ' + key:36}{f['p50_ms']:10.2f}{f['p99_ms']:10.2f}{f['per_second']:10.0f}")
    seed, ours = figures["seed (FastAPI, in-memory)"], figures["auditflow REST (pair)"]
    for key in ("approve@1", "approve@64"):
        p50 = ours[key]["p50_ms"] / seed[key]["p50_ms"]
        p99 = ours[key]["p99_ms"] / seed[key]["p99_ms"]
        rate = ours[key]["per_second"] / seed[key]["per_second"]
        print(f"  auditflow/seed {key}: p50 {p50:.2f}x, p99 {p99:.2f}x, req/s {rate:.2f}x")


if __name__ == "__main__":
    main()
