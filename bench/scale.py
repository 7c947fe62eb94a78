"""Scale on PostgreSQL: approvals to completed runs per second with 1, 2 and 4 processors,
approve -> first cycle with and without LISTEN/NOTIFY, and procrastinate beside it.

Everything runs on the PostgreSQL server at AUDITFLOW_TEST_POSTGRES (default: the local one,
127.0.0.1:5432, durable: fsync and synchronous_commit as the server has them). Each phase
gets fresh databases (`auditflow_scale_*`, dropped at the end): the gateway's, and the
processors' (shared by all processors, as in production). procrastinate
(https://procrastinate.readthedocs.io, pinned in pyproject.toml; its workers are
`bench/_scale_worker.py`) keeps its tables in the processors' database of the same phase, so
both queues commit to the same database on the same server with the same settings. The
trivial job is the same on both sides: a Python function that returns at once, run on a
worker thread (auditflow: a one-step plan of the test plugin's `test_noop`; procrastinate: a
sync task doing the same).

1. **Throughput.** For N = 1, 2, 4 processors (each `--max-concurrent M`, `--cycle-delay 0`,
   LISTEN/NOTIFY on) behind one gateway whose `--processor-target` lists them all (Enqueues
   balanced round robin): `--runs` workflows are created (not timed), then approved by
   `--callers` concurrent callers as fast as the gateway answers. The rate is the runs divided
   by the time from the first Approve sent to the last run's COMPLETED event (the time the
   processor stamps inside the committing transaction); beside it, the same up to when the
   client saw no unfinished workflow left (ListWorkflows every 0.1 s, through the gateway's
   mirror; every 20 ms, that poll alone took about a tenth of the gateway's CPU). Then, on the
   same database, N procrastinate worker processes, each with concurrency M (so the total
   concurrency equals the N processors' total max_concurrent), with LISTEN/NOTIFY on, and the
   same number of jobs deferred by the same number of concurrent callers (one `defer_async`
   each, from a pool of that many connections): the rate is the jobs divided by the time from
   the first defer to the last `succeeded` event (stamped by procrastinate's trigger in the
   finishing transaction), and up to when the client saw none left to do (a count of the jobs
   table every 0.1 s). Each side first runs a few warm-up jobs; the database is CHECKPOINTed
   before each timed load. CPU per run comes from /proc, for every process involved: the
   bench client, the gateway, the processors or workers, and PostgreSQL (the backends
   connected to this phase's databases, plus the server's WAL writer, background writer and
   checkpointer); and the machine's busy share over the load.

2. **Approve -> first cycle, with NOTIFY and with polling.** The processor that receives an
   Enqueue inserts the run and, when it has a free slot, claims it in the same transaction:
   there no notification is involved. They matter when another processor must act: (a) a
   peer must claim a run the receiving processor has no slot for; (b) events committed by
   one processor must reach the gateway that follows another (each processor's tail reads
   its peers' events on a notification, else every `--poll-interval`). So: processor A
   (`--max-concurrent 1`) and processor B (`--max-concurrent M`), the gateway targeting and
   following A only; one approval at a time, each watched through the gateway:
   - "receiver free": A is idle, claims each run itself and streams its events: the direct
     path, the same with or without notifications;
   - "receiver full": A's one slot is held by a long run (checked to be still running after
     the samples), so each new run is queued by A, claimed by B (woken by the notification,
     or at its next poll), and B's events reach the gateway through A's tail (woken by the
     notification, or at its next poll). Which processor started each run is counted.
   Each is run with `--listen true` and with `--listen false` (polling every
   `--poll-interval`, default 0.5 s, the processor's default). In both, each approval first
   waits a random 0 to poll-interval seconds: with polling it lands at a random point of the
   pollers' cycle, and no sample meets what its predecessor left to do. Figures: from sending
   Approve to the stamp of each event's commit (APPROVED by the gateway; QUEUED, STARTED,
   CYCLE_COMPLETED and COMPLETED by a processor), which says where the time goes, and to the
   watcher receiving STARTED, the first CYCLE_COMPLETED and COMPLETED.
   procrastinate beside it: two workers (concurrency 1 and M, like A and B) on the same
   database, one job at a time (after the same random wait), LISTEN/NOTIFY on, then off
   (`listen_notify=False` with `fetch_job_polling_interval` equal to the processors' poll
   interval): from `defer_async` to the job's `deferred`, `started` and `succeeded`
   events (stamped by the database in the deferring, fetching and finishing transactions).
   procrastinate has no completion stream: a client learns of the end by polling, so its only
   comparable figures are the stamped ones.

Stamps and the client's clock are the same wall clock (CLOCK_REALTIME, one machine). Both
queues stamp inside the committing transaction, before its commit's fsync.

    python bench/scale.py                 # 1,000 runs per N, 100 latency samples per case
    python bench/scale.py --quick         # 1 and 2 processors, 80 runs, 6 samples, polls every
                                          # 0.25 s: a smoke test (< 1 min)
    python bench/scale.py --json          # the figures as JSON
    python bench/scale.py --phases latency --latency-samples 30   # one phase, fewer samples

The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.db import Database  # noqa: E402
from auditflow.v1 import workflow_pb2 as pb  # noqa: E402
from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc  # noqa: E402
from bench import _scale_worker  # noqa: E402
from bench._loadgen import percentile  # noqa: E402
from bench._scale_worker import TASK, procrastinate_app  # noqa: E402
from bench.approve import Callers, token_callers  # noqa: E402
from gateway import store as gateway_store  # noqa: E402
from processor import store as processor_store  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.cluster import ServerProcess  # noqa: E402
from tests.support.postgres import ADMIN_URL, fresh_database  # noqa: E402

UNFINISHED = [pb.WORKFLOW_STATUS_APPROVED, pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING]
WATCH_POLL = 0.1  # seconds between the client's looks for what is left to do (both sides)
WARM_UP = 4  # jobs per processor or worker before a timed load
BLOCKER_STEPS = 100  # the steps of the long run that holds processor A's slot


STARTED_AT = time.monotonic()


def progress(text: str) -> None:
    """What the run is doing, on stderr (stdout holds the figures)."""
    print(f"[{time.monotonic() - STARTED_AT:6.1f} s] {text}", file=sys.stderr, flush=True)


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string (what psycopg and procrastinate take)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- the procrastinate workers, processes of their own (bench/_scale_worker.py) ---------------


def start_worker(workdir: Path, conninfo: str, concurrency: int, listen: bool, poll: float) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "bench._scale_worker",
        "--concurrency",
        str(concurrency),
        "--listen",
        str(listen).lower(),
        "--poll",
        str(poll),
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), _scale_worker.DATABASE: conninfo}
    with (workdir / "worker.log").open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


# --- databases and CPU --------------------------------------------------------------------


@dataclass
class Phase:
    """One phase's databases (SQLAlchemy URLs) and the processes whose CPU it counts."""

    gateway_url: str
    processor_url: str
    pids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, str]:
        return make_url(self.gateway_url).database or "", make_url(self.processor_url).database or ""


@contextlib.contextmanager
def phase_databases() -> Iterator[Phase]:
    """Fresh databases with the services' schemas, and procrastinate's beside the processors'.
    The schemas are made here, before the servers start: processors started at once on an
    empty database race to create it, and all but one exit."""
    with fresh_database("scale_gateway") as gateway, fresh_database("scale_processor") as processor:
        for url, metadata, migrations in (
            (gateway, gateway_store.metadata, "gateway:migrations"),
            (processor, processor_store.metadata, "processor:migrations"),
        ):
            database = Database(url, metadata, migrations=migrations)
            database.create_schema()
            database.write_engine.dispose()
            database.read_engine.dispose()
        phase = Phase(gateway, processor)
        install_procrastinate(phase)
        yield phase


def execute(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def checkpoint(phase: Phase) -> None:
    """Start each timed load with no dirty pages left by the one before."""
    execute(phase.processor_url, "CHECKPOINT")


def wait_listening(phase: Phase, count: int, timeout: float = 30.0) -> None:
    """Until `count` sessions on the processors' database have run LISTEN (they are ready)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN %%'"
    deadline = time.monotonic() + timeout
    while execute(phase.processor_url, query, phase.names[1])[0][0] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} sessions listen on {phase.names[1]}")
        time.sleep(0.05)


POSTGRES_AUX = ("walwriter", "background writer", "checkpointer")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def postgres_pids(postmaster: int, databases: Sequence[str]) -> list[int]:
    """The server's backends connected to `databases`, and its WAL writer, background writer
    and checkpointer (shared with other databases, but doing mostly the load's work)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or parent(int(entry.name)) != postmaster:
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # A backend: "postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE" (an autovacuum worker
        # names its database too).
        if any(word in databases for word in title.split()) or title.endswith(POSTGRES_AUX):
            found.append(int(entry.name))
    return found


def postmaster_of(url: str) -> int:
    """The server's main process (the parent of a backend), to tell its processes from another
    server's on the same machine."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:  # (its backend lives while it is open)
        return parent(conn.info.backend_pid)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds per group of processes between `start` and `stop`, and the machine's busy
    share. PostgreSQL's backends are looked up at both ends: one that came meanwhile counts
    whole, one that left meanwhile (none do: the pools keep theirs) would be missed."""

    def __init__(self, groups: dict[str, list[int]], phase: Phase) -> None:
        self._groups = groups
        self._databases = phase.names
        self._postmaster = postmaster_of(phase.processor_url)
        self._before: dict[int, float] = {}
        self._machine = (0, 0)

    def _snapshot(self) -> dict[int, float]:
        pids = {p for pids in self._groups.values() for p in pids} | set(
            postgres_pids(self._postmaster, self._databases)
        )
        return {pid: cpu_seconds(pid) for pid in pids}

    def start(self) -> None:
        self._machine = machine_ticks()
        self._before = self._snapshot()

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        busy, total = machine_ticks()
        used = {
            name: sum(after.get(p, 0) - self._before.get(p, 0) for p in pids) for name, pids in self._groups.items()
        }
        postgres = set(postgres_pids(self._postmaster, self._databases))
        used["postgres"] = sum(after[p] - self._before.get(p, 0.0) for p in postgres if p in after)
        used["machine_busy_share"] = (busy - self._machine[0]) / max(1, total - self._machine[1])
        return used


# --- auditflow: servers, workflows ------------------------------------------------------------


@dataclass
class Servers:
    gateway: ServerProcess
    processors: list[ServerProcess]

    def stop(self) -> None:
        """All at once (each stops gracefully on SIGTERM), then wait for each."""
        servers = [self.gateway, *self.processors]
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.terminate()
        for server in servers:
            if server.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(timeout=20)
            server.stop()  # (kills one still running; checks its log for credentials)


@contextlib.contextmanager
def running_servers(
    workdir: Path,
    phase: Phase,
    callers: Callers,
    max_concurrent: Sequence[int],
    *,
    listen: bool,
    poll: float,
    targets: int | None = None,
) -> Iterator[Servers]:
    """Processors (one per entry of `max_concurrent`) on the phase's database, and a gateway
    whose processor target lists the first `targets` of them (all by default)."""
    processors = []
    for index, slots in enumerate(max_concurrent):
        (workdir / f"p{index}").mkdir(parents=True)
        args = [
            *auth.processor_args(),
            "--database-url",
            phase.processor_url,
            "--max-concurrent",
            str(slots),
            "--cycle-delay",
            "0",
            "--poll-interval",
            str(poll),
            "--listen",
            str(listen).lower(),
            "--worker-id",
            f"p{index}",
            "--grace-period",
            "5",
        ]
        processors.append(ServerProcess("processor", workdir / f"p{index}", args, log_level="WARNING"))
    target = ",".join(p.target for p in processors[: targets or len(processors)])
    (workdir / "gateway").mkdir(parents=True)
    gateway_args = [
        "--processor-target",
        target,
        *auth.gateway_args(),
        *callers.gateway_args,
        "--database-url",
        phase.gateway_url,
    ]
    gateway = ServerProcess("gateway", workdir / "gateway", gateway_args, log_level="WARNING")
    servers = Servers(gateway, processors)
    try:
        for server in [*processors, gateway]:
            server.start(wait=False)
        for server in [*processors, gateway]:
            server.wait_serving()
        if listen:
            wait_listening(phase, len(processors))
        phase.pids = {"gateway": [gateway.pid], "processors": [p.pid for p in processors]}
        yield servers
    finally:
        servers.stop()


def noop_plan() -> wpb.CreateWorkflowRequest:
    return wpb.CreateWorkflowRequest(title="scale", plan=[pb.PlanStep(procedure="test_noop")])


async def create_many(stub: wpb_grpc.WorkflowServiceAsyncStub, callers: Callers, count: int) -> list[tuple[str, str]]:
    """`count` new one-step workflows, as (workflow_id, etag)."""
    sem = asyncio.Semaphore(32)
    request = noop_plan()

    async def one() -> tuple[str, str]:
        async with sem:
            answer = await stub.CreateWorkflow(request, metadata=callers.creator)
            return answer.workflow.workflow_id, answer.workflow.etag

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def approve_all(
    stub: wpb_grpc.WorkflowServiceAsyncStub, callers: Callers, items: list[tuple[str, str]], concurrency: int
) -> None:
    pending = list(reversed(items))

    async def caller() -> None:
        while pending:
            workflow_id, etag = pending.pop()
            request = wpb.ApproveRequest(workflow_id=workflow_id, etag=etag)
            await stub.Approve(request, metadata=callers.approver)

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def until_all_finished(stub: wpb_grpc.WorkflowServiceAsyncStub, callers: Callers, timeout: float) -> float:
    """Poll the gateway until no workflow is unfinished; the time it saw that."""
    request = wpb.ListWorkflowsRequest(page_size=1, statuses=UNFINISHED)
    deadline = time.monotonic() + timeout
    # Polling another process over its API: there is no local event to wait on.
    while (await stub.ListWorkflows(request, metadata=callers.approver)).workflows:
        if time.monotonic() > deadline:
            raise TimeoutError("runs still unfinished")
        await asyncio.sleep(WATCH_POLL)
    return time.time()


async def finished_times(stub: wpb_grpc.WorkflowServiceAsyncStub, callers: Callers, ids: set[str]) -> list[float]:
    """The time of each of `ids`' last event (COMPLETED, as stamped by the processor); every
    one of them must have completed."""
    times: list[float] = []
    token = ""
    while True:
        request = wpb.ListWorkflowsRequest(page_size=500, page_token=token)
        page = await stub.ListWorkflows(request, metadata=callers.approver)
        for workflow in page.workflows:
            if workflow.workflow_id in ids:
                assert workflow.status == pb.WORKFLOW_STATUS_COMPLETED, workflow
                times.append(workflow.updated_at.ToMicroseconds() / 1e6)
        token = page.next_page_token
        if not token:
            break
    assert len(times) == len(ids), f"{len(times)} of {len(ids)} runs found"
    return times


async def auditflow_load(
    servers: Servers, phase: Phase, callers: Callers, runs: int, concurrency: int, timeout: float
) -> dict[str, float]:
    """Approve `runs` workflows with `concurrency` callers; rates to their completion."""
    async with grpc.aio.insecure_channel(servers.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        warm = await create_many(stub, callers, WARM_UP * len(servers.processors))
        await approve_all(stub, callers, warm, concurrency)
        await until_all_finished(stub, callers, timeout)
        items = await create_many(stub, callers, runs)
        checkpoint(phase)
        meter = CpuMeter({"client": [os.getpid()], **phase.pids}, phase)
        meter.start()
        first = time.time()
        await approve_all(stub, callers, items, concurrency)
        submitted = time.time()
        seen = await until_all_finished(stub, callers, timeout)
        cpu = meter.stop()
        done = await finished_times(stub, callers, {w for w, _etag in items})
    return load_figures(runs, first, submitted, max(done), seen, cpu)


def load_figures(
    runs: int, first: float, submitted: float, last: float, seen: float, cpu: dict[str, float]
) -> dict[str, float]:
    figures = {
        "runs": runs,
        "submitted_per_second": runs / (submitted - first),
        "completed_per_second": runs / (last - first),
        "seen_per_second": runs / (seen - first),
        "machine_busy_share": cpu.pop("machine_busy_share"),
    }
    for name, seconds in cpu.items():
        figures[f"{name}_cpu_us_per_run"] = seconds / runs * 1e6
    figures["total_cpu_us_per_run"] = sum(seconds for seconds in cpu.values()) / runs * 1e6
    return figures


# --- procrastinate: throughput -----------------------------------------------------------------


@contextlib.contextmanager
def running_workers(
    workdir: Path, phase: Phase, concurrency: Sequence[int], *, listen: bool, poll: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    conninfo = libpq(phase.processor_url)
    workers = [start_worker(workdir / f"w{i}", conninfo, c, listen, poll) for i, c in enumerate(concurrency)]
    try:
        deadline = time.monotonic() + 30
        query = "SELECT count(*) FROM procrastinate_workers"
        while execute(phase.processor_url, query)[0][0] < len(workers):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"procrastinate workers did not start (logs in {workdir})")
            time.sleep(0.05)
        if listen:
            wait_listening(phase, len(workers))
        phase.pids = {"workers": [w.pid for w in workers]}
        yield workers
    finally:
        stop_workers(workers)


def install_procrastinate(phase: Phase) -> None:
    async def apply() -> None:
        app = procrastinate_app(libpq(phase.processor_url), 1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(apply())


async def left_to_do(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def procrastinate_load(
    phase: Phase, workers: int, runs: int, concurrency: int, timeout: float
) -> dict[str, float]:
    """Defer `runs` jobs with `concurrency` callers; rates to their `succeeded` events."""
    conninfo = libpq(phase.processor_url)
    app = procrastinate_app(conninfo, concurrency)
    async with app.open_async(), await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as watch:
        task = app.tasks[TASK]

        async def defer_all(count: int) -> None:
            pending = [count]

            async def caller() -> None:
                while pending[0] > 0:
                    pending[0] -= 1
                    await task.defer_async()

            await asyncio.gather(*(caller() for _ in range(concurrency)))

        async def until_done() -> float:
            deadline = time.monotonic() + timeout
            while await left_to_do(watch):
                if time.monotonic() > deadline:
                    raise TimeoutError("jobs still to do")
                await asyncio.sleep(WATCH_POLL)
            return time.time()

        await defer_all(WARM_UP * workers)
        await until_done()
        cursor = await watch.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")
        row = await cursor.fetchone()
        assert row is not None
        after_id = int(row[0])
        checkpoint(phase)
        meter = CpuMeter({"client": [os.getpid()], **phase.pids}, phase)
        meter.start()
        first = time.time()
        await defer_all(runs)
        submitted = time.time()
        seen = await until_done()
        cpu = meter.stop()
        cursor = await watch.execute(
            "SELECT count(*), max(e.at) FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id "
            "WHERE j.id > %s AND j.status = 'succeeded' AND e.type = 'succeeded'",
            (after_id,),
        )
        row = await cursor.fetchone()
        assert row is not None and row[0] == runs, f"{row} of {runs} jobs succeeded"
    return load_figures(runs, first, submitted, row[1].timestamp(), seen, cpu)


# --- latency ----------------------------------------------------------------------------------

# The events whose commit time (the stamp) is taken from the trail, and those whose arrival at
# the watcher is timed too; the first CYCLE_COMPLETED only.
STAMPED = {
    pb.EVENT_TYPE_APPROVED: "approved",
    pb.EVENT_TYPE_QUEUED: "queued",
    pb.EVENT_TYPE_STARTED: "started",
    pb.EVENT_TYPE_CYCLE_COMPLETED: "cycle",
    pb.EVENT_TYPE_COMPLETED: "completed",
}
SEEN = ("started", "cycle", "completed")


async def pause(gap: float, rng: random.Random) -> None:
    """Before a sample: a random wait up to `gap`, so that with polling each lands at a random
    point of the pollers' cycle (back to back, it would land just after a poll)."""
    await asyncio.sleep(rng.uniform(0, gap))


async def auditflow_latency(servers: Servers, callers: Callers, samples: int, gap: float) -> dict[str, Any]:
    """One approval at a time, each watched through the gateway from before it is approved to
    its end: from sending Approve to each event's stamp, and to its arrival."""
    marks: dict[str, list[float]] = {f"{name}_stamp": [] for name in STAMPED.values()}
    marks.update({f"{name}_seen": [] for name in SEEN})
    starters: dict[str, int] = {}
    rng = random.Random(1)
    async with grpc.aio.insecure_channel(servers.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        for workflow_id, etag in await create_many(stub, callers, samples):
            stream = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=callers.approver)
            sent = 0.0
            marked: set[str] = set()
            async for message in stream:
                now = time.time()
                if not sent:  # the first message (CREATED): the stream is open
                    await pause(gap, rng)
                    sent = time.time()
                    approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=etag)
                    await stub.Approve(approve, metadata=callers.approver)
                    continue
                name = STAMPED.get(message.event.type) if message.HasField("event") else None
                if name is None or name in marked:
                    continue
                marked.add(name)
                marks[f"{name}_stamp"].append(message.event.time.ToMicroseconds() / 1e6 - sent)
                if name in SEEN:
                    marks[f"{name}_seen"].append(now - sent)
                if name == "started":  # "started by processor p1"
                    starter = message.event.message.rsplit(" ", 1)[-1]
                    starters[starter] = starters.get(starter, 0) + 1
    return {**latency_figures(marks, samples), "started_by": starters}


def latency_figures(marks: dict[str, list[float]], samples: int) -> dict[str, float]:
    figures: dict[str, float] = {"samples": samples}
    for name, values in marks.items():
        assert len(values) == samples, (name, len(values), samples)
        figures[f"{name}_p50_ms"] = percentile(values, 0.5) * 1000
        figures[f"{name}_p99_ms"] = percentile(values, 0.99) * 1000
    return figures


async def hold_slot(servers: Servers, callers: Callers, seconds: float) -> str:
    """Approve a run of `seconds` on processor A (the gateway's only target) and wait until it
    runs, so that A has no free slot; its id."""
    step = pb.PlanStep(procedure="test_sleep")
    step.parameters.update({"seconds": min(60.0, max(0.5, seconds / BLOCKER_STEPS))})
    request = wpb.CreateWorkflowRequest(title="blocker", plan=[step] * BLOCKER_STEPS, max_cycles=BLOCKER_STEPS + 5)
    async with grpc.aio.insecure_channel(servers.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        created = (await stub.CreateWorkflow(request, metadata=callers.creator)).workflow
        approve = wpb.ApproveRequest(workflow_id=created.workflow_id, etag=created.etag)
        await stub.Approve(approve, metadata=callers.approver)
        await until_running(stub, callers, created.workflow_id)
        return str(created.workflow_id)


async def until_running(stub: wpb_grpc.WorkflowServiceAsyncStub, callers: Callers, workflow_id: str) -> None:
    request = wpb.GetStatusRequest(workflow_id=workflow_id)
    deadline = time.monotonic() + 30
    # Polling another process over its API: there is no local event to wait on.
    while (await stub.GetStatus(request, metadata=callers.approver)).status.status != pb.WORKFLOW_STATUS_RUNNING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workflow_id} did not start")
        await asyncio.sleep(0.05)


async def still_running(servers: Servers, callers: Callers, workflow_id: str) -> None:
    """Check that the long run held A's slot all along: it still runs (it is abandoned to
    the servers' stop, which waits for its current step)."""
    async with grpc.aio.insecure_channel(servers.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        status = await stub.GetStatus(wpb.GetStatusRequest(workflow_id=workflow_id), metadata=callers.approver)
        assert status.status.status == pb.WORKFLOW_STATUS_RUNNING, "the long run ended before the samples did"


async def procrastinate_latency(phase: Phase, samples: int, gap: float) -> dict[str, Any]:
    """One job at a time: from `defer_async` to its `started` and `succeeded` events' stamps.
    The client looks for the end every 5 ms (procrastinate has no completion stream)."""
    conninfo = libpq(phase.processor_url)
    marks: dict[str, list[float]] = {"queued_stamp": [], "started_stamp": [], "completed_stamp": []}
    rng = random.Random(1)
    app = procrastinate_app(conninfo, 1)
    async with app.open_async(), await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as watch:
        task = app.tasks[TASK]
        for _ in range(samples):
            await pause(gap, rng)
            sent = time.time()
            job = await task.defer_async()
            while True:
                cursor = await watch.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (job,))
                row = await cursor.fetchone()
                if row is not None and row[0] == "succeeded":
                    break
                await asyncio.sleep(0.005)
            cursor = await watch.execute("SELECT type, at FROM procrastinate_events WHERE job_id = %s", (job,))
            events = {str(kind): at.timestamp() for kind, at in await cursor.fetchall()}
            marks["queued_stamp"].append(events["deferred"] - sent)
            marks["started_stamp"].append(events["started"] - sent)
            marks["completed_stamp"].append(events["succeeded"] - sent)
    return latency_figures(marks, samples)


# --- phases -----------------------------------------------------------------------------------


def throughput(workdir: Path, callers: Callers, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for count in args.processors:
        slots = [args.max_concurrent] * count
        with phase_databases() as phase:
            where = workdir / f"throughput-{count}"
            progress(f"throughput, {count} processors: starting")
            with running_servers(where / "auditflow", phase, callers, slots, listen=True, poll=args.poll_interval) as s:
                progress(f"throughput, {count} processors: started")
                ours = asyncio.run(auditflow_load(s, phase, callers, args.runs, args.callers, args.timeout))
            progress(f"throughput, {count} processors: auditflow done, {ours['completed_per_second']:.1f}/s")
            with running_workers(where / "procrastinate", phase, slots, listen=True, poll=args.poll_interval):
                progress(f"throughput, {count} workers: started")
                theirs = asyncio.run(procrastinate_load(phase, count, args.runs, args.callers, args.timeout))
        progress(f"throughput, {count} workers: done, {theirs['completed_per_second']:.1f}/s")
        figures[str(count)] = {"auditflow": ours, "procrastinate": theirs, "total_concurrency": sum(slots)}
    return figures


def latency(workdir: Path, callers: Callers, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    slots = [1, args.max_concurrent]  # A, B
    samples = args.latency_samples
    for listen in (True, False):
        mode = "notify" if listen else "polling"
        # In both modes, so that they differ only by the notifications (and a sample never
        # meets the tail reads, mirror writes and polls its predecessor left behind).
        gap = args.poll_interval
        with phase_databases() as phase:
            where = workdir / f"latency-{mode}"
            with running_servers(
                where / "auditflow", phase, callers, slots, listen=listen, poll=args.poll_interval, targets=1
            ) as servers:
                progress(f"latency, {mode}: started")
                free = asyncio.run(auditflow_latency(servers, callers, samples, gap))
                progress(f"latency, {mode}: receiver free done")
                # Long enough for the samples at their slowest (two polls each), twice over.
                blocker = asyncio.run(hold_slot(servers, callers, 2 * samples * (gap + 2 * args.poll_interval + 0.2)))
                full = asyncio.run(auditflow_latency(servers, callers, samples, gap))
                progress(f"latency, {mode}: receiver full done")
                asyncio.run(still_running(servers, callers, blocker))
            progress(f"latency, {mode}: auditflow stopped")
            with running_workers(where / "procrastinate", phase, slots, listen=listen, poll=args.poll_interval):
                progress(f"latency, {mode}: workers started")
                theirs = asyncio.run(procrastinate_latency(phase, samples, gap))
            progress(f"latency, {mode}: procrastinate done")
        figures[mode] = {"receiver free": free, "receiver full": full, "procrastinate": theirs}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processors", type=int, nargs="+", default=[1, 2, 4], help="processor counts to measure")
    parser.add_argument("--max-concurrent", type=int, default=4, help="slots per processor (and per worker)")
    parser.add_argument("--runs", type=int, default=1000, help="runs (and jobs) per processor count")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers approving (and deferring)")
    parser.add_argument("--latency-samples", type=int, default=100, help="approvals (and defers) per latency case")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="processors' (and workers') poll interval")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a load may take to complete")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--phases", default="throughput,latency", help="comma-separated: throughput, latency")
    args = parser.parse_args()
    if args.quick:
        args.processors, args.runs, args.latency_samples, args.poll_interval = [1, 2], 80, 6, 0.25
    figures: dict[str, Any] = {"load_average_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    figures["postgres"] = execute(ADMIN_URL, "SHOW server_version")[0][0]
    phases = args.phases.split(",")
    with tempfile.TemporaryDirectory(prefix="auditflow-scale-") as tmp:
        callers = token_callers(Path(tmp))
        if "throughput" in phases:
            figures["throughput"] = throughput(Path(tmp), callers, args)
        if "latency" in phases:
            figures["latency"] = latency(Path(tmp), callers, args)
    figures["load_average_after"] = os.getloadavg()[0]
    figures["settings"] = {
        k: getattr(args, k) for k in ("max_concurrent", "runs", "callers", "latency_samples", "poll_interval")
    }
    report(figures, as_json=args.json)


def report(figures: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    settings = figures["settings"]
    print(
        f"\nPostgreSQL {figures['postgres']}, {figures['cpus']} CPUs, load average "
        f"{figures['load_average_before']:.1f} -> {figures['load_average_after']:.1f}; {settings['runs']} runs "
        f"(jobs) per count, {settings['callers']} callers, {settings['max_concurrent']} slots per processor "
        f"(worker), poll interval {settings['poll_interval']} s"
    )
    if "throughput" in figures:
        report_throughput(figures["throughput"])
    if "latency" in figures:
        report_latency(figures["latency"])


def report_throughput(figures: dict[str, Any]) -> None:
    print("\nthroughput: approvals (defers) -> completed runs (jobs) per second, and CPU per run (us)")
    print(
        f"  {'':26}{'completed/s':>12}{'seen/s':>8}{'submitted/s':>12}{'busy':>6}"
        f"{'client':>8}{'gateway':>8}{'workers':>8}{'postgres':>9}{'total':>8}"
    )
    for count, load in figures.items():
        for name in ("auditflow", "procrastinate"):
            f = load[name]
            workers = f.get("processors_cpu_us_per_run", f.get("workers_cpu_us_per_run", 0.0))
            gateway = f"{f['gateway_cpu_us_per_run']:8.0f}" if "gateway_cpu_us_per_run" in f else f"{'-':>8}"
            label = f"{count} x {load['total_concurrency'] // int(count)} slots, {name}"
            rates = f"{f['completed_per_second']:12.1f}{f['seen_per_second']:8.1f}{f['submitted_per_second']:12.0f}"
            cpu = f"{f['client_cpu_us_per_run']:8.0f}{gateway}{workers:8.0f}{f['postgres_cpu_us_per_run']:9.0f}"
            print(f"  {label:26}{rates}{f['machine_busy_share']:6.0%}{cpu}{f['total_cpu_us_per_run']:8.0f}")
        ours, theirs = load["auditflow"], load["procrastinate"]
        rate = ours["completed_per_second"] / theirs["completed_per_second"]
        cpu = ours["total_cpu_us_per_run"] / theirs["total_cpu_us_per_run"]
        verdict = "matches or beats" if rate >= 1 else "MISSED"
        print(f"  {'':26}auditflow/procrastinate: {rate:.2f}x the rate ({verdict}), {cpu:.1f}x the CPU per run")
    print("  (workers: the processors, or procrastinate's worker processes; busy: the machine's CPUs, all processes)")


LATENCY_COLUMNS = (
    ("started_stamp", "STARTED *"),
    ("started_seen", "STARTED"),
    ("cycle_seen", "1st cycle"),
    ("completed_seen", "COMPLETED"),
    ("completed_stamp", "COMPLETED *"),
)


def report_latency(figures: dict[str, Any]) -> None:
    print(
        "\nlatency: from sending Approve (defer), one at a time, ms p50 / p99; * = the commit's stamp, "
        "else seen by a watcher"
    )
    print(f"  {'':38}" + "".join(f"{title:>15}" for _key, title in LATENCY_COLUMNS))
    for mode, cases in figures.items():
        for case, f in cases.items():
            cells = []
            for key, _title in LATENCY_COLUMNS:
                cell = f"{f[key + '_p50_ms']:.1f} / {f[key + '_p99_ms']:.0f}" if key + "_p50_ms" in f else "-"
                cells.append(f"{cell:>15}")
            name = case if case == "procrastinate" else f"auditflow, {case}"
            print(f"  {mode + ', ' + name:38}" + "".join(cells))
    ours, theirs = figures["notify"]["receiver free"], figures["notify"]["procrastinate"]
    print(
        "  where approve -> COMPLETED goes, NOTIFY, receiver free (medians of each stamp, ms): "
        + ", ".join(f"{name} {ours[name + '_stamp_p50_ms']:.1f}" for name in STAMPED.values())
        + f", seen {ours['completed_seen_p50_ms']:.1f}"
    )
    print(
        "  procrastinate, NOTIFY: "
        + ", ".join(f"{name} {theirs[name + '_stamp_p50_ms']:.1f}" for name in ("queued", "started", "completed"))
    )
    for mode, cases in figures.items():
        theirs = cases["procrastinate"]["completed_stamp_p50_ms"]
        ratios = [(case, cases[case]["completed_stamp_p50_ms"] / theirs) for case in ("receiver free", "receiver full")]
        verdicts = [f"{case} {r:.2f}x ({'matches or beats' if r <= 1 else 'MISSED'})" for case, r in ratios]
        print(f"  {mode}: approve -> COMPLETED * p50, auditflow / procrastinate: {', '.join(verdicts)}")
    print(
        "  (receiver full: processor A, the gateway's target, has no free slot; processor B claims the run and "
        "its events reach the gateway through A)"
    )


if __name__ == "__main__":
    main()
