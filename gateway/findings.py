"""ListFindings and ExportFindings on the gateway: the processor stores every finding of a
run, the gateway reads them from it a page at a time.

A workflow the processor has not been given yet (pending, rejected, approved and waiting)
has no findings: an empty page, without asking the processor. An export asks for pages of
`EXPORT_PAGE` findings and encodes each (`gateway.export`, off the event loop) into the next
chunks of the file as it arrives, so a million findings never sit in the gateway's memory;
the stream's flow control paces the reads to the client.

An export is also paced to its caller's read rate: besides the stream's own admission, every
`FINDINGS_PER_TOKEN` findings read take one read token of the caller's, a token at a time,
waiting past the rate, never refused (`Limiter.spend`, as a trail's check). Unpaced, one
export of a million findings kept the gateway busy for 15 s; at the default read rate (20
pages a second) it takes 45 s, so one principal's exports, however many it opens, take about
a third of what one export could, and a million findings still arrive within a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from auditflow import plans, principal
from auditflow.db import Database
from auditflow.errors import NotFound
from auditflow.findings_contract import MAX_PAGE, check_filter, check_page_size
from auditflow.limits import Kind, Limiter
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import export, store
from gateway.store import WorkflowRecord
from gateway.upstream import processor_call

EXPORT_PAGE = MAX_PAGE
FINDINGS_PER_TOKEN = 1000  # an export's findings read for one read token
CHUNK_BYTES = 1 << 20  # an ExportFindingsResponse carries at most this much of the file
TIMEOUT = 30.0


class Findings:
    """Reads a workflow's findings from the processor."""

    def __init__(self, db: Database, stub: ppb_grpc.ProcessorServiceAsyncStub, limiter: Limiter | None = None) -> None:
        self._db = db
        self._stub = stub
        self._limiter = limiter

    async def _load(self, workflow_id: str) -> WorkflowRecord:
        record = await self._db.read(lambda conn: store.get(conn, workflow_id))
        if record is None:
            raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
        return record

    async def list_findings(self, request: wpb.ListFindingsRequest) -> wpb.ListFindingsResponse:
        check_filter(request.filter)
        size = check_page_size(request.page_size)
        record = await self._load(plans.check_workflow_id(request.workflow_id))
        if not record.dispatched:
            return wpb.ListFindingsResponse()
        page = await self._page(record.workflow_id, request.filter, size, request.page_token)
        return wpb.ListFindingsResponse(findings=page.findings, next_page_token=page.next_page_token, total=page.total)

    async def export(self, request: wpb.ExportFindingsRequest) -> AsyncIterator[wpb.ExportFindingsResponse]:
        """The file in chunks; every check (and the first page) before the first chunk, so a
        refusal is an error status, never a cut file."""
        check_filter(request.filter)
        name = export.check_format(request.format)
        record = await self._load(plans.check_workflow_id(request.workflow_id))
        first = None
        if record.dispatched:
            first = await self._page(record.workflow_id, request.filter, EXPORT_PAGE, "")
        async for data in export.encode(name, self._pages(record.workflow_id, request.filter, first)):
            for start in range(0, len(data), CHUNK_BYTES):
                yield wpb.ExportFindingsResponse(data=data[start : start + CHUNK_BYTES])

    async def _pages(
        self, workflow_id: str, filter_: pb.FindingsFilter, page: ppb.ProcessorServiceListFindingsResponse | None
    ) -> AsyncIterator[list[pb.Finding]]:
        # The next page is asked for while this one is encoded and sent (one ahead, no more).
        read = 0
        while page is not None:
            await self._pace(read, read + len(page.findings))
            read += len(page.findings)
            following = None
            if page.next_page_token:
                following = asyncio.ensure_future(self._page(workflow_id, filter_, EXPORT_PAGE, page.next_page_token))
            try:
                yield list(page.findings)
            except BaseException:
                if following is not None:
                    following.cancel()
                raise
            page = await following if following is not None else None

    async def _pace(self, before: int, after: int) -> None:
        """Take the read tokens of the findings from `before` to `after`, one for each multiple
        of FINDINGS_PER_TOKEN reached, a token at a time (as a trail's check does)."""
        if self._limiter is None:
            return
        for _ in range(after // FINDINGS_PER_TOKEN - before // FINDINGS_PER_TOKEN):
            await self._limiter.spend(principal.current(), Kind.READ, 1)

    async def _page(
        self, workflow_id: str, filter_: pb.FindingsFilter, size: int, token: str
    ) -> ppb.ProcessorServiceListFindingsResponse:
        request = ppb.ProcessorServiceListFindingsRequest(
            workflow_id=workflow_id, filter=filter_, page_size=size, page_token=token
        )
        with processor_call(f"findings of {workflow_id}"):
            return await self._stub.ListFindings(request, timeout=TIMEOUT)
