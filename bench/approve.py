"""Approve through the gateway, next to the floor: a no-op unary RPC on the same server.

Two phases: the gateway alone (Approve's own path; it never waits for the processor), then
the pair, where every approval is also dispatched and executed while the load runs.

Starts the pair (processor + gateway, SQLite files with synchronous=FULL) as subprocesses and
prints, for Approve and for grpc.health.v1 Health/Check on the same gateway (the no-op floor,
through the same interceptor):
- p50/p99 latency at 1 caller and at 64 concurrent callers, and calls per second; for scale,
  also GetStatus (the read the web UI polls) at 64 callers;
- approve-to-first-cycle latency p50/p99: from sending Approve to the watcher seeing the run's
  STARTED event (the first cycle begins) and its first CYCLE_COMPLETED event;
- the CPU time each process spends per approved run, until the run has completed (runs
  approved 10 ms apart on an idle pair): the whole system's cost, which the rates of the
  load phases understate when the processor falls behind and work moves past their window;
- the floor under Approve at 1 caller, timed alone: one durable SQLite commit on the same
  disk, and one hand-over from the event loop to a thread and back (blocking work never runs
  on the loop). Approve at 1 caller cannot be faster than the no-op plus both; the report
  prints that bound as a ratio too;
- what authentication costs: the gateway alone, Approve at 64 callers, once per way of
  authenticating (an API token, a JWT), beside a baseline gateway that believes a user-name
  header (`bench/_header_identity.py`, what the gateway did before it authenticated anyone),
  each a fresh gateway in the same run: the gateway's CPU per call, and the ratio to the
  baseline (target: within 10 %). The other phases authenticate with API tokens;
- what observability costs: the gateway alone, Approve at 64 callers, with metrics off, with
  metrics on (`--metrics-address`), and with metrics on and tracing to an in-memory exporter
  (`bench/_traced_gateway.py`) at its default sampling and tracing every call, each a fresh
  gateway in the same run: the gateway's CPU per call, and the ratio to metrics off (target:
  metrics on within 5 %; tracing at its default sampling within 120 % of metrics on).

    python bench/approve.py                 # defaults below
    python bench/approve.py --quick         # a smaller run, for a smoke test

The callers run in `--client-processes` separate processes so that the client is not the
bottleneck; the floor is measured the same way in the same run, so the ratio is fair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.auth.tokens import append_entry  # noqa: E402
from auditflow.v1 import workflow_pb2 as pb  # noqa: E402
from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc  # noqa: E402
from bench._loadgen import percentile, run_load  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.cluster import Pair  # noqa: E402

SAMPLE = ROOT / "auditflow" / "samples" / "ledger.csv"
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Callers:
    """The credentials of the benchmark's two principals (the approver is not the creator:
    separation of duties), and the flags that make a gateway accept them."""

    creator: Metadata
    approver: Metadata
    gateway_args: tuple[str, ...] = ()


def token_callers(directory: Path) -> Callers:
    """API tokens in a tokens file of their own."""
    tokens = directory / "bench-tokens.toml"
    creator = append_entry(tokens, "bench-creator", "bench-creator", ["submitter"])
    approver = append_entry(tokens, "bench-approver", "bench-approver", ["approver"])
    return Callers(_bearer(creator), _bearer(approver), ("--tokens-file", str(tokens)))


def jwt_callers() -> Callers:
    """JWTs of the test issuer, which every benchmark gateway trusts (tests.support.auth)."""
    return Callers(auth.bearer("bench-creator", ("submitter",)), auth.bearer("bench-approver", ("approver",)))


def header_callers() -> Callers:
    """The baseline's typed-in names (bench/_header_identity.py)."""
    return Callers((("x-auditflow-user", "bench-creator"),), (("x-auditflow-user", "bench-approver"),))


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


CALLERS: Callers  # set by main(): the credentials of the phases other than the comparison


async def _load(
    target: str, kind: str, metadata: Metadata, ids: list[str], concurrency: int
) -> tuple[list[float], float, float]:
    """Latencies of the calls, and the wall-clock span from the first call to the last answer."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        health = health_pb2_grpc.HealthStub(channel)
        workflows = wpb_grpc.WorkflowServiceStub(channel)
        queue = list(reversed(ids))

        async def caller() -> None:
            while queue:
                workflow_id, _, etag = queue.pop().partition("@")
                started = time.perf_counter()
                if kind == "noop":
                    await health.Check(health_pb2.HealthCheckRequest())
                elif kind == "status":
                    await workflows.GetStatus(wpb.GetStatusRequest(workflow_id=workflow_id), metadata=metadata)
                else:  # bound to the plan's etag, as the CLI and the page send it
                    await workflows.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag), metadata=metadata)
                latencies.append(time.perf_counter() - started)

        first = time.time()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        last = time.time()
    return latencies, first, last


def _client(args: tuple[str, str, Metadata, list[str], int]) -> tuple[list[float], float, float]:
    return asyncio.run(_load(*args))


async def create_many(target: str, count: int, creator: Metadata | None = None) -> list[str]:
    """`count` new workflows, each as "workflow_id@etag" (the load's items)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        step = pb.PlanStep(procedure="ledger_summary")
        step.parameters.update({"path": str(SAMPLE)})
        request = wpb.CreateWorkflowRequest(title="bench", plan=[step])
        sem = asyncio.Semaphore(64)

        async def one() -> str:
            async with sem:
                answer = await stub.CreateWorkflow(request, metadata=creator or CALLERS.creator)
                return f"{answer.workflow.workflow_id}@{answer.workflow.etag}"

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def first_cycle(target: str, samples: int) -> dict[str, float]:
    """Approve one workflow at a time and time the watcher's STARTED and first cycle events."""
    started_ms: list[float] = []
    cycle_ms: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        for item in await create_many(target, samples):
            workflow_id, _, etag = item.partition("@")
            stream = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=CALLERS.approver)
            await stream.read()  # CREATED: the stream is open
            sent = time.perf_counter()
            await stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag), metadata=CALLERS.approver)
            while (message := await stream.read()) != grpc.aio.EOF:
                if message.event.type == pb.EVENT_TYPE_STARTED:
                    started_ms.append((time.perf_counter() - sent) * 1000)
                if message.event.type == pb.EVENT_TYPE_CYCLE_COMPLETED:
                    cycle_ms.append((time.perf_counter() - sent) * 1000)
                    stream.cancel()
                    break
    return {
        "samples": len(cycle_ms),
        "to_started_p50_ms": percentile(started_ms, 0.5),
        "to_started_p99_ms": percentile(started_ms, 0.99),
        "to_first_cycle_done_p50_ms": percentile(cycle_ms, 0.5),
        "to_first_cycle_done_p99_ms": percentile(cycle_ms, 0.99),
    }


UNFINISHED = [pb.WORKFLOW_STATUS_APPROVED, pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING]


async def cost_per_run(pair: Pair, runs: int, spacing: float) -> dict[str, float]:
    """CPU time of each process per approved run, counted until every run has completed and
    its end is mirrored on the gateway. The load phases cannot say this: what a run costs
    after its approval (relay, claim, cycles, streams, mirror) may fall outside their window,
    and does so more the further the processor lags behind."""
    target = pair.gateway.target
    ids = await create_many(target, runs)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        before = _cpu_seconds(pair.gateway.pid), _cpu_seconds(pair.processor.pid)
        for item in ids:
            workflow_id, _, etag = item.partition("@")
            await stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag), metadata=CALLERS.approver)
            await asyncio.sleep(spacing)
        unfinished = wpb.ListWorkflowsRequest(page_size=1, statuses=UNFINISHED)
        # Polling another process over its API: there is no local event to wait on.
        while (await stub.ListWorkflows(unfinished, metadata=CALLERS.approver)).workflows:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        after = _cpu_seconds(pair.gateway.pid), _cpu_seconds(pair.processor.pid)
    return {
        "runs": runs,
        "gateway_cpu_us_per_run": (after[0] - before[0]) / runs * 1e6,
        "processor_cpu_us_per_run": (after[1] - before[1]) / runs * 1e6,
    }


def durable_commit(directory: Path, samples: int) -> dict[str, float]:
    """The physical floor under Approve at 1 caller: one small durable commit (SQLite WAL,
    synchronous=FULL, as the gateway's) on the same disk, timed in a plain loop."""
    connection = sqlite3.connect(directory / "floor.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    times: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO t (body) VALUES (?)", ("x" * 200,))
        connection.execute("COMMIT")
        times.append(time.perf_counter() - started)
    connection.close()
    return {"p50_ms": percentile(times, 0.5) * 1000, "p99_ms": percentile(times, 0.99) * 1000}


def thread_round_trip(samples: int) -> dict[str, float]:
    """The other floor under Approve at 1 caller: handing work from the event loop to a
    thread and its answer back, by the mechanism the gateway's writer uses (a SimpleQueue
    the thread blocks on, `call_soon_threadsafe` back), with no work in between. Any design
    that keeps the blocking commit off the event loop pays this once per call when idle."""

    def worker(requests: queue.SimpleQueue[asyncio.Future[None] | None], loop: asyncio.AbstractEventLoop) -> None:
        while (future := requests.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    async def measure() -> list[float]:
        loop = asyncio.get_running_loop()
        requests: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()
        thread = threading.Thread(target=worker, args=(requests, loop))
        thread.start()
        times: list[float] = []
        for _ in range(samples):
            started = time.perf_counter()
            future = loop.create_future()
            requests.put(future)
            await future
            times.append(time.perf_counter() - started)
        requests.put(None)
        thread.join()
        return times

    times = asyncio.run(measure())
    return {"p50_ms": percentile(times, 0.5) * 1000, "p99_ms": percentile(times, 0.99) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls-1", type=int, default=2000, help="calls at 1 caller")
    parser.add_argument("--calls-64", type=int, default=20000, help="calls at 64 callers")
    parser.add_argument("--first-cycle-samples", type=int, default=200)
    parser.add_argument("--cost-runs", type=int, default=500, help="runs approved 10 ms apart for the cost per run")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--auth-calls", type=int, default=12_800, help="approvals per way of authenticating")
    parser.add_argument("--observability-calls", type=int, default=12_800, help="approvals per observability setting")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.calls_1, args.calls_64, args.first_cycle_samples, args.cost_runs = 200, 2000, 20, 50
        args.auth_calls, args.observability_calls = 2000, 1000
    figures: dict[str, Any] = {}
    global CALLERS
    with tempfile.TemporaryDirectory(prefix="auditflow-bench-") as tmp:
        CALLERS = token_callers(Path(tmp))
        # 0. What authentication costs, each way against the baseline, on fresh gateways.
        figures["authentication"] = measure_authentication(Path(tmp), args)
        figures["observability"] = measure_observability(Path(tmp), args)
        figures["durable_commit"] = durable_commit(Path(tmp), args.calls_1)
        figures["thread_round_trip"] = thread_round_trip(args.calls_1)
        # 1. Approve's own path: the processor is not started (Approve never waits for it).
        with running_pair(Path(tmp) / "alone", with_processor=False) as pair:
            figures["gateway alone"] = measure_load(pair, args)
        # 2. The whole system: every approval is also dispatched and executed meanwhile.
        with running_pair(Path(tmp) / "pair") as pair:
            figures["pair"] = measure_load(pair, args)
        # 3. A fresh pair: the runs of the load phase must not queue ahead of these.
        with running_pair(Path(tmp) / "first-cycle") as pair:
            figures["approve_to_first_cycle"] = asyncio.run(first_cycle(pair.gateway.target, args.first_cycle_samples))
            # 4. On the same, now idle, pair: what one run costs each process, end to end.
            figures["cost_per_run"] = asyncio.run(cost_per_run(pair, args.cost_runs, spacing=0.01))
    report(figures, as_json=args.json)


@contextlib.contextmanager
def running_pair(
    workdir: Path,
    with_processor: bool = True,
    callers: Callers | None = None,
    launcher: str | None = None,
    gateway_args: tuple[str, ...] = (),
) -> Iterator[Pair]:
    """Processor + gateway subprocesses with their defaults (SQLite, synchronous=FULL)."""
    workdir.mkdir(parents=True)
    # (the no-op floor is health Check from 64 callers at once: calls without a principal, which
    # the gateway otherwise answers at their address's rate)
    extra = ["--anonymous-rate", "off", *(callers or CALLERS).gateway_args, *gateway_args]
    pair = Pair(workdir, log_level="WARNING", gateway_args=extra, gateway_launcher=launcher)
    if with_processor:
        pair.processor.start()
    pair.gateway.start()
    try:
        yield pair
    finally:
        pair.stop()


def measure_load(pair: Pair, args: argparse.Namespace) -> dict[str, Any]:
    target, pid, approver = pair.gateway.target, pair.gateway.pid, CALLERS.approver
    figures: dict[str, Any] = {}
    run_load(_client, (target, "noop", ()), ["-"] * 500, 8, 1)  # warm up
    for callers, calls in ((1, args.calls_1), (64, args.calls_64)):
        processes = 1 if callers == 1 else args.client_processes
        figures[f"noop@{callers}"] = timed_load(pid, (target, "noop", ()), ["-"] * calls, callers, processes)
        ids = asyncio.run(create_many(target, calls))
        figures[f"approve@{callers}"] = timed_load(pid, (target, "approve", approver), ids, callers, processes)
    # The read the web UI polls (GET /workflows/{id}/status/live), for scale: not a target.
    figures["status@64"] = timed_load(pid, (target, "status", approver), ids, 64, args.client_processes)
    return figures


def measure_authentication(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Approve at 64 callers on a fresh gateway (no processor) per way of authenticating: the
    gateway's CPU per call, and a no-op's beside it on the same gateway (its drift between the
    gateways shows how much of a difference is the machine's noise)."""
    (directory / "auth-tokens").mkdir(exist_ok=True)
    ways = {
        "baseline (typed-in header)": (header_callers(), "bench._header_identity"),
        "API token": (token_callers(directory / "auth-tokens"), None),
        "JWT": (jwt_callers(), None),
    }
    return {
        name: fresh_gateway_load(directory / f"auth-{index}", args.auth_calls, args, callers, launcher)
        for index, (name, (callers, launcher)) in enumerate(ways.items())
    }


def measure_observability(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Approve at 64 callers on a fresh gateway (no processor) per setting: metrics off, metrics
    on, metrics on and tracing (in-memory exporter) with its default sampling, and tracing
    every call; CPU per call, and a no-op's beside it."""
    metrics_on = ("--metrics-address", "127.0.0.1:0")
    every_call = {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    settings: dict[str, tuple[tuple[str, ...], str | None, dict[str, str]]] = {
        "metrics off": ((), None, {}),
        "metrics on": (metrics_on, None, {}),
        "metrics on, tracing (in-memory, default sampling)": (metrics_on, "bench._traced_gateway", {}),
        "metrics on, tracing (in-memory, every call)": (metrics_on, "bench._traced_gateway", every_call),
    }
    figures = {}
    for index, (name, (extra, launcher, environment)) in enumerate(settings.items()):
        with mock.patch.dict(os.environ, environment):  # (the gateway inherits the environment)
            workdir = directory / f"observability-{index}"
            figures[name] = fresh_gateway_load(workdir, args.observability_calls, args, CALLERS, launcher, extra)
    return figures


def fresh_gateway_load(
    workdir: Path,
    calls: int,
    args: argparse.Namespace,
    callers: Callers,
    launcher: str | None = None,
    gateway_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """No-op, then Approve, at 64 callers on a gateway of its own (no processor)."""
    with running_pair(workdir, False, callers, launcher, gateway_args) as pair:
        target, pid = pair.gateway.target, pair.gateway.pid
        run_load(_client, (target, "noop", ()), ["-"] * 500, 8, 1)  # warm up
        noop = timed_load(pid, (target, "noop", ()), ["-"] * calls, 64, args.client_processes)
        ids = asyncio.run(create_many(target, calls, callers.creator))
        approve = timed_load(pid, (target, "approve", callers.approver), ids, 64, args.client_processes)
    return {"noop@64": noop, "approve@64": approve}


def timed_load(pid: int, head: tuple[Any, ...], ids: list[str], callers: int, processes: int) -> dict[str, float]:
    """run_load, plus the gateway process's CPU time per call (all its threads). Less noisy
    than the rate on a shared machine: it does not depend on who else got the cores."""
    before = _cpu_seconds(pid)
    figures = run_load(_client, head, ids, callers, processes)
    figures["gateway_cpu_us_per_call"] = (_cpu_seconds(pid) - before) / len(ids) * 1e6
    return figures


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_fresh_gateways(title: str, loads: dict[str, Any], base: str, versus: str) -> None:
    """One line per fresh gateway: Approve's rate and CPU per call, against `base`'s."""
    baseline = loads[base]["approve@64"]["gateway_cpu_us_per_call"]
    print(
        f"\n{title}, Approve at 64 callers on a fresh gateway each: {'calls/s':>10}{'gw CPU us/call':>16}"
        f"{versus:>13}{'no-op us/call':>15}"
    )
    for name, load in loads.items():
        approve, noop = load["approve@64"], load["noop@64"]
        cpu = approve["gateway_cpu_us_per_call"]
        print(
            f"  {name:58}{approve['per_second']:10.0f}{cpu:16.0f}{cpu / baseline:12.0%} "
            f"{noop['gateway_cpu_us_per_call']:14.0f}"
        )


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    print_fresh_gateways("authentication", figures["authentication"], "baseline (typed-in header)", "vs baseline")
    print("  (target: API token and JWT within 110 % of the baseline's CPU per call)")
    print_fresh_gateways("observability", figures["observability"], "metrics off", "vs off")
    print("  (target: metrics on within 105 % of metrics off's CPU per call)")
    cpu = {name: load["approve@64"]["gateway_cpu_us_per_call"] for name, load in figures["observability"].items()}
    cost = cpu["metrics on, tracing (in-memory, default sampling)"] / cpu["metrics on"]
    print(f"  tracing (default sampling) / metrics on: {cost:.0%} of the CPU per call (target <= 120 %)")
    for phase in ("gateway alone", "pair"):
        load = figures[phase]
        print(f"\n{phase}: {'':8}{'p50 ms':>10}{'p99 ms':>10}{'calls/s':>12}{'gw CPU us/call':>16}")
        for key in ("noop@1", "approve@1", "noop@64", "approve@64", "status@64"):
            f = load[key]
            cpu = f["gateway_cpu_us_per_call"]
            print(f"  {key:20}{f['p50_ms']:10.2f}{f['p99_ms']:10.2f}{f['per_second']:12.0f}{cpu:16.0f}")
        one, many = load["approve@1"], load["approve@64"]
        ratio = one["p50_ms"] / load["noop@1"]["p50_ms"]
        share = many["per_second"] / load["noop@64"]["per_second"]
        noop = load["noop@1"]["p50_ms"]
        floor = (noop + figures["durable_commit"]["p50_ms"] + figures["thread_round_trip"]["p50_ms"]) / noop
        print(f"  approve/no-op p50 at 1 caller:    {ratio:.2f}x (target <= 1.5x)")
        print(f"    floor: no-op + one durable commit + one thread round trip = {floor:.2f}x")
        print(f"  approve/no-op rate at 64 callers: {share:.0%} (target >= 60%, and >= 3,000/s)")
        cpu_share = load["noop@64"]["gateway_cpu_us_per_call"] / many["gateway_cpu_us_per_call"]
        print(f"  no-op/approve gateway CPU per call at 64 callers: {cpu_share:.0%} (the rate ratio if CPU-bound)")
    commit = figures["durable_commit"]
    print(f"\none durable SQLite commit on this disk: p50 {commit['p50_ms']:.2f} ms, p99 {commit['p99_ms']:.2f} ms")
    trip = figures["thread_round_trip"]
    print(f"one event loop -> thread -> loop round trip: p50 {trip['p50_ms']:.3f} ms, p99 {trip['p99_ms']:.3f} ms")
    fc = figures["approve_to_first_cycle"]
    started = f"p50 {fc['to_started_p50_ms']:.1f} ms, p99 {fc['to_started_p99_ms']:.1f} ms"
    done = f"p50 {fc['to_first_cycle_done_p50_ms']:.1f} ms, p99 {fc['to_first_cycle_done_p99_ms']:.1f} ms"
    print(f"approve -> first cycle starts: {started}; first cycle done: {done}")
    print(f"  (target p99 < 25 ms; {fc['samples']} samples, one approval at a time, on an idle pair)")
    cost = figures["cost_per_run"]
    print(
        f"CPU per approved run, until it completed and was mirrored: gateway {cost['gateway_cpu_us_per_run']:.0f} us, "
        f"processor {cost['processor_cpu_us_per_run']:.0f} us ({cost['runs']} runs approved 10 ms apart)"
    )


if __name__ == "__main__":
    main()
