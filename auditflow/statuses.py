"""Life-cycle facts both services agree on (the statuses and which of them end a workflow)."""

from __future__ import annotations

from auditflow.v1 import workflow_pb2 as pb

S = pb.WorkflowStatus

TERMINAL = frozenset(
    {S.WORKFLOW_STATUS_COMPLETED, S.WORKFLOW_STATUS_FAILED, S.WORKFLOW_STATUS_REJECTED, S.WORKFLOW_STATUS_CANCELLED}
)
PROCESSING = frozenset({S.WORKFLOW_STATUS_APPROVED, S.WORKFLOW_STATUS_QUEUED, S.WORKFLOW_STATUS_RUNNING})

MAX_CYCLES_EXCEEDED = "MAX_CYCLES_EXCEEDED"
CRITICAL_ERROR = "CRITICAL_ERROR"
TOO_MANY_FAILURES = "TOO_MANY_CONSECUTIVE_FAILURES"


def name(status: int) -> str:
    """'RUNNING' for WORKFLOW_STATUS_RUNNING."""
    return S.Name(status).removeprefix("WORKFLOW_STATUS_")  # type: ignore[arg-type]


def from_name(text: str) -> int:
    """WORKFLOW_STATUS_RUNNING for 'running', 'RUNNING' or 'WORKFLOW_STATUS_RUNNING'."""
    key = text.strip().upper()
    if not key.startswith("WORKFLOW_STATUS_"):
        key = "WORKFLOW_STATUS_" + key
    return S.Value(key)


def is_terminal(status: int) -> bool:
    return status in TERMINAL


def is_processing(status: int) -> bool:
    return status in PROCESSING


AWAITING_DECISION = frozenset({S.WORKFLOW_STATUS_AWAITING_APPROVAL, S.WORKFLOW_STATUS_CHANGES_REQUESTED})


def awaits_decision(status: int) -> bool:
    """Submitted and not yet approved or rejected: the plan may still be revised."""
    return status in AWAITING_DECISION
