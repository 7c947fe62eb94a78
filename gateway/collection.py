"""WatchWorkflows: a list of the workflows that match a filter, then their changes, live.

Modelled on Kubernetes' list + watch. A watcher first gets the matching workflows, newest
first (ADDED), then a SYNCED mark, then a change each time a workflow is written: ADDED when
it newly matches the filter, MODIFIED when it matched and still does, REMOVED when it no longer
does (approved, when watching what awaits my approval). Every message carries a resume token.

Where changes come from. One `Changes` broker per gateway, running only while someone
watches, finds the workflow rows written since it last looked and numbers them:
- when the hub publishes an event (this gateway's own commits, and the processor's events the
  feed mirrored), it reads just those workflows' rows, at once;
- every `poll_interval`, it reads every row written in the last `MARGIN` seconds: the writes of
  other gateways, which never reach this hub. A row is sent again only if it changed (its
  `last_sequence` or `updated_at`).

Resume tokens, and what is guaranteed. A token is a point in time: the newest row time the
broker had looked past when the message was sent. Resuming with it sends every matching
workflow written since that time less `MARGIN`, then live changes. So no change is lost as
long as a write commits within `MARGIN` of the time it stamped on its row (and the gateways'
clocks agree that well); a change may come twice, and a watcher keeps the newest state of each
workflow (its `last_sequence` tells which is newer). Intermediate states of one workflow may
be skipped: a collection watch is about the workflows' latest states; WatchStatus gives every
event of one workflow.

A watcher that falls more than `RING` changes behind catches up from the database the same
way, from its last token.

Who builds what. The initial list and every catch-up (a resume, or a watcher behind) grow with
what the caller asks for: a token of long ago asks for every workflow written since. Their
rows are read and their messages encoded by the page workers (`gateway.pageworkers`), in the
stream's own encoding and at the caller's turn, never by the gateway's interpreter; only the
live changes (a message per write, as it happens) are made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf import json_format
from sqlalchemy import Connection, select

from auditflow import convert
from auditflow.db import Database
from auditflow.limits import ROWS_PER_TOKEN, Kind, Limiter
from auditflow.principal import Principal
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import messages, pages, store
from gateway.encoded import Encoded, Joined, message_json
from gateway.pages import resume_token
from gateway.pageworkers import PageWorkers
from gateway.store import ListFilter, WorkflowRecord, workflows

logger = logging.getLogger(__name__)

MARGIN = timedelta(seconds=5)  # how late a write may commit after the time on its row
RING = 4096  # changes kept for watchers that are behind
LOOK_LIMIT = 2000  # rows a look reads at a time
# Rows a catch-up reads at a time (20 read tokens' worth): what a stream paced to its caller's
# read rate holds while it waits.
CATCH_UP_BATCH = 200
DEBOUNCE = 0.02  # seconds: publications gathered into one read


# --- what is sent ------------------------------------------------------------------------------


class CollectionItem(Encoded):
    """One message for one watcher, encoded at most once per encoding (gRPC, SSE, NDJSON)."""

    __slots__ = ("_message",)

    def __init__(self, message: wpb.WatchWorkflowsResponse) -> None:
        super().__init__()
        self._message = message

    @property
    def message(self) -> wpb.WatchWorkflowsResponse:
        return self._message

    def _event(self) -> bytes:
        """The id is the resume token; a heartbeat is a comment (with the token, so that an
        idle watcher's reconnect reads little)."""
        token = self.message.resume_token
        if self.message.HasField("heartbeat"):
            return f"id: {token}\n: heartbeat\n\n".encode()
        return _sse(token, message_json(self.message).encode())


class ListedItem(Encoded):
    """A message of an initial list or a catch-up, encoded by a page worker: its wire bytes
    (gRPC) or its JSON (SSE and NDJSON frame it as it is). The message is parsed back only if
    asked for."""

    __slots__ = ("_json", "_token")

    def __init__(self, encoded: bytes, encoding: pages.Encoding, resume_token: str) -> None:
        super().__init__()
        self._token = resume_token
        self._json: bytes | None = None
        if encoding == "wire":
            self._wire = encoded
        else:
            self._json = encoded

    @property
    def message(self) -> wpb.WatchWorkflowsResponse:
        parsed = wpb.WatchWorkflowsResponse()
        if self._json is not None:
            json_format.Parse(self._json, parsed)
        else:
            parsed.ParseFromString(self.wire)
        return parsed

    def _event(self) -> bytes:
        return _sse(self._token, self._json if self._json is not None else message_json(self.message).encode())

    @property
    def ndjson(self) -> bytes:
        return self._json + b"\n" if self._json is not None else super().ndjson


def _sse(token: str, json: bytes) -> bytes:
    """A message as a Server-Sent Event: its resume token is the event id."""
    return b"id: %s\ndata: %s\n\n" % (token.encode(), json)


# --- the broker ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """A workflow row as the broker found it written, numbered; `before` is the state it had
    when the broker last saw it (None if it had not), for REMOVED."""

    position: int
    record: WorkflowRecord
    before: WorkflowRecord | None
    point: datetime  # the resume point once this change is sent


class Changes:
    """Finds written workflow rows and numbers them for the watchers (see the module
    docstring). Event loop only; runs while someone watches."""

    def __init__(self, db: Database, *, poll_interval: float = 1.0) -> None:
        self._db = db
        self._poll_interval = poll_interval
        self._ring: deque[Change] = deque(maxlen=RING)
        self._position = 0
        self._seen: dict[str, WorkflowRecord] = {}
        self._point = convert.utcnow()  # the newest row time looked past
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._watchers = 0
        self._task: asyncio.Task[None] | None = None

    # The hub's listener: a workflow's event was published (committed, or mirrored).
    def changed(self, workflow_id: str) -> None:
        if self._task is not None:
            self._dirty.add(workflow_id)
            self._wake.set()

    @property
    def position(self) -> int:
        return self._position

    @property
    def point(self) -> datetime:
        return self._point

    def after(self, position: int) -> list[Change] | None:
        """The changes after `position`; None if some of them are no longer kept."""
        if position >= self._position:
            return []
        if not self._ring or self._ring[0].position > position + 1:
            return None
        return [c for c in self._ring if c.position > position]

    async def wait(self, position: int, timeout: float) -> None:
        """Until there is a change after `position`, or `timeout` seconds."""
        if position < self._position:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def join(self) -> None:
        self._watchers += 1
        if self._task is None:
            self._point = convert.utcnow()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="collection changes")

    def leave(self) -> None:
        self._watchers -= 1
        if self._watchers == 0 and self._task is not None:
            self._task.cancel()
            self._task = None
            self._seen.clear()
            self._dirty.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_look = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_look - loop.time()))
                await asyncio.sleep(DEBOUNCE)  # gather the publications of one burst
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if loop.time() >= next_look:
                    next_look = loop.time() + self._poll_interval
                    self._dirty.clear()
                    await self._look_back()
                elif self._dirty:
                    ids, self._dirty = sorted(self._dirty), set()
                    self._take(await self._db.read(functools.partial(_rows, ids=ids)))
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: the next look tries again
                logger.warning("the collection watch could not read the workflows", exc_info=True)

    async def _look_back(self) -> None:
        """Every row written since the newest point less MARGIN (other gateways' writes)."""
        async for rows in written_since(self._db, self._point - MARGIN):
            self._take(rows)
        horizon = self._point - MARGIN
        self._seen = {k: r for k, r in self._seen.items() if r.updated_at >= horizon}

    def _take(self, rows: Iterable[WorkflowRecord]) -> None:
        found = False
        for record in rows:
            before = self._seen.get(record.workflow_id)
            if before is not None and (before.last_sequence, before.updated_at) >= (
                record.last_sequence,
                record.updated_at,
            ):
                continue
            self._seen[record.workflow_id] = record
            self._point = max(self._point, record.updated_at)
            self._position += 1
            self._ring.append(Change(self._position, record, before, self._point))
            found = True
        if found:
            self._changed.set()
            self._changed = asyncio.Event()


async def written_since(db: Database, since: datetime) -> AsyncIterator[list[WorkflowRecord]]:
    """The rows written at or after `since`, oldest first, a batch at a time."""
    while True:
        rows = await db.scan(functools.partial(store.changed_since, since=since, limit=LOOK_LIMIT))
        yield rows
        if len(rows) < LOOK_LIMIT or rows[-1].updated_at <= since:
            return
        since = rows[-1].updated_at


def _rows(conn: Connection, ids: list[str]) -> list[WorkflowRecord]:
    query = select(workflows).where(workflows.c.workflow_id.in_(ids))
    return [WorkflowRecord.from_row(row) for row in conn.execute(query)]


# --- one watcher -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchRequest:
    """A checked WatchWorkflows request, the caller's parts resolved: `caller` (its turns at
    the page workers, its read rate), `encoding` its transport's (the lists' messages are
    encoded where they are built)."""

    filter: ListFilter
    page_size: int  # (0 resolved to the default)
    resume: datetime | None
    caller: Principal
    encoding: pages.Encoding = "wire"


class CollectionWatcher:
    """Serves WatchWorkflows streams from one broker. The initial list is ListWorkflows' first
    page (its token pages on through ListWorkflows); it and the catch-ups are built in the page
    worker processes."""

    def __init__(
        self, db: Database, changes: Changes, page_workers: PageWorkers, limiter: Limiter, *, heartbeat_interval: float
    ) -> None:
        self._db = db
        self._changes = changes
        self._pages = page_workers
        self._limiter = limiter
        self._heartbeat = heartbeat_interval

    async def watch(self, request: WatchRequest) -> AsyncIterator[Encoded | Joined]:
        """The stream's messages; for JSON (SSE, NDJSON) those ready together come joined, one
        write for a whole initial list."""
        changes = self._changes
        changes.join()
        try:
            position, point = changes.position, changes.point
            if request.resume is None:
                rows, token = await self._first_list(request, resume_token(point))
                # (a listed workflow that comes again as a change, unchanged, is not sent again)
                listed = {row.workflow_id: (row.last_sequence, row.updated_at) for row in rows}
                synced = wpb.WatchSynced(next_page_token=token)
                end = CollectionItem(wpb.WatchWorkflowsResponse(synced=synced, resume_token=resume_token(point)))
                for item in _together([*_items(rows, request.encoding), end], request.encoding):
                    yield item
            else:
                listed = {}
                async for item in self._since(request, request.resume):
                    yield item
            while True:
                await changes.wait(position, self._heartbeat)
                pending = changes.after(position)
                if pending is None:  # fell behind the ring: read what was missed
                    missed_from, position = point, changes.position
                    async for item in self._since(request, missed_from):
                        yield item
                    point = changes.point
                elif not pending:
                    point = changes.point
                    yield _heartbeat(point)
                for change in pending or ():
                    kind = change_type(request.filter, change.record, change.before)
                    position, point = change.position, change.point
                    if listed and listed.pop(change.record.workflow_id, None) == _state(change.record):
                        continue
                    if kind is not None:
                        yield _item(pb_change(kind, change.record), point)
        finally:
            changes.leave()

    async def _first_list(self, request: WatchRequest, token: str) -> tuple[list[pages.Listed], str]:
        if request.filter.awaiting_key == "":  # (someone who may not approve awaits nothing)
            return [], ""
        asked = pages.FirstList(request.filter, request.page_size, token)
        return await self._pages.first_list(asked, request.encoding, request.caller.key)

    async def _since(self, request: WatchRequest, since: datetime) -> AsyncIterator[Encoded | Joined]:
        """Every matching workflow written since `since` less MARGIN (a resume, or a catch-up),
        read and encoded by the page workers a batch at a time, and sent at the caller's read
        rate (one token per ten workflows: a token of long ago asks for them all)."""
        start: datetime | None = since - MARGIN
        while start is not None:
            batch = pages.Since(request.filter, start, since, CATCH_UP_BATCH)
            rows, start = await self._pages.since(batch, request.encoding, request.caller.key)
            for at in range(0, len(rows), ROWS_PER_TOKEN):  # (a token's worth at a time)
                await self._limiter.spend(request.caller, Kind.READ, 1)
                for item in _together(_items(rows[at : at + ROWS_PER_TOKEN], request.encoding), request.encoding):
                    yield item


def _items(rows: list[pages.Listed], encoding: pages.Encoding) -> list[Encoded]:
    return [ListedItem(row.encoded, encoding, row.resume_token) for row in rows]


def _together(items: list[Encoded], encoding: pages.Encoding) -> list[Encoded | Joined]:
    """gRPC sends a message at a time; a byte stream writes those ready together at once."""
    if encoding == "wire" or len(items) < 2:
        return list(items)
    return [Joined(items)]


def _state(record: WorkflowRecord) -> tuple[int, datetime]:
    return record.last_sequence, record.updated_at


def _heartbeat(point: datetime) -> CollectionItem:
    heartbeat = pb.Heartbeat(time=convert.timestamp(convert.utcnow()))
    return CollectionItem(wpb.WatchWorkflowsResponse(heartbeat=heartbeat, resume_token=resume_token(point)))


def change_type(filter_: ListFilter, record: WorkflowRecord, before: WorkflowRecord | None) -> int | None:
    """How a change looks through a filter: ADDED, MODIFIED, REMOVED, or None (not shown).
    Without the state before (the broker had not seen it), a change that does not match is
    sent as REMOVED: harmless to a watcher that did not show it."""
    now = filter_.matches(record)
    was = before is not None and filter_.matches(before)
    if now:
        return wpb.CHANGE_TYPE_MODIFIED if was else wpb.CHANGE_TYPE_ADDED
    if was or before is None:
        return wpb.CHANGE_TYPE_REMOVED
    return None


def pb_change(kind: int, record: WorkflowRecord) -> wpb.WorkflowChange:
    return wpb.WorkflowChange(type=kind, workflow=messages.summary(record))  # type: ignore[arg-type]


def _item(change: wpb.WorkflowChange, point: datetime) -> CollectionItem:
    return CollectionItem(wpb.WatchWorkflowsResponse(change=change, resume_token=resume_token(point)))
