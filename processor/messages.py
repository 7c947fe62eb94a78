"""Stored runs and events as protobuf messages of the ProcessorService contract."""

from __future__ import annotations

from datetime import datetime

from auditflow import convert, statuses
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import workflow_pb2 as pb
from processor.broadcast import EventBroadcast
from processor.store import EventRecord, RunRecord


def run_snapshot(run: RunRecord) -> pb.StatusSnapshot:
    """The run's current snapshot (equal to the snapshot as of its newest event)."""
    return convert.snapshot(run)


def event_snapshot(event: EventRecord) -> pb.StatusSnapshot:
    """The run's snapshot as of `event`: what a watcher replaying the log should show."""
    return convert.snapshot(event)


def run(record: RunRecord) -> ps.Run:
    return ps.Run(
        workflow_id=record.workflow_id,
        snapshot=run_snapshot(record),
        cancel_requested=record.cancel_requested,
        created_at=convert.timestamp(record.created_at),
    )


def event(record: EventRecord) -> pb.WorkflowEvent:
    return pb.WorkflowEvent(
        workflow_id=record.workflow_id,
        sequence=record.sequence,
        type=record.type,  # type: ignore[arg-type]
        status=record.status,  # type: ignore[arg-type]
        cycle=record.cycle,
        progress=pb.Progress(done=record.progress_done, total=record.progress_total),
        message=record.message,
        actor=record.actor,
        time=convert.timestamp(record.time),
        actor_auth=record.actor_auth or "",
        hash=record.hash or "",
        result_digest=record.result_digest or "",
        signature=record.signature or "",
        signing_key_id=record.signing_key_id or "",
    )


def watch_event(record: EventRecord) -> ps.ProcessorServiceWatchStatusResponse:
    return ps.ProcessorServiceWatchStatusResponse(event=event(record), snapshot=event_snapshot(record))


def watch_heartbeat(record: RunRecord, now: datetime) -> ps.ProcessorServiceWatchStatusResponse:
    return ps.ProcessorServiceWatchStatusResponse(
        heartbeat=pb.Heartbeat(time=convert.timestamp(now)), snapshot=run_snapshot(record)
    )


WatchResponse = ps.ProcessorServiceWatchStatusResponse
Broadcast = EventBroadcast[WatchResponse]


def publish(hub: Broadcast, records: list[EventRecord]) -> None:
    """Tell watchers in this process about committed events (call after the commit)."""
    for record in records:
        final = statuses.is_terminal(record.status)
        hub.publish(record.workflow_id, record.sequence, watch_event(record), final=final)
