"""The application layer of `auditflow.v1.WorkflowService`, called by both adapters: the gRPC
servicer (`gateway.service`) and the REST gateway (`gateway.rest`), each after authenticating
the caller and checking the policy. One validation, one set of transactions, one way of
answering; errors are raised as `auditflow.errors` exceptions and each adapter maps them.

Methods are named after the RPCs and take the request message. They validate, run one
transaction from `gateway.workflows`, then publish the event to the hub (its watchers) and
hand the outbox row to the relay, and answer from the stored state. They never call the
processor: Approve is as fast as one (shared) durable commit. WatchStatus yields hub items
(a message with its encodings, shared by every watcher). The findings are the processor's:
ListFindings and ExportFindings read them from it (`gateway.findings`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from auditflow import convert, metrics, plans, principal, statuses, tracing, trail
from auditflow.db import Database
from auditflow.errors import InvalidArgument, NotFound, invalid
from auditflow.limits import Limiter
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import messages, pages, quota, store, workflows
from gateway.findings import Findings
from gateway.hub import Item, WorkflowHub
from gateway.outbox import OutboxRelay
from gateway.quota import PlanLimits
from gateway.store import WorkflowRecord
from gateway.verify import TrailVerifier
from gateway.watch import Watcher

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_MAX_PAGE_BYTES = 1024 * 1024


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
        *,
        default_max_cycles: int,
        self_approval: bool = False,
        approvals: Approvals = Approvals(),
        signer: trail.Signer | None = None,
        limiter: Limiter | None = None,
        plan_limits: PlanLimits = quota.NO_QUOTA,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
    ) -> None:
        self._db = db
        self._relay = relay
        self._hub = hub
        self._watcher = watcher
        self._findings = findings
        self._verifier = verifier
        self._approvals = approvals
        self._signer = signer
        self._default_max_cycles = default_max_cycles
        self._self_approval = self_approval
        self._limiter = limiter
        self._plan_limits = plan_limits
        self._max_page_bytes = max_page_bytes

    async def CreateWorkflow(self, request: wpb.CreateWorkflowRequest) -> wpb.CreateWorkflowResponse:
        user = principal.current()
        quota.check_size(request, self._plan_limits)
        # Procedures may check files (a ledger path): blocking work, off the event loop.
        await asyncio.to_thread(quota.check_plan, request, self._plan_limits)
        plans.check_text(request.request_id, "request_id", plans.MAX_REQUEST_ID)
        required = self._approvals.required(request.required_approvals)
        new = workflows.NewWorkflow(
            title=request.title,
            plan_json=convert.plan_to_json(request.plan),
            steps=len(request.plan),
            orchestrator=request.orchestrator or "plan",
            max_cycles=request.max_cycles or self._default_max_cycles,
            created_by=user,
            request_id=request.request_id,
            required_approvals=required,
        )
        outcome = await self._db.write(lambda conn: quota.create(conn, new, self._plan_limits))
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s submitted by %s (%d steps)", outcome.record.workflow_id, user.name, new.steps)
        return wpb.CreateWorkflowResponse(workflow=self._workflow(outcome.record))

    async def GetWorkflow(self, request: wpb.GetWorkflowRequest) -> wpb.GetWorkflowResponse:
        return wpb.GetWorkflowResponse(workflow=self._workflow(await self._load(request.workflow_id)))

    async def GetStatus(self, request: wpb.GetStatusRequest) -> wpb.GetStatusResponse:
        record = await self._load(request.workflow_id)
        return wpb.GetStatusResponse(status=messages.snapshot(record, self._relay.unavailable_since))

    async def ListWorkflows(self, request: wpb.ListWorkflowsRequest) -> wpb.ListWorkflowsResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise invalid("page_size", f"must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}")
        for status in request.statuses:
            if status not in pb.WorkflowStatus.values() or status == pb.WORKFLOW_STATUS_UNSPECIFIED:
                raise invalid("statuses", f"not a workflow status: {status}")
        size = request.page_size or DEFAULT_PAGE_SIZE
        after = _decode_token(request.page_token) if request.page_token else None
        filter_ = list(request.statuses)
        bounds = pages.Bounds(size, self._max_page_bytes)
        return await pages.read(self._db, filter_, after, bounds, self._workflow, _encode_token)

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

    def WatchStatus(self, request: wpb.WatchStatusRequest) -> AsyncIterator[Item]:
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
        return wpb.WhoAmIResponse(principal=caller.name, roles=sorted(caller.roles), authenticated_by=caller.via,
                                  limits=limits)  # fmt: skip

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
            comment=plans.check_text(request.comment, "comment", plans.MAX_COMMENT),
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
            self._hub.publish(Item.later(record.workflow_id, event.sequence, terminal,
                                         lambda: messages.event_message(record, event)))  # fmt: skip
        if outcome.outbox is not None:
            self._relay.submit(outcome.outbox, record)


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


def check_etag(text: str) -> str:
    """An etag as Workflow.etag gives it (64 hex digits), or empty."""
    if text and _ETAG.fullmatch(text) is None:
        raise invalid("etag", "the etag of the plan as GetWorkflow returns it (64 hex digits), or empty")
    return text


def _encode_token(record: WorkflowRecord) -> str:
    return base64.urlsafe_b64encode(f"{record.created_at.isoformat()}|{record.workflow_id}".encode()).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        created, workflow_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created), plans.check_workflow_id(workflow_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, InvalidArgument) as exc:
        raise invalid("page_token", "malformed; pass the next_page_token of a previous call") from exc
