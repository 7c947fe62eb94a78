"""Conversions between stored Python values and protobuf messages."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf import struct_pb2, timestamp_pb2

from auditflow import statuses
from auditflow.fingerprints import Fingerprint
from auditflow.v1 import workflow_pb2 as pb


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time, aware: SQLite hands back naive datetimes, and everything is stored in UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """`value` as a Timestamp; naive datetimes (SQLite hands them back) are UTC, as stored.
    Computed from the difference to the epoch: a third of `Timestamp.FromDatetime`'s cost,
    and it runs several times for every workflow answered."""
    if value is None:
        return None
    delta = value - (_EPOCH_NAIVE if value.tzinfo is None else _EPOCH)
    return timestamp_pb2.Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as Python values, as json_format would give them, except that NaN and
    Infinity come through as floats (for validation to refuse them with a clear message)
    instead of raising."""
    return {key: _value(value) for key, value in message.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def whole_numbers(value: Any) -> Any:
    """JSON as its author wrote it: a protobuf Struct (and a plan stored from one) holds every
    number as a double, so 5 comes back as 5.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value


def plan_to_json(plan: list[pb.PlanStep] | Any) -> str:
    """The plan as stored: a JSON list of {"procedure", "parameters"}, and "sources" (the data
    files' fingerprints) on a step that reads files. A step without sources is stored as
    before, so that the etag of such a plan is unchanged."""
    return json.dumps([_step_json(s) for s in plan], sort_keys=True)


def _step_json(step: pb.PlanStep) -> dict[str, Any]:
    data: dict[str, Any] = {"procedure": step.procedure, "parameters": struct_to_dict(step.parameters)}
    if step.sources:
        data["sources"] = [source_fingerprint(source).to_json() for source in step.sources]
    return data


def source_message(fingerprint: Fingerprint, changed: str = "") -> pb.DataSource:
    seconds, nanos = divmod(fingerprint.modified_ns, 1_000_000_000)
    return pb.DataSource(
        parameter=fingerprint.parameter,
        path=fingerprint.path,
        size_bytes=fingerprint.size_bytes,
        sha256=fingerprint.sha256,
        modified_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        changed=changed,
    )


def source_fingerprint(source: pb.DataSource) -> Fingerprint:
    modified_ns = source.modified_at.seconds * 1_000_000_000 + source.modified_at.nanos
    return Fingerprint(source.parameter, source.path, source.size_bytes, source.sha256, modified_ns)


def plan_from_json(text: str) -> tuple[pb.PlanStep, ...]:
    """The stored plan as messages. Cached: a handful of plans is answered over and over, and
    messages passed to a constructor or `extend` are copied, so the cached ones stay intact."""
    return _plan_from_json(text)


@functools.lru_cache(maxsize=256)
def _plan_from_json(text: str) -> tuple[pb.PlanStep, ...]:
    return tuple(
        pb.PlanStep(
            procedure=s["procedure"],
            parameters=struct(s["parameters"]),
            sources=[source_message(Fingerprint.from_json(f)) for f in s.get("sources", ())],
        )
        for s in json.loads(text)
    )


def plan_outline(text: str) -> list[pb.PlanStep]:
    """The stored plan's steps without their parameters: each step's procedure and data
    sources, what a list shows (a step's parameters can weigh 16 KiB; GetWorkflow has them)."""
    return [
        pb.PlanStep(
            procedure=s["procedure"],
            sources=[source_message(Fingerprint.from_json(f)) for f in s.get("sources", ())],
        )
        for s in json.loads(text)
    ]


class SnapshotSource(Protocol):
    """What a StatusSnapshot is built from: a gateway's workflow record, a processor's run, or
    a run's event (the snapshot as of it)."""

    @property
    def workflow_id(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def cycle(self) -> int: ...
    @property
    def max_cycles(self) -> int: ...
    @property
    def progress_done(self) -> int: ...
    @property
    def progress_total(self) -> int: ...
    @property
    def last_message(self) -> str: ...
    @property
    def error_reason(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def result(self) -> dict[str, Any] | None: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def last_sequence(self) -> int: ...


def snapshot(source: SnapshotSource, *, unavailable_since: datetime | None = None) -> pb.StatusSnapshot:
    """The one StatusSnapshot builder. `unavailable_since`: approved work waits because the
    processor is unavailable."""
    return pb.StatusSnapshot(
        workflow_id=source.workflow_id,
        processor_unavailable_since=timestamp(unavailable_since),
        **status_fields(source),
    )


def status_fields(source: SnapshotSource, *, result: bool = True) -> dict[str, Any]:
    """A snapshot's status fields, with the indicator flags derived from the status, as
    keyword arguments for a StatusSnapshot or a Workflow (which carries them too): passed as
    arguments, not copied out of a built snapshot (which cost a Workflow a third of its time).
    Without the `result` when a summary leaves it out (a run's result can weigh 1 MiB)."""
    status = source.status
    processing = statuses.is_processing(status)
    reason = source.error_reason
    updated_at = timestamp(source.updated_at)
    return {
        "status": status,
        "cycle": source.cycle,
        "max_cycles": source.max_cycles,
        "progress": pb.Progress(done=source.progress_done, total=source.progress_total),
        "last_message": source.last_message,
        "error": pb.RunError(reason=reason, message=source.error_message or "") if reason else None,
        "result": struct(source.result) if result else None,
        "background_processing": processing,
        "is_processing": processing,
        "is_completed": statuses.is_terminal(status),
        "updated_at": updated_at,
        "last_update": updated_at,
        "last_sequence": source.last_sequence,
    }
