"""A page of ListWorkflows, bounded by rows and by bytes.

A row is a summary (no parameters, no result), yet a page of 500 rows of a hundred steps each
weighs megabytes. The page stops before `budget` bytes (protobuf encoding, its token included;
at least one workflow), and its token covers the rest. Rows are read a few at a time, more
each round (8, 32, 128, …), so that a page that stops after a few large rows never reads the
hundreds behind them; building each round's messages is CPU work and runs on a worker
thread, not on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from auditflow.db import Database
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import store
from gateway.store import ListFilter, WorkflowRecord

FIRST_READ = 8  # rows read in the first round; each next round reads four times as many
ROW_OVERHEAD = 6  # a row's tag and length in the page's encoding (at most)
TOKEN_ROOM = 128  # the next_page_token field (base64 of a timestamp and an id: 94 bytes), and more


Token = Callable[[WorkflowRecord], str]  # the page token that resumes after a row


@dataclass(frozen=True)
class Bounds:
    """At most `rows` workflows in at most `budget` bytes (at least one workflow)."""

    rows: int
    budget: int


@dataclass
class _Page:
    budget: int
    token: Token
    page: wpb.ListWorkflowsResponse = field(default_factory=wpb.ListWorkflowsResponse)
    used: int = 0
    last: WorkflowRecord | None = None

    def add(self, records: Sequence[WorkflowRecord], workflow: Callable[[WorkflowRecord], pb.Workflow]) -> bool:
        """Add rows while they fit; True when one did not (the page ends, its token set)."""
        for record in records:
            message = workflow(record)
            size = message.ByteSize() + ROW_OVERHEAD
            if self.last is not None and self.used + size + TOKEN_ROOM > self.budget:
                self.page.next_page_token = self.token(self.last)
                return True
            self.used += size
            self.page.workflows.append(message)
            self.last = record
        return False


async def read(
    db: Database,
    filter_: ListFilter,
    after: tuple[datetime, str] | None,
    bounds: Bounds,
    workflow: Callable[[WorkflowRecord], pb.Workflow],
    token: Token,
) -> wpb.ListWorkflowsResponse:
    """The page of workflows after `after` (newest first) within `bounds`."""
    built = _Page(bounds.budget, token)
    chunk = FIRST_READ
    while True:
        take = min(chunk, bounds.rows - len(built.page.workflows))
        scan = functools.partial(store.list_matching, filter_=filter_, limit=take + 1, after=after)
        records = await db.scan(scan)
        if await asyncio.to_thread(built.add, records[:take], workflow) or len(records) <= take:
            return built.page
        last = records[take - 1]
        if len(built.page.workflows) == bounds.rows:
            built.page.next_page_token = token(last)
            return built.page
        after = (last.created_at, last.workflow_id)
        chunk *= 4
