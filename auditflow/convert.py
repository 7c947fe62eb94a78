"""Conversions between stored Python values and protobuf messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from auditflow import statuses
from auditflow.v1 import workflow_pb2 as pb


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; we store UTC
        value = value.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def plan_to_json(plan: list[pb.PlanStep] | Any) -> str:
    """The plan as stored: a JSON list of {"procedure", "parameters"}."""
    return json.dumps(
        [{"procedure": s.procedure, "parameters": struct_to_dict(s.parameters)} for s in plan],
        sort_keys=True,
    )


def plan_from_json(text: str) -> list[pb.PlanStep]:
    return [pb.PlanStep(procedure=s["procedure"], parameters=struct(s["parameters"])) for s in json.loads(text)]


def snapshot(
    *,
    workflow_id: str,
    status: int,
    cycle: int,
    max_cycles: int,
    progress_done: int,
    progress_total: int,
    last_message: str,
    error_reason: str | None,
    error_message: str | None,
    result: dict[str, Any] | None,
    updated_at: datetime,
    last_sequence: int,
) -> pb.StatusSnapshot:
    """A StatusSnapshot with the seed's indicator flags derived from the status."""
    processing = statuses.is_processing(status)
    return pb.StatusSnapshot(
        workflow_id=workflow_id,
        status=status,  # type: ignore[arg-type]
        cycle=cycle,
        max_cycles=max_cycles,
        progress=pb.Progress(done=progress_done, total=progress_total),
        last_message=last_message,
        error=pb.RunError(reason=error_reason, message=error_message or "") if error_reason else None,
        result=struct(result),
        background_processing=processing,
        is_processing=processing,
        is_completed=statuses.is_terminal(status),
        updated_at=timestamp(updated_at),
        last_update=timestamp(updated_at),
        last_sequence=last_sequence,
    )
