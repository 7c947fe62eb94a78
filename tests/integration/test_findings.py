"""Findings are a resource: every finding of a run is stored by the processor, listed page by
page (filtered, ordered) and exported as a file through the gateway, over gRPC and REST;
results and snapshots carry only each step's summary.

Every test runs on SQLite files and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pyarrow.parquet as pq
import pytest
from google.protobuf.json_format import MessageToDict

from auditflow import cli
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, details, step

PLUGINS = ("tests.support.procedures",)
COUNT = 2500  # findings of the first step, found 700 a call


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    stub: wpb_grpc.WorkflowServiceAsyncStub
    http: aiohttp.ClientSession
    url: str


@pytest.fixture
async def pair(database_urls: tuple[str, str]) -> AsyncIterator[Pair]:
    gateway_url, processor_url = database_urls
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            **auth.processor_settings(),
            database_url=processor_url,
            plugins=PLUGINS,
            cycle_delay=0.0,
            poll_interval=0.05,
            heartbeat_interval=0.5,
        ),
    )
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=gateway_url,
            processor_target=processor.address,
            plugins=PLUGINS,
            heartbeat_interval=0.5,
            rest_port=0,
        ),
    )
    await gateway.start()
    assert gateway.rest is not None
    viewer = auth.headers("victor", ("viewer",))
    async with (
        auth.channel(gateway.address) as channel,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=viewer) as http,
    ):
        yield Pair(gateway, processor, wpb_grpc.WorkflowServiceStub(channel), http, gateway.rest.url)
    await gateway.stop(0)
    await processor.stop(1)


async def run(pair: Pair, plan: list[pb.PlanStep]) -> str:
    request = wpb.CreateWorkflowRequest(title="findings", plan=plan, max_cycles=50)
    created = (await pair.stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow
    workflow_id = created.workflow_id
    await pair.stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag), metadata=as_user("alice"))
    async for message in pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), timeout=120):
        if message.HasField("event") and message.snapshot.is_completed:
            assert message.snapshot.status == pb.WORKFLOW_STATUS_COMPLETED, message.snapshot.last_message
    return workflow_id


@pytest.fixture
async def finished(pair: Pair) -> str:
    """A completed run: 2500 made-up findings in step 1, 7 in step 2."""
    plan = [step("test_findings", count=COUNT, per_chunk=700), step("test_findings", count=7)]
    return await run(pair, plan)


async def every(pair: Pair, workflow_id: str, page_size: int = 0, **filter_: object) -> list[pb.Finding]:
    """Every finding, page by page; each page's total agrees."""
    found: list[pb.Finding] = []
    token, total = "", None
    while True:
        request = wpb.ListFindingsRequest(
            workflow_id=workflow_id, filter=pb.FindingsFilter(**filter_), page_size=page_size, page_token=token
        )
        page = await pair.stub.ListFindings(request)
        assert total in (None, page.total)
        total = page.total
        found += page.findings
        token = page.next_page_token
        if not token:
            assert len(found) == total
            return found


async def test_every_finding_is_stored_once_with_a_stable_id_and_the_result_is_a_summary(
    pair: Pair, finished: str
) -> None:
    found = await every(pair, finished, page_size=1000, order="found")
    assert [f.finding_id for f in found] == [f"f{n}" for n in range(1, COUNT + 8)]
    assert [f.step for f in found] == [1] * COUNT + [2] * 7
    assert {f.procedure for f in found} == {"test_findings"}
    assert found[0].explanation == f"finding 0 of {COUNT}: look at entry JE-0"
    assert (found[1].severity, list(found[1].entry_ids), found[1].entry_count, found[1].amount) == (
        "medium",
        ["JE-1"],
        1,
        "1.01",
    )
    workflow = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=finished))).workflow
    result = MessageToDict(workflow.result)
    assert [s["result"] for s in result["steps"]] == [{"found": COUNT}, {"found": 7}]  # no findings in it
    again = await every(pair, finished, page_size=1000, order="found")
    assert [f.SerializeToString() for f in again] == [f.SerializeToString() for f in found]


async def test_filters_and_orders_page_through_without_gaps_or_repeats(pair: Pair, finished: str) -> None:
    by_severity = await every(pair, finished, page_size=333)
    ranks = {"high": 0, "medium": 1, "low": 2}
    keys = [(ranks[f.severity], -float(f.amount), int(f.finding_id[1:])) for f in by_severity]
    assert keys == sorted(keys) and len({f.finding_id for f in by_severity}) == COUNT + 7
    by_amount = await every(pair, finished, page_size=500, order="amount")
    amounts = [(-float(f.amount), int(f.finding_id[1:])) for f in by_amount]
    assert amounts == sorted(amounts)
    high = await every(pair, finished, page_size=100, severities=["high"], steps=[2])
    assert [f.finding_id for f in high] == [f"f{COUNT + 7}", f"f{COUNT + 4}", f"f{COUNT + 1}"]  # by amount
    assert await every(pair, finished, procedures=["nothing_like_it"]) == []
    assert len(await every(pair, finished, severities=["medium", "low"], steps=[1])) == COUNT - 834


async def bad(pair: Pair, request: wpb.ListFindingsRequest) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.ListFindings(request)
    return caught.value.code(), details(caught.value)["fields"]


async def test_bad_requests_are_refused_naming_the_field(pair: Pair, finished: str) -> None:
    C = grpc.StatusCode
    page = await pair.stub.ListFindings(wpb.ListFindingsRequest(workflow_id=finished, page_size=10))
    assert page.next_page_token
    other = wpb.ListFindingsRequest(
        workflow_id=finished, page_token=page.next_page_token, filter=pb.FindingsFilter(order="amount")
    )
    assert await bad(pair, other) == (C.INVALID_ARGUMENT, ["page_token"])
    forged = wpb.ListFindingsRequest(workflow_id=finished, page_token="eyJub3QiOiAiaXQifQ==")
    assert await bad(pair, forged) == (C.INVALID_ARGUMENT, ["page_token"])
    severity = wpb.ListFindingsRequest(workflow_id=finished, filter=pb.FindingsFilter(severities=["critical"]))
    assert await bad(pair, severity) == (C.INVALID_ARGUMENT, ["filter.severities"])
    order = wpb.ListFindingsRequest(workflow_id=finished, filter=pb.FindingsFilter(order="random"))
    assert await bad(pair, order) == (C.INVALID_ARGUMENT, ["filter.order"])
    assert await bad(pair, wpb.ListFindingsRequest(workflow_id=finished, page_size=5000)) == (
        C.INVALID_ARGUMENT,
        ["page_size"],
    )
    missing = wpb.ListFindingsRequest(workflow_id="wf-0000000000000000000000000")
    assert (await bad(pair, missing))[0] in (C.NOT_FOUND, C.INVALID_ARGUMENT)


async def test_a_workflow_not_yet_run_has_no_findings(pair: Pair) -> None:
    request = wpb.CreateWorkflowRequest(title="waiting", plan=[step("test_findings", count=5)])
    workflow_id = (await pair.stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id
    page = await pair.stub.ListFindings(wpb.ListFindingsRequest(workflow_id=workflow_id))
    assert (list(page.findings), page.total, page.next_page_token) == ([], 0, "")


async def test_the_export_is_every_finding_in_each_format_over_grpc_and_rest(pair: Pair, finished: str) -> None:
    expected = await every(pair, finished, page_size=1000, severities=["high", "low"])
    ids = [f.finding_id for f in expected]
    query = "filter.severities=high&filter.severities=low"

    chunks = pair.stub.ExportFindings(
        wpb.ExportFindingsRequest(
            workflow_id=finished, format="csv", filter=pb.FindingsFilter(severities=["high", "low"])
        )
    )
    data = b"".join([c.data async for c in chunks])
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["finding_id"] for r in rows] == ids
    assert rows[0]["explanation"] == expected[0].explanation and rows[0]["entry_ids"] == expected[0].entry_ids[0]

    async with pair.http.get(f"{pair.url}/workflows/{finished}/findings/export?format=json&{query}") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert response.headers["Content-Disposition"] == f'attachment; filename="{finished}-findings.json"'
        listed = json.loads(await response.read())
    assert [f["finding_id"] for f in listed] == ids and listed[0]["entry_ids"] == list(expected[0].entry_ids)

    async with pair.http.get(f"{pair.url}/workflows/{finished}/findings/export?format=parquet&{query}") as response:
        assert response.status == 200 and response.content_type == "application/vnd.apache.parquet"
        table = pq.read_table(io.BytesIO(await response.read()))
    assert table.column("finding_id").to_pylist() == ids
    assert table.column("step").to_pylist() == [f.step for f in expected]

    async with pair.http.get(f"{pair.url}/workflows/{finished}/findings/export") as response:  # CSV by default
        assert response.content_type == "text/csv" and (await response.text()).count("\r\n") == COUNT + 8


async def test_rest_lists_findings_and_refuses_bad_input_with_400(pair: Pair, finished: str) -> None:
    url = f"{pair.url}/workflows/{finished}/findings"
    async with pair.http.get(f"{url}?page_size=2&filter.order=amount&filter.steps=2") as response:
        assert response.status == 200
        body = await response.json()
    assert [f["amount"] for f in body["findings"]] == ["6.06", "5.05"] and body["total"] == "7"
    token = body["next_page_token"]
    async with pair.http.get(f"{url}?page_size=2&filter.order=amount&filter.steps=2&page_token={token}") as response:
        assert [f["finding_id"] for f in (await response.json())["findings"]] == ["f2505", "f2504"]
    for query, field in (("filter.severities=urgent", "filter.severities"), ("page_size=-1", "page_size")):
        async with pair.http.get(f"{url}?{query}") as response:
            assert response.status == 400, query
            assert field in (await response.text())
    async with pair.http.get(f"{url}/export?format=xlsx") as response:
        assert response.status == 400 and "format" in (await response.text())
    async with pair.http.get(f"{pair.url}/workflows/wf-nope/findings") as response:
        assert response.status in (400, 404)


async def test_the_processor_down_is_unavailable_not_an_internal_error(pair: Pair, finished: str) -> None:
    await pair.processor.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.ListFindings(wpb.ListFindingsRequest(workflow_id=finished), timeout=40)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with pair.http.get(f"{pair.url}/workflows/{finished}/findings/export") as response:
        assert response.status == 503


async def test_the_cli_shows_summaries_first_findings_and_exports_every_one(
    pair: Pair, finished: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "viewer.token"
    token_file.write_text(auth.jwt_for("victor", ("viewer",)))
    base = ["--target", pair.gateway.address, "--token-file", str(token_file)]

    assert await asyncio.to_thread(cli.main, [*base, "get", finished, "--findings", "3"]) == 0
    out, err = capsys.readouterr()
    assert "decision      approved by alice" in out
    assert f"findings      3 of {COUNT + 7}, high first" in out
    assert "f2500  high" in out and "finding 2499 of 2500: look at entry JE-2499" in out  # whole, not cut
    assert f"auditflow findings {finished}" in err

    argv = [*base, "findings", finished, "--severity", "high", "--step", "2", "--order", "found"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines() if line.startswith("f")] == ["f2501", "f2504", "f2507"]
    assert "3 of 3 findings" in err

    target = tmp_path / "all.csv"
    assert await asyncio.to_thread(cli.main, [*base, "findings", finished, "--format", "csv", "-o", str(target)]) == 0
    assert len(list(csv.DictReader(target.open(newline="")))) == COUNT + 7
    assert not target.with_name("all.csv.part").exists()

    bad = [*base, "findings", finished, "--format", "parquet", "-o", str(tmp_path / "no" / "such" / "dir.parquet")]
    assert await asyncio.to_thread(cli.main, bad) == 2
    assert "cannot write" in capsys.readouterr().err
