"""What happens to a run, as pure functions: given the locked run and what just happened,
the events to append and the other columns to change.

Kept free of I/O so that the rules (which event, which status, when a run fails) are read
and tested in one place; `processor.scheduler` and `processor.service` apply them inside a
write transaction with `store.append`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auditflow import statuses
from auditflow.v1 import workflow_pb2 as pb
from processor.orchestrator import CycleResult
from processor.store import NewEvent, RunRecord

S = pb.WorkflowStatus
E = pb.EventType
Changes = dict[str, Any]
Transition = tuple[list[NewEvent], Changes]
RELEASE: Changes = {"lease_owner": None, "lease_expires_at": None}


@dataclass(frozen=True)
class Succeeded:
    """The cycle returned."""

    result: CycleResult


@dataclass(frozen=True)
class Errored:
    """The cycle raised; `critical` when it was a CriticalError."""

    message: str
    critical: bool = False


Outcome = Succeeded | Errored


def started(run: RunRecord, worker_id: str) -> Transition:
    """A claim: the first one starts a QUEUED run, a later one resumes from the checkpoint."""
    if run.status == S.WORKFLOW_STATUS_QUEUED:
        message = f"started by processor {worker_id}"
    else:
        message = f"resumed from checkpoint at cycle {run.cycle}"
    event = NewEvent.following(run, E.EVENT_TYPE_STARTED, message, status=S.WORKFLOW_STATUS_RUNNING)
    return [event], {}


def after_cycle(
    run: RunRecord, cycle: int, outcome: Outcome, *, max_failures: int, lease_expires_at: datetime
) -> Transition:
    """Checkpoint cycle `cycle` and decide whether the run ends.

    Order of precedence when several apply: critical error, completion, too many consecutive
    failures, max cycles, then a pending cancel (honoured here, between cycles).
    """
    if isinstance(outcome, Errored) and outcome.critical:
        fail = _failed(run, cycle, statuses.CRITICAL_ERROR, outcome.message)
        return [fail], {"consecutive_failures": run.consecutive_failures + 1, **RELEASE}
    events, changes = _cycle_event(run, cycle, outcome)
    last = events[-1]
    terminal = _terminal_event(run, cycle, outcome, last, changes["consecutive_failures"], max_failures)
    if terminal is None:
        return events, {**changes, "lease_expires_at": lease_expires_at}
    return [*events, terminal], {**changes, **RELEASE}


def _cycle_event(run: RunRecord, cycle: int, outcome: Outcome) -> Transition:
    if isinstance(outcome, Succeeded):
        r = outcome.result
        event = NewEvent.following(
            run,
            E.EVENT_TYPE_CYCLE_COMPLETED,
            r.message or f"cycle {cycle} completed",
            cycle=cycle,
            progress_done=r.progress_done,
            progress_total=r.progress_total,
        )
        return [event], {"state_json": _json(r.state), "consecutive_failures": 0}
    message = f"cycle {cycle} failed: {outcome.message}"
    event = NewEvent.following(run, E.EVENT_TYPE_CYCLE_FAILED, message, cycle=cycle)
    return [event], {"consecutive_failures": run.consecutive_failures + 1}


def _terminal_event(
    run: RunRecord, cycle: int, outcome: Outcome, last: NewEvent, failures: int, max_failures: int
) -> NewEvent | None:
    if isinstance(outcome, Succeeded) and outcome.result.done:
        message = f"completed after {cycle} cycles"
        return _after(last, E.EVENT_TYPE_COMPLETED, message, S.WORKFLOW_STATUS_COMPLETED, result=outcome.result.result)
    if failures >= max_failures:
        text = f"{failures} consecutive cycles failed; last: {last.message}"
        return _failed_after(last, statuses.TOO_MANY_FAILURES, text)
    if cycle >= run.max_cycles:
        text = f"not finished after {run.max_cycles} cycles"
        return _failed_after(last, statuses.MAX_CYCLES_EXCEEDED, text)
    if run.cancel_requested:
        return _after(last, E.EVENT_TYPE_CANCELLED, f"cancelled after cycle {cycle}", S.WORKFLOW_STATUS_CANCELLED)
    return None


def _after(previous: NewEvent, type: int, message: str, status: int, **changes: Any) -> NewEvent:
    return NewEvent(
        type=type,
        status=status,
        cycle=previous.cycle,
        progress_done=previous.progress_done,
        progress_total=previous.progress_total,
        message=message,
        error_reason=changes.get("error_reason"),
        error_message=changes.get("error_message"),
        result=changes.get("result"),
    )


def _failed_after(previous: NewEvent, reason: str, text: str) -> NewEvent:
    failed = S.WORKFLOW_STATUS_FAILED
    return _after(previous, E.EVENT_TYPE_FAILED, f"failed: {text}", failed, error_reason=reason, error_message=text)


def _failed(run: RunRecord, cycle: int, reason: str, text: str) -> NewEvent:
    return NewEvent.following(
        run,
        E.EVENT_TYPE_FAILED,
        f"failed in cycle {cycle}: {text}",
        status=S.WORKFLOW_STATUS_FAILED,
        cycle=cycle,
        error_reason=reason,
        error_message=text,
        result=None,
    )


def cancelled_between_cycles(run: RunRecord) -> Transition:
    """The scheduler honours a pending cancel before starting the next cycle."""
    event = NewEvent.following(
        run, E.EVENT_TYPE_CANCELLED, f"cancelled after cycle {run.cycle}", status=S.WORKFLOW_STATUS_CANCELLED
    )
    return [event], dict(RELEASE)


def cancel_requested(run: RunRecord, by: str, reason: str, by_auth: str = "") -> Transition:
    """CancelRun: a QUEUED run is cancelled at once, a RUNNING one is flagged (once) and the
    scheduler cancels it between cycles; a terminal run is left as it is."""
    why = f": {reason}" if reason else ""
    if run.status == S.WORKFLOW_STATUS_QUEUED:
        event = NewEvent.following(
            run,
            E.EVENT_TYPE_CANCELLED,
            f"cancelled by {by}{why}",
            actor=by,
            actor_auth=by_auth or None,
            status=S.WORKFLOW_STATUS_CANCELLED,
        )
        return [event], dict(RELEASE)
    if run.status == S.WORKFLOW_STATUS_RUNNING and not run.cancel_requested:
        event = NewEvent.following(
            run, E.EVENT_TYPE_CANCEL_REQUESTED, f"cancel requested by {by}{why}", actor=by, actor_auth=by_auth or None
        )
        return [event], {"cancel_requested": True}
    return [], {}


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)
