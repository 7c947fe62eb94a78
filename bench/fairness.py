"""One principal floods the gateway; three others should not notice.

Starts the pair (processor + gateway subprocesses, SQLite) with the gateway's default
per-principal limits (docs/security.md), then measures three people, each with the approver
role, each making five calls of each kind a second (a p99 over 900 calls of each kind in each
phase, their ninth slowest: over 450, their fifth slowest, one slow episode of the machine
decided a run's ratio too often): GetStatus, Approve (`--approve-pace`; plans a planner submitted
beforehand), and WatchStatus (`--watch-pace`; timed to its first event, then closed). Two
phases of the same length (`--seconds`, 5 s), alternating for `--rounds` rounds (12) in the
same run, so that both see the machine alike: a slow episode of the machine's, which decides
a p99, falls on either kind of phase, not on one long phase:
- unloaded: the three alone;
- loaded: meanwhile one principal with the submitter role, in a process of its own, sends
  the heaviest calls its role allows, as fast as it can and ignoring every Retry-After: plans
  of the largest size allowed, pages of 500 workflows over gRPC and REST, and as many open
  status streams as it can hold (less six, for the next), opening and closing more all the time,
  collection watches of 500 workflows over gRPC and SSE (four at a time, each closed once its
  initial list is read, then opened again), collection watches resumed from a token of long
  ago (every workflow since; two at a time, each closed after 1,000 messages or once caught
  up), and idle
  connections (TCP
  connections to the gRPC and REST ports that send nothing, opened again as soon as the
  gateway closes them). It starts `--warm-up` seconds
  before the phase is measured, and stops after it; then its plans awaiting approval are
  cancelled, so that it stores plans up to its quota again in every loaded phase (the
  database writer's busiest time).

With `--flood anonymous` or `--flood denied` the flood is of calls that are refused before any
work: GetStatus and REST's GET of a workflow without credentials and with a token signed by a
key the gateway does not trust (a stranger's), or Approve by the flooding principal, whose role
may not approve (over gRPC and REST, 20 and 12 calls at once); with `--flood public`, health
checks, which need no credentials, and a method that does not exist (gRPC's Check and
REST's /healthz, and UNIMPLEMENTED: 16 at once). None of these
is in the default flood, which sends what the principal's role allows.

With `--elsewhere`, a third phase in each round: the same flood, aimed at a second pair of
its own (processor, gateway, database) on the same machine, while the three call the first.
It is the floor of the loaded phase on this machine: the flood's CPU (its client's, and the
other gateway's serving it) on the same cores, without sharing the three's gateway. What the
loaded phase adds to it is what sharing the gateway costs them.

Reported per call: calls, failures, p50 and p99 in each phase, and the ratio of the loaded p99
to the unloaded one (target: at most 2, with 0 failures), and with `--elsewhere` to the
flood-elsewhere one; and what the flood got: calls
answered, refused by the limits (by status), and the streams it held; and the gateway's own
figures: its CPU in each phase, and how long each principal's writes waited for the database
writer (the principals whose writes waited longest, over the whole run).

    python bench/fairness.py                   # 12 rounds of 5 s phases (some 4 minutes)
    python bench/fairness.py --quick           # 1 round of 4 s phases, for a smoke test
    python bench/fairness.py --without-limits  # the same without per-principal limits
    python bench/fairness.py --write-share 0   # the writer first come, first served
    python bench/fairness.py --watch-loop      # also the gateway's loop lag and garbage collections
    python bench/fairness.py --elsewhere       # also the flood aimed at another gateway: the floor
    python bench/fairness.py --apart           # the flooding process alone on a core of its own
    python bench/fairness.py --flood anonymous # a stranger's calls, refused UNAUTHENTICATED

On a 2-core machine the flooding client and the gateway share the cores. The flooding process
runs at the lowest CPU priority (nice 19), as its CPU would be another machine's in a real
deployment; what the gateway spends on its calls is the gateway's, at normal priority. The
machine's other load still shows in both phases: alternating rounds share it out.

With `--apart` the flooding process runs alone on a core of its own (core 1), and everything
else (the servers, their page workers, the three people's client) on the others: the flood's
client is then another machine, as in a real deployment (at nice 19 alone it still takes short
slices of the cores the servers run on), and what the loaded phase adds is only what the
servers spend on the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.fairwrites import DEFAULT_SHARE  # noqa: E402
from auditflow.limits import DEFAULT_MAX_STREAMS  # noqa: E402
from auditflow.v1 import workflow_pb2 as pb  # noqa: E402
from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc  # noqa: E402
from bench._loadgen import percentile  # noqa: E402
from gateway.pages import resume_point, resume_token  # noqa: E402
from gateway.settings import DEFAULT_MAX_PENDING_PLANS  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.cluster import Pair, wait_http  # noqa: E402

PLUGIN = ["--plugin", "tests.support.procedures"]
PEOPLE = ("alice", "bob", "carol")

FLOOD = "flood"
CALLS = ("GetStatus", "Approve", "WatchStatus")
# Each person's pace: seconds between calls of each kind.
PACE = {"GetStatus": 0.2, "Approve": 0.2, "WatchStatus": 0.2}
# The flood's largest plan under the default limits: 4 steps of 16,000-byte parameters (64 KB).
FLOOD_STEPS, FLOOD_PARAMETER = 4, 16_000
TIMEOUT = 30.0
PHASES = ("unloaded", "loaded")
ELSEWHERE = "elsewhere"  # (with --elsewhere: the flood aimed at another pair, the loaded phase's floor)
FLOOD_KINDS = ("create", "list", "rest", "watch", "collection", "resume", "idle")
# Not in the default flood, which sends what the principal's role allows (`--flood anonymous`,
# `--flood denied`, `--flood public`): calls without credentials and with a token signed by a key
# the gateway does not trust (a stranger's), calls the principal's role may not make (Approve),
# and the calls that need no credentials (health checks, a method that does not exist), over gRPC and REST.
REFUSED_KINDS = ("anonymous", "denied", "public")
# Streams the flood keeps opening and closing at once, by kind: collection watches (2 over gRPC,
# 2 over SSE), collection watches resumed from long ago (2 over gRPC). It holds as many status
# streams as it may besides.
STREAMS_OPENED = {"collection": 4, "resume": 2}
RESUME_READ = 1_000  # messages a resumed watch reads before it closes
IDLE_CONNECTIONS = 200  # idle TCP connections the flood keeps open to each port, reopened when closed


def metadata(name: str, roles: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {auth.jwt_for(name, roles)}"),)


def small_plan(title: str) -> wpb.CreateWorkflowRequest:
    step = pb.PlanStep(procedure="test_noop")
    return wpb.CreateWorkflowRequest(title=title, plan=[step])


# --- the three people -------------------------------------------------------------------


class Person:
    """One person's calls at their pace; every call's latency, and its failures, by kind."""

    def __init__(
        self,
        stub: wpb_grpc.WorkflowServiceStub,
        name: str,
        plans: list[tuple[str, str]],
        watched: list[str],
        pace: dict[str, float],
    ) -> None:
        self.stub = stub
        self.pace = pace
        self.name = name
        self.meta = metadata(name, ("approver",))
        self.plans = iter(plans)
        self.watched = watched
        self.latencies: dict[str, list[float]] = {call: [] for call in CALLS}
        self.failures: Counter[str] = Counter()

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "GetStatus": self._status,
            "Approve": self._approve,
            "WatchStatus": self._watch,
        }
        await asyncio.gather(*(self._paced(kind, call, until) for kind, call in calls.items()))

    async def _paced(self, kind: str, call: Callable[[], Awaitable[Any]], until: float) -> None:
        """Calls at a steady pace (a late call does not push the next ones back)."""
        start = time.monotonic() + random.uniform(0, self.pace[kind])  # (the three out of step)
        for n in itertools.count():
            due = start + n * self.pace[kind]
            if due >= until:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                self.failures[f"{kind} {exc.code().name}"] += 1
                continue
            self.latencies[kind].append(time.perf_counter() - sent)

    async def _status(self) -> None:
        request = wpb.GetStatusRequest(workflow_id=random.choice(self.watched))
        await self.stub.GetStatus(request, metadata=self.meta, timeout=TIMEOUT)

    async def _approve(self) -> None:
        workflow_id, etag = next(self.plans)  # (the plan as its submitter's answer showed it)
        request = wpb.ApproveRequest(workflow_id=workflow_id, etag=etag)
        await self.stub.Approve(request, metadata=self.meta, timeout=TIMEOUT)

    async def _watch(self) -> None:
        request = wpb.WatchStatusRequest(workflow_id=random.choice(self.watched))
        stream = self.stub.WatchStatus(request, metadata=self.meta, timeout=TIMEOUT)
        try:
            if await stream.read() == grpc.aio.EOF:
                raise RuntimeError("the stream ended before its first event")
        finally:
            stream.cancel()


Samples = dict[str, Any]  # call -> latencies (s); "failures" -> Counter of "call STATUS"


async def measure(
    target: str, plans: dict[str, list[tuple[str, str]]], watched: list[str], seconds: float, pace: dict[str, float]
) -> Samples:
    """The three people for `seconds`: every call's latency, and the failures."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        people = [Person(stub, name, plans[name], watched, pace) for name in PEOPLE]
        await asyncio.gather(*(person.run(seconds) for person in people))
    samples: Samples = {kind: [x for person in people for x in person.latencies[kind]] for kind in CALLS}
    samples["failures"] = sum((person.failures for person in people), Counter())
    return samples


def summary(parts: list[Samples]) -> dict[str, Any]:
    """Calls, failures, p50 and p99 per call over every part (round) together."""
    figures: dict[str, Any] = {}
    failures: Counter[str] = sum((part["failures"] for part in parts), Counter())
    for kind in CALLS:
        latencies = [x for part in parts for x in part[kind]]
        figures[kind] = {
            "calls": len(latencies),
            "failures": sum(n for key, n in failures.items() if key.startswith(kind)),
            "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else 0.0,
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else 0.0,
        }
    figures["failures_by_status"] = dict(failures)
    return figures


# --- the flood --------------------------------------------------------------------------


def flood_main(
    target: str,
    rest_url: str,
    token: str,
    kinds: list[str],
    watched: list[str],
    stop: Any,
    ready: Any,
    out: Any,
    parent: int,
    cpus: set[int],
) -> None:
    """The flooding principal (its JWT minted by the parent, whose key the gateway trusts), in
    a process of its own until `stop` is set or the parent (its pid) is gone; on `cpus` alone
    if there are any."""
    os.nice(19)  # (its own CPU would be another machine's: here it takes only what is left)
    if cpus:
        os.sched_setaffinity(0, cpus)  # (--apart: a core of its own, as another machine's)
    threading.Thread(target=_exit_with, args=(parent,), name="orphan-check", daemon=True).start()
    figures = asyncio.run(_flood(target, rest_url, token, kinds, watched, stop, ready))
    out.put({**figures, "cpus": sorted(os.sched_getaffinity(0))})


def _exit_with(parent: int) -> None:
    """End the flood when the benchmark that started it is gone (killed, it never sets `stop`):
    an orphaned flood would spin at a full core, under every later measurement."""
    while os.getppid() == parent:  # (a child whose parent died has another one)
        time.sleep(1)
    os._exit(1)


async def _flood(
    target: str, rest_url: str, token: str, kinds: list[str], watched: list[str], stop: Any, ready: Any
) -> dict[str, Any]:
    meta = (("authorization", f"Bearer {token}"),)
    # (the trusted key's id, signed by another key: the gateway checks its signature each time)
    forged_token = auth.sign(auth.claims_for(FLOOD, ("submitter",)), key=ec.generate_private_key(ec.SECP256R1()))
    tally: Counter[str] = Counter()
    held: list[Any] = []
    stopping = asyncio.Event()

    async def until_stopped() -> None:
        await asyncio.to_thread(stop.wait)
        stopping.set()

    async def hammer(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        while not stopping.is_set():
            try:
                await call()
                tally[f"{name} OK"] += 1
            except grpc.aio.AioRpcError as exc:
                tally[f"{name} {exc.code().name}"] += 1
            except aiohttp.ClientError as exc:
                tally[f"{name} {type(exc).__name__}"] += 1

    big = wpb.CreateWorkflowRequest(
        title="flood", plan=[pb.PlanStep(procedure="test_noop") for _ in range(FLOOD_STEPS)]
    )
    for step in big.plan:
        step.parameters.update({"note": "x" * FLOOD_PARAMETER})
    bearer = {"Authorization": f"Bearer {token}"}
    async with contextlib.AsyncExitStack() as stack:
        channels = [await stack.enter_async_context(grpc.aio.insecure_channel(target)) for _ in range(2)]
        stubs = [wpb_grpc.WorkflowServiceStub(channel) for channel in channels]
        http = await stack.enter_async_context(aiohttp.ClientSession(headers=bearer))
        stranger = await stack.enter_async_context(aiohttp.ClientSession())
        forged = (("authorization", f"Bearer {forged_token}"),)

        async def create(stub: wpb_grpc.WorkflowServiceStub) -> None:
            await stub.CreateWorkflow(big, metadata=meta, timeout=TIMEOUT)

        async def page(stub: wpb_grpc.WorkflowServiceStub) -> None:
            await stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=500), metadata=meta, timeout=TIMEOUT)

        async def rest_page() -> None:
            async with http.get(f"{rest_url}/workflows?page_size=500") as response:
                await response.read()
                if response.status != 200:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)

        # Status streams held: as many as it may, less the collection watches' own (stream slots).
        hold = DEFAULT_MAX_STREAMS - sum(STREAMS_OPENED.get(kind, 0) for kind in kinds)
        long_ago = wpb.WatchWorkflowsRequest(resume_token=resume_token(datetime(2000, 1, 1, tzinfo=UTC)))

        opening = [0]  # status streams being opened to be held (several loops open at once)

        async def stream(stub: wpb_grpc.WorkflowServiceStub) -> None:
            """A status stream, held open until the end while fewer than `hold` are; past
            that, opened and closed again (the flood keeps asking, at its watch rate)."""
            keep = len(held) + opening[0] < hold
            opening[0] += keep
            call = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=random.choice(watched)), metadata=meta)
            try:
                if await call.read() != grpc.aio.EOF and keep:
                    held.append(call)
                    return
                call.cancel()
            finally:
                opening[0] -= keep

        async def collection(stub: wpb_grpc.WorkflowServiceStub) -> None:
            """A collection watch of 500, closed once its initial list is read."""
            call = stub.WatchWorkflows(wpb.WatchWorkflowsRequest(page_size=500), metadata=meta, timeout=TIMEOUT)
            try:
                async for message in call:
                    if message.HasField("synced"):
                        return
            finally:
                call.cancel()

        async def resumed(stub: wpb_grpc.WorkflowServiceStub) -> None:
            """A collection watch resumed from long ago: every workflow since, until it has read
            RESUME_READ of them or caught up (a message's point within a second of its start)."""
            opened = datetime.now(UTC) - timedelta(seconds=1)
            call = stub.WatchWorkflows(long_ago, metadata=meta, timeout=TIMEOUT)
            try:
                read = 0
                async for message in call:
                    read += 1
                    if read == RESUME_READ or resume_point(message.resume_token) >= opened:
                        return
            finally:
                call.cancel()

        async def rest_collection() -> None:
            async with http.get(f"{rest_url}/workflows:watch?page_size=500") as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                async for line in response.content:
                    if line.startswith(b"data: ") and b'"synced"' in line:
                        return

        async def anonymous(stub: wpb_grpc.WorkflowServiceStub, credentials: tuple[tuple[str, str], ...]) -> None:
            request = wpb.GetStatusRequest(workflow_id=random.choice(watched))
            await stub.GetStatus(request, metadata=credentials, timeout=TIMEOUT)

        async def rest_anonymous(headers: dict[str, str]) -> None:
            async with stranger.get(f"{rest_url}/workflows/{random.choice(watched)}", headers=headers) as response:
                await response.read()
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)

        async def denied(stub: wpb_grpc.WorkflowServiceStub) -> None:
            request = wpb.ApproveRequest(workflow_id=random.choice(watched), etag="x")
            await stub.Approve(request, metadata=meta, timeout=TIMEOUT)

        async def rest_denied() -> None:
            url = f"{rest_url}/workflows/{random.choice(watched)}/approve"
            async with http.post(url, json={"etag": "x"}) as response:
                await response.read()
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)

        async def health(channel: grpc.aio.Channel) -> None:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)

        async def unknown(channel: grpc.aio.Channel) -> None:
            await channel.unary_unary("/auditflow.v1.WorkflowService/NoSuchMethod")(b"", timeout=TIMEOUT)

        async def rest_health() -> None:
            async with stranger.get(f"{rest_url}/healthz") as response:
                await response.read()

        async def idle(host: str, port: int) -> None:
            """One connection that sends nothing, held until the gateway closes it."""
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                raise aiohttp.ClientConnectionError(str(exc)) from exc
            try:
                read = asyncio.ensure_future(reader.read())
                stopped = asyncio.ensure_future(stopping.wait())
                await asyncio.wait([read, stopped], return_when=asyncio.FIRST_COMPLETED)
                if read.done():
                    tally["idle connection closed by the gateway"] += 1
                read.cancel()
                stopped.cancel()
            finally:
                writer.close()

        loops = [until_stopped()]
        if "idle" in kinds:
            rest_host, rest_port = rest_url.removeprefix("http://").rsplit(":", 1)
            grpc_host, grpc_port = target.rsplit(":", 1)
            for host, port in ((grpc_host, int(grpc_port)), (rest_host, int(rest_port))):
                loops += [hammer(f"idle {port}", lambda h=host, p=port: idle(h, p)) for _ in range(IDLE_CONNECTIONS)]  # type: ignore[misc]
        for channel in channels:
            if "public" in kinds:
                loops += [hammer("health Check", lambda c=channel: health(c)) for _ in range(4)]  # type: ignore[misc]
                loops += [hammer("NoSuchMethod", lambda c=channel: unknown(c)) for _ in range(2)]  # type: ignore[misc]
        if "public" in kinds:
            loops += [hammer("REST /healthz", rest_health) for _ in range(4)]
        for stub in stubs:
            if "create" in kinds:
                loops += [hammer("CreateWorkflow", lambda s=stub: create(s)) for _ in range(2)]  # type: ignore[misc]
            if "list" in kinds:
                loops += [hammer("ListWorkflows", lambda s=stub: page(s)) for _ in range(2)]  # type: ignore[misc]
            if "watch" in kinds:
                loops += [hammer("WatchStatus", lambda s=stub: stream(s)) for _ in range(2)]  # type: ignore[misc]
            if "collection" in kinds:
                loops.append(hammer("WatchWorkflows", lambda s=stub: collection(s)))  # type: ignore[misc]
            if "resume" in kinds:
                loops.append(hammer("WatchWorkflows resumed", lambda s=stub: resumed(s)))  # type: ignore[misc]
            if "anonymous" in kinds:
                for name, credentials in (("GetStatus anonymous", ()), ("GetStatus forged", forged)):
                    loops += [hammer(name, lambda s=stub, c=credentials: anonymous(s, c)) for _ in range(4)]  # type: ignore[misc]
            if "denied" in kinds:
                loops += [hammer("Approve denied", lambda s=stub: denied(s)) for _ in range(4)]  # type: ignore[misc]
        if "rest" in kinds:
            loops += [hammer("REST ListWorkflows", rest_page) for _ in range(2)]
        if "collection" in kinds:
            loops += [hammer("REST WatchWorkflows", rest_collection) for _ in range(2)]
        if "anonymous" in kinds:
            for name, headers in (("REST anonymous", {}), ("REST forged", {"Authorization": f"Bearer {forged_token}"})):
                loops += [hammer(name, lambda h=headers: rest_anonymous(h)) for _ in range(2)]  # type: ignore[misc]
        if "denied" in kinds:
            loops += [hammer("REST Approve denied", rest_denied) for _ in range(4)]
        ready.set()
        await asyncio.gather(*loops)
        peak = len(held)
        for call in held:
            call.cancel()
    return {"calls": dict(sorted(tally.items())), "streams_held": peak}


# --- the run ----------------------------------------------------------------------------


async def prepare(target: str, phases: int, approvals: int) -> tuple[list[dict[str, list[tuple[str, str]]]], list[str]]:
    """For each phase, plans for each person to approve (each person's from a planner of its
    own, at the planners' rate and within their quota), and plans to watch (awaiting
    approval: their streams stay open)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)

        async def submit(planner: str, count: int) -> list[tuple[str, str]]:
            meta = metadata(planner, ("submitter",))
            made: list[tuple[str, str]] = []
            while len(made) < count:
                try:
                    answer = await stub.CreateWorkflow(small_plan(planner), metadata=meta, timeout=TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    retry = dict(exc.trailing_metadata() or ()).get("retry-after", "1")
                    await asyncio.sleep(float(str(retry)))  # (a polite client honours Retry-After)
                    continue
                made.append((answer.workflow.workflow_id, answer.workflow.etag))
            return made

        # (a planner for each person and phase: each stays within its quota of plans awaiting approval)
        planners = [(person, n) for n in range(phases) for person in PEOPLE]
        made = await asyncio.gather(
            submit("planner-watched", 15), *(submit(f"planner-{person}-{n}", approvals) for person, n in planners)
        )
    plans: list[dict[str, list[tuple[str, str]]]] = [{} for _ in range(phases)]
    for (person, n), ids in zip(planners, made[1:], strict=True):
        plans[n][person] = ids
    return plans, [workflow_id for workflow_id, _ in made[0]]


async def clear_quota(target: str, token: str) -> int:
    """Cancel the flood's plans awaiting approval (as the flood: a submitter cancels its own),
    at the rate its limits allow; how many were cancelled."""
    meta = (("authorization", f"Bearer {token}"),)
    statuses = [pb.WORKFLOW_STATUS_AWAITING_APPROVAL]
    cancelled = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        while True:
            listed = await polite(
                lambda: stub.ListWorkflows(
                    wpb.ListWorkflowsRequest(statuses=statuses, created_by_me=True, page_size=100),
                    metadata=meta,
                    timeout=TIMEOUT,
                )
            )
            if not listed.workflows:
                return cancelled
            for workflow in listed.workflows:
                request = wpb.CancelWorkflowRequest(workflow_id=workflow.workflow_id, reason="next round")
                await polite(lambda r=request: stub.CancelWorkflow(r, metadata=meta, timeout=TIMEOUT))  # type: ignore[misc]
                cancelled += 1


async def polite(call: Callable[[], Awaitable[Any]]) -> Any:
    """A call retried after the wait its refusal names (RESOURCE_EXHAUSTED)."""
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(float(str(dict(exc.trailing_metadata() or ()).get("retry-after", "1"))))


class Flood:
    """The flooding process: started for each loaded phase, stopped after it."""

    def __init__(self, target: str, rest_url: str, kinds: list[str], watched: list[str], cpus: set[int]) -> None:
        self.token = auth.jwt_for(FLOOD, ("submitter",))
        self.args = (target, rest_url, self.token, kinds, watched)
        self.cpus = cpus
        self.context = multiprocessing.get_context("spawn")

    @contextlib.contextmanager
    def running(self, warm_up: float, results: list[dict[str, Any]]) -> Iterator[None]:
        stop, ready, out = self.context.Event(), self.context.Event(), self.context.Queue()
        process = self.context.Process(target=flood_main, args=(*self.args, stop, ready, out, os.getpid(), self.cpus))
        process.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("the flooding process did not start")
            time.sleep(warm_up)  # (the flood's first burst, before the measured phase)
            yield
        finally:
            stop.set()
            results.append(out.get(timeout=120))
            process.join(30)
        results[-1]["cancelled_after"] = asyncio.run(clear_quota(self.args[0], self.token))


def run(args: argparse.Namespace) -> dict[str, Any]:
    pace = {**PACE, "Approve": args.approve_pace, "WatchStatus": args.watch_pace}
    approvals = int(args.seconds / args.approve_pace) + 2  # (within the quota: `main` checks)
    with tempfile.TemporaryDirectory(prefix="auditflow-fairness-") as tmp:
        # (the gateway at INFO: it logs its writer's waits by principal when it stops)
        gateway_args = [*PLUGIN, "--log-level", "INFO", "--write-share", str(args.write_share)]
        watch_file = Path(tmp) / "loop.json"
        if args.watch_loop:
            os.environ["AUDITFLOW_WATCH_FILE"] = str(watch_file)  # (read by bench/_watched_gateway.py)
        pair = Pair(
            Path(tmp),
            processor_args=PLUGIN,
            gateway_args=gateway_args,
            log_level="WARNING",
            gateway_launcher="bench._watched_gateway" if args.watch_loop else None,
            principal_limits=not args.without_limits,
        )
        kinds = (*PHASES, ELSEWHERE) if args.elsewhere else PHASES
        if args.apart:
            keep_off(FLOOD_CPUS)  # (the servers started below inherit it)
        pair.start()
        other: Pair | None = None
        try:
            if args.elsewhere:
                other = elsewhere(Path(tmp), gateway_args, limits=not args.without_limits)
            rest_url = f"http://127.0.0.1:{pair.gateway.rest_port}"
            wait_http(f"{rest_url}/openapi.json")
            target = pair.gateway.target
            phases, watched = asyncio.run(prepare(target, len(kinds) * args.rounds, approvals))
            cpus = FLOOD_CPUS if args.apart else set()
            floods = {"loaded": Flood(target, rest_url, args.flood, watched, cpus)}
            if other is not None:
                other_rest = f"http://127.0.0.1:{other.gateway.rest_port}"
                wait_http(f"{other_rest}/openapi.json")
                _, other_watched = asyncio.run(prepare(other.gateway.target, 0, 0))
                floods[ELSEWHERE] = Flood(other.gateway.target, other_rest, args.flood, other_watched, cpus)
            figures: dict[str, Any] = {
                "cpus": os.cpu_count(),
                "gateway_cpus": sorted(os.sched_getaffinity(pair.gateway.proc.pid)) if pair.gateway.proc else [],
                "load_average": list(os.getloadavg()),
                "without_limits": args.without_limits,
                "rounds": args.rounds,
                "write_share": args.write_share,
            }
            gateway_pid = pair.gateway.proc.pid if pair.gateway.proc is not None else 0
            if os.environ.get("AUDITFLOW_FREEZE_ON_SIGNAL"):
                os.kill(gateway_pid, signal.SIGUSR1)  # (bench/_watched_gateway.py: freeze after the warm-up)
            samples: dict[str, list[Samples]] = {phase: [] for phase in kinds}
            cpu = dict.fromkeys(kinds, 0.0)
            windows: dict[str, list[tuple[float, float]]] = {phase: [] for phase in kinds}
            flooded: dict[str, list[dict[str, Any]]] = {phase: [] for phase in floods}
            for _ in range(args.rounds):  # alternating, so that all see the machine alike
                for phase in kinds:
                    flood = floods.get(phase)
                    with flood.running(args.warm_up, flooded[phase]) if flood else contextlib.nullcontext():
                        used, began = cpu_seconds(gateway_pid), time.time()
                        samples[phase].append(asyncio.run(measure(target, phases.pop(0), watched, args.seconds, pace)))
                        cpu[phase] += cpu_seconds(gateway_pid) - used
                        windows[phase].append((began, time.time()))
            figures["load_average_after"] = list(os.getloadavg())
        finally:
            pair.stop()
            if other is not None:
                other.stop()
        figures["writer_waits"] = writer_waits(pair.gateway.log_path)
        if args.watch_loop:
            figures["loop"] = loop_figures(json.loads(watch_file.read_text()), windows)
    for phase, parts in samples.items():
        figures[phase] = summary(parts)
        figures[phase]["gateway_cpu_share"] = cpu[phase] / (args.seconds * args.rounds)
        figures[phase]["p99_ms_by_round"] = {
            kind: [summary([part])[kind]["p99_ms"] for part in parts] for kind in CALLS
        }
    figures["flood"] = flood_figures(flooded["loaded"])
    figures["p99_ratio"] = ratios(figures, "loaded", "unloaded")
    if args.elsewhere:
        figures["flood_elsewhere"] = flood_figures(flooded[ELSEWHERE])
        figures["p99_ratio_to_elsewhere"] = ratios(figures, "loaded", ELSEWHERE)
        figures["p99_ratio_elsewhere"] = ratios(figures, ELSEWHERE, "unloaded")
    return figures


FLOOD_CPUS = {1}  # with --apart: the flooding process's core, and nobody else's


def keep_off(cpus: set[int]) -> None:
    """Keep this process (every thread of it) and the processes it starts off `cpus`."""
    others = os.sched_getaffinity(0) - cpus
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), others)


def elsewhere(tmp: Path, gateway_args: list[str], *, limits: bool) -> Pair:
    """The second pair, started: the flood's target in the floor phase."""
    (tmp / ELSEWHERE).mkdir()
    return Pair(
        tmp / ELSEWHERE, processor_args=PLUGIN, gateway_args=gateway_args, log_level="WARNING", principal_limits=limits
    ).start()


def flood_figures(floods: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "calls": dict(sum((Counter(f["calls"]) for f in floods), Counter())),
        "streams_held": max(f["streams_held"] for f in floods),
        "cpus": sorted(set().union(*(f["cpus"] for f in floods))),
    }


def ratios(figures: dict[str, Any], phase: str, to: str) -> dict[str, float]:
    return {kind: figures[phase][kind]["p99_ms"] / figures[to][kind]["p99_ms"] for kind in CALLS}


def loop_figures(watched: dict[str, Any], windows: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """By phase, what held up the gateway's event loop (bench/_watched_gateway.py): its lag
    (p50, p99, max), and the garbage collections (full ones, and all of them together)."""

    def within(at: float, phase: str) -> bool:
        return any(start <= at <= end for start, end in windows[phase])

    figures: dict[str, Any] = {}
    for phase in windows:
        lags = [late for at, late in watched["lags"] if within(at, phase)]
        runs = [(generation, took) for at, generation, took in watched["collections"] if within(at, phase)]
        full = [took for generation, took in runs if generation == 2]
        figures[phase] = {
            "lag_p50_ms": percentile(lags, 0.50) * 1000 if lags else 0.0,
            "lag_p99_ms": percentile(lags, 0.99) * 1000 if lags else 0.0,
            "lag_max_ms": max(lags, default=0.0) * 1000,
            "full_collections": len(full),
            "full_collection_max_ms": max(full, default=0.0) * 1000,
            "collections_ms": sum(took for _, took in runs) * 1000,
        }
    return figures


WAITS = "waits for the database writer, longest first: "


def writer_waits(log: Path) -> str:
    """The gateway's last account of its writer's waits by principal (logged when it stops)."""
    found = [line.split(WAITS, 1)[1].strip() for line in log.read_text(errors="replace").splitlines() if WAITS in line]
    return found[-1].rstrip('"}') if found else "(not logged)"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    load = " ".join(f"{x:.2f}" for x in figures["load_average"])
    limits = "no per-principal limits" if figures["without_limits"] else "the default limits"
    print(
        f"\nthree people at their pace, alone and beside one flooding principal ({limits}; {figures['cpus']} "
        f"CPUs; load average {load} before)"
    )
    cores = ",".join(map(str, figures["gateway_cpus"])), ",".join(map(str, figures["flood"]["cpus"]))
    print(f"  the gateway on cores {cores[0]}, the flood's process on cores {cores[1]}")
    print(f"  {'call':<12}{'unloaded p50/p99 ms':>22}{'loaded p50/p99 ms':>20}{'p99 ratio':>11}{'failures':>10}")
    for kind in CALLS:
        alone, loaded = figures["unloaded"][kind], figures["loaded"][kind]
        ratio = figures["p99_ratio"][kind]
        verdict = "ok" if ratio <= 2 and alone["failures"] + loaded["failures"] == 0 else "MISSED"
        print(
            f"  {kind:<12}{alone['p50_ms']:>10.1f} / {alone['p99_ms']:<9.1f}{loaded['p50_ms']:>8.1f} / "
            f"{loaded['p99_ms']:<9.1f}{ratio:>8.2f}x{alone['failures'] + loaded['failures']:>10}  {verdict} "
            f"({alone['calls']}, {loaded['calls']} calls)"
        )
    if "p99_ratio_to_elsewhere" in figures:
        print("  beside the flood aimed at another gateway on this machine (the loaded phase's floor):")
        for kind in CALLS:
            there = figures[ELSEWHERE][kind]
            floor, above = figures["p99_ratio_elsewhere"][kind], figures["p99_ratio_to_elsewhere"][kind]
            print(
                f"  {kind:<12}{there['p50_ms']:>10.1f} / {there['p99_ms']:<9.1f} p99 {floor:.2f}x unloaded; "
                f"loaded p99 {above:.2f}x this ({there['failures']} failures)"
            )
    phases = [phase for phase in (*PHASES, ELSEWHERE) if phase in figures]
    for kind in CALLS:
        rounds = "; ".join(
            f"{phase} " + " / ".join(f"{x:.0f}" for x in figures[phase]["p99_ms_by_round"][kind]) for phase in phases
        )
        print(f"  {kind:<12} p99 ms round by round: {rounds}")
    shares = figures["unloaded"]["gateway_cpu_share"], figures["loaded"]["gateway_cpu_share"]
    print(f"  the gateway's CPU: {shares[0]:.0%} of a core unloaded, {shares[1]:.0%} loaded")
    print(f"  the writer's waits by principal (share {figures['write_share']} bytes): {figures['writer_waits']}")
    for phase, loop in figures.get("loop", {}).items():
        print(
            f"  the gateway's loop {phase}: lag p50 {loop['lag_p50_ms']:.1f} ms, p99 {loop['lag_p99_ms']:.1f} ms, "
            f"max {loop['lag_max_ms']:.0f} ms; {loop['full_collections']} full collections (longest "
            f"{loop['full_collection_max_ms']:.0f} ms), {loop['collections_ms']:.0f} ms collecting in all"
        )
    flood = figures["flood"]
    after = " ".join(f"{x:.2f}" for x in figures["load_average_after"])
    print(f"  load average after: {after}")
    print(
        f"  the flood: {flood['streams_held']} streams held; calls by answer: "
        + ", ".join(f"{key} {n}" for key, n in flood["calls"].items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument(
        "--flood",
        type=lambda t: t.split(","),
        default=list(FLOOD_KINDS),
        help="what the flood sends, of "
        + ",".join(FLOOD_KINDS + REFUSED_KINDS)
        + " (default: all but "
        + ",".join(REFUSED_KINDS)
        + ")",
    )
    parser.add_argument("--rounds", type=int, default=12, help="unloaded and loaded phases, alternating")
    parser.add_argument(
        "--warm-up", type=float, default=3.0, help="seconds the flood runs before the loaded phase is measured"
    )
    parser.add_argument(
        "--without-limits",
        action="store_true",
        help="the gateway without per-principal limits (what they are worth, by contrast)",
    )
    parser.add_argument(
        "--write-share",
        type=int,
        default=DEFAULT_SHARE,
        help="the gateway's --write-share (0: its writer first come, first served)",
    )
    parser.add_argument(
        "--approve-pace",
        type=float,
        default=PACE["Approve"],
        help="seconds between two Approve calls of one person",
    )
    parser.add_argument(
        "--watch-pace",
        type=float,
        default=PACE["WatchStatus"],
        help="seconds between two WatchStatus calls of one person",
    )
    parser.add_argument(
        "--watch-loop",
        action="store_true",
        help="record what holds up the gateway's event loop: its lag, its garbage collections",
    )
    parser.add_argument(
        "--elsewhere",
        action="store_true",
        help="a third phase each round: the same flood aimed at a second gateway of its own on this machine "
        "(the loaded phase's floor: the flood's CPU without sharing the three's gateway)",
    )
    parser.add_argument(
        "--apart",
        action="store_true",
        help="the flooding process alone on a core of its own, everything else (the servers, their "
        "workers, the three people) on the others: the flood's client as another machine",
    )
    parser.add_argument("--quick", action="store_true", help="4 s per phase (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.apart and not os.sched_getaffinity(0) > FLOOD_CPUS:
        parser.error(f"--apart needs core {min(FLOOD_CPUS)} for the flood and another for the rest")
    if args.quick:
        args.seconds, args.rounds, args.warm_up = 4.0, 1, 1.0
    approvals = int(args.seconds / args.approve_pace) + 2
    if approvals > DEFAULT_MAX_PENDING_PLANS:  # (each person's planner of a phase holds them all at once)
        parser.error(
            f"--seconds {args.seconds:g} at --approve-pace {args.approve_pace:g} needs {approvals} plans awaiting "
            f"one person's approval from one planner, past the gateway's quota of {DEFAULT_MAX_PENDING_PLANS}: "
            "shorter phases, or a slower pace"
        )
    report(run(args), as_json=args.json)


if __name__ == "__main__":
    main()
