"""REST next to gRPC on the same gateway, and next to the in-memory design, in one run.

The gateway serves the API over HTTP/JSON from the same process as gRPC: a REST request is
authenticated and authorized like a gRPC call, then handed to the application layer
(`gateway.api`) directly, the same code the gRPC servicer calls (no gRPC loopback). This
measures what the HTTP side costs against gRPC on the same pair, and keeps the old design
beside them for scale. It starts:
- the real pair (processor + gateway subprocesses, SQLite with synchronous=FULL, their
  defaults), the gateway serving REST on a free port, and loads it with:
  - Approve: `POST /workflows/{id}/approve` against `WorkflowService.Approve`, each call on
    its own freshly created workflow (a durable decision + outbox, then dispatch: the
    processor runs every approved plan meanwhile, on the same cores);
  - GetStatus: `GET /workflows/{id}/status/live` (the read the web UI polls) against
    `WorkflowService.GetStatus`, measured first, on the idle pair (warmed up, then left to
    finish the warm-up's runs), over workflows awaiting approval: the read alone;
  each at 1 and at 64 concurrent callers, authenticated as in production: a submitter's and
  an approver's bearer JWTs (`Authorization: Bearer ...` on both transports);
- the in-memory design the UI was first served from: a minimal FastAPI app under uvicorn (its
  defaults) keeping the workflows in a dict and "processing" an approval with
  `asyncio.create_task` in the same process: nothing durable, nothing dispatched. Approve only.

It prints p50/p99 latency, requests per second and the server's CPU per call (from /proc)
for each, the REST/gRPC rate ratios, and REST against the in-memory design. The pair's
Approve CPU per call includes the gateway's part in running the approved plans (relay, feed,
mirror) that falls in the load's window: at 1 caller, nearly all of it.
Targets: REST Approve at 64 callers >= 80 % of gRPC Approve's rate in the same run; REST
GetStatus at 64 callers >= 80 % of gRPC GetStatus's.

REST and gRPC are loaded in alternating halves (gRPC, REST, REST, gRPC), each figure over its
two halves: the processor works through the approved runs' backlog while Approve is loaded,
more and more of it, and the alternation gives both transports the same share of it.

    python bench/rest.py            # defaults below
    python bench/rest.py --quick    # a smaller run, for a smoke test

The callers (aiohttp for REST, grpc.aio for gRPC) run in `--client-processes` separate
processes so that the client is not the bottleneck; every load is driven the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from fastapi import FastAPI, HTTPException, Request  # the in-memory design's stack (FastAPI + uvicorn)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc  # noqa: E402
from bench import approve as grpc_bench  # noqa: E402
from bench._loadgen import Client, collect, run_load, summary  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.cluster import running_pair, wait_http  # noqa: E402
from tests.support.grpc_helpers import free_port  # noqa: E402

SAMPLE = ROOT / "auditflow" / "samples" / "ledger.csv"
IN_MEMORY = "in-memory design (FastAPI)"
REST, GRPC = "auditflow REST (pair)", "auditflow gRPC (pair)"
TARGET = 0.80  # REST's rate at 64 callers, as a share of gRPC's
Headers = dict[str, str]
Metadata = tuple[tuple[str, str], ...]
Load = tuple[Client, tuple[Any, ...], list[str]]  # a client function, its arguments, the workflow ids


def _credentials() -> tuple[Headers, Headers]:
    """The creator's and the approver's HTTP headers (not the same principal: separation of
    duties). JWTs of the test issuer, which the benchmark's gateway trusts."""
    return auth.headers("bench-creator", ("submitter",)), auth.headers("bench-approver", ("approver",))


def in_memory_app() -> Any:
    """FastAPI, a dict of workflows, `asyncio.create_task` for the background processing. It
    authenticates no one: it recorded the name in a typed-in header, which the benchmark's
    callers no longer send (they send their bearer tokens, which it ignores)."""
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


def serve_in_memory(port: int) -> None:
    import uvicorn

    uvicorn.run(in_memory_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def running_in_memory() -> Iterator[tuple[str, int]]:
    """The in-memory design in a subprocess: its URL and process id."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-in-memory", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/openapi.json")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --- the real pair ----------------------------------------------------------------------


# --- REST load (runs in client processes) -----------------------------------------------


async def _load(
    url: str, kind: str, headers: Headers, ids: list[str], concurrency: int
) -> tuple[list[float], float, float]:
    """`kind` "approve" (POST .../approve, 200) or "status" (GET .../status/live: 202 while
    the run is processing, 200 once done)."""
    latencies: list[float] = []
    queue = list(reversed(ids))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as http:

        async def caller() -> None:
            while queue:
                workflow_id, _, etag = queue.pop().partition("@")  # (the in-memory design keeps no etag)
                started = time.perf_counter()
                if kind == "approve":
                    request = http.post(f"/workflows/{workflow_id}/approve", json={"etag": etag} if etag else {})
                else:
                    request = http.get(f"/workflows/{workflow_id}/status/live")
                async with request as response:
                    body = await response.read()
                    if response.status not in (200, 202):
                        raise RuntimeError(f"{kind} answered {response.status}: {body[:200]!r}")
                latencies.append(time.perf_counter() - started)

        first = time.time()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        last = time.time()
    return latencies, first, last


def _client(args: tuple[str, str, Headers, list[str], int]) -> tuple[list[float], float, float]:
    return asyncio.run(_load(*args))


async def create_many(url: str, count: int, headers: Headers) -> list[str]:
    """Workflows to approve, created over REST (the in-memory design has no gRPC)."""
    body = {"title": "bench", "plan": [{"procedure": "ledger_summary", "parameters": {"path": str(SAMPLE)}}]}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(url, headers=headers) as http:

        async def one() -> str:
            async with sem, http.post("/workflows", json=body) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"create answered {response.status}: {answer}")
                return str(answer["workflow"]["workflow_id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


# --- measuring ------------------------------------------------------------------------------


def timed(
    pid: int, client: Client, head: tuple[Any, ...], ids: list[str], callers: int, processes: int
) -> dict[str, Any]:
    """One load, with the server process's CPU per call (less noisy than the rate on a shared
    machine: it does not depend on who else got the cores)."""
    before = _cpu_seconds(pid)
    latencies, span = collect(client, head, ids, callers, processes)
    return {"latencies": latencies, "span": span, "cpu": _cpu_seconds(pid) - before}


def alternating(pid: int, loads: dict[str, Load], callers: int, processes: int) -> dict[str, dict[str, float]]:
    """Two loads (name: client, head, ids), in halves: A, B, B, A. Each figure is over its two
    halves, so that a drift of the background (the processor's backlog) is shared."""
    (a, load_a), (b, load_b) = loads.items()
    parts: dict[str, list[dict[str, Any]]] = {a: [], b: []}
    for name, (client, head, ids), half in ((a, load_a, 0), (b, load_b, 0), (b, load_b, 1), (a, load_a, 1)):
        mid = len(ids) // 2
        parts[name].append(timed(pid, client, head, ids[:mid] if half == 0 else ids[mid:], callers, processes))
    return {name: _merged(done) for name, done in parts.items()}


def _merged(parts: list[dict[str, Any]]) -> dict[str, float]:
    latencies = [x for p in parts for x in p["latencies"]]
    figures = summary(latencies, sum(p["span"] for p in parts))
    figures["server_cpu_us_per_call"] = sum(p["cpu"] for p in parts) / len(latencies) * 1e6
    return figures


def measure_in_memory(args: argparse.Namespace) -> dict[str, Any]:
    creator, approver = _credentials()
    figures: dict[str, Any] = {}
    with running_in_memory() as (url, pid):
        run_load(_client, (url, "approve", approver), asyncio.run(create_many(url, 200, creator)), 8, 1)  # warm up
        for callers, calls in ((1, args.calls_1), (64, args.calls_64)):
            ids = asyncio.run(create_many(url, calls, creator))
            load = timed(pid, _client, (url, "approve", approver), ids, callers, _processes(callers, args))
            figures[f"approve@{callers}"] = _merged([load])
    return figures


@dataclass(frozen=True)
class PairLoads:
    """How to load one pair over each transport, as the approver."""

    url: str
    target: str
    pid: int
    creator: Metadata = field(default_factory=lambda: grpc_bench.jwt_callers().creator)
    approver: Metadata = field(default_factory=lambda: grpc_bench.jwt_callers().approver)
    approver_headers: Headers = field(default_factory=lambda: _credentials()[1])

    def both(self, kind: str, rest_ids: list[str], grpc_ids: list[str]) -> dict[str, Load]:
        return {
            GRPC: (grpc_bench._client, (self.target, kind, self.approver), grpc_ids),
            REST: (_client, (self.url, kind, self.approver_headers), rest_ids),
        }

    def create(self, count: int) -> list[str]:
        return asyncio.run(grpc_bench.create_many(self.target, count, self.creator))


def measure_pair(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """REST and gRPC on one pair: GetStatus on an idle pair first (its figures are the reads'
    alone), then Approve, where each approved run is also executed meanwhile."""
    figures: dict[str, Any] = {REST: {}, GRPC: {}}
    with running_pair(workdir) as pair:
        loads = PairLoads(f"http://127.0.0.1:{pair.gateway.rest_port}", pair.gateway.target, pair.gateway.pid)
        warm_up(loads)
        awaiting = loads.create(args.calls_64)  # GetStatus reads them as the UI would, 200 (not processing)
        for callers, calls in ((1, args.calls_1), (64, args.calls_64)):
            status = loads.both("status", awaiting[:calls], awaiting[:calls])
            _record(figures, f"status@{callers}", alternating(loads.pid, status, callers, _processes(callers, args)))
        for callers, calls in ((1, args.calls_1), (64, args.calls_64)):
            approve = loads.both("approve", loads.create(calls), loads.create(calls))
            _record(figures, f"approve@{callers}", alternating(loads.pid, approve, callers, _processes(callers, args)))
    return figures


def _processes(callers: int, args: argparse.Namespace) -> int:
    return 1 if callers == 1 else args.client_processes


def _record(figures: dict[str, Any], key: str, loads: dict[str, dict[str, float]]) -> None:
    for name, load in loads.items():
        figures[name][key] = load


def warm_up(loads: PairLoads) -> None:
    """Both transports' paths once through, then wait until the pair is idle again."""
    ids = loads.create(200)
    for client, head, part in loads.both("approve", ids[:100], ids[100:]).values():
        run_load(client, head, part, 8, 1)
    for client, head, part in loads.both("status", ids, ids).values():
        run_load(client, head, part, 8, 1)
    asyncio.run(wait_idle(loads))


async def wait_idle(loads: PairLoads, timeout: float = 120.0) -> None:
    """Until no approved run is unfinished (the processor has no backlog)."""
    unfinished = wpb.ListWorkflowsRequest(page_size=1, statuses=grpc_bench.UNFINISHED)
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(loads.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        # Polling another process over its API: there is no local event to wait on.
        while (await stub.ListWorkflows(unfinished, metadata=loads.approver)).workflows:
            if time.monotonic() > deadline:
                raise TimeoutError("the processor did not work through the warm-up's runs")
            await asyncio.sleep(0.1)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls-1", type=int, default=1000, help="calls per load at 1 caller")
    parser.add_argument("--calls-64", type=int, default=10000, help="calls per load at 64 callers")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve-in-memory", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_in_memory:
        serve_in_memory(args.serve_in_memory)
        return
    if args.quick:
        args.calls_1, args.calls_64 = 100, 1000
    figures: dict[str, Any] = {"load_average": list(os.getloadavg())}
    figures[IN_MEMORY] = measure_in_memory(args)
    with tempfile.TemporaryDirectory(prefix="auditflow-bench-rest-") as tmp:
        figures.update(measure_pair(Path(tmp) / "pair", args))
    figures["rest_over_grpc"] = {
        key: figures[REST][key]["per_second"] / figures[GRPC][key]["per_second"] for key in KEYS
    }
    figures["load_average_after"] = list(os.getloadavg())
    report(figures, as_json=args.json)


KEYS = ("approve@1", "approve@64", "status@1", "status@64")


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    before, after = (" ".join(f"{x:.2f}" for x in figures[k]) for k in ("load_average", "load_average_after"))
    print(f"\n(load average before: {before}; after: {after})")
    print(f"{'':44}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'CPU us/call':>13}")
    rows = [(IN_MEMORY, "approve@1"), (IN_MEMORY, "approve@64")] + [(n, k) for k in KEYS for n in (REST, GRPC)]
    for name, key in rows:
        f = figures[name][key]
        print(
            f"  {name + ' ' + key:42}{f['p50_ms']:10.2f}{f['p99_ms']:10.2f}{f['per_second']:10.0f}"
            f"{f['server_cpu_us_per_call']:13.0f}"
        )
    print("  (approve: POST /workflows/{id}/approve or WorkflowService.Approve; status: GET")
    print("   /workflows/{id}/status/live or WorkflowService.GetStatus; CPU: the server process's, per call)")
    for key in KEYS:
        ratio = figures["rest_over_grpc"][key]
        cpu = figures[REST][key]["server_cpu_us_per_call"] / figures[GRPC][key]["server_cpu_us_per_call"]
        verdict = f" (target >= {TARGET:.0%}: {'met' if ratio >= TARGET else 'MISSED'})" if key.endswith("@64") else ""
        print(f"REST/gRPC rate, {key}: {ratio:.0%}{verdict}; REST/gRPC gateway CPU per call: {cpu:.0%}")
    memory, ours = figures[IN_MEMORY], figures[REST]
    for key in ("approve@1", "approve@64"):
        p50 = ours[key]["p50_ms"] / memory[key]["p50_ms"]
        p99 = ours[key]["p99_ms"] / memory[key]["p99_ms"]
        rate = ours[key]["per_second"] / memory[key]["per_second"]
        print(f"auditflow REST / in-memory design, {key}: p50 {p50:.2f}x, p99 {p99:.2f}x, req/s {rate:.2f}x")


if __name__ == "__main__":
    main()
