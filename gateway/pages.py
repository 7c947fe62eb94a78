"""A page of ListWorkflows, bounded by rows and by bytes; and the collection watch's first page.

A row is a summary (no parameters, no result), yet a page of 500 rows of a hundred steps each
weighs megabytes. The page stops before `budget` bytes (protobuf encoding, its token included;
at least one workflow), and its token covers the rest. Rows are read a few at a time, more
each round (8, 32, 128, …), so that a page that stops after a few large rows never reads the
hundreds behind them. All of it is CPU work for the interpreter that does it: it runs in a
page worker process (`gateway.pageworkers`), never in the gateway's own.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

from google.protobuf.message import Message
from sqlalchemy import Connection

from auditflow import plans
from auditflow.errors import InvalidArgument, invalid
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import messages, store
from gateway.encoded import message_json
from gateway.store import ListFilter, WorkflowRecord

FIRST_READ = 8  # rows read in the first round; each next round reads four times as many
ROW_OVERHEAD = 6  # a row's tag and length in the page's encoding (at most)
TOKEN_ROOM = 128  # the next_page_token field (base64 of a timestamp and an id: 94 bytes), and more


Row = Callable[[WorkflowRecord], pb.Workflow]  # a record as the page shows it


@dataclass(frozen=True)
class Bounds:
    """At most `rows` workflows in at most `budget` bytes (at least one workflow)."""

    rows: int
    budget: int


@dataclass(frozen=True)
class Request:
    """A page as asked for, resolved (the caller's filter, where to resume, its bounds) and
    plain data: it goes to a page worker process as it is."""

    filter_: ListFilter
    after: tuple[datetime, str] | None
    bounds: Bounds
    unavailable_since: datetime | None = None  # (an approved workflow's rows say it waits)


Encoding = Literal["wire", "json"]  # protobuf (gRPC), or the proto3 JSON of REST


def encoded(message: Message, encoding: Encoding) -> bytes:
    """A message as its caller's transport sends it: protobuf, or the proto3 JSON (proto field
    names, every field) that REST answers with."""
    return message.SerializeToString() if encoding == "wire" else message_json(message).encode()


@dataclass
class _Page:
    budget: int
    page: wpb.ListWorkflowsResponse = field(default_factory=wpb.ListWorkflowsResponse)
    used: int = 0
    last: WorkflowRecord | None = None

    def add(self, records: Sequence[WorkflowRecord], row: Row) -> bool:
        """Add rows while they fit; True when one did not (the page ends, its token set)."""
        for record in records:
            message = row(record)
            size = message.ByteSize() + ROW_OVERHEAD
            if self.last is not None and self.used + size + TOKEN_ROOM > self.budget:
                self.page.next_page_token = encode_token(self.last)
                return True
            self.used += size
            self.page.workflows.append(message)
            self.last = record
        return False


def build(conn: Connection, request: Request) -> wpb.ListWorkflowsResponse:
    """The page of workflows after `request.after` (newest first) within its bounds, read in
    one transaction (`conn`), each row a summary (`messages.summary`)."""
    row = functools.partial(messages.summary, unavailable_since=request.unavailable_since)
    bounds, after = request.bounds, request.after
    built = _Page(bounds.budget)
    chunk = FIRST_READ
    while True:
        take = min(chunk, bounds.rows - len(built.page.workflows))
        records = store.list_matching(conn, request.filter_, take + 1, after)
        if built.add(records[:take], row) or len(records) <= take:
            return built.page
        last = records[take - 1]
        if len(built.page.workflows) == bounds.rows:
            built.page.next_page_token = encode_token(last)
            return built.page
        after = (last.created_at, last.workflow_id)
        chunk *= 4


def encode_token(record: WorkflowRecord) -> str:
    """The token that resumes a list after this row (opaque to clients)."""
    return base64.urlsafe_b64encode(f"{record.created_at.isoformat()}|{record.workflow_id}".encode()).decode()


def decode_token(token: str) -> tuple[datetime, str]:
    try:
        created, workflow_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created), plans.check_workflow_id(workflow_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, InvalidArgument) as exc:
        raise invalid("page_token", "malformed; pass the next_page_token of a previous call") from exc


# --- the collection watch's lists -----------------------------------------------------------


@dataclass(frozen=True)
class FirstList:
    """WatchWorkflows' initial list as asked for: the first `rows` workflows through the
    caller's filter, each message carrying `resume_token` (plain data, for a page worker)."""

    filter_: ListFilter
    rows: int
    resume_token: str


@dataclass(frozen=True)
class Since:
    """A resumed collection watch's catch-up, one batch: up to `limit` rows written at or
    after `start`, those through the filter sent as MODIFIED; each message's resume point is
    its row's time, or `resumed` (where the watcher resumed from) if that is later."""

    filter_: ListFilter
    start: datetime
    resumed: datetime
    limit: int


class Listed(NamedTuple):
    """One workflow of a collection watch's list: its state (the watch skips the same state
    when it comes again as a change) and its message, encoded, with that message's token."""

    workflow_id: str
    last_sequence: int
    updated_at: datetime
    resume_token: str
    encoded: bytes


def first_list(conn: Connection, request: FirstList, encoding: Encoding) -> tuple[list[Listed], str]:
    """The initial list (newest first, each row a summary) and the token of the next page
    ("" if none), read in one transaction; its token pages on through ListWorkflows."""
    records = store.list_matching(conn, request.filter_, request.rows + 1, None)
    token = encode_token(records[request.rows - 1]) if len(records) > request.rows else ""
    added = wpb.CHANGE_TYPE_ADDED
    return [_listed(r, added, request.resume_token, encoding) for r in records[: request.rows]], token


def since(conn: Connection, request: Since, encoding: Encoding) -> tuple[list[Listed], datetime | None]:
    """One batch of a catch-up (oldest write first), and where the next batch starts (None
    after the last)."""
    records = store.changed_since(conn, request.start, request.limit)
    listed = [
        _listed(r, wpb.CHANGE_TYPE_MODIFIED, resume_token(max(request.resumed, r.updated_at)), encoding)
        for r in records
        if request.filter_.matches(r)
    ]
    more = len(records) == request.limit and records[-1].updated_at > request.start
    return listed, records[-1].updated_at if more else None


def _listed(record: WorkflowRecord, kind: int, token: str, encoding: Encoding) -> Listed:
    change = wpb.WorkflowChange(type=kind, workflow=messages.summary(record))  # type: ignore[arg-type]
    message = wpb.WatchWorkflowsResponse(change=change, resume_token=token)
    return Listed(record.workflow_id, record.last_sequence, record.updated_at, token, encoded(message, encoding))


def resume_token(point: datetime) -> str:
    """A collection watch's resume token: a point in time (opaque to clients)."""
    micros = (point - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"w1:{micros}".encode()).decode().rstrip("=")


def resume_point(token: str) -> datetime:
    """The point in time a resume token names; INVALID_ARGUMENT for anything else."""
    try:
        padded = (token + "=" * (-len(token) % 4)).encode("ascii")
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
        prefix, micros = text.split(":")
        if prefix != "w1" or not micros.isdigit() or len(micros) > 17:
            raise ValueError(text)
        return _EPOCH + timedelta(microseconds=int(micros))
    except (ValueError, binascii.Error, UnicodeError, OverflowError) as exc:
        raise invalid("resume_token", "malformed; pass the resume_token of a message of this stream") from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
