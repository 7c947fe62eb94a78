"""The REST gateway against a real gateway and processor, in-process on real ports, with a
real HTTP client: every route, the error mapping, the seed UI's JSON, SSE and NDJSON."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from auditflow import logs
from gateway.rest.errors import http_status
from gateway.rest.routes import routes_of
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from gateway.settings import parse as parse_args
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "auditflow" / "samples" / "ledger.csv"
PLUGINS = ("tests.support.procedures",)


@dataclass
class Api:
    gateway: Gateway
    processor: Processor
    http: aiohttp.ClientSession
    url: str

    async def call(
        self, method: str, path: str, *, user: str | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:  # (otherwise the session's default: a viewer)
            headers.update(auth.headers(user))
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def create(self, plan: list[dict[str, Any]] | None = None, user: str = "carol") -> str:
        plan = plan or [{"procedure": "ledger_summary", "parameters": {"path": str(SAMPLE)}}]
        status, body = await self.call("POST", "/workflows", user=user, json={"title": "Q3", "plan": plan})
        assert status == 200, body
        return str(body["workflow"]["workflow_id"])

    async def decide(self, workflow_id: str, verb: str, user: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        """Approve or reject (`verb`) as a person does: read the workflow, then decide on the
        revision read (its etag)."""
        status, body = await self.call("GET", f"/workflows/{workflow_id}", user=user)
        assert status == 200, body
        etag = body["workflow"]["etag"]
        return await self.call("POST", f"/workflows/{workflow_id}/{verb}", user=user, json={"etag": etag, **fields})


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            **auth.processor_settings(),
            database_url=f"sqlite:///{tmp_path / 'processor.db'}",
            plugins=PLUGINS,
            cycle_delay=0.02,
            poll_interval=0.05,
            heartbeat_interval=0.3,
        ),
    )
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
            processor_target=processor.address,
            plugins=PLUGINS,
            heartbeat_interval=0.3,
            rest_port=0,
            rest_cors_origins=("http://ui.example",),
        ),
    )
    await gateway.start()
    assert gateway.rest is not None and gateway.rest.port != 0
    viewer = auth.headers("observer", ("viewer",))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=viewer) as http:
        yield Api(gateway, processor, http, gateway.rest.url)
    await gateway.stop(0)
    await processor.stop(1)


def sleeps(n: int, seconds: float = 0.2) -> list[dict[str, Any]]:
    return [{"procedure": "test_sleep", "parameters": {"seconds": seconds}} for _ in range(n)]


def gate(path: Path) -> dict[str, Any]:
    """A step that waits until `path` exists: the run is under way until the test writes it."""
    return {"procedure": "test_wait_for_file", "parameters": {"path": str(path)}}


# --- routes -------------------------------------------------------------------------------


def test_routes_come_from_the_http_annotations() -> None:
    from auditflow.v1 import workflow_service_pb2 as wpb

    routes = {
        (r.http_method, r.template): r.method.name
        for r in routes_of(wpb.DESCRIPTOR.services_by_name["WorkflowService"])
    }
    assert routes == {
        ("POST", "/workflows"): "CreateWorkflow",
        ("GET", "/workflows/{workflow_id}"): "GetWorkflow",
        ("GET", "/workflows/{workflow_id}/status/live"): "GetStatus",
        ("GET", "/workflows"): "ListWorkflows",
        ("POST", "/workflows/{workflow_id}/approve"): "Approve",
        ("POST", "/workflows/{workflow_id}/reject"): "Reject",
        ("POST", "/workflows/{workflow_id}/cancel"): "CancelWorkflow",
        ("GET", "/workflows/{workflow_id}/status/stream"): "WatchStatus",
        ("GET", "/workflows/{workflow_id}/findings"): "ListFindings",
        ("GET", "/workflows/{workflow_id}/findings/export"): "ExportFindings",
        ("GET", "/workflows/{workflow_id}/trail"): "VerifyTrail",
        ("GET", "/whoami"): "WhoAmI",
        ("POST", "/workflows/{workflow_id}/revise"): "ReviseWorkflow",
        ("POST", "/workflows/{workflow_id}/request-changes"): "RequestChanges",
        ("GET", "/workflows/{workflow_id}/revisions/{revision}"): "GetRevision",
        ("GET", "/workflows:watch"): "WatchWorkflows",
    }


async def test_create_get_and_list(api: Api) -> None:
    workflow_id = await api.create()
    status, body = await api.call("GET", f"/workflows/{workflow_id}")
    assert status == 200
    workflow = body["workflow"]
    assert workflow["workflow_id"] == workflow_id
    assert workflow["created_by"] == "carol"
    assert workflow["status"] == "WORKFLOW_STATUS_AWAITING_APPROVAL"
    assert workflow["plan"][0]["parameters"] == {"path": str(SAMPLE)}
    assert workflow["is_processing"] is False and workflow["is_completed"] is False  # defaults are printed
    assert workflow["progress"] == {"done": 0, "total": 1}
    other = await api.create()
    status, listed = await api.call("GET", "/workflows", params={"page_size": "1"})
    assert status == 200
    assert [w["workflow_id"] for w in listed["workflows"]] == [other]
    status, rest = await api.call("GET", "/workflows", params={"page_token": listed["next_page_token"]})
    assert [w["workflow_id"] for w in rest["workflows"]] == [workflow_id]
    await api.decide(other, "reject", "bob", comment="no")
    query = [("statuses", "WORKFLOW_STATUS_REJECTED"), ("statuses", "WORKFLOW_STATUS_CANCELLED")]
    status, rejected = await api.call("GET", "/workflows", params=query)
    assert [w["workflow_id"] for w in rejected["workflows"]] == [other]


async def test_approve_answers_with_the_seed_json_and_live_status_is_202_then_200(
    api: Api, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    workflow_id = await api.create([gate(go), *sleeps(1)])
    caplog.set_level(logging.INFO, logger="gateway")
    caplog.handler.addFilter(logs.ContextFilter())  # (as the servers' handler: the bound fields)
    status, answer = await api.decide(workflow_id, "approve", "alice")
    assert status == 200, answer
    assert answer["status"] == "success"
    assert answer["workflow_id"] == workflow_id
    assert answer["approved"] is True
    assert answer["immediate_response"] is True
    assert answer["background_processing_started"] is True
    assert answer["processing_message"]
    assert answer["workflow_status"] == "WORKFLOW_STATUS_APPROVED"
    assert answer["updated_at"].endswith("Z")
    assert answer["workflow"]["decided_by"] == "alice"
    approved = [r for r in caplog.records if r.name == "gateway.api" and "approved" in r.getMessage()]
    assert approved and all(getattr(r, "workflow_id", None) == workflow_id for r in approved), approved

    status, live = await api.call("GET", f"/workflows/{workflow_id}/status/live")
    assert status == 202
    assert live["is_processing"] is True and live["background_processing"] is True
    assert live["is_completed"] is False
    assert live["status"] in ("WORKFLOW_STATUS_APPROVED", "WORKFLOW_STATUS_QUEUED", "WORKFLOW_STATUS_RUNNING")
    assert live["progress"]["total"] == 2 and "last_update" in live and "progress_percent" in live
    go.write_text("go")
    for _ in range(200):
        status, live = await api.call("GET", f"/workflows/{workflow_id}/status/live")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    assert live["status"] == "WORKFLOW_STATUS_COMPLETED"
    assert live["is_completed"] is True and live["is_processing"] is False
    assert live["progress"] == {"done": 2, "total": 2} and live["progress_percent"] == 100


async def test_live_status_of_a_workflow_awaiting_approval_is_200(api: Api) -> None:
    workflow_id = await api.create()
    status, live = await api.call("GET", f"/workflows/{workflow_id}/status/live")
    assert status == 200 and live["status"] == "WORKFLOW_STATUS_AWAITING_APPROVAL"


async def test_reject_and_cancel(api: Api) -> None:
    rejected = await api.create()
    status, body = await api.decide(rejected, "reject", "bob", comment="no")
    assert status == 200
    assert body["workflow"]["status"] == "WORKFLOW_STATUS_REJECTED"
    assert body["workflow"]["decision_comment"] == "no"
    cancelled = await api.create()
    status, body = await api.call("POST", f"/workflows/{cancelled}/cancel", user="carol", json={"reason": "dup"})
    assert status == 200
    assert body["workflow"]["status"] == "WORKFLOW_STATUS_CANCELLED" and body["pending"] is False


# --- errors -------------------------------------------------------------------------------


def reasons(body: dict[str, Any]) -> list[str]:
    return [d.get("reason", "") for d in body["details"] if d["@type"].endswith("ErrorInfo")]


def bad_fields(body: dict[str, Any]) -> list[str]:
    return [v["field"] for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["field_violations"]]


async def test_grpc_errors_become_http_statuses_with_code_message_and_details(api: Api) -> None:
    status, body = await api.call("GET", f"/workflows/wf_{'0' * 32}")
    assert status == 404 and body["status"] == "NOT_FOUND" and body["code"] == 5 and body["message"]
    status, body = await api.call("GET", f"/workflows/wf_{'0' * 32}/status/live")
    assert status == 404
    status, body = await api.call("GET", "/workflows/not-an-id")
    assert status == 400 and body["status"] == "INVALID_ARGUMENT" and bad_fields(body) == ["workflow_id"]

    workflow_id = await api.create(user="carol")
    status, body = await api.decide(workflow_id, "approve", "carol")
    assert status == 403 and body["status"] == "PERMISSION_DENIED"
    assert (await api.decide(workflow_id, "reject", "bob", comment="no"))[0] == 200
    status, body = await api.decide(workflow_id, "approve", "alice")
    assert status == 409 and body["status"] == "FAILED_PRECONDITION" and reasons(body) == ["ALREADY_DECIDED"]

    status, body = await api.call("GET", "/workflows", user="a\x07bell")
    assert status == 401 and body["status"] == "UNAUTHENTICATED"
    status, body = await api.call(
        "POST", "/workflows", user="carol", json={"title": "t", "plan": [{"procedure": "nope"}]}
    )
    assert status == 400 and bad_fields(body)


async def test_a_decision_names_the_revision_read_and_a_rejection_says_why(api: Api) -> None:
    workflow_id = await api.create()
    other = await api.create([{"procedure": "test_noop", "parameters": {}}])
    _, read = await api.call("GET", f"/workflows/{workflow_id}")
    _, stale = await api.call("GET", f"/workflows/{other}")  # another plan's etag: well-formed, not this one's
    approve, reject = f"/workflows/{workflow_id}/approve", f"/workflows/{workflow_id}/reject"
    for kwargs in ({}, {"json": {}}, {"json": {"comment": "fine", "etag": ""}}):
        status, body = await api.call("POST", approve, user="alice", **kwargs)
        assert status == 400 and body["status"] == "INVALID_ARGUMENT", (kwargs, body)
        assert bad_fields(body) == ["etag"] and "read the workflow first" in body["message"], body
    for comment in ("", "   "):
        status, body = await api.call(
            "POST", reject, user="bob", json={"etag": read["workflow"]["etag"], "comment": comment}
        )
        assert status == 400 and bad_fields(body) == ["comment"], body
    status, body = await api.call("POST", reject, user="bob", json={"comment": "wrong period"})
    assert status == 400 and bad_fields(body) == ["etag"], body
    for path, user in ((approve, "alice"), (reject, "bob")):
        status, body = await api.call("POST", path, user=user, json={"etag": stale["workflow"]["etag"], "comment": "x"})
        assert status == 409 and body["status"] == "FAILED_PRECONDITION" and reasons(body) == ["ETAG_MISMATCH"], body
    status, after = await api.call("GET", f"/workflows/{workflow_id}")
    assert after == read  # nothing stored: still awaiting approval, no approval and no new event
    assert after["workflow"]["status"] == "WORKFLOW_STATUS_AWAITING_APPROVAL"
    status, body = await api.call("POST", approve, user="alice", json={"etag": read["workflow"]["etag"]})
    assert status == 200 and body["approved"] is True, body


async def test_malformed_requests_are_400_or_413_never_500(api: Api) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/workflows", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/workflows", {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/workflows", {"json": [1, 2]}),
        ("POST", "/workflows", {"json": {"max_cycles": "many"}}),
        ("POST", "/workflows", {"json": {"max_cycles": 2**40}}),
        ("POST", "/workflows", {"json": {"plan": "x"}}),
        ("POST", "/workflows", {"json": {"plan": [{"parameters": 3}]}}),
        ("POST", "/workflows", {"json": {"no_such_field": 1}}),
        ("POST", "/workflows", {"data": b"[" * 100_000}),
        ("POST", "/workflows", {"json": {"plan": [{"parameters": {"a": _nested(200)}}]}}),
        ("GET", "/workflows", {"params": {"page_size": "x"}}),
        ("GET", "/workflows", {"params": {"statuses": "NOT_A_STATUS"}}),
        ("GET", "/workflows", {"params": {"no_such_param": "1"}}),
        ("GET", "/workflows", {"params": [("page_size", "1"), ("page_size", "2")]}),
        ("GET", "/workflows/x/status/stream", {"headers": {"Last-Event-ID": "abc"}}),
    ]
    for method, path, kwargs in cases:
        status, body = await api.call(method, path, user="carol", **kwargs)
        assert status == 400, (path, kwargs, body)
        assert body["status"] == "INVALID_ARGUMENT" and body["message"]
    status, body = await api.call("POST", "/workflows", user="carol", data=b"{" + b" " * (5 * 1024 * 1024) + b"}")
    assert status == 413 and body["status"] == "RESOURCE_EXHAUSTED"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_unknown_paths_and_methods_answer_json(api: Api) -> None:
    status, body = await api.call("GET", "/nope")
    assert status == 404 and body["status"] == "NOT_FOUND"
    status, body = await api.call("DELETE", "/workflows")
    assert status == 405


def test_the_status_mapping() -> None:
    C = grpc.StatusCode
    assert [
        http_status(c)
        for c in (
            C.NOT_FOUND,
            C.INVALID_ARGUMENT,
            C.OUT_OF_RANGE,
            C.FAILED_PRECONDITION,
            C.PERMISSION_DENIED,
            C.UNAUTHENTICATED,
            C.RESOURCE_EXHAUSTED,
            C.UNAVAILABLE,
            C.INTERNAL,
            C.UNKNOWN,
        )
    ] == [404, 400, 400, 409, 403, 401, 429, 503, 500, 500]


async def test_cors_allows_the_listed_origin_only(api: Api) -> None:
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    async with api.http.options(f"{api.url}/workflows", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://ui.example"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    async with api.http.get(f"{api.url}/workflows", headers={"Origin": "http://ui.example"}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "http://ui.example"
    async with api.http.get(f"{api.url}/workflows", headers={"Origin": "http://evil.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


# --- streams ------------------------------------------------------------------------------


@dataclass
class Sse:
    id: str | None
    event: str
    data: str


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[Sse | str]:
    """Parsed SSE events, and comments as plain strings."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield line
        elif line == "":
            if "data" in fields:
                yield Sse(fields.get("id"), fields.get("event", "message"), fields["data"])
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def read_sse(
    api: Api, workflow_id: str, last_event_id: int | None = None, stop_at: int | None = None
) -> tuple[list[int], list[str], list[str]]:
    """(event ids, other event names, comments) of one SSE stream, to its end or `stop_at`."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    ids: list[int] = []
    names: list[str] = []
    comments: list[str] = []
    async with api.http.get(f"{api.url}/workflows/{workflow_id}/status/stream", headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        async for item in sse_events(response):
            if isinstance(item, str):
                comments.append(item)
                continue
            if item.id is None:
                names.append(item.event)
                continue
            message = json.loads(item.data)
            assert int(message["event"]["sequence"]) == int(item.id)
            assert message["snapshot"]["workflow_id"] == workflow_id
            ids.append(int(item.id))
            if stop_at is not None and ids[-1] >= stop_at:
                break
    return ids, names, comments


async def test_sse_streams_every_event_with_its_sequence_as_id(api: Api) -> None:
    workflow_id = await api.create(sleeps(2, 0.4))
    await api.decide(workflow_id, "approve", "alice")
    ids, names, comments = await read_sse(api, workflow_id)
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 6  # CREATED … COMPLETED
    assert names == ["end"]
    assert ": heartbeat" in comments  # the cycles take longer than a heartbeat interval


async def test_sse_resumes_after_last_event_id_mid_run_with_no_gap_and_no_duplicate(api: Api, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workflow_id = await api.create([*sleeps(1, 0.3), gate(go), *sleeps(2, 0.3)])
    await api.decide(workflow_id, "approve", "alice")
    first, _, _ = await read_sse(api, workflow_id, stop_at=5)  # CREATED … STARTED, CYCLE 1: mid-run
    assert first == [1, 2, 3, 4, 5]
    status, _ = await api.call("GET", f"/workflows/{workflow_id}/status/live")
    assert status == 202  # still running (the second step waits) when the browser reconnects
    go.write_text("go")
    rest, names, _ = await read_sse(api, workflow_id, last_event_id=first[-1])
    assert rest[0] == 6 and names == ["end"]
    assert first + rest == list(range(1, len(first) + len(rest) + 1))
    # Reconnecting once more after the end gives no event again, only the end.
    again, names, _ = await read_sse(api, workflow_id, last_event_id=rest[-1])
    assert again == [] and names == ["end"]


async def test_ndjson_for_non_browser_clients(api: Api) -> None:
    workflow_id = await api.create(sleeps(1))
    await api.decide(workflow_id, "approve", "alice")
    headers = {"Accept": "application/x-ndjson"}
    lines = []
    url = f"{api.url}/workflows/{workflow_id}/status/stream"
    async with api.http.get(url, headers=headers, params={"after_sequence": "1"}) as response:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        async for raw in response.content:
            lines.append(json.loads(raw))
    events = [line["event"] for line in lines if "event" in line]
    assert [int(e["sequence"]) for e in events] == list(range(2, len(events) + 2))
    assert events[-1]["type"] == "EVENT_TYPE_COMPLETED"
    assert lines[-1]["snapshot"]["is_completed"] is True


async def test_stream_errors_before_the_first_event_are_plain_http_errors(api: Api) -> None:
    status, body = await api.call("GET", f"/workflows/wf_{'0' * 32}/status/stream")
    assert status == 404 and body["status"] == "NOT_FOUND"
    workflow_id = await api.create()
    status, body = await api.call("GET", f"/workflows/{workflow_id}/status/stream", headers={"Last-Event-ID": "99"})
    assert status == 400 and body["status"] == "OUT_OF_RANGE"


# --- running it ---------------------------------------------------------------------------


def test_rest_port_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args([]).rest_port == 8080
    assert parse_args(["--rest-port", "0"]).rest_port == 0
    assert parse_args(["--rest-port", "off"]).rest_port is None
    monkeypatch.setenv("AUDITFLOW_GATEWAY_REST_PORT", "9090")
    assert parse_args([]).rest_port == 9090
    assert GatewaySettings().rest_port is None


async def test_a_client_that_leaves_mid_stream_frees_its_call_quietly(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    workflow_id = await api.create()  # awaits approval: its stream only has heartbeats after CREATED
    ids, _, _ = await read_sse(api, workflow_id, stop_at=1)
    assert ids == [1]
    assert api.gateway.rest is not None
    for _ in range(100):  # the next heartbeat's write notices the closed connection
        if not api.gateway.rest.rest._streams:
            break
        await asyncio.sleep(0.05)
    assert not api.gateway.rest.rest._streams
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_stopping_ends_open_streams_cleanly_and_at_once(api: Api) -> None:
    workflow_id = await api.create()
    async with api.http.get(f"{api.url}/workflows/{workflow_id}/status/stream") as response:
        assert response.status == 200
        await response.content.readuntil(b"id: 1\n")
        assert api.gateway.rest is not None
        await api.gateway.rest.stop()
        # The chunked body ends properly, no payload error: stop ended the stream itself. Left
        # to the server's shutdown timeout, the stream would be cancelled mid-body instead.
        await response.content.read()


async def test_openapi_document_is_valid_and_describes_the_answers(api: Api) -> None:
    from openapi_schema_validator import OAS30Validator
    from openapi_spec_validator import validate

    status, document = await api.call("GET", "/openapi.json")
    assert status == 200
    validate(document)  # raises on an invalid OpenAPI 3 document
    assert set(document["paths"]) == {
        "/whoami",
        "/workflows",
        "/workflows/{workflow_id}",
        "/workflows/{workflow_id}/status/live",
        "/workflows/{workflow_id}/approve",
        "/workflows/{workflow_id}/reject",
        "/workflows/{workflow_id}/cancel",
        "/workflows/{workflow_id}/status/stream",
        "/workflows/{workflow_id}/findings",
        "/workflows/{workflow_id}/findings/export",
        "/workflows/{workflow_id}/trail",
        "/workflows/{workflow_id}/revise",
        "/workflows/{workflow_id}/request-changes",
        "/workflows/{workflow_id}/revisions/{revision}",
        "/workflows:watch",
    }
    listed = document["paths"]["/workflows"]["get"]
    assert {p["name"] for p in listed["parameters"] if p["in"] == "query"} == {
        "page_size",
        "page_token",
        "statuses",
        "awaiting_my_approval",
        "created_by_me",
        "title_contains",
    }
    findings = document["paths"]["/workflows/{workflow_id}/findings"]["get"]
    assert {p["name"] for p in findings["parameters"] if p["in"] == "query"} == {
        "page_size",
        "page_token",
        "filter.steps",
        "filter.procedures",
        "filter.severities",
        "filter.order",
    }
    export = document["paths"]["/workflows/{workflow_id}/findings/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"text/csv; charset=utf-8", "application/json", "application/vnd.apache.parquet"}

    def check(path: str, method: str, status: int | str, body: Any) -> None:
        schema = document["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
        OAS30Validator({**schema, "components": document["components"]}).validate(body)

    workflow_id = await api.create(sleeps(1))
    status, answer = await api.decide(workflow_id, "approve", "alice")
    check("/workflows/{workflow_id}/approve", "post", status, answer)
    status, live = await api.call("GET", f"/workflows/{workflow_id}/status/live")
    check("/workflows/{workflow_id}/status/live", "get", status, live)
    status, body = await api.call("GET", f"/workflows/{workflow_id}")
    check("/workflows/{workflow_id}", "get", status, body)
    status, body = await api.call("GET", "/workflows/nope")
    check("/workflows/{workflow_id}", "get", "default", body)

    # A decision's body must name the revision reviewed (a reject its reason too); the refusals are documented.
    for verb, required in (("approve", ["etag"]), ("reject", ["etag", "comment"])):
        operation = document["paths"][f"/workflows/{{workflow_id}}/{verb}"]["post"]
        body_doc = operation["requestBody"]
        assert body_doc["required"] is True
        assert body_doc["content"]["application/json"]["schema"]["allOf"][1]["required"] == required
        assert "ETAG_MISMATCH" in operation["description"] and "read the workflow first" in operation["description"]
        assert {"200", "400", "409", "default"} <= set(operation["responses"])
    waiting = await api.create()
    status, body = await api.call("POST", f"/workflows/{waiting}/approve", user="alice", json={})
    assert status == 400
    check("/workflows/{workflow_id}/approve", "post", status, body)
    status, body = await api.call(
        "POST", f"/workflows/{waiting}/reject", user="bob", json={"etag": "0" * 64, "comment": "no"}
    )
    assert status == 409
    check("/workflows/{workflow_id}/reject", "post", status, body)


# --- status page --------------------------------------------------------------------------


async def test_status_page_static_files_and_sample_plan(api: Api) -> None:
    from auditflow.sample import sample_plan
    from gateway.rest.routes import to_json

    async with api.http.get(api.url + "/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        html = await response.text()
    assert 'id="processing-view"' in html and "/static/app.js" in html
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        async with api.http.get(f"{api.url}/static/{name}") as response:
            assert response.status == 200 and kind in response.content_type, name
    async with api.http.get(api.url + "/static/../app.py") as response:
        assert response.status in (403, 404)
    status, plan = await api.call("GET", "/ui/sample-plan")
    assert status == 200 and plan == [to_json(step) for step in sample_plan()]
    status, body = await api.call("POST", "/workflows", user="carol", json={"title": "sample", "plan": plan})
    assert status == 200, body
