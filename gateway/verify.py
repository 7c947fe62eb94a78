"""VerifyTrail: a workflow's trail recomputed from both services' logs.

The gateway's events come from its database; once the run was dispatched, the processor's
come from the processor (ReadEvents, page by page, as stored there). `auditflow.trail.check`
recomputes the chain over all of them, from the first event, and the checks around it say
what the chain alone cannot: that the stored plan still has the etag the CREATED event
recorded, that a completed run's result (the processor's, and the copy the gateway shows)
matches the digest its COMPLETED event recorded, and that a signed end is signed by a key
this gateway knows. The first problem found is the answer, named by its event.

A trail grows with its run (up to thousands of cycles), and its check is the work: besides
the call's own read, every `EVENTS_PER_TOKEN` events read (the gateway's at once, then the
processor's page by page, before any is hashed) take one more read token of the caller's, a
token at a time, waiting past the caller's read rate, never refused (`Limiter.spend`, as a
collection watch's catch-up). While it runs the check holds one of the caller's stream slots,
so that the checks one caller leaves waiting, each holding its events, are bounded too. One
caller checking its longest trail over and over gets it checked at its own read rate, not at
the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection

from auditflow import convert, principal, statuses, trail
from auditflow.db import Database
from auditflow.errors import NotFound
from auditflow.limits import Kind, Limiter
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import messages, store
from gateway.store import EventRecord, WorkflowRecord
from gateway.upstream import processor_call

PAGE = 1000
EVENTS_PER_TOKEN = 100  # a trail's events checked for one read token


class TrailVerifier:
    """Checks trails against the keys whose signatures it accepts (by key id)."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        keys: Mapping[str, Ed25519PublicKey],
        limiter: Limiter | None = None,
    ) -> None:
        self._db = db
        self._stub = stub
        self._keys = dict(keys)
        self._limiter = limiter

    async def verify(self, workflow_id: str) -> wpb.VerifyTrailResponse:
        slot = self._limiter.stream(principal.current()) if self._limiter else contextlib.nullcontext()
        with slot:
            return await self._verify(workflow_id)

    async def _verify(self, workflow_id: str) -> wpb.VerifyTrailResponse:
        record, own = await self._db.read(lambda conn: _record_and_events(conn, workflow_id))
        await self._pace(0, len(own))
        theirs: list[ppb.FeedEvent] = []
        if record.dispatched and own:
            theirs = await self._processor_events(workflow_id, own[-1].sequence, len(own))
        # Hashing thousands of events takes a while: off the event loop.
        return await asyncio.to_thread(self._check, record, own, theirs)

    def _check(
        self, record: WorkflowRecord, own: list[EventRecord], theirs: list[ppb.FeedEvent]
    ) -> wpb.VerifyTrailResponse:
        """The answer: the chain over both services' events, then the checks around it."""
        events = [messages.event(e) for e in own]
        events += [f.event for f in theirs]
        result: pb.StatusSnapshot | None = None
        if theirs and theirs[-1].event.type == pb.EVENT_TYPE_COMPLETED:
            result = theirs[-1].snapshot
        checked = trail.check(events)
        response = wpb.VerifyTrailResponse(
            events_checked=checked.events, head_sequence=checked.head_sequence, head_hash=checked.head_hash
        )
        problem = checked.problem or _plan_problem(record, events) or _result_problem(record, events, result)
        last = events[-1] if events else None
        if problem is None and last is not None and last.signature:
            response.signed, response.signing_key_id = True, last.signing_key_id
            key = self._keys.get(last.signing_key_id)
            if key is not None:
                response.signature_checked = True
                if not trail.signature_valid(key, last):
                    problem = trail.Problem(
                        last.sequence,
                        f"the signature of event {last.sequence} is not valid: "
                        "the trail was rewritten after it was signed",
                    )
        if problem is None and len(events) < record.last_sequence:
            problem = trail.Problem(
                len(events) + 1, f"event {len(events) + 1} is missing (the workflow is at event {record.last_sequence})"
            )
        if problem is not None:
            response.first_bad_sequence, response.problem = problem.sequence, problem.text
        response.intact = problem is None
        return response

    async def _processor_events(self, workflow_id: str, after: int, read: int) -> list[ppb.FeedEvent]:
        """The processor's events after `after`, page by page, each paid for (`read`: the
        events read before them)."""
        found: list[ppb.FeedEvent] = []
        while True:
            cursor = ppb.FeedCursor(workflow_id=workflow_id, after_sequence=after)
            with processor_call(f"trail of {workflow_id}"):
                page = await self._stub.ReadEvents(ppb.ReadEventsRequest(cursors=[cursor], page_size=PAGE), timeout=30)
            found += page.events
            await self._pace(read, read + len(page.events))
            read += len(page.events)
            if not page.truncated or not page.events:
                return found
            after = page.events[-1].event.sequence

    async def _pace(self, before: int, after: int) -> None:
        """Take the read tokens of the events from `before` to `after`, one for each multiple of
        EVENTS_PER_TOKEN reached, a token at a time (a wait for many at once could be starved by
        the caller's own calls taking each token as it comes back)."""
        if self._limiter is None:
            return
        for _ in range(after // EVENTS_PER_TOKEN - before // EVENTS_PER_TOKEN):
            await self._limiter.spend(principal.current(), Kind.READ, 1)


def _record_and_events(conn: Connection, workflow_id: str) -> tuple[WorkflowRecord, list[EventRecord]]:
    record = store.get(conn, workflow_id)
    if record is None:
        raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
    return record, store.events_after(conn, workflow_id, 0)


def _plan_problem(record: WorkflowRecord, events: list[pb.WorkflowEvent]) -> trail.Problem | None:
    """The stored plan must still be the one whose etag the CREATED event recorded, or the
    latest REVISED event (a revision is a new plan with a new etag, in the chain)."""
    now = trail.etag(record.title, record.plan_json, record.max_cycles, record.orchestrator)
    submitted = [e for e in events if e.type in (pb.EVENT_TYPE_CREATED, pb.EVENT_TYPE_REVISED)]
    recorded = submitted[-1].etag if submitted else ""
    if now != recorded or record.etag != recorded:
        return trail.Problem(
            0,
            "the stored plan does not match the etag recorded when it was submitted or "
            "revised: the plan (title, steps, parameters, data fingerprints, max_cycles or "
            "orchestrator) was changed",
        )
    return None


def _result_problem(
    record: WorkflowRecord, events: list[pb.WorkflowEvent], snapshot: pb.StatusSnapshot | None
) -> trail.Problem | None:
    """A completed run's result, as the processor holds it and as the gateway shows it, must
    match the digest its COMPLETED event recorded."""
    if snapshot is None or not events:
        return None
    completed = events[-1]
    if trail.result_digest(snapshot.result) != completed.result_digest:
        return trail.Problem(
            completed.sequence,
            f"the processor's result does not match the digest of event {completed.sequence}: the result was changed",
        )
    if statuses.is_terminal(record.status) and record.result_json is not None:
        shown = trail.result_digest(convert.struct(record.result or {}))
        if shown != completed.result_digest:
            return trail.Problem(0, "the result the gateway shows is not the run's: its copy was changed")
    return None
