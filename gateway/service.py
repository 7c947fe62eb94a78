"""`auditflow.v1.WorkflowService`: the public API.

Handlers validate, run one transaction from `gateway.workflows`, hand new outbox rows to the
relay and new events to the watchers, and answer. They never call the processor: Approve is
as fast as one (shared) durable commit. Errors are raised as `auditflow.errors` exceptions;
the interceptor maps them to status codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from auditflow import convert, plans, principal, statuses
from auditflow.db import Database
from auditflow.errors import InvalidArgument, NotFound, invalid
from auditflow.serving import Context
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from auditflow.watch import EventHub
from gateway import store, workflows
from gateway.outbox import OutboxRelay, OutboxRow
from gateway.watch import Watcher

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PROCESSING_MESSAGE = "Workflow processing has started in the background; watch its status live."


class WorkflowService(wpb_grpc.WorkflowServiceServicer):
    def __init__(
        self,
        db: Database,
        relay: OutboxRelay,
        hub: EventHub[dict[str, Any]],
        watcher: Watcher,
        *,
        default_max_cycles: int,
        self_approval: bool = False,
    ) -> None:
        self._db = db
        self._relay = relay
        self._hub = hub
        self._watcher = watcher
        self._default_max_cycles = default_max_cycles
        self._self_approval = self_approval

    async def CreateWorkflow(self, request: wpb.CreateWorkflowRequest, context: Context) -> wpb.CreateWorkflowResponse:
        user = principal.current()
        # Procedures may check files (a ledger path): blocking work, off the event loop.
        await asyncio.to_thread(plans.check_plan, request.title, request.plan, request.max_cycles, request.orchestrator)
        plans.check_text(request.request_id, "request_id", plans.MAX_REQUEST_ID)
        new = workflows.NewWorkflow(
            title=request.title,
            plan_json=convert.plan_to_json(request.plan),
            steps=len(request.plan),
            orchestrator=request.orchestrator or "plan",
            max_cycles=request.max_cycles or self._default_max_cycles,
            created_by=user,
            request_id=request.request_id,
        )
        outcome = await self._db.write(lambda conn: workflows.create(conn, new))
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s submitted by %s (%d steps)", outcome.row.workflow_id, user.name, new.steps)
        return wpb.CreateWorkflowResponse(workflow=store.workflow_of(outcome.row))

    async def GetWorkflow(self, request: wpb.GetWorkflowRequest, context: Context) -> wpb.GetWorkflowResponse:
        return wpb.GetWorkflowResponse(workflow=store.workflow_of(await self._load(request.workflow_id)))

    async def GetStatus(self, request: wpb.GetStatusRequest, context: Context) -> wpb.GetStatusResponse:
        return wpb.GetStatusResponse(status=store.snapshot_of(await self._load(request.workflow_id)))

    async def ListWorkflows(self, request: wpb.ListWorkflowsRequest, context: Context) -> wpb.ListWorkflowsResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise invalid("page_size", f"must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}")
        for status in request.statuses:
            if status not in pb.WorkflowStatus.values() or status == pb.WORKFLOW_STATUS_UNSPECIFIED:
                raise invalid("statuses", f"not a workflow status: {status}")
        size = request.page_size or DEFAULT_PAGE_SIZE
        after = _decode_token(request.page_token) if request.page_token else None
        filter_ = list(request.statuses)
        rows = await self._db.scan(lambda conn: store.list_page(conn, filter_, size + 1, after))
        token = _encode_token(rows[size - 1]) if len(rows) > size else ""
        return wpb.ListWorkflowsResponse(workflows=[store.workflow_of(r) for r in rows[:size]], next_page_token=token)

    async def Approve(self, request: wpb.ApproveRequest, context: Context) -> wpb.ApproveResponse:
        outcome = await self._decide(request, workflows.APPROVE)
        row = outcome.row
        return wpb.ApproveResponse(
            workflow_id=row.workflow_id,
            approved=True,
            immediate_response=True,
            background_processing_started=True,
            processing_message=PROCESSING_MESSAGE,
            workflow_status=pb.WORKFLOW_STATUS_APPROVED,
            updated_at=convert.timestamp(row.decided_at),
            workflow=store.workflow_of(row),
        )

    async def Reject(self, request: wpb.RejectRequest, context: Context) -> wpb.RejectResponse:
        outcome = await self._decide(request, workflows.REJECT)
        return wpb.RejectResponse(workflow=store.workflow_of(outcome.row))

    async def CancelWorkflow(self, request: wpb.CancelWorkflowRequest, context: Context) -> wpb.CancelWorkflowResponse:
        workflow_id = plans.check_workflow_id(request.workflow_id)
        reason = plans.check_text(request.reason, "reason", plans.MAX_COMMENT)
        user = principal.current()
        outcome = await self._db.write(lambda conn: workflows.cancel(conn, workflow_id, user, reason))
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s: cancel requested by %s", workflow_id, user.name)
        pending = not statuses.is_terminal(outcome.row.status)
        return wpb.CancelWorkflowResponse(workflow=store.workflow_of(outcome.row), pending=pending)

    async def WatchStatus(
        self, request: wpb.WatchStatusRequest, context: Context
    ) -> AsyncIterator[wpb.WatchStatusResponse]:
        if request.after_sequence < 0:
            raise invalid("after_sequence", "must not be negative")
        async for response in self._watcher.watch(request.workflow_id, request.after_sequence):
            yield response

    async def WhoAmI(self, request: wpb.WhoAmIRequest, context: Context) -> wpb.WhoAmIResponse:
        caller = principal.current()
        return wpb.WhoAmIResponse(principal=caller.name, roles=sorted(caller.roles), authenticated_by=caller.via)

    # --- helpers ---------------------------------------------------------------------

    async def _load(self, workflow_id: str) -> Any:
        plans.check_workflow_id(workflow_id)
        row = await self._db.read(lambda conn: store.get(conn, workflow_id))
        if row is None:
            raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
        return row

    async def _decide(self, request: wpb.ApproveRequest | wpb.RejectRequest, decision: str) -> workflows.Outcome:
        workflow_id = plans.check_workflow_id(request.workflow_id)
        comment = plans.check_text(request.comment, "comment", plans.MAX_COMMENT)
        request_id = plans.check_text(request.request_id, "request_id", plans.MAX_REQUEST_ID)
        user = principal.current()
        outcome = await self._db.write(
            lambda conn: workflows.decide(
                conn, workflow_id, decision, user, comment, request_id, self_approval=self._self_approval
            )
        )
        self._published(outcome)
        if outcome.changed:
            logger.info("workflow %s %s by %s", workflow_id, decision.lower() + "d", user.name)
        return outcome

    def _published(self, outcome: workflows.Outcome) -> None:
        """After the commit: wake watchers, hand the outbox row to the relay."""
        if outcome.event is not None:
            self._hub.publish(outcome.row.workflow_id, outcome.event["sequence"], outcome.event)
        if outcome.outbox_id is not None and outcome.outbox_payload is not None:
            request: ppb.EnqueueRequest | ppb.CancelRunRequest
            if outcome.outbox_kind == store.ENQUEUE:
                request = store.complete_enqueue(ppb.EnqueueRequest.FromString(outcome.outbox_payload), outcome.row)
            else:
                request = ppb.CancelRunRequest.FromString(outcome.outbox_payload)
            workflow_id = outcome.row.workflow_id
            self._relay.submit(
                OutboxRow(outcome.outbox_id, workflow_id, outcome.outbox_kind, outcome.outbox_payload, request)
            )


def _encode_token(row: Any) -> str:
    created: datetime = row.created_at
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{row.workflow_id}".encode()).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        created, workflow_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created), plans.check_workflow_id(workflow_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, InvalidArgument) as exc:
        raise invalid("page_token", "malformed; pass the next_page_token of a previous call") from exc
