"""What an operator sees: Prometheus metrics on both services, one OpenTelemetry trace from the
approval to the last cycle (also across a processor restart), JSON logs, the log levels, and
health that tells the gateway from its processor link. Gateway and processor in-process on
real ports, metrics scraped over HTTP, spans in OpenTelemetry's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from auditflow import logs, tracing
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import LINK_NAME, Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.cluster import Pair as ProcessPair
from tests.support.cluster import ServerProcess
from tests.support.grpc_helpers import as_user, free_port, step
from tests.support.processor_harness import enqueue_request
from tests.support.processor_harness import step as run_step

E = pb.EventType
HEALTH = health_pb2.HealthCheckResponse


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    stub: wpb_grpc.WorkflowServiceAsyncStub


def processor_settings(tmp_path: Path, **overrides: Any) -> ProcessorSettings:
    return ProcessorSettings(
        **{
            **auth.processor_settings(),
            "database_url": f"sqlite:///{tmp_path / 'processor.db'}",
            "plugins": ("tests.support.procedures",),
            "cycle_delay": 0.02,
            "poll_interval": 0.05,
            "heartbeat_interval": 0.5,
            **overrides,
        }
    )


@asynccontextmanager
async def running(
    tmp_path: Path, *, metrics: bool = False, rest: bool = False, processor_port: int = 0
) -> AsyncIterator[Pair]:
    address = "127.0.0.1:0" if metrics else ""
    processor = create_processor(f"127.0.0.1:{processor_port}", processor_settings(tmp_path, metrics_address=address))
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
            processor_target=processor.address,
            plugins=("tests.support.procedures",),
            heartbeat_interval=0.5,
            metrics_address=address,
            rest_port=0 if rest else None,
        ),
    )
    await gateway.start()
    try:
        async with auth.channel(gateway.address) as channel:
            yield Pair(gateway, processor, wpb_grpc.WorkflowServiceStub(channel))
    finally:
        await gateway.stop(0)
        await processor.stop(1)


async def run_to_end(stub: wpb_grpc.WorkflowServiceAsyncStub, plan: list[pb.PlanStep]) -> str:
    created = await stub.CreateWorkflow(wpb.CreateWorkflowRequest(title="t", plan=plan), metadata=as_user("carol"))
    workflow_id, etag = created.workflow.workflow_id, created.workflow.etag
    await stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag), metadata=as_user("alice"))
    call = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id))
    last = [m.event async for m in call if m.HasField("event")][-1]
    assert last.type == E.EVENT_TYPE_COMPLETED, last
    return workflow_id


# --- metrics -----------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())

    found: Samples = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(get)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= set(found))


async def test_metrics_count_rpcs_decisions_dispatch_cycles_and_rest(tmp_path: Path) -> None:
    async with running(tmp_path, metrics=True, rest=True) as pair:
        assert pair.gateway.metrics is not None and pair.processor.metrics is not None
        gateway_port, processor_port = pair.gateway.metrics.port, pair.processor.metrics.port
        before = await scrape(gateway_port)
        workflow_id = await run_to_end(pair.stub, [step("test_noop"), step("test_noop")])
        with pytest.raises(grpc.aio.AioRpcError):  # a refused call is counted with its code
            await pair.stub.Approve(wpb.ApproveRequest(workflow_id="nope", etag="0" * 64), metadata=as_user("alice"))
        assert pair.gateway.rest is not None
        url = f"{pair.gateway.rest.url}/workflows/{workflow_id}"
        async with aiohttp.ClientSession() as http, http.get(url, headers=auth.headers("bob")) as response:
            assert response.status == 200
        gateway_after = await scrape(gateway_port)
        after = await scrape(processor_port)

    def grew(samples: Samples, name: str, by: float = 1, **labels: str) -> None:
        delta = value(samples, name, **labels) - value(before, name, **labels)
        assert delta >= by, (name, labels, delta)

    method = {"grpc_service": "auditflow.v1.WorkflowService", "grpc_method": "Approve", "grpc_type": "unary"}
    grew(gateway_after, "grpc_server_handled_total", grpc_code="OK", **method)
    grew(gateway_after, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **method)
    grew(gateway_after, "grpc_server_handling_seconds_count", by=2, **method)
    grew(gateway_after, "grpc_client_handled_total", grpc_method="Enqueue", grpc_code="OK")
    grew(gateway_after, "auditflow_gateway_decisions_total", kind="approve", outcome="dispatched")
    grew(gateway_after, "auditflow_gateway_decisions_total", kind="approve", outcome="refused")
    grew(gateway_after, "auditflow_gateway_outbox_deliveries_total", kind="enqueue", result="accepted")
    grew(gateway_after, "auditflow_gateway_dispatch_seconds_count")
    grew(gateway_after, "auditflow_db_batch_size_count", database="gateway", thread="writer")
    grew(gateway_after, "auditflow_gateway_rest_requests_total", route="/workflows/{workflow_id}", code="200")
    assert value(gateway_after, "auditflow_gateway_outbox_rows") == 0  # delivered: none waits
    assert value(gateway_after, "auditflow_gateway_outbox_oldest_age_seconds") == 0
    assert value(gateway_after, "auditflow_gateway_outbox_gate_open") == 1
    assert value(gateway_after, "auditflow_gateway_processor_link_up") == 1
    assert value(gateway_after, "auditflow_database_up", database="gateway") == 1

    grew(after, "grpc_server_handled_total", grpc_service="auditflow.v1.ProcessorService", grpc_method="Enqueue")
    grew(after, "auditflow_processor_cycle_seconds_count", by=2, procedure="test_noop")
    grew(after, "auditflow_processor_lease_claims_total", kind="first")
    grew(after, "auditflow_processor_approve_to_first_cycle_seconds_count")
    assert value(after, "auditflow_processor_runs", status="COMPLETED") == 1  # (this test's database)
    assert value(after, "auditflow_processor_max_concurrent") == 3
    # In one process too, each service's endpoint shows its own registry only.
    assert foreign(gateway_after, PROCESSOR_ONLY, "processor") == []
    assert foreign(after, GATEWAY_ONLY, "gateway") == []
    # Bounded labels: never a workflow id (nor anything else a caller chose) as a label value.
    assert not [key for key in after if any("wf_" in v or "nope" in v for _k, v in key[1])]


# Names only one service records: seeing one on the other service would be a zero that lies.
GATEWAY_ONLY = ("auditflow_gateway_", "grpc_client_")
PROCESSOR_ONLY = ("auditflow_processor_",)


def foreign(samples: Samples, prefixes: tuple[str, ...], database: str) -> list[str]:
    """The samples of `samples` that belong to the other service: its names or its database."""
    return sorted({name for name, labels in samples if name.startswith(prefixes) or ("database", database) in labels})


async def test_each_service_exports_only_its_own_metrics(tmp_path: Path) -> None:
    """One process per service, as deployed: each `/metrics` holds its own names (and the
    shared ones, RPCs served and the database, for its own database), none of the other's."""
    ports = {"gateway": free_port(), "processor": free_port()}
    pair = ProcessPair(
        tmp_path,
        processor_args=["--metrics-address", f"127.0.0.1:{ports['processor']}"],
        gateway_args=["--metrics-address", f"127.0.0.1:{ports['gateway']}"],
        log_level="INFO",
    )
    try:
        pair.start()
        gateway = await until(ports["gateway"], lambda s: value(s, "auditflow_gateway_processor_link_up") == 1)
        processor = await until(ports["processor"], lambda s: value(s, "auditflow_processor_max_concurrent") > 0)
    finally:
        await asyncio.to_thread(pair.stop)
    assert value(gateway, "auditflow_database_up", database="gateway") == 1
    assert value(processor, "auditflow_database_up", database="processor") == 1
    assert value(processor, "process_cpu_seconds_total") > 0  # the process's own collectors too
    assert foreign(gateway, PROCESSOR_ONLY, "processor") == []
    assert foreign(processor, GATEWAY_ONLY, "gateway") == []


async def test_backlog_gate_and_link_while_the_processor_is_away(tmp_path: Path) -> None:
    """Approvals wait in the outbox while the processor is down: the backlog and its age show
    it, the gateway stays SERVING while its processor link is NOT_SERVING; all of it turns
    back when the processor comes."""
    port = free_port()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
            processor_target=f"127.0.0.1:{port}",
            plugins=("tests.support.procedures",),
            metrics_address="127.0.0.1:0",
        ),
    )
    await gateway.start()
    processor: Processor | None = None
    try:
        assert gateway.metrics is not None
        async with auth.channel(gateway.address) as channel:
            stub = wpb_grpc.WorkflowServiceStub(channel)
            created = await stub.CreateWorkflow(
                wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")]), metadata=as_user("carol")
            )
            approve = wpb.ApproveRequest(workflow_id=created.workflow.workflow_id, etag=created.workflow.etag)
            await stub.Approve(approve, metadata=as_user("alice"))
            samples = await until(gateway.metrics.port, lambda s: value(s, "auditflow_gateway_outbox_gate_open") == 0)
            assert value(samples, "auditflow_gateway_outbox_rows") == 1
            assert value(samples, "auditflow_gateway_outbox_oldest_age_seconds") > 0
            assert value(samples, "auditflow_gateway_processor_link_up") == 0
            await health_is(gateway.address, "", HEALTH.SERVING)
            await health_is(gateway.address, LINK_NAME, HEALTH.NOT_SERVING)

            processor = create_processor(f"127.0.0.1:{port}", processor_settings(tmp_path))
            await processor.start()
            await until(
                gateway.metrics.port,
                lambda s: (
                    value(s, "auditflow_gateway_outbox_rows") == 0
                    and value(s, "auditflow_gateway_outbox_gate_open") == 1
                    and value(s, "auditflow_gateway_processor_link_up") == 1
                ),
            )
            await health_is(gateway.address, LINK_NAME, HEALTH.SERVING)
    finally:
        await gateway.stop(0)
        if processor is not None:
            await processor.stop(1)


async def until(port: int, condition: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    deadline = time.monotonic() + timeout
    while not condition(samples := await scrape(port)):
        assert time.monotonic() < deadline, "the metrics never showed the expected state"
        await asyncio.sleep(0.05)
    return samples


async def health_is(address: str, service: str, status: int, timeout: float = 30) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while (await health.Check(health_pb2.HealthCheckRequest(service=service))).status != status:
            assert time.monotonic() < deadline, f"health of {service!r} never became {status}"
            await asyncio.sleep(0.05)


async def test_rest_healthz_and_readyz(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, rest=True) as pair, aiohttp.ClientSession() as http:
        assert pair.gateway.rest is not None
        async with http.get(f"{pair.gateway.rest.url}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        caplog.set_level(logging.INFO)
        caplog.clear()
        for _probe in range(3):  # a probe every few seconds: the log stays quiet
            async with http.get(f"{pair.gateway.rest.url}/readyz") as response:
                body = await response.json()
                assert response.status == 200, body
                assert body["status"] == "ready" and body["checks"]["database"] == "ok"
        assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


async def test_a_flood_of_readiness_probes_reads_the_database_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz needs no credentials: probes asking at once share one look at the database."""
    async with running(tmp_path, rest=True) as pair, aiohttp.ClientSession() as http:
        assert pair.gateway.rest is not None
        db = pair.gateway.db
        looks = {"now": 0, "most": 0, "all": 0}
        real = db.schema_problem

        async def counted() -> str | None:  # (the real look, counted)
            looks["now"] += 1
            looks["all"] += 1
            looks["most"] = max(looks["most"], looks["now"])
            try:
                return await real()
            finally:
                looks["now"] -= 1

        monkeypatch.setattr(db, "schema_problem", counted)
        url = f"{pair.gateway.rest.url}/readyz"

        async def probe() -> tuple[int, Any]:
            async with http.get(url) as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(probe() for _ in range(200)))
        assert {status for status, _ in answers} == {200}
        assert all(body["checks"]["database"] == "ok" for _, body in answers)
        assert looks["most"] == 1 and looks["all"] < 200, looks
        before = looks["all"]
        assert (await probe())[0] == 200 and looks["all"] == before + 1  # (a later probe looks again)


# --- traces --------------------------------------------------------------------------------


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every trace recorded (the default samples a tenth of them), each span at its end."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    exporter = InMemorySpanExporter()
    tracing.configure("test", exporter, batch=False)
    try:
        yield exporter
    finally:
        tracing.disable()


async def test_health_watch_and_an_unknown_method_answer_with_tracing_on_and_probes_make_no_spans(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with running(tmp_path) as pair:
        for address in (pair.gateway.address, pair.processor.address):
            async with grpc.aio.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
                    health_pb2.HealthCheckResponse.SERVING
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:  # (the tracing interceptor iterates its handler)
                    await channel.unary_stream("/auditflow.v1.WorkflowService/NoSuchMethod")(b"").read()
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, caught.value
        await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=as_user("carol"))
    names = [span.name for span in spans.get_finished_spans()]
    assert not [name for name in names if "grpc.health.v1" in name], names
    assert any(name.endswith("WhoAmI") for name in names), names  # (other calls are traced)


async def test_one_trace_from_the_approval_to_the_last_cycle_across_a_processor_restart(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    port = free_port()
    records: list[logging.LogRecord] = []
    capture = _Capture(records)
    logging.getLogger("processor.scheduler").addHandler(capture)
    try:
        async with running(tmp_path, processor_port=port, rest=True) as pair:
            # (a second a cycle: the stop below must come while the second cycle runs, and a
            # busy machine may deliver the first one's event late)
            plan = [step("test_sleep", seconds=1.0)] * 3
            created = await pair.stub.CreateWorkflow(
                wpb.CreateWorkflowRequest(title="traced", plan=plan), metadata=as_user("carol")
            )
            workflow_id = created.workflow.workflow_id
            approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.workflow.etag)
            await pair.stub.Approve(approve, metadata=as_user("alice"))
            call = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id))
            async for message in call:  # the first cycle's checkpoint: then the processor restarts
                if message.HasField("event") and message.event.type == E.EVENT_TYPE_CYCLE_COMPLETED:
                    break
            call.cancel()
            await pair.processor.stop(5)
            again = create_processor(f"127.0.0.1:{port}", processor_settings(tmp_path))
            await again.start()
            try:
                async with grpc.aio.insecure_channel(again.address, interceptors=auth.gateway_link()) as channel:
                    watch = ps_grpc.ProcessorServiceStub(channel).WatchStatus(
                        ps.ProcessorServiceWatchStatusRequest(workflow_id=workflow_id),
                        wait_for_ready=True,  # (gRPC shares the gateway's subchannel, in backoff)
                    )
                    events = [m.event async for m in watch if m.HasField("event")]
                    assert events[-1].type == E.EVENT_TYPE_COMPLETED
            finally:
                await again.stop(1)
            assert pair.gateway.rest is not None
            url = f"{pair.gateway.rest.url}/workflows/{workflow_id}"
            async with aiohttp.ClientSession() as http, http.get(url, headers=auth.headers("bob")) as response:
                assert response.status == 200
    finally:
        logging.getLogger("processor.scheduler").removeHandler(capture)

    finished = spans.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    (approve,) = by_name["/auditflow.v1.WorkflowService/Approve"]
    trace_id = approve.context.trace_id
    (commit,) = by_name["commit decision"]
    (relay,) = by_name["outbox relay"]
    enqueues = [s for s in by_name["/auditflow.v1.ProcessorService/Enqueue"] if s.context.trace_id == trace_id]
    client = next(s for s in enqueues if s.kind.name == "CLIENT")
    server = next(s for s in enqueues if s.kind.name == "SERVER")
    assert commit.parent.span_id == approve.context.span_id
    assert relay.parent.span_id == approve.context.span_id
    assert client.parent.span_id == relay.context.span_id
    assert server.parent.span_id == client.context.span_id
    claims = [s for s in by_name["claimed"] if s.context.trace_id == trace_id]
    cycles = [s for s in finished if s.name.startswith("cycle ") and s.context.trace_id == trace_id]
    assert len(claims) == 2, claims  # the first processor's claim, and the second's after the restart
    assert sorted({s.attributes["auditflow.cycle"] for s in cycles}) == [1, 2, 3]
    for span in [*claims, *cycles]:  # children of the Enqueue, whichever processor ran them
        assert span.parent.span_id == server.context.span_id, span.name
    assert {s.attributes["auditflow.lease_epoch"] for s in claims} == {1, 2}
    steps = [s for s in finished if s.name == "step 1 test_sleep" and s.context.trace_id == trace_id]
    assert steps and steps[0].attributes["auditflow.procedure"] == "test_sleep"
    assert cycles[-1].attributes["auditflow.status"] == "COMPLETED"

    # REST calls have server spans of their own (the aiohttp instrumentation).
    def path(span: Any) -> str:
        return str(span.attributes.get("http.target", span.attributes.get("url.path", "")))

    assert [s for s in finished if s.kind.name == "SERVER" and path(s).endswith(f"/workflows/{workflow_id}")]
    # The cycle's log lines carry the trace.
    traced = [r for r in records if r.getMessage().startswith(f"{workflow_id} cycle 1/")]
    assert traced and getattr(traced[0], "trace_id", None) == format(trace_id, "032x")
    assert getattr(traced[0], "workflow_id", None) == workflow_id and getattr(traced[0], "cycle", None) == 1


class _Capture(logging.Handler):
    """Records as a JSON handler sees them (with the context fields)."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records
        self.addFilter(logs.ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- logs -----------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line_with_context(tmp_path: Path) -> None:
    link = (("authorization", f"Bearer {auth.GATEWAY_TOKEN}"),)
    server = ServerProcess(
        "processor",
        tmp_path,
        [*auth.processor_args(), "--log-format", "json", "--cycle-delay", "0.01"],
        log_level="DEBUG",
    )
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = ps_grpc.ProcessorServiceStub(channel)
            request = enqueue_request([run_step("test_noop"), run_step("test_fail", path=str(tmp_path / "n"))])
            stub.Enqueue(request, metadata=link)
            watch = stub.WatchStatus(
                ps.ProcessorServiceWatchStatusRequest(workflow_id=request.workflow_id), metadata=link, timeout=60
            )
            assert [m.event for m in watch if m.HasField("event")][-1].type == E.EVENT_TYPE_COMPLETED
    finally:
        server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "service"} <= set(r) for r in records), records[:3]
    assert {r["service"] for r in records} == {"processor"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records), records[0]
    cycle = next(r for r in records if r["message"].startswith(f"{request.workflow_id} cycle 1/"))
    assert (cycle["level"], cycle["logger"], cycle["workflow_id"], cycle["cycle"]) == (
        "INFO",
        "processor.scheduler",
        request.workflow_id,
        1,
    )
    failed = next(r for r in records if "cycle 2 failed" in r["message"])
    assert failed["level"] == "WARNING" and failed["workflow_id"] == request.workflow_id
    assert "exc_info" in failed  # the traceback, inside the object


async def test_each_level_says_what_it_should(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """INFO: progress; WARNING: a failed cycle that is retried; ERROR: a run that fails;
    DEBUG: state. On both services."""
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path) as pair:
        done = await run_to_end(pair.stub, [step("test_fail", path=str(tmp_path / "f")), step("test_noop")])
        created = await pair.stub.CreateWorkflow(
            wpb.CreateWorkflowRequest(title="t", plan=[step("test_critical", message="the ledger is gone")]),
            metadata=as_user("carol"),
        )
        failed = created.workflow.workflow_id
        approve = wpb.ApproveRequest(workflow_id=failed, etag=created.workflow.etag)
        await pair.stub.Approve(approve, metadata=as_user("alice"))
        call = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=failed))
        assert [m.event async for m in call if m.HasField("event")][-1].type == E.EVENT_TYPE_FAILED

    def at(level: int, text: str, logger: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == level and r.name == logger and text in r.getMessage()]

    assert at(logging.INFO, f"workflow {done}: approved", "gateway.api")
    assert at(logging.INFO, f"dispatched {done} to the processor", "gateway.outbox")
    for text in ("enqueued", "started by processor", "cycle 2/", "completed after 3 cycles"):
        assert at(logging.INFO, f"{done}", "processor.scheduler") and at(logging.INFO, text, "processor.scheduler")
    assert at(logging.WARNING, f"{done} cycle 1 failed: RuntimeError: planned failure 1", "processor.scheduler")
    assert at(logging.ERROR, f"{failed}: ", "processor.scheduler")[0].getMessage().endswith("(reason CRITICAL_ERROR)")
    assert at(logging.DEBUG, f"{done} cycle 1: state", "processor.scheduler")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and failed not in r.getMessage()]


def test_text_logs_stamp_iso_8601_utc_whatever_the_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        record = logging.LogRecord("gateway.outbox", logging.INFO, __file__, 1, "sent", None, None)
        record.created, record.msecs = 1_700_000_000.25, 250.0
        line = logs.utc_iso_times(logging.Formatter(logs.TEXT_FORMAT)).format(record)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line == "2023-11-14T22:13:20.250Z INFO    gateway.outbox: sent"


# --- reflection -----------------------------------------------------------------------------


async def test_reflection_lists_only_the_services_each_server_answers(tmp_path: Path) -> None:
    """grpcurl's `list` on the gateway shows WorkflowService, not ProcessorService (whose name
    the gateway's health uses for its processor link, but whose calls it does not answer)."""
    common = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    async with running(tmp_path) as pair:
        gateway = await asyncio.to_thread(listed_services, pair.gateway.address)
        processor = await asyncio.to_thread(listed_services, pair.processor.address)
    assert gateway == {"auditflow.v1.WorkflowService", *common}
    assert processor == {"auditflow.v1.ProcessorService", *common}


def listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())
