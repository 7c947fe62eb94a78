"""Many watchers of one run, opened in a burst: does every one get every event, and how late?

The gateway follows the processor through one `Follow` stream and fans each event out from
memory to all its watchers, encoded once for all of them (`gateway/feed.py`, `gateway/hub.py`,
`gateway/watch.py`). This measures that fan-out end to end, over gRPC
(`WorkflowService.WatchStatus`) and over Server-Sent Events
(`GET /workflows/{id}/status/stream` on the gateway's REST port, `Accept: text/event-stream`).

For each transport and each watcher count N (1,000, 5,000 and 10,000; `--quick`: 200 and
1,000), on a fresh pair (processor + gateway subprocesses, SQLite with synchronous=FULL,
`--cycle-delay 0.2`):
1. one workflow is created: 20 `test_sleep` steps of 0.05 s (the test plugin's procedure),
   one step per cycle, so that its run makes a steady stream of 23 events over ~5 s;
2. `--client-processes` client processes connect (gRPC: one connection of their own per
   `--streams-per-channel` watchers, made before the burst; SSE: one HTTP connection per
   watcher, made in the burst, as browsers do), then all open their share of the N watchers
   at the same instant (one shared "go"), each from sequence 0; every watcher authenticates
   (a viewer's bearer JWT);
3. once every watcher has its first message (the CREATED event), the workflow is approved,
   and every watcher records every event it receives until its stream ends.

It reports, per transport and N:
- gap-free watchers: those that received every sequence 1, 2, ... up to the terminal event
  (the workflow's last sequence, asked of the gateway afterwards), then a clean end of the
  stream (gRPC: status OK; SSE: `event: end`). Target: N of N at 10,000.
- delivery latency p50/p99/max over every (watcher, event) pair from APPROVED on (the events
  committed after all watchers were open). Method: an event's `time` is stamped by the server
  that commits it (the gateway for APPROVED, the processor for the others) inside the
  committing transaction, just before its fsync; the client takes `time.time()` when the
  message reaches its code. Both read the same wall clock (CLOCK_REALTIME, one machine), so
  the difference is commit + feed + fan-out + transport + the client's own queueing: a client
  process serves its watchers one at a time. Beside it, per event, the first watcher's
  latency (the path without fan-out) and the last's (with all of it), medians over the
  run's events. Target: p99 <= 50 ms at 1,000 watchers.
- gateway and processor CPU time (from /proc, all threads) per delivered event, from the
  approval to the last watcher's end; the gateway's CPU per event times N (the CPU one event's
  fan-out takes on its one event loop: a floor under the last watcher's latency); both
  processes' peak RSS (`VmHWM`; a fresh pair per N);
- the processor's CPU for the whole run, at each N: the processor knows nothing of watchers
  (the gateway's one feed is its only stream), so this must stay flat as N grows;
- how long the burst took to be admitted: from the go to the last watcher's first message
  (and the median), the gateway's CPU per admitted watcher, and the machine's TCP listen-queue
  overflows during the burst (`ListenOverflows` in /proc/net/netstat, for the whole machine:
  a connection the accept queue had no room for is retried by the client after 1, 3, 7 ... s);
- the clients' CPU per delivered event and the busiest client process's share of a core:
  they run on the same cores as the servers, so they take part of the machine during each
  fan-out; no client process should be near a whole core.

With `--floor`, each N is measured a second time against `bench/_watch_floor.py`: the same
clients and events served from memory by one bare Python process (no database, no
authentication, no processor), to show what the machine leaves for any server at all.

    python bench/watch.py                   # 1k, 5k, 10k watchers, gRPC and SSE
    python bench/watch.py --watchers 1000 --floor   # the gateway beside its floor
    python bench/watch.py --quick --json    # 200 and 1k, as the smoke test runs it

A missed target is printed as MISSED. The machine is shared: the load average is printed
with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import queue
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc  # noqa: E402
from bench import _watch_floor  # noqa: E402
from bench._loadgen import percentile  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.cluster import Pair, running_pair  # noqa: E402
from tests.support.grpc_helpers import free_port, step  # noqa: E402

TRANSPORTS = ("grpc", "sse")
STEPS, STEP_SECONDS, CYCLE_DELAY = 20, 0.05, 0.2
LIVE_FROM = 2  # APPROVED: the first event committed after every watcher was open
LATENCY_TARGET_MS, LATENCY_TARGET_AT = 50.0, 1000
GAP_FREE_TARGET_AT = 10_000


# --- client processes -------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    """What one client process needs (picklable: it crosses to a spawned process)."""

    transport: str
    address: str  # the gateway's gRPC target, or its REST base URL
    workflow_id: str
    token: str
    watchers: int
    channels: int  # gRPC connections of this process
    timeout: float  # seconds a watcher may take from the go to its stream's end


@dataclass
class Seen:
    """What one watcher received."""

    first_at: float = math.nan  # wall clock of its first message
    sequences: list[int] = field(default_factory=list)
    latencies: list[tuple[int, float]] = field(default_factory=list)  # (sequence, seconds) from LIVE_FROM on
    terminal: int = 0  # the sequence of the terminal event, once seen
    ended: str = "open"  # "ok" once the stream ended cleanly after the terminal event

    def event(self, sequence: int, committed: float, received: float, terminal: bool) -> None:
        self.sequences.append(sequence)
        if sequence >= LIVE_FROM:
            self.latencies.append((sequence, received - committed))
        if terminal:
            self.terminal = sequence

    @property
    def gap_free(self) -> bool:
        return self.ended == "ok" and self.terminal > 0 and self.sequences == list(range(1, self.terminal + 1))


class Opened:
    """Counts the watchers that got their first message (or failed first); set when all did."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0
        self.all = asyncio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.total:
            self.all.set()


async def _grpc_watcher(stub: wpb_grpc.WorkflowServiceStub, spec: ClientSpec, seen: Seen, opened: Opened) -> None:
    request = wpb.WatchStatusRequest(workflow_id=spec.workflow_id)
    call = stub.WatchStatus(request, metadata=(("authorization", f"Bearer {spec.token}"),))
    async for message in call:  # the stream ends with OK after the terminal event
        received = time.time()
        if math.isnan(seen.first_at):
            seen.first_at = received
            opened.one()
        if message.HasField("event"):
            committed = message.event.time.seconds + message.event.time.nanos * 1e-9
            seen.event(message.event.sequence, committed, received, message.snapshot.is_completed)
    seen.ended = "ok" if seen.terminal else "ended before the terminal event"


async def _sse_watcher(http: aiohttp.ClientSession, spec: ClientSpec, seen: Seen, opened: Opened) -> None:
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {spec.token}"}
    async with http.get(f"/workflows/{spec.workflow_id}/status/stream", headers=headers) as response:
        if response.status != 200:
            seen.ended = f"HTTP {response.status}"
            return
        buffer = b""
        async for chunk in response.content.iter_any():
            received = time.time()
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                _sse_block(block, received, seen, opened)
    if seen.ended == "open":
        seen.ended = "ended without `event: end`"


def _sse_block(block: bytes, received: float, seen: Seen, opened: Opened) -> None:
    """One SSE block: an event (`id:` + `data:`), a comment (heartbeat), `retry:`, or the end."""
    if block.startswith(b"retry:"):
        return
    if math.isnan(seen.first_at):
        seen.first_at = received
        opened.one()
    if block.startswith(b"event: end"):
        seen.ended = "ok" if seen.terminal else "end before the terminal event"
    elif block.startswith(b"event: error"):
        seen.ended = "error event"
    elif block.startswith(b"id:"):
        data = json.loads(block.split(b"\ndata: ", 1)[1])
        stamp = Timestamp()
        stamp.FromJsonString(data["event"]["time"])
        committed = stamp.seconds + stamp.nanos * 1e-9
        seen.event(int(data["event"]["sequence"]), committed, received, bool(data["snapshot"].get("is_completed")))


async def _guarded(watch: Any, seen: Seen, opened: Opened, timeout: float) -> None:
    """One watcher, with what went wrong recorded instead of raised."""
    try:
        await asyncio.wait_for(watch, timeout)
    except TimeoutError:
        seen.ended = "timeout"
    except grpc.aio.AioRpcError as error:
        seen.ended = f"gRPC {error.code().name}"
    except (aiohttp.ClientError, OSError) as error:
        seen.ended = type(error).__name__
    if math.isnan(seen.first_at):
        opened.one()  # (failed before its first message: the burst is over for it)


@contextlib.asynccontextmanager
async def _connections(spec: ClientSpec) -> Any:
    """gRPC: `spec.channels` connections of their own (not gRPC's shared subchannels), ready
    before the burst. SSE: one session; each watcher opens its own connection in the burst."""
    if spec.transport == "grpc":
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(spec.address, options=options) for _ in range(spec.channels)]
        await asyncio.gather(*(c.channel_ready() for c in channels))
        try:
            yield [wpb_grpc.WorkflowServiceStub(c) for c in channels]
        finally:
            await asyncio.gather(*(c.close(None) for c in channels))
    else:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(spec.address, connector=connector, timeout=timeout) as http:
            yield [http]


async def _client(spec: ClientSpec, go: Any, outbox: Any) -> None:
    """Connect, say so, wait for the go, open every watcher at once, say when all have their
    first message, and send back what each received once all have ended."""
    async with _connections(spec) as stubs:
        outbox.put(("connected", None))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        cpu_go = time.process_time()
        seen = [Seen() for _ in range(spec.watchers)]
        opened = Opened(spec.watchers)
        watch = _grpc_watcher if spec.transport == "grpc" else _sse_watcher
        tasks = [
            asyncio.create_task(_guarded(watch(stubs[i % len(stubs)], spec, s, opened), s, opened, spec.timeout))
            for i, s in enumerate(seen)
        ]
        await opened.all.wait()
        cpu_ready, wall_ready = time.process_time(), time.time()
        outbox.put(("ready", None))
        await asyncio.gather(*tasks)
        cpu_end, wall_end = time.process_time(), time.time()
    run = {"cpu_burst": cpu_ready - cpu_go, "cpu_run": cpu_end - cpu_ready, "wall_run": wall_end - wall_ready}
    outbox.put(("done", _client_summary(seen, run)))


def _client_summary(seen: list[Seen], run: dict[str, float]) -> dict[str, Any]:
    """What the parent needs of this process's watchers (kept small: it is pickled)."""
    latencies: dict[int, list[float]] = {}
    for s in seen:
        for sequence, seconds in s.latencies:
            latencies.setdefault(sequence, []).append(seconds)
    return {
        **run,
        "first_at": [s.first_at for s in seen],
        "ended": Counter(s.ended for s in seen),
        "gap_free_to": Counter(s.terminal for s in seen if s.gap_free),
        "latencies": latencies,
    }


def _client_process(spec: ClientSpec, go: Any, outbox: Any) -> None:
    asyncio.run(_client(spec, go, outbox))


# --- one measurement: a fresh pair, one workflow, N watchers ----------------------------


def create_workflow(target: str) -> tuple[str, str]:
    """A new workflow awaiting approval: its id and etag (what the approval names)."""
    plan = [step("test_sleep", seconds=STEP_SECONDS) for _ in range(STEPS)]
    request = wpb.CreateWorkflowRequest(title="watched", plan=plan, max_cycles=STEPS + 5)
    with grpc.insecure_channel(target) as channel:
        answer = wpb_grpc.WorkflowServiceStub(channel).CreateWorkflow(request, metadata=_creator())
    return answer.workflow.workflow_id, answer.workflow.etag


def _creator() -> tuple[tuple[str, str]]:
    return auth.bearer("bench-creator", ("submitter",))


def _approver() -> tuple[tuple[str, str]]:
    return auth.bearer("bench-approver", ("approver",))  # not the creator: separation of duties


class Clients:
    """The client processes of one measurement, and the messages they send back."""

    def __init__(self, specs: list[ClientSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self.go = context.Event()
        self.inbox: Any = context.Queue()
        self.processes = [context.Process(target=_client_process, args=(s, self.go, self.inbox)) for s in specs]
        for process in self.processes:
            process.start()

    def wait_all(self, kind: str, timeout: float) -> list[Any]:
        """One `kind` message from every process (they arrive in that order per process)."""
        deadline = time.monotonic() + timeout
        payloads: list[Any] = []
        while len(payloads) < len(self.processes):
            try:
                got, payload = self.inbox.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in self.processes):
                    raise RuntimeError(f"client processes did not all report {kind!r}") from None
                continue
            assert got == kind, (got, kind)
            payloads.append(payload)
        return payloads

    def close(self, failed: bool) -> None:
        """Join the processes (each ends once it has sent its figures); end them on a failure."""
        for process in self.processes:
            if failed:
                process.terminate()
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


@dataclass(frozen=True)
class Served:
    """What the watchers watch: the pair's gateway, or the floor (no processor)."""

    target: str  # gRPC
    rest_port: int
    server_pid: int  # the gateway, or the floor
    processor_pid: int | None
    logs: tuple[tuple[str, Path], ...]

    @classmethod
    def of(cls, pair: Pair) -> Served:
        assert pair.gateway.rest_port is not None
        logs = ((s.module, s.log_path) for s in (pair.gateway, pair.processor))
        return cls(pair.gateway.target, pair.gateway.rest_port, pair.gateway.pid, pair.processor.pid, tuple(logs))


def client_specs(
    served: Served, transport: str, workflow_id: str, watchers: int, args: argparse.Namespace
) -> list[ClientSpec]:
    """The watchers shared out over the client processes; all watch as one viewer."""
    processes = min(args.client_processes, watchers)
    address = served.target if transport == "grpc" else f"http://127.0.0.1:{served.rest_port}"
    token = auth.jwt_for("bench-watcher", ("viewer",))
    shares = [watchers // processes + (1 if i < watchers % processes else 0) for i in range(processes)]
    return [
        ClientSpec(transport, address, workflow_id, token, n, math.ceil(n / args.streams_per_channel), args.timeout)
        for n in shares
    ]


def measure(workdir: Path, transport: str, watchers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh pair, one workflow, `watchers` watchers opened at once, then the approval."""
    with running_pair(workdir, ["--cycle-delay", str(CYCLE_DELAY)]) as pair:
        workflow_id, etag = create_workflow(pair.gateway.target)
        return watch(Served.of(pair), workflow_id, transport, watchers, args, etag)


def measure_floor(workdir: Path, transport: str, watchers: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same watchers and events, served from memory by `bench/_watch_floor.py`."""
    with floor_server(workdir) as served:
        return watch(served, _watch_floor.WORKFLOW_ID, transport, watchers, args, etag="")  # (no plan to name)


def watch(
    served: Served, workflow_id: str, transport: str, watchers: int, args: argparse.Namespace, etag: str
) -> dict[str, Any]:
    specs = client_specs(served, transport, workflow_id, watchers, args)
    run = drive(served, workflow_id, etag, specs, args.timeout)
    last_sequence = final_sequence(served.target, workflow_id)
    peaks = _peak_rss_mb(served.server_pid), _peak_rss_mb(served.processor_pid)
    return summarize(watchers, last_sequence, run, peaks, _log_problems(served))


@contextlib.contextmanager
def floor_server(workdir: Path) -> Iterator[Served]:
    """`bench/_watch_floor.py` in a process of its own, serving once it answers GetStatus."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, rest_port, log_path = free_port(), free_port(), workdir / "floor.log"
    command = [
        sys.executable,
        str(ROOT / "bench" / "_watch_floor.py"),
        "--port",
        str(port),
        "--rest-port",
        str(rest_port),
        "--steps",
        str(STEPS),
        "--cycle-seconds",
        str(CYCLE_DELAY + STEP_SECONDS),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield Served(f"127.0.0.1:{port}", rest_port, process.pid, None, (("floor", log_path),))
    finally:
        process.terminate()
        process.wait(timeout=30)


def drive(served: Served, workflow_id: str, etag: str, specs: list[ClientSpec], timeout: float) -> dict[str, Any]:
    """The burst, then the approval, with both servers' CPU over each; what the clients saw."""
    clients, failed = Clients(specs), True
    try:
        clients.wait_all("connected", 120)
        pids = served.server_pid, served.processor_pid
        cpu_before, overflows_before = _cpus(pids), _listen_overflows()
        started = time.time()
        clients.go.set()
        clients.wait_all("ready", timeout + 60)
        cpu_admitted, overflows = _cpus(pids), _listen_overflows() - overflows_before
        approve(served.target, workflow_id, etag)
        done = clients.wait_all("done", timeout + 60)
        cpu_after, failed = _cpus(pids), False
    finally:
        clients.close(failed)
    cpu = {"burst": _minus(cpu_admitted, cpu_before), "run": _minus(cpu_after, cpu_admitted)}
    return {"started": started, "done": done, "cpu": cpu, "listen_overflows": overflows}


def approve(target: str, workflow_id: str, etag: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag), metadata=_approver())


def final_sequence(target: str, workflow_id: str) -> int:
    """The workflow's last sequence, as the gateway records it (the terminal event's)."""
    with grpc.insecure_channel(target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        status = stub.GetStatus(wpb.GetStatusRequest(workflow_id=workflow_id), metadata=_approver()).status
    if not status.is_completed:
        raise RuntimeError(f"the run had not ended when every watcher had: {status}")
    return status.last_sequence


def summarize(
    watchers: int, last_sequence: int, run: dict[str, Any], peaks: tuple[float, float], problems: dict[str, int]
) -> dict[str, Any]:
    started, done, cpu = run["started"], run["done"], run["cpu"]
    latencies = [x for d in done for seconds in d["latencies"].values() for x in seconds]
    firsts = sorted(x - started for d in done for x in d["first_at"] if not math.isnan(x))
    ended: Counter[str] = sum((Counter(d["ended"]) for d in done), Counter())
    delivered = len(latencies)
    (gateway_run, processor_run), (gateway_burst, processor_burst) = cpu["run"], cpu["burst"]
    return {
        "watchers": watchers,
        "admitted": len(firsts),
        "gap_free": sum(d["gap_free_to"].get(last_sequence, 0) for d in done),
        "events": last_sequence,
        "delivered": delivered,
        "expected_deliveries": watchers * (last_sequence - LIVE_FROM + 1),
        "ended": dict(ended),
        "latency_p50_ms": _percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": _percentile(latencies, 0.99) * 1000,
        "latency_max_ms": _percentile(latencies, 1.0) * 1000,
        **_spread(done),
        "admission_p50_s": _percentile(firsts, 0.50),
        "admission_s": _percentile(firsts, 1.0),
        "gateway_cpu_us_per_watcher_admitted": gateway_burst / max(1, len(firsts)) * 1e6,
        "processor_cpu_ms_during_burst": processor_burst * 1000,
        "gateway_cpu_us_per_event": gateway_run / max(1, delivered) * 1e6,
        # One event to every watcher, at that cost, on the gateway's one event loop: a floor
        # under the last watcher's latency whatever else runs on the machine.
        "gateway_fanout_cpu_ms_per_event": gateway_run / max(1, delivered) * watchers * 1000,
        "processor_cpu_us_per_event": processor_run / max(1, delivered) * 1e6,
        "processor_cpu_ms_per_run": processor_run * 1000,
        "gateway_cpu_ms_per_run": gateway_run * 1000,
        "gateway_peak_rss_mb": peaks[0],
        "processor_peak_rss_mb": peaks[1],
        "client_cpu_share_max": max(d["cpu_run"] / d["wall_run"] for d in done),
        "client_cpu_us_per_event": sum(d["cpu_run"] for d in done) / max(1, delivered) * 1e6,
        "log_problems": problems,
        "listen_overflows": run["listen_overflows"],
    }


def _spread(done: list[dict[str, Any]]) -> dict[str, float]:
    """Per event, the first watcher's latency (the path from the commit to the gateway and
    out, before any fan-out queueing) and the last watcher's (that plus the whole fan-out):
    their medians over the run's events, and the same for APPROVED, the gateway's own event
    (no processor, no feed)."""
    by_sequence: dict[int, list[float]] = {}
    for d in done:
        for sequence, seconds in d["latencies"].items():
            by_sequence.setdefault(sequence, []).extend(seconds)
    processor = [v for s, v in by_sequence.items() if s > LIVE_FROM]
    approved = by_sequence.get(LIVE_FROM, [math.nan])
    return {
        "first_watcher_p50_ms": _percentile([min(v) for v in processor], 0.5) * 1000,
        "last_watcher_p50_ms": _percentile([max(v) for v in processor], 0.5) * 1000,
        "approved_first_watcher_ms": min(approved) * 1000,
        "approved_last_watcher_ms": max(approved) * 1000,
    }


def _percentile(values: list[float], q: float) -> float:
    """NaN when nothing was received (the report shows it; the run is not aborted)."""
    return percentile(values, q) if values else math.nan


# --- /proc --------------------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and all its threads, from /proc (Linux)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpus(pids: tuple[int, int | None]) -> tuple[float, float]:
    return _cpu_seconds(pids[0]), _cpu_seconds(pids[1])


def _minus(after: tuple[float, float], before: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def _peak_rss_mb(pid: int | None) -> float:
    """The process's peak resident set (`VmHWM`), in MiB."""
    if pid is None:
        return math.nan
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _listen_overflows() -> int:
    """Connections this machine's listening sockets had no room for (TcpExt ListenOverflows:
    a full accept queue; the client's SYN is dropped and retried after 1, 3, 7 ... s)."""
    names, values = (line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2])
    return int(dict(zip(names, values, strict=True))["ListenOverflows"])


def _log_problems(served: Served) -> dict[str, int]:
    """WARNING and ERROR lines each server logged (the pair logs nothing below WARNING)."""
    counts: dict[str, int] = {}
    for name, path in served.logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        counts[name] = sum(1 for line in text.splitlines() if " WARNING " in line or " ERROR " in line)
    return counts


# --- main and report --------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", default="1000,5000,10000", help="watcher counts, comma-separated")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="grpc, sse, or both")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--streams-per-channel", type=int, default=500, help="gRPC watchers per connection")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a watcher may take, go to end")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure, beside each N, the same watchers served from memory by one bare "
        "Python process (bench/_watch_floor.py)",
    )
    parser.add_argument("--quick", action="store_true", help="200 and 1,000 watchers (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.watchers = "200,1000"
    counts = [int(n) for n in args.watchers.split(",")]
    figures: dict[str, Any] = {"load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="auditflow-bench-watch-") as tmp:
        for transport in args.transports.split(","):
            runs = figures.setdefault(transport, {})
            for watchers in counts:
                runs[str(watchers)] = measure(Path(tmp) / f"{transport}-{watchers}", transport, watchers, args)
                if args.floor:
                    workdir = Path(tmp) / f"{transport}-{watchers}-floor"
                    runs[f"{watchers} floor"] = measure_floor(workdir, transport, watchers, args)
    figures["load_average_after"] = list(os.getloadavg())
    report(figures, as_json=args.json)


COLUMNS = (
    ("gap-free", "{gap_free}/{watchers}", 13),
    ("p50 ms", "{latency_p50_ms:.1f}", 9),
    ("p99 ms", "{latency_p99_ms:.1f}", 9),
    ("max ms", "{latency_max_ms:.0f}", 8),
    ("admit s", "{admission_s:.2f}", 9),
    ("gw us/ev", "{gateway_cpu_us_per_event:.1f}", 10),
    ("proc us/ev", "{processor_cpu_us_per_event:.2f}", 12),
    ("proc ms/run", "{processor_cpu_ms_per_run:.0f}", 13),
    ("gw MiB", "{gateway_peak_rss_mb:.0f}", 8),
    ("proc MiB", "{processor_peak_rss_mb:.0f}", 10),
    ("client CPU", "{client_cpu_share_max:.0%}", 12),
)


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    load = " ".join(f"{x:.2f}" for x in figures["load_average"])
    after = " ".join(f"{x:.2f}" for x in figures["load_average_after"])
    print(
        f"\nwatchers of one run, opened in a burst ({figures['cpus']} CPUs; load average {load} before, {after} after)"
    )
    for transport in TRANSPORTS:
        if transport not in figures:
            continue
        print(f"\n{transport}: {'watchers':>8}" + "".join(f"{name:>{width}}" for name, _, width in COLUMNS))
        for n, run in figures[transport].items():
            print(f"  {'':4}{n:>10}" + "".join(f"{fmt.format(**run):>{width}}" for _, fmt, width in COLUMNS))
        for n, run in figures[transport].items():
            print(
                f"  {n} watchers: per event (median over the processor's events): first watcher "
                f"{run['first_watcher_p50_ms']:.1f} ms, last {run['last_watcher_p50_ms']:.1f} ms; APPROVED (the "
                f"gateway's own): first {run['approved_first_watcher_ms']:.1f} ms, "
                f"last {run['approved_last_watcher_ms']:.1f} ms"
            )
            print(
                f"  {n} watchers: the gateway's CPU to deliver one event to all: "
                f"{run['gateway_fanout_cpu_ms_per_event']:.0f} ms; the clients' CPU per delivered event: "
                f"{run['client_cpu_us_per_event']:.0f} us (on the same cores)"
            )
            print(
                f"  {n} watchers: admitted in {run['admission_s']:.2f} s (p50 {run['admission_p50_s']:.2f} s, "
                f"gateway {run['gateway_cpu_us_per_watcher_admitted']:.0f} us CPU each, processor "
                f"{run['processor_cpu_ms_during_burst']:.0f} ms in all); "
                f"{run['delivered']} of {run['expected_deliveries']} deliveries of {run['events']} events; "
                f"ends {run['ended']}; logged warnings {run['log_problems']}; "
                f"listen queue overflows in the burst: {run['listen_overflows']}"
            )
    print("\n  (latency: event commit time stamp to the client's receipt; CPU per delivered event from the")
    print("   approval to the last watcher's end; client CPU: the busiest client process's share of a core)")
    for line in verdicts(figures):
        print(line)


def verdicts(figures: dict[str, Any]) -> list[str]:
    """The targets, each met or missed, said plainly."""
    lines = []
    for transport in TRANSPORTS:
        runs = figures.get(transport, {})
        big = runs.get(str(GAP_FREE_TARGET_AT))
        if big is not None:
            met = big["gap_free"] == big["watchers"]
            lines.append(
                f"{transport}: gap-free at {GAP_FREE_TARGET_AT:,}: {big['gap_free']:,} of "
                f"{big['watchers']:,} (target: all) {'met' if met else 'MISSED'}"
            )
        else:
            every = all(r["gap_free"] == r["watchers"] for n, r in runs.items() if "floor" not in n)
            lines.append(
                f"{transport}: gap-free {'in every run' if every else 'MISSED in some runs'} "
                f"(the target is at {GAP_FREE_TARGET_AT:,} watchers, not run here)"
            )
        at = runs.get(str(LATENCY_TARGET_AT))
        if at is not None:
            met = at["latency_p99_ms"] <= LATENCY_TARGET_MS
            lines.append(
                f"{transport}: p99 at {LATENCY_TARGET_AT:,} watchers {at['latency_p99_ms']:.1f} ms "
                f"(target <= {LATENCY_TARGET_MS:.0f} ms) {'met' if met else 'MISSED'}"
            )
            if not met and at["gateway_fanout_cpu_ms_per_event"] > LATENCY_TARGET_MS:
                lines.append(
                    f"  (the gateway alone needs {at['gateway_fanout_cpu_ms_per_event']:.0f} ms of CPU to "
                    "deliver one event to them all, on one event loop)"
                )
        floor = runs.get(f"{LATENCY_TARGET_AT} floor")
        if floor is not None:
            met = floor["latency_p99_ms"] <= LATENCY_TARGET_MS
            lines.append(
                f"  the floor at {LATENCY_TARGET_AT:,} watchers (the same clients and events, from memory, "
                f"one bare process): p99 {floor['latency_p99_ms']:.1f} ms, "
                f"{'within' if met else 'itself past'} the target"
            )
    flat = {
        t: [round(r["processor_cpu_ms_per_run"]) for n, r in figures.get(t, {}).items() if "floor" not in n]
        for t in TRANSPORTS
    }
    lines.append(f"processor CPU per run (ms) at each N, should be flat: {flat}")
    return lines


if __name__ == "__main__":
    main()
