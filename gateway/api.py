"""The application layer of `auditflow.v1.WorkflowService`, called by both adapters: the gRPC
servicer (`gateway.service`) and the REST gateway (`gateway.rest`), each after authenticating
the caller and checking the policy. One validation, one set of transactions, one way of
answering; errors are raised as `auditflow.errors` exceptions and each adapter maps them.

Methods are named after the RPCs and take the request message. They validate, run one
transaction from `gateway.workflows`, then publish the event to the hub (its watchers) and
hand the outbox row to the relay, and answer from the stored state. They never call the
processor: Approve is as fast as one (shared) durable commit. WatchStatus yields hub items
(a message with its encodings, shared by every watcher): for a byte stream (SSE, NDJSON) those
ready together are joined into one write, for gRPC (`WatchStatusMessages`) each is one
message. The findings are the processor's:
ListFindings and ExportFindings read them from it (`gateway.findings`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from auditflow import convert, metrics, plans, principal, statuses, tracing, trail
from auditflow.db import Database
from auditflow.errors import NotFound, invalid
from auditflow.limits import Limiter
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import collection, listing, messages, pages, quota, revisions, store, workflows
from gateway.collection import CollectionWatcher
from gateway.encoded import Encoded, Joined
from gateway.findings import Findings
from gateway.hub import Item, WorkflowHub
from gateway.listing import Listing
from gateway.outbox import OutboxRelay
from gateway.pageworkers import PageWorkers
from gateway.quota import PlanLimits
from gateway.store import ListFilter, WorkflowRecord
from gateway.verify import TrailVerifier
from gateway.watch import Watcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Approvals:
    """How many approvers a plan needs: `default` when it says 0, at most `maximum`."""

    default: int = 1
    maximum: int = 5

    def required(self, asked: int) -> int:
        if asked == 0:
            return self.default
        if not 1 <= asked <= self.maximum:
            raise invalid("required_approvals", f"between 1 and {self.maximum} on this server (0: {self.default})")
        return asked


class WorkflowApi:
    def __init__(
        self,
        db: Database,
        relay: OutboxRelay,
        hub: WorkflowHub,
        watcher: Watcher,
        findings: Findings,
        verifier: TrailVerifier,
        listing: Listing,
        page_workers: PageWorkers,
        collection_watcher: CollectionWatcher,
        *,
        default_max_cycles: int,
        self_approval: bool = False,
        approvals: Approvals = Approvals(),
        signer: trail.Signer | None = None,
        limiter: Limiter | None = None,
        plan_limits: PlanLimits = quota.NO_QUOTA,
    ) -> None:
        self._db = db
        self._relay = relay
        self._hub = hub
        self._watcher = watcher
        self._findings = findings
        self._verifier = verifier
        self._listing = listing
        self._pages = page_workers
        self._collection = collection_watcher
        self._approvals = approvals
        self._signer = signer
        self._default_max_cycles = default_max_cycles
        self._self_approval = self_approval
        self._limiter = limiter
        self._plan_limits = plan_limits

    async def CreateWorkflow(self, request: wpb.CreateWorkflowRequest) -> wpb.CreateWorkflowResponse:
        user = principal.current()
        quota.check_size(request, self._plan_limits)
        plans.check_text(request.request_id, "request_id", plans.MAX_REQUEST_ID)
        required = self._approvals.required(request.required_approvals)
        plan_json = await asyncio.to_thread(_checked_plan, request, self._plan_limits)
        new = workflows.NewWorkflow(
            title=request.title,
            plan_json=plan_json,
            steps=len(request.plan),
            orchestrator=request.orchestrator or "plan",
            max_cycles=request.max_cycles or self._default_max_cycles,
            created_by=user,
            request_id=request.request_id,
            required_approvals=required,
        )
        outcome = await self._db.write(lambda conn: quota.create(conn, new, self._plan_limits), cost=len(new.plan_json))
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s submitted by %s (%d steps)", outcome.record.workflow_id, user.name, new.steps)
        return wpb.CreateWorkflowResponse(workflow=self._workflow(outcome.record))

    async def GetWorkflow(self, request: wpb.GetWorkflowRequest) -> wpb.GetWorkflowResponse:
        workflow = self._workflow(await self._load(request.workflow_id))
        if statuses.awaits_decision(workflow.status) and any(step.sources for step in workflow.plan):
            # Approvers are warned of a data file changed since it was fingerprinted.
            shown = await asyncio.to_thread(plans.source_warnings, workflow.plan)
            del workflow.plan[:]
            workflow.plan.extend(shown)
        return wpb.GetWorkflowResponse(workflow=workflow)

    async def GetStatus(self, request: wpb.GetStatusRequest) -> wpb.GetStatusResponse:
        record = await self._load(request.workflow_id)
        return wpb.GetStatusResponse(status=messages.snapshot(record, self._relay.unavailable_since))

    async def ListWorkflows(self, request: wpb.ListWorkflowsRequest, encoding: pages.Encoding = "wire") -> bytes:
        """The page already encoded (protobuf, or REST's JSON): a page worker process builds
        it (`gateway.pageworkers`), and the adapters send its bytes as they are."""
        filter_ = self._filter(request)
        asked = self._listing.request(filter_, request.page_size, request.page_token, self._relay.unavailable_since)
        return await self._pages.page(asked, encoding, principal.current().key)

    def _filter(self, request: wpb.ListWorkflowsRequest | wpb.WatchWorkflowsRequest) -> ListFilter:
        """The caller's filter, from either request (they share its fields)."""
        return self._listing.filter_for(
            principal.current(),
            request.statuses,
            awaiting_my_approval=request.awaiting_my_approval,
            created_by_me=request.created_by_me,
            title_contains=request.title_contains,
        )

    async def Approve(self, request: wpb.ApproveRequest) -> wpb.ApproveResponse:
        record = (await self._decide(request, workflows.APPROVE)).record
        return approve_response(record, self._relay.unavailable_since)

    async def Reject(self, request: wpb.RejectRequest) -> wpb.RejectResponse:
        outcome = await self._decide(request, workflows.REJECT)
        return wpb.RejectResponse(workflow=self._workflow(outcome.record))

    async def CancelWorkflow(self, request: wpb.CancelWorkflowRequest) -> wpb.CancelWorkflowResponse:
        workflow_id = plans.check_workflow_id(request.workflow_id)
        reason = plans.check_text(request.reason, "reason", plans.MAX_COMMENT)
        user = principal.current()
        outcome = await self._db.write(lambda conn: workflows.cancel(conn, workflow_id, user, reason, self._signer))
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s: cancel requested by %s", workflow_id, user.name)
        pending = not statuses.is_terminal(outcome.record.status)
        return wpb.CancelWorkflowResponse(workflow=self._workflow(outcome.record), pending=pending)

    async def ReviseWorkflow(self, request: wpb.ReviseWorkflowRequest) -> wpb.ReviseWorkflowResponse:
        workflow_id = plans.check_workflow_id(request.workflow_id)
        etag = check_etag(request.etag)
        reason = plans.check_text(request.reason, "reason", plans.MAX_COMMENT)
        request_id = plans.check_text(request.request_id, "request_id", plans.MAX_REQUEST_ID)
        user = principal.current()
        current = await self._load(workflow_id)
        workflows.check_revisable(current, user)  # (before the plan's files are hashed; checked again when written)
        title = request.title or current.title
        max_cycles = request.max_cycles or current.max_cycles
        given = list(request.plan) or list(convert.plan_from_json(current.plan_json))
        asked = wpb.CreateWorkflowRequest(
            title=title, plan=given, max_cycles=max_cycles, orchestrator=current.orchestrator
        )
        quota.check_size(asked, self._plan_limits)
        plan_json = await asyncio.to_thread(_checked_plan, asked, self._plan_limits)
        revision = workflows.Revision(
            workflow_id=workflow_id,
            etag=etag,
            actor=user,
            title=title,
            plan_json=plan_json,
            steps=len(asked.plan),
            max_cycles=max_cycles,
            reason=reason,
            request_id=request_id,
        )
        revised = await self._db.write(lambda conn: workflows.revise(conn, revision))
        self._published(revised.outcome)
        if revised.outcome.changed:
            logger.info("workflow %s: %s", workflow_id, revised.outcome.record.last_message)
        return wpb.ReviseWorkflowResponse(
            workflow=self._workflow(revised.outcome.record), dismissed_approvers=revised.dismissed
        )

    async def RequestChanges(self, request: wpb.RequestChangesRequest) -> wpb.RequestChangesResponse:
        workflow_id = plans.check_workflow_id(request.workflow_id)
        etag = check_etag(request.etag)
        reason = plans.check_text(request.reason, "reason", plans.MAX_COMMENT)
        if not reason.strip():
            raise invalid("reason", "required: say what should change")
        user = principal.current()
        outcome = await self._db.write(lambda conn: workflows.request_changes(conn, workflow_id, user, etag, reason))
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s: %s", workflow_id, outcome.record.last_message)
        return wpb.RequestChangesResponse(workflow=self._workflow(outcome.record))

    async def GetRevision(self, request: wpb.GetRevisionRequest) -> wpb.GetRevisionResponse:
        workflow_id = plans.check_workflow_id(request.workflow_id)
        for name in ("revision", "compare_to"):
            if getattr(request, name) < 0:
                raise invalid(name, "a revision number (1 for the plan as submitted), or 0")
        current = await self._load(workflow_id)
        number = request.revision or current.revision
        wanted = [number] + ([request.compare_to] if request.compare_to else [])
        found = await self._db.read(lambda conn: [store.get_revision(conn, workflow_id, n) for n in wanted])
        for name, record in zip(("revision", "compare_to"), found, strict=False):
            if record is None:
                raise invalid(name, f"workflow {workflow_id} has revisions 1 to {current.revision}")
        shown = found[0]
        assert shown is not None
        changes: list[wpb.PlanChange] = []
        if request.compare_to and found[1] is not None:
            old, new = (revisions.PlanVersion.of(r.title, r.plan_json, r.max_cycles) for r in (found[1], shown))
            changes = [
                wpb.PlanChange(field=c.field, kind=c.kind, before=c.before, after=c.after)
                for c in revisions.changes(old, new)
            ]
        return wpb.GetRevisionResponse(
            revision=messages.revision(shown), changes=changes, current_revision=current.revision
        )

    async def WatchWorkflows(
        self, request: wpb.WatchWorkflowsRequest, encoding: pages.Encoding = "wire"
    ) -> AsyncIterator[Encoded | Joined]:
        """Items with their encodings; the lists' are made in a page worker, in the caller's
        `encoding` only (protobuf for gRPC, one item at a time; JSON for SSE and NDJSON,
        those ready together joined into one write)."""
        # (An async generator: a bad request is refused at the first message, as WatchStatus's.)
        filter_ = self._filter(request)
        size = listing.check_page_size(request.page_size) or listing.DEFAULT_PAGE_SIZE
        resume = pages.resume_point(request.resume_token) if request.resume_token else None
        asked = collection.WatchRequest(filter_, size, resume, principal.current(), encoding)
        async for item in self._collection.watch(asked):
            yield item

    def WatchStatus(self, request: wpb.WatchStatusRequest) -> AsyncIterator[Item | Joined]:
        """For a stream that writes bytes (SSE, NDJSON): the items ready together in one write."""
        return self._watcher.watch_joined(request.workflow_id, request.after_sequence)

    def WatchStatusMessages(self, request: wpb.WatchStatusRequest) -> AsyncIterator[Item]:
        """For gRPC: one item per message."""
        return self._watcher.watch(request.workflow_id, request.after_sequence)

    async def ListFindings(self, request: wpb.ListFindingsRequest) -> wpb.ListFindingsResponse:
        return await self._findings.list_findings(request)

    def ExportFindings(self, request: wpb.ExportFindingsRequest) -> AsyncIterator[wpb.ExportFindingsResponse]:
        return self._findings.export(request)

    async def VerifyTrail(self, request: wpb.VerifyTrailRequest) -> wpb.VerifyTrailResponse:
        return await self._verifier.verify(plans.check_workflow_id(request.workflow_id))

    async def WhoAmI(self, request: wpb.WhoAmIRequest) -> wpb.WhoAmIResponse:
        caller = principal.current()
        pending = await self._db.read(lambda conn: quota.pending(conn, caller))
        limits = quota.caller_limits(caller, pending, self._limiter, self._plan_limits)
        return wpb.WhoAmIResponse(
            principal=caller.name, roles=sorted(caller.roles), authenticated_by=caller.via, limits=limits
        )

    # --- helpers ---------------------------------------------------------------------

    def _workflow(self, record: WorkflowRecord) -> pb.Workflow:
        return messages.workflow(record, self._relay.unavailable_since)

    async def _load(self, workflow_id: str) -> WorkflowRecord:
        plans.check_workflow_id(workflow_id)
        record = await self._db.read(lambda conn: store.get(conn, workflow_id))
        if record is None:
            raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
        return record

    async def _decide(self, request: wpb.ApproveRequest | wpb.RejectRequest, decision: str) -> workflows.Outcome:
        try:
            outcome = await self._decide_now(request, decision)
        except Exception:
            _DECISIONS[(decision, "refused")].inc()
            raise
        _DECISIONS[(decision, _decided(outcome))].inc()
        return outcome

    async def _decide_now(self, request: wpb.ApproveRequest | wpb.RejectRequest, decision: str) -> workflows.Outcome:
        asked = workflows.Decision(
            workflow_id=plans.check_workflow_id(request.workflow_id),
            decision=decision,
            actor=principal.current(),
            comment=_comment(request.comment, required=decision == workflows.REJECT),
            request_id=plans.check_text(request.request_id, "request_id", plans.MAX_REQUEST_ID),
            etag=check_etag(request.etag),
            traceparent=tracing.traceparent(),
        )
        with tracing.span("commit decision"):
            outcome = await self._db.write(
                lambda conn: workflows.decide(conn, asked, self_approval=self._self_approval, signer=self._signer)
            )
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s: %s", asked.workflow_id, outcome.record.last_message)
        return outcome

    def _published(self, outcome: workflows.Outcome) -> None:
        """After the commit: the event to the watchers, the outbox row to the relay."""
        record = outcome.record
        event = outcome.event
        if event is not None:
            terminal = statuses.is_terminal(event.status)
            self._hub.publish(
                Item.later(record.workflow_id, event.sequence, terminal, lambda: messages.event_message(record, event))
            )
        if outcome.outbox is not None:
            self._relay.submit(outcome.outbox, record)


def _checked_plan(request: wpb.CreateWorkflowRequest, limits: quota.PlanLimits) -> str:
    """A submitted plan checked (with this gateway's limits), with its data files fingerprinted,
    as it is stored (JSON): blocking work (procedures look at files, fingerprints hash them,
    a plan of 64 KiB takes a millisecond to write as JSON), run off the event loop. The stored
    plan is parsed here too, so that the answer's plan is a cache hit
    (`convert.plan_from_json`), not a parse on the loop."""
    quota.check_plan(request, limits)
    plan_json = convert.plan_to_json(plans.fingerprinted(request.plan))
    convert.plan_from_json(plan_json)
    return plan_json


# The decisions counter's children, resolved once (a label look-up takes a lock).
_DECISIONS = {
    (kind, outcome): metrics.DECISIONS.labels(kind.lower(), outcome)
    for kind in (workflows.APPROVE, workflows.REJECT)
    for outcome in ("dispatched", "recorded", "rejected", "repeated", "refused")
}


def _decided(outcome: workflows.Outcome) -> str:
    """What a decision did, for the decisions counter."""
    if not outcome.changed:
        return "repeated"
    if outcome.outbox is not None:
        return "dispatched"
    return "rejected" if outcome.record.status == pb.WORKFLOW_STATUS_REJECTED else "recorded"


def approve_response(record: WorkflowRecord, unavailable_since: datetime | None) -> wpb.ApproveResponse:
    """Approve's answer, from the stored state: a repeated Approve after the run finished says
    so, and approved work waiting for an unavailable processor says that, not that it runs."""
    workflow = messages.workflow(record, unavailable_since)
    started = statuses.is_processing(record.status) and (record.dispatched or unavailable_since is None)
    if statuses.is_terminal(record.status):
        text = f"the run already ended: {statuses.name(record.status)} ({record.last_message})"
    elif not started:
        text = workflow.last_message  # waiting for the processor (since when), or for more approvers
    else:
        text = "Workflow processing has started in the background; watch its status live."
    return wpb.ApproveResponse(
        workflow_id=record.workflow_id,
        approved=record.decision == workflows.APPROVE,
        immediate_response=True,  # (what the answer is: it never waits for the work)
        background_processing_started=started,
        processing_message=text,
        workflow_status=record.status,  # type: ignore[arg-type]
        updated_at=convert.timestamp(record.updated_at),
        workflow=workflow,
    )


_ETAG = re.compile(r"[0-9a-f]{64}")


def _comment(text: str, *, required: bool) -> str:
    """A decision's comment; a rejection must say why (it is the submitter's only answer)."""
    checked = plans.check_text(text, "comment", plans.MAX_COMMENT)
    if required and not checked.strip():
        raise invalid("comment", "required: say why the plan is rejected")
    return checked


def check_etag(text: str) -> str:
    """The etag of the plan the caller read, as Workflow.etag gives it (64 hex digits).

    Required: a decision is bound to the revision its author saw, never to "whatever is
    stored now" (which may have been revised since)."""
    if not text:
        raise invalid(
            "etag", "required: read the workflow first (GetWorkflow), review its plan, and send the etag it shows"
        )
    if _ETAG.fullmatch(text) is None:
        raise invalid("etag", "the etag of the plan as GetWorkflow returns it (64 hex digits)")
    return text
