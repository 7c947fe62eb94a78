"""Each principal's limits, against a real gateway and processor on real ports, over gRPC and
REST: rates per kind of call, open streams, plans awaiting approval, a plan's size, and pages
bounded by bytes. Past a limit one principal is refused (RESOURCE_EXHAUSTED / 429, with when
to retry for a rate) and counted; the others go on as if it were not there.

The rates are set so low (one token every 100 s) that no token comes back during a test: what
is refused is refused by count, never by timing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from auditflow import metrics, trail
from auditflow.connections import ConnectionSettings
from auditflow.limits import LimitSettings, Rate
from auditflow.principal import Principal
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway import collection, findings, messages, pages, service, verify
from gateway.quota import PlanLimits
from gateway.rest import app
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from gateway.settings import parse
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, dump_sqlite, step
from tests.support.postgres import fresh_database
from tests.support.processes import alive, parent_of

PLUGINS = ("tests.support.procedures",)
SLOW = 0.01  # tokens a second: none comes back while a test runs


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    stub: wpb_grpc.WorkflowServiceStub
    http: aiohttp.ClientSession
    url: str
    db_path: Path


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    """start(database, **gateway settings) -> a running Pair; stopped at the end (then its
    PostgreSQL database, if it has one, dropped)."""
    started: list[tuple[Gateway, Processor, grpc.aio.Channel, aiohttp.ClientSession]] = []
    databases = contextlib.ExitStack()

    async def run(database: str = "sqlite", **overrides: Any) -> Pair:
        processor = create_processor(
            "127.0.0.1:0",
            ProcessorSettings(
                **auth.processor_settings(),
                database_url=f"sqlite:///{tmp_path / 'p.db'}",
                plugins=PLUGINS,
                cycle_delay=0.02,
                poll_interval=0.05,
            ),
        )
        await processor.start()
        db_path = tmp_path / "g.db"
        url = databases.enter_context(fresh_database("gateway")) if database == "postgresql" else f"sqlite:///{db_path}"
        gateway = create_gateway(
            "127.0.0.1:0",
            GatewaySettings(
                **{**auth.gateway_settings(), **overrides},  # (`auth` too may be overridden)
                database_url=url,
                processor_target=processor.address,
                plugins=PLUGINS,
                rest_port=0,
            ),
        )
        await gateway.start()
        channel = grpc.aio.insecure_channel(gateway.address)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        started.append((gateway, processor, channel, http))
        assert gateway.rest is not None
        return Pair(gateway, processor, wpb_grpc.WorkflowServiceStub(channel), http, gateway.rest.url, db_path)

    yield run
    for gateway, processor, channel, http in started:
        await http.close()
        await channel.close()
        await gateway.stop(0)
        await processor.stop(1)
    databases.close()


def create_request(steps: int = 1, **fields: Any) -> wpb.CreateWorkflowRequest:
    return wpb.CreateWorkflowRequest(title="Q3", plan=[step("test_noop") for _ in range(steps)], **fields)


def refusals(limit: str) -> float:
    return metrics.GATEWAY.registry.get_sample_value("auditflow_limit_refusals_total", {"limit": limit}) or 0.0


def rich(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The ErrorInfo reason and metadata, the RetryInfo delay and the QuotaFailure subjects."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: dict[str, Any] = {"retry_delay": None, "quota": []}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                if isinstance(message, error_details_pb2.ErrorInfo):
                    found["reason"], found["limit"] = message.reason, message.metadata.get("limit")
                elif isinstance(message, error_details_pb2.RetryInfo):
                    found["retry_delay"] = message.retry_delay.ToTimedelta().total_seconds()
                else:
                    found["quota"] = [v.subject for v in message.violations]
    return found


def trailer(error: grpc.aio.AioRpcError, name: str) -> str | None:
    return next((str(v) for k, v in (error.trailing_metadata() or ()) if k == name), None)


async def test_a_principal_past_its_write_rate_is_refused_with_when_to_retry_and_others_are_not(start: Any) -> None:
    pair = await start(limits=LimitSettings(write=Rate(SLOW, 3)))
    before = refusals("write_rate")
    for _ in range(3):  # the burst
        await pair.stub.CreateWorkflow(create_request(), metadata=as_user("flood"))
    stored = dump_sqlite(pair.db_path)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.CreateWorkflow(create_request(), metadata=as_user("flood"))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many write calls" in (error.details() or "") and "flood" in (error.details() or "")
    details = rich(error)
    assert details["reason"] == "LIMIT_EXCEEDED" and details["limit"] == "write_rate"
    assert 90 <= details["retry_delay"] <= 100  # one token at 0.01 a second
    assert trailer(error, "retry-after") == str(int(details["retry_delay"]) + 1)
    assert dump_sqlite(pair.db_path) == stored  # nothing stored
    assert refusals("write_rate") == before + 1
    # Another principal has its own bucket; reads are another kind.
    await pair.stub.CreateWorkflow(create_request(), metadata=as_user("calm"))
    await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=as_user("flood"))
    # REST shares the bucket: 429 with Retry-After.
    headers = auth.headers("flood")
    body = {"title": "Q3", "plan": [{"procedure": "test_noop"}]}
    async with pair.http.post(pair.url + "/workflows", json=body, headers=headers) as response:
        assert response.status == 429, await response.text()
        assert int(response.headers["Retry-After"]) > 90
        answer = await response.json()
    assert answer["status"] == "RESOURCE_EXHAUSTED" and "too many write calls" in answer["message"]
    assert any(d.get("retryDelay") or d.get("retry_delay") for d in answer["details"]), answer


async def test_a_long_page_costs_more_reads_than_a_short_one(start: Any) -> None:
    pair = await start(limits=LimitSettings(read=Rate(SLOW, 12)))
    viewer = as_user("reader", ("viewer",))
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=100), metadata=viewer)  # 10 tokens
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=10), metadata=viewer)  # 1
    await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=viewer)  # 1: the bucket is empty
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=500), metadata=viewer)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich(caught.value)["limit"] == "read_rate"
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=500), metadata=as_user("other", ("viewer",)))
    headers = auth.headers("web-reader", ("viewer",))  # over REST the page size is in the query
    async with pair.http.get(pair.url + "/workflows?page_size=500", headers=headers) as response:
        assert response.status == 200
    async with pair.http.get(pair.url + "/workflows?page_size=500", headers=headers) as response:
        assert response.status == 429 and "read calls" in (await response.json())["message"]


async def test_a_page_of_the_default_size_costs_what_asking_for_that_size_does(start: Any) -> None:
    pair = await start(limits=LimitSettings(read=Rate(SLOW, 7)))
    viewer = as_user("reader", ("viewer",))
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=viewer)  # 50 rows: 5 tokens
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # two left
        await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=viewer)
    assert rich(caught.value)["limit"] == "read_rate"
    await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=viewer)  # (one token: still there)
    headers = auth.headers("web-reader", ("viewer",))  # over REST, no page_size in the query
    async with pair.http.get(pair.url + "/workflows", headers=headers) as response:
        assert response.status == 200
    async with pair.http.get(pair.url + "/workflows", headers=headers) as response:
        assert response.status == 429 and "read calls" in (await response.json())["message"]


async def test_a_principal_past_its_watch_rate_is_refused_over_grpc_and_rest(start: Any) -> None:
    pair = await start(limits=LimitSettings(watch=Rate(SLOW, 2)))
    created = await pair.stub.CreateWorkflow(create_request(), metadata=as_user("carol"))
    request = wpb.WatchStatusRequest(workflow_id=created.workflow.workflow_id)
    watcher = as_user("watcher", ("viewer",))
    streams = [pair.stub.WatchStatus(request, metadata=watcher) for _ in range(2)]
    for stream in streams:
        await stream.read()  # (open: the plan awaits approval)
    before = refusals("watch_rate")
    third = pair.stub.WatchStatus(request, metadata=watcher)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await third.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many watch calls" in (caught.value.details() or "")
    details = rich(caught.value)
    assert details["limit"] == "watch_rate" and 90 <= details["retry_delay"] <= 100
    assert refusals("watch_rate") == before + 1
    sse = pair.url + f"/workflows/{created.workflow.workflow_id}/status/stream"
    async with pair.http.get(sse, headers=auth.headers("watcher", ("viewer",))) as response:
        assert response.status == 429 and int(response.headers["Retry-After"]) > 90
    other = pair.stub.WatchStatus(request, metadata=as_user("viewer2"))  # (a bucket of its own)
    await other.read()
    for stream in [*streams, other]:
        stream.cancel()


async def test_a_large_plan_costs_more_writes_than_a_small_one(start: Any) -> None:
    pair = await start(limits=LimitSettings(write=Rate(SLOW, 8)))
    carol = as_user("carol")
    big = wpb.CreateWorkflowRequest(title="Q3", plan=[step("test_noop", note="n" * 14_000) for _ in range(3)])
    assert 32 * 1024 < big.ByteSize() <= 48 * 1024  # three writes' worth
    for _ in range(2):
        await pair.stub.CreateWorkflow(big, metadata=carol)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # two tokens left, three asked
        await pair.stub.CreateWorkflow(big, metadata=carol)
    assert rich(caught.value)["limit"] == "write_rate"
    await pair.stub.CreateWorkflow(create_request(), metadata=carol)  # a small one still fits
    # Over REST the same, whether the body says its length or comes in chunks.
    body = json.dumps({"title": "Q3", "plan": [{"procedure": "test_noop", "parameters": {"note": "n" * 14_000}}] * 3})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192].encode()

    headers = {**auth.headers("dave"), "Content-Type": "application/json"}
    for data in (body.encode(), chunks()):
        async with pair.http.post(pair.url + "/workflows", data=data, headers=headers) as response:
            assert response.status == 200, await response.text()
    async with pair.http.post(pair.url + "/workflows", data=chunks(), headers=headers) as response:
        assert response.status == 429 and "Retry-After" in response.headers


async def test_a_chunked_body_past_the_callers_rate_is_refused_before_it_is_read(start: Any) -> None:
    """A body without a Content-Length costs what it weighs, known only once it is read; a
    caller with no write token left is refused first, so a caller past its rate cannot make
    the gateway read bodies: the 429 comes while the body is still being sent."""
    pair = await start(limits=LimitSettings(write=Rate(SLOW, 1)))
    headers = {**auth.headers("dave"), "Content-Type": "application/json"}
    small = json.dumps({"title": "Q3", "plan": [{"procedure": "test_noop"}]}).encode()
    async with pair.http.post(pair.url + "/workflows", data=small, headers=headers) as response:
        assert response.status == 200, await response.text()  # the only token
    never = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"title": "Q3", "plan": ['
        await never.wait()

    try:
        async with pair.http.post(pair.url + "/workflows", data=endless(), headers=headers) as response:
            assert response.status == 429 and "Retry-After" in response.headers
            assert "write calls" in (await response.json())["message"]
    finally:
        never.set()


async def test_a_chunked_body_past_the_body_limit_is_413_not_a_server_error(start: Any) -> None:
    pair = await start(limits=LimitSettings(write=Rate(SLOW, 100)))

    async def too_much() -> AsyncIterator[bytes]:
        for _ in range(app.MAX_BODY_BYTES // 65_536 + 2):
            yield b" " * 65_536

    headers = {**auth.headers("carol"), "Content-Type": "application/json"}
    async with pair.http.post(pair.url + "/workflows", data=too_much(), headers=headers) as response:
        assert response.status == 413, await response.text()
        assert (await response.json())["status"] == "RESOURCE_EXHAUSTED"


async def test_streams_per_principal_over_grpc_and_rest_together(start: Any) -> None:
    pair = await start(limits=LimitSettings(max_streams=2))
    created = await pair.stub.CreateWorkflow(create_request(), metadata=as_user("carol"))
    workflow_id = created.workflow.workflow_id
    watcher = as_user("watcher", ("viewer",))
    streams = [
        pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=watcher) for _ in range(2)
    ]
    for stream in streams:
        await stream.read()  # CREATED: the stream is open (awaiting approval, it stays open)
    before = refusals("streams")
    third = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=watcher)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await third.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rich(caught.value)
    assert details["limit"] == "streams" and details["retry_delay"] is None
    assert details["quota"] == ["streams of watcher"]
    assert refusals("streams") == before + 1
    sse = pair.url + f"/workflows/{workflow_id}/status/stream"
    async with pair.http.get(sse, headers=auth.headers("watcher", ("viewer",))) as response:
        assert response.status == 429 and "Retry-After" not in response.headers
    # Someone else watches; the watcher's own slot comes back when one of its streams ends.
    other = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("viewer2"))
    await other.read()
    who = await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=watcher)
    assert who.limits.open_streams == 2 and who.limits.max_streams == 2
    streams[0].cancel()
    for _ in range(1500):  # (the server notices the cancel in its own time: up to 30 s)
        if (await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=watcher)).limits.open_streams == 1:
            break
        await asyncio.sleep(0.02)
    again = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=watcher)
    await again.read()
    for stream in (streams[1], other, again):
        stream.cancel()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_plans_awaiting_approval_per_principal(start: Any, database: str) -> None:
    pair = await start(database, plan_limits=PlanLimits(max_pending_plans=2))
    carol = as_user("carol")
    first = await pair.stub.CreateWorkflow(create_request(request_id="r1"), metadata=carol)
    await pair.stub.CreateWorkflow(create_request(), metadata=carol)
    listed = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=carol)
    before = refusals("pending_plans")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.CreateWorkflow(create_request(), metadata=carol)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 plans awaiting approval" in (caught.value.details() or "")
    assert rich(caught.value)["limit"] == "pending_plans" and trailer(caught.value, "retry-after") is None
    after = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=carol)
    assert after == listed and refusals("pending_plans") == before + 1  # nothing stored
    # A retried create is answered with its plan; another submitter is not held back.
    retried = await pair.stub.CreateWorkflow(create_request(request_id="r1"), metadata=carol)
    assert retried.workflow.workflow_id == first.workflow.workflow_id
    await pair.stub.CreateWorkflow(create_request(), metadata=as_user("dave"))
    who = await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=carol)
    assert (who.limits.pending_plans, who.limits.max_pending_plans) == (2, 2)
    # A decision frees a place.
    reject = wpb.RejectRequest(workflow_id=first.workflow.workflow_id, etag=first.workflow.etag, comment="no")
    await pair.stub.Reject(reject, metadata=as_user("erin"))
    await pair.stub.CreateWorkflow(create_request(), metadata=carol)


async def test_a_plan_past_the_size_limits_is_refused_naming_the_field(start: Any) -> None:
    pair = await start(plan_limits=PlanLimits(max_plan_bytes=2_000, max_plan_steps=3, max_parameters_bytes=100))
    carol = as_user("carol")
    stored = dump_sqlite(pair.db_path)
    counted = ("plan_bytes", "plan_steps", "plan_parameters")
    before = [refusals(limit) for limit in counted]
    big = wpb.CreateWorkflowRequest(title="Q3", plan=[step("test_noop", note="x" * 3_000)])
    cases = [
        (big, "plan", "too large"),
        (create_request(steps=4), "plan", "too many steps: 4, at most 3"),
        (
            wpb.CreateWorkflowRequest(title="Q3", plan=[step("test_noop", note="x" * 200)]),
            "plan[0].parameters",
            "at most 100",
        ),
    ]
    for request, field, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pair.stub.CreateWorkflow(request, metadata=carol)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or "") and text in (caught.value.details() or "")
    assert [refusals(limit) for limit in counted] == [n + 1 for n in before]  # (each limit, once)
    assert dump_sqlite(pair.db_path) == stored
    await pair.stub.CreateWorkflow(create_request(steps=3), metadata=carol)


async def test_whoami_shows_the_callers_limits(start: Any) -> None:
    limits = LimitSettings(write=Rate(10, 40), read=Rate(20, 100), watch=Rate(5, 40), max_streams=50)
    pair = await start(limits=limits, plan_limits=PlanLimits(262_144, 100, 16_384, 100))
    who = await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=as_user("carol"))
    shown = who.limits
    assert (shown.write.per_second, shown.write.burst, shown.read.burst, shown.watch.per_second) == (10, 40, 100, 5)
    assert (shown.max_streams, shown.max_pending_plans, shown.max_plan_bytes) == (50, 100, 262_144)
    assert (shown.max_plan_steps, shown.max_parameters_bytes, shown.pending_plans) == (100, 16_384, 0)
    async with pair.http.get(pair.url + "/whoami", headers=auth.headers("carol")) as response:
        body = await response.json()
    assert body["limits"]["read"] == {"per_second": 20, "burst": 100}, body


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_page_is_bounded_by_bytes_and_the_token_covers_the_rest(start: Any, database: str) -> None:
    pair = await start(database, max_page_bytes=1_000)
    carol = as_user("carol")
    for _ in range(12):  # rows of about 300 bytes: 20 steps (a row carries no parameters)
        request = wpb.CreateWorkflowRequest(title="Q3", plan=[step("test_noop", note="n" * 900)] * 20)
        await pair.stub.CreateWorkflow(request, metadata=carol)
    huge = wpb.CreateWorkflowRequest(title="big", plan=[step("test_noop")] * 100)
    await pair.stub.CreateWorkflow(huge, metadata=carol)  # bigger than a page: alone on its page
    seen: list[str] = []
    pages = 0
    token = ""
    while True:  # (that a page which ends after a few large rows reads few rows: tests/unit/test_pages.py)
        page = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=500, page_token=token), metadata=carol)
        pages += 1
        assert page.workflows, "every page holds at least one workflow"
        assert page.ByteSize() <= 1_000 or len(page.workflows) == 1, page.ByteSize()
        seen += [w.workflow_id for w in page.workflows]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 13 and pages >= 4
    # Rows are summaries: each step's procedure, not its parameters (GetWorkflow has them).
    first = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=1), metadata=carol)  # "big"
    after = wpb.ListWorkflowsRequest(page_size=1, page_token=first.next_page_token)
    row = (await pair.stub.ListWorkflows(after, metadata=carol)).workflows[0]
    assert [s.procedure for s in row.plan] == ["test_noop"] * 20
    assert not any(s.HasField("parameters") for s in row.plan), row.plan[0]
    whole = await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=row.workflow_id), metadata=carol)
    assert whole.workflow.plan[0].parameters["note"] == "n" * 900 and whole.workflow.etag == row.etag
    async with pair.http.get(pair.url + "/workflows?page_size=500", headers=auth.headers("carol")) as response:
        body = await response.json()
    assert 1 <= len(body["workflows"]) < 13 and body["next_page_token"], body


def test_the_command_line_defaults_and_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse([])
    assert settings.limits == LimitSettings(Rate(10, 20), Rate(20, 100), Rate(5, 40), 50)
    assert settings.plan_limits == PlanLimits(65_536, 100, 16_384, 100)
    assert settings.max_page_bytes == 1_048_576
    assert settings.connections.anonymous_rate == Rate(10, 100)
    monkeypatch.setenv("AUDITFLOW_GATEWAY_READ_RATE", "3")
    monkeypatch.setenv("AUDITFLOW_GATEWAY_ANONYMOUS_RATE", "1:4")
    flags = ["--write-rate", "off", "--watch-rate", "2:7", "--max-pending-plans", "0"]
    changed = parse(flags)
    assert changed.limits.read == Rate(3, 6) and changed.limits.watch == Rate(2, 7)
    assert not changed.limits.write.limited and changed.plan_limits.max_pending_plans == 0
    assert changed.connections.anonymous_rate == Rate(1, 4)
    assert not parse(["--anonymous-rate", "off"]).connections.anonymous_rate.limited
    with pytest.raises(SystemExit):
        parse(["--max-plan-steps", "101"])
    with pytest.raises(SystemExit):
        parse(["--read-rate", "-1"])


async def test_pages_large_answers_and_trail_checks_are_built_off_the_event_loop(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One caller's heavy request must not hold the loop that serves everyone else: the work
    that grows with what is asked runs on worker threads, and pages of workflows in worker
    processes (the gateway's interpreter never builds one)."""
    pair = await start()
    carol = as_user("carol")
    created = []
    for _ in range(12):  # about 9 KB each: the page's JSON is past the 64 KiB that goes to a thread
        request = wpb.CreateWorkflowRequest(title="Q3", plan=[step("test_noop", note="n" * 9_000)])
        created.append((await pair.stub.CreateWorkflow(request, metadata=carol)).workflow.workflow_id)
    loop_thread = threading.get_ident()
    threads: dict[str, set[int]] = {"wire": set(), "json": set(), "trail": set(), "body": set()}

    def recorded(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads[name].add(threading.get_ident())
            return function(*args, **kwargs)

        return call

    build_request = app.build_request

    def build(route: Any, match: Any, query: Any, body: bytes) -> Any:
        if len(body) > 50_000:  # (small requests are parsed on the loop: microseconds)
            threads["body"].add(threading.get_ident())
        return build_request(route, match, query, body)

    monkeypatch.setattr(app, "build_request", build)
    body = {"title": "Q3", "plan": [{"procedure": "test_noop", "parameters": {"note": "b" * 15_000}}] * 5}
    async with pair.http.post(pair.url + "/workflows", json=body, headers=auth.headers("carol")) as response:
        assert response.status == 200, await response.text()
        created.append((await response.json())["workflow"]["workflow_id"])
    in_gateway: list[Any] = []
    monkeypatch.setattr(messages, "summary", lambda *args: in_gateway.append(args))  # (a worker's is its own)
    monkeypatch.setattr(service, "_wire", recorded("wire", service._wire))
    monkeypatch.setattr(app, "response_json", recorded("json", app.response_json))
    monkeypatch.setattr(trail, "check", recorded("trail", trail.check))
    page = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=100), metadata=carol)
    assert [w.workflow_id for w in page.workflows] == created[::-1] and not page.next_page_token
    shown, token = [], ""  # pages of 5, each read in rounds (8 rows, then 32): none lost, none twice
    for expected in (5, 5, 3):
        part = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=5, page_token=token), metadata=carol)
        assert len(part.workflows) == expected
        shown += [w.workflow_id for w in part.workflows]
        token = part.next_page_token
    assert shown == created[::-1] and not token
    async with pair.http.get(pair.url + "/workflows?page_size=100", headers=auth.headers("carol")) as response:
        assert response.status == 200 and len((await response.json())["workflows"]) == 13
    assert not in_gateway
    workers = pair.gateway.page_workers.pids
    assert workers and os.getpid() not in workers
    assert all(parent_of(pid) == os.getpid() for pid in workers)  # (the gateway's own children)
    whole = wpb.GetWorkflowRequest(workflow_id=created[-1])  # a large answer: its encodings on threads
    await pair.stub.GetWorkflow(whole, metadata=carol)
    async with pair.http.get(f"{pair.url}/workflows/{created[-1]}", headers=auth.headers("carol")) as response:
        assert response.status == 200
    verified = await pair.stub.VerifyTrail(wpb.VerifyTrailRequest(workflow_id=created[0]), metadata=carol)
    assert verified.intact
    assert all(found and loop_thread not in found for found in threads.values()), threads


async def test_a_collection_watchs_initial_list_is_built_in_the_page_workers_at_its_turn(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WatchWorkflows' initial list (up to 500 summaries, a message each) weighs what a page
    weighs: a page worker builds it, in the stream's own encoding (protobuf for gRPC, JSON for
    SSE and NDJSON), at its principal's turn; the gateway's interpreter never builds a summary."""
    pair = await start(page_workers=1)
    carol = as_user("carol")
    made = [(await pair.stub.CreateWorkflow(create_request(), metadata=carol)).workflow.workflow_id for _ in range(3)]
    first_two = await _watched(pair.stub.WatchWorkflows(wpb.WatchWorkflowsRequest(page_size=2), metadata=carol))
    token = first_two[-1].synced.next_page_token
    rest = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_token=token), metadata=carol)
    assert [m.change.workflow.workflow_id for m in first_two[:-1]] == made[:0:-1]
    assert [w.workflow_id for w in rest.workflows] == made[:1]  # (its token pages on through ListWorkflows)
    in_gateway: list[Any] = []
    monkeypatch.setattr(messages, "summary", lambda *args: in_gateway.append(args))  # (a worker's is its own)
    slots = pair.gateway.page_workers.slots
    await slots.acquire("someone")  # (the one worker busy: the list waits for its turn)
    watched = asyncio.create_task(_watched(pair.stub.WatchWorkflows(wpb.WatchWorkflowsRequest(), metadata=carol)))
    await wait_until(lambda: slots.waiting == 1)
    assert not watched.done()
    slots.release()
    over_grpc = await asyncio.wait_for(watched, 60)
    assert [m.change.workflow.workflow_id for m in over_grpc[:-1]] == made[::-1]
    assert all(
        m.change.type == wpb.CHANGE_TYPE_ADDED and not m.change.workflow.plan[0].HasField("parameters")
        for m in over_grpc[:-1]
    )
    assert {m.resume_token for m in over_grpc} == {over_grpc[-1].resume_token} and not over_grpc[
        -1
    ].synced.next_page_token
    for accept in ("text/event-stream", app.NDJSON):
        headers = {**auth.headers("carol"), "Accept": accept}
        async with pair.http.get(pair.url + "/workflows:watch", headers=headers) as response:
            assert response.status == 200 and response.content_type == accept
            shown, ids = await _read_stream(response)
        assert [m["change"]["workflow"]["workflow_id"] for m in shown[:-1]] == made[::-1]
        assert shown[0]["change"]["type"] == "CHANGE_TYPE_ADDED" and "synced" in shown[-1]
        assert ids == ([m["resume_token"] for m in shown] if accept != app.NDJSON else [])
    assert not in_gateway
    # Resumed from a token of long ago: every workflow written since, read and encoded there too
    # (no margin before the token: the broker's look back then holds none of them as a change).
    monkeypatch.setattr(collection, "MARGIN", timedelta(0))
    long_ago = pages.resume_token(datetime(2000, 1, 1, tzinfo=UTC))
    resumed = pair.stub.WatchWorkflows(wpb.WatchWorkflowsRequest(resume_token=long_ago), metadata=carol, timeout=60)
    caught_up = [await anext(aiter(resumed)) for _ in made]
    resumed.cancel()
    assert [m.change.workflow.workflow_id for m in caught_up] == made  # (oldest write first)
    assert {m.change.type for m in caught_up} == {wpb.CHANGE_TYPE_MODIFIED}
    headers = {**auth.headers("carol"), "Accept": app.NDJSON}
    async with pair.http.get(f"{pair.url}/workflows:watch?resume_token={long_ago}", headers=headers) as response:
        lines = [json.loads(await response.content.readline()) for _ in made]
    assert [m["change"]["workflow"]["workflow_id"] for m in lines] == made
    assert not in_gateway


async def test_a_resumed_watch_catches_up_at_its_callers_read_rate(start: Any) -> None:
    """A resume token of long ago asks for every workflow written since, which its admission
    could not know: the catch-up takes a read token per ten workflows as it sends, and past
    the rate it waits (one token every 100 s here), never refused, and holds nothing up."""
    pair = await start(limits=LimitSettings(read=Rate(SLOW, 3)))
    carol, reader = as_user("carol"), as_user("reader", ("viewer",))
    made = [(await pair.stub.CreateWorkflow(create_request(), metadata=carol)).workflow.workflow_id for _ in range(25)]
    long_ago = pages.resume_token(datetime(2000, 1, 1, tzinfo=UTC))
    stream = pair.stub.WatchWorkflows(wpb.WatchWorkflowsRequest(resume_token=long_ago), metadata=reader, timeout=60)
    received = aiter(stream)
    first = [await anext(received) for _ in range(20)]  # the call took one token, two are left: 20 workflows
    assert [m.change.workflow.workflow_id for m in first] == made[:20]
    await wait_until(lambda: paced_streams() == 1)  # the next ten wait for a token
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=10), metadata=as_user("other", ("viewer",)))
    stream.cancel()
    await wait_until(lambda: paced_streams() == 0)  # a stream that ends waits no more


async def test_a_trail_is_checked_at_its_callers_read_rate(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trail grows with its run, and checking it is the work: past the events its admission
    paid for, VerifyTrail takes a read token per EVENTS_PER_TOKEN events as it reads them, and
    past the rate it waits (one token every 100 s here), never refused, and holds nobody else up."""
    pair = await start(limits=LimitSettings(read=Rate(SLOW, 2), max_streams=5))
    created = await pair.stub.CreateWorkflow(create_request(), metadata=as_user("carol"))
    check = wpb.VerifyTrailRequest(workflow_id=created.workflow.workflow_id)
    reader = as_user("reader", ("viewer",))
    assert (await pair.stub.VerifyTrail(check, metadata=reader)).intact  # one event: what its admission paid for
    monkeypatch.setattr(verify, "EVENTS_PER_TOKEN", 1)  # (a trail of one event now costs a read more)
    call = pair.stub.VerifyTrail(check, metadata=reader, timeout=60)
    await wait_until(lambda: paced_streams() == 1)  # the admission took the last token: the event waits
    assert pair.gateway.limiter.open_streams(READER) == 1  # (a waiting check holds one of its slots)
    other = as_user("other", ("viewer",))
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=10), metadata=other)  # (another's bucket)
    call.cancel()
    await wait_until(lambda: paced_streams() == 0)  # a call that ends waits no more
    await wait_until(lambda: pair.gateway.limiter.open_streams(READER) == 0)


async def test_an_export_is_read_at_its_callers_read_rate(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export's size is the run's, which its admission could not know: past the stream's
    admission, every FINDINGS_PER_TOKEN findings read take one of the caller's read tokens,
    and past the rate the export waits (one token every 100 s here) before it encodes them,
    never refused, over gRPC and REST alike, and holds nobody else up."""
    pair = await start(limits=LimitSettings(read=Rate(SLOW, 3), max_streams=5))
    plan = [step("test_findings", count=5)]
    created = (
        await pair.stub.CreateWorkflow(wpb.CreateWorkflowRequest(title="f", plan=plan), metadata=as_user("carol"))
    ).workflow
    approve = wpb.ApproveRequest(workflow_id=created.workflow_id, etag=created.etag)
    await pair.stub.Approve(approve, metadata=as_user("alice"))
    watch = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=created.workflow_id), metadata=as_user("alice"))
    assert [m async for m in watch][-1].snapshot.is_completed
    export = wpb.ExportFindingsRequest(workflow_id=created.workflow_id)
    reader = as_user("reader", ("viewer",))
    # Five findings are less than a token's worth: the export costs its admission alone.
    whole = b"".join([m.data async for m in pair.stub.ExportFindings(export, metadata=reader)])
    assert whole.count(b"\r\n") == 6  # the header and five findings
    monkeypatch.setattr(findings, "FINDINGS_PER_TOKEN", 1)  # five tokens now; two are left
    call = pair.stub.ExportFindings(export, metadata=reader, timeout=60)
    await wait_until(lambda: paced_streams() == 1)
    assert pair.gateway.limiter.open_streams(READER) == 1  # (a waiting export holds one of its slots)
    other = as_user("other", ("viewer",))
    await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=10), metadata=other)  # (another's bucket)
    call.cancel()
    await wait_until(lambda: paced_streams() == 0)
    url = f"{pair.url}/workflows/{created.workflow_id}/findings/export"
    # Over REST the first chunk decides the status: the answer waits, as the stream does. (A
    # REST client that leaves is noticed at the next write, as on every REST stream; the
    # gateway's stop ends this one.)
    download = asyncio.ensure_future(pair.http.get(url, headers=auth.headers("reader", ("viewer",))))
    await wait_until(lambda: paced_streams() == 1)
    assert not download.done() and pair.gateway.limiter.open_streams(READER) == 1
    download.cancel()


READER = Principal("reader", frozenset({"viewer"}), "jwt")


def paced_streams() -> float | None:
    return metrics.GATEWAY.registry.get_sample_value("auditflow_paced_streams")


async def _watched(stream: Any) -> list[wpb.WatchWorkflowsResponse]:
    """A collection watch's messages up to its SYNCED mark (then the stream is cancelled)."""
    received = []
    async for message in stream:
        received.append(message)
        if message.HasField("synced"):
            break
    stream.cancel()
    return received


async def _read_stream(response: aiohttp.ClientResponse) -> tuple[list[dict[str, Any]], list[str]]:
    """An SSE or NDJSON stream's messages up to its SYNCED mark, and the SSE event ids."""
    shown: list[dict[str, Any]] = []
    ids: list[str] = []
    async for line in response.content:
        text = line.decode().strip()
        if text.startswith("id: "):
            ids.append(text[4:])
        elif text.startswith("data: ") or text.startswith("{"):
            shown.append(json.loads(text.removeprefix("data: ")))
            if "synced" in shown[-1]:
                return shown, ids
    raise AssertionError(f"the stream ended before its synced mark: {shown}")


async def test_one_principals_many_pages_never_queue_ahead_of_anothers_one_page(start: Any) -> None:
    """One page worker, its slot held (a page under way): carol asks for ten pages, then dave
    for one. Dave's page is built second, after one of carol's, not after all ten."""
    pair = await start(page_workers=1)
    carol, dave = as_user("carol"), as_user("dave")
    await pair.stub.CreateWorkflow(create_request(), metadata=carol)
    slots = pair.gateway.page_workers.slots
    await slots.acquire("someone")
    done: list[str] = []

    async def page(name: str, who: Any) -> None:
        await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=500), metadata=who)
        done.append(name)

    calls = [asyncio.create_task(page("carol", carol)) for _ in range(10)]
    await wait_until(lambda: slots.waiting == 10)
    calls.append(asyncio.create_task(page("dave", dave)))
    await wait_until(lambda: slots.waiting == 11)
    assert metrics.GATEWAY.registry.get_sample_value("auditflow_gateway_pages_waiting") == 11
    slots.release()
    await asyncio.wait_for(asyncio.gather(*calls), 60)
    assert done.index("dave") <= 1, done


async def test_a_killed_page_worker_fails_its_pages_with_unavailable_and_new_workers_take_the_next(
    start: Any,
) -> None:
    pair = await start()
    carol = as_user("carol")
    made = [(await pair.stub.CreateWorkflow(create_request(), metadata=carol)).workflow.workflow_id for _ in range(3)]
    listed = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=carol)
    assert [w.workflow_id for w in listed.workflows] == made[::-1]
    killed = pair.gateway.page_workers.pids
    assert killed
    failures = metrics.GATEWAY.registry.get_sample_value("auditflow_gateway_page_worker_failures_total") or 0
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not any(alive(pid) for pid in killed))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=carol)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    assert "try again" in (refused.value.details() or "")
    listed = await pair.stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=carol)
    assert [w.workflow_id for w in listed.workflows] == made[::-1]
    async with pair.http.get(pair.url + "/workflows", headers=auth.headers("carol")) as response:
        assert response.status == 200 and len((await response.json())["workflows"]) == 3
    assert pair.gateway.page_workers.pids and not set(pair.gateway.page_workers.pids) & set(killed)
    assert metrics.GATEWAY.registry.get_sample_value("auditflow_gateway_page_worker_failures_total") == failures + 1


async def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_calls_failing_to_authenticate_wait_their_turn_and_authenticated_ones_do_not(start: Any) -> None:
    pair = await start(connections=ConnectionSettings(anonymous_rate=Rate(SLOW, 3)))
    created = await pair.stub.CreateWorkflow(create_request(), metadata=as_user("carol"))
    request = wpb.GetStatusRequest(workflow_id=created.workflow.workflow_id)
    stranger = ec.generate_private_key(ec.SECP256R1())  # (a key the gateway does not trust, the right key id)
    forged = (("authorization", "Bearer " + auth.sign(auth.claims_for("carol"), key=stranger)),)
    before = refusals("anonymous")

    async def refused(credentials: Any) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pair.stub.GetStatus(request, metadata=credentials)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value

    for credentials in ((), forged, (("authorization", "Bearer not-a-token"),)):  # the address's burst
        await refused(credentials)
    assert refusals("anonymous") == before
    # Past it, the same answer, once the address's turn comes (no token comes back: after the
    # hold); meanwhile the same address, authenticated, is answered as ever, and never held.
    began = asyncio.get_running_loop().time()
    held = asyncio.ensure_future(refused(forged))
    await wait_until(lambda: refusals("anonymous") == before + 1)
    answer = await pair.stub.GetStatus(request, metadata=as_user("carol"))
    assert answer.status.status == created.workflow.status
    await held
    assert asyncio.get_running_loop().time() - began >= 0.9  # (held a second)
    # REST shares the address's turns: 401 as ever, held and counted.
    url = pair.url + f"/workflows/{created.workflow.workflow_id}/status/live"
    async with pair.http.get(url, headers={"Authorization": "Bearer not-a-token"}) as response:
        assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
    async with pair.http.get(url, headers=auth.headers("carol")) as response:
        assert response.status == 200
    assert refusals("anonymous") == before + 2


async def test_calls_that_need_no_credentials_take_their_addresss_turns_too(start: Any) -> None:
    pair = await start(connections=ConnectionSettings(anonymous_rate=Rate(SLOW, 5)))
    before = refusals("anonymous")
    async with grpc.aio.insecure_channel(pair.gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for _ in range(2):  # the burst, over gRPC and REST: answered at once
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # (a method no server here has)
            await channel.unary_unary("/auditflow.v1.WorkflowService/NoSuchMethod")(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED and "NoSuchMethod" in str(caught.value.details())
        for path in ("/healthz", "/no-such-path"):
            async with pair.http.get(pair.url + path) as response:
                assert response.status in (200, 404)
        assert refusals("anonymous") == before
        # Past it each waits its turn (none comes back: the hold), with the same answer; the API,
        # authenticated, is answered meanwhile and never held.
        checked = asyncio.ensure_future(health.Check(health_pb2.HealthCheckRequest()))
        await wait_until(lambda: refusals("anonymous") == before + 1)
        await pair.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=as_user("carol"))
        assert (await checked).status == serving
        async with pair.http.get(pair.url + "/openapi.json") as response:
            assert response.status == 200
        async with pair.http.get(pair.url + "/whoami", headers=auth.headers("carol")) as response:
            assert response.status == 200
        streaming = channel.unary_stream("/auditflow.v1.WorkflowService/NoSuchStream")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await streaming.read()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert refusals("anonymous") == before + 3


async def test_a_trusted_proxy_is_never_held(start: Any) -> None:
    trusting = auth.gateway_auth(proxy_user_header="X-Auditflow-User", trusted_proxies=("127.0.0.1/32",))
    pair = await start(auth=trusting, connections=ConnectionSettings(anonymous_rate=Rate(SLOW, 2)))
    before = refusals("anonymous")
    for _ in range(5):  # (its users' page loads, their calls without the header: past the burst)
        async with pair.http.get(pair.url + "/healthz") as response:
            assert response.status == 200
        async with pair.http.get(pair.url + "/whoami") as response:
            assert response.status == 401
    async with pair.http.get(pair.url + "/whoami", headers={"X-Auditflow-User": "carol"}) as response:
        assert response.status == 200 and (await response.json())["principal"] == "carol"
    assert refusals("anonymous") == before


async def test_a_cross_site_write_through_the_proxy_takes_none_of_its_users_tokens(start: Any) -> None:
    trusting = auth.gateway_auth(
        proxy_user_header="X-Auditflow-User", proxy_groups_header="X-Groups", trusted_proxies=("127.0.0.1/32",)
    )
    pair = await start(auth=trusting, limits=LimitSettings(write=Rate(SLOW, 2)))
    carol = {"X-Auditflow-User": "carol", "X-Groups": "submitter"}
    body = {"title": "Q3", "plan": [{"procedure": "test_noop"}]}
    for _ in range(4):  # another site's page posting a form through carol's browser: refused, free
        form = {**carol, "Origin": "http://evil.example"}
        async with pair.http.post(pair.url + "/workflows", data="title=x", headers=form) as response:
            assert response.status == 400, await response.text()
    same_site = {**carol, "Origin": pair.url}
    async with pair.http.post(pair.url + "/workflows", json=body, headers=same_site) as response:
        assert response.status == 200, await response.text()


async def test_an_allowed_origins_preflight_is_not_held(start: Any) -> None:
    pair = await start(
        rest_cors_origins=("http://ui.example",), connections=ConnectionSettings(anonymous_rate=Rate(SLOW, 1))
    )
    before = refusals("anonymous")
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "GET"}
    for _ in range(3):  # (a cross-origin page's calls each need one; CORS answers them)
        async with pair.http.options(pair.url + "/workflows/wf_x/status/live", headers=preflight) as response:
            assert response.status == 204
    assert refusals("anonymous") == before


async def test_a_call_the_callers_role_may_not_make_takes_its_tokens(start: Any) -> None:
    pair = await start(limits=LimitSettings(write=Rate(SLOW, 2)))
    created = await pair.stub.CreateWorkflow(create_request(), metadata=as_user("carol"))
    approve = wpb.ApproveRequest(workflow_id=created.workflow.workflow_id, etag=created.workflow.etag)
    viewer = as_user("victor", ("viewer",))
    for _ in range(2):  # its burst of writes: refused by the policy, as before
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pair.stub.Approve(approve, metadata=viewer)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stored = dump_sqlite(pair.db_path)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.Approve(approve, metadata=viewer)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and rich(caught.value)["limit"] == "write_rate"
    url = pair.url + f"/workflows/{created.workflow.workflow_id}/approve"
    headers = auth.headers("victor", ("viewer",))
    async with pair.http.post(url, json={"etag": created.workflow.etag}, headers=headers) as response:
        assert response.status == 429, await response.text()
    assert dump_sqlite(pair.db_path) == stored
    # Its reads are another kind, and another principal's writes its own.
    await pair.stub.GetStatus(wpb.GetStatusRequest(workflow_id=created.workflow.workflow_id), metadata=viewer)
    await pair.stub.CreateWorkflow(create_request(), metadata=as_user("carol"))
