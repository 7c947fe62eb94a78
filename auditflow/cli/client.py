"""Talking to the gateway: channel, caller metadata, readable errors, a resilient watch."""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from auditflow import statuses
from auditflow.principal import USER_METADATA_KEY
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api
from auditflow.v1 import workflow_service_pb2_grpc as api_grpc

DEFAULT_TARGET = "localhost:50051"
Metadata = tuple[tuple[str, str | bytes], ...]


class CliError(Exception):
    """A problem the user can fix (bad input, unreachable server): one line, exit code 2."""


def default_target() -> str:
    return os.environ.get("AUDITFLOW_TARGET") or DEFAULT_TARGET


def default_user() -> str:
    user = os.environ.get("AUDITFLOW_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return "anonymous"


def user_metadata(user: str) -> Metadata:
    return ((USER_METADATA_KEY, user),) if user else ()


def open_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


def workflow_stub(channel: grpc.Channel) -> api_grpc.WorkflowServiceStub:
    return api_grpc.WorkflowServiceStub(channel)


def format_rpc_error(error: grpc.RpcError) -> str:
    """'error: NOT_FOUND: no such workflow' plus one indented line per BadRequest violation.

    The details come from the `grpc-status-details-bin` trailer (google.rpc.Status).
    """
    # Only the errors grpc raises for a call have code() and details(); be safe with others.
    code = error.code() if callable(getattr(error, "code", None)) else None
    message = error.details() if callable(getattr(error, "details", None)) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    text = message or (code.value[1] if isinstance(code, grpc.StatusCode) else str(error))
    lines = [f"error: {name}: {text}"]
    for field, description in field_violations(error):
        lines.append(f"  {field}: {description}")
    if code == grpc.StatusCode.UNAVAILABLE and not message:
        lines[0] += " (is the gateway running? see --target)"
    return "\n".join(lines)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest field violation in the error's rich status."""
    if not callable(getattr(error, "trailing_metadata", None)):
        return []
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (ValueError, AttributeError, TypeError, DecodeError):  # malformed or inconsistent trailer
        return []
    if status is None:
        return []
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    return violations


@dataclass
class Backoff:
    """Exponential delays for reconnecting: 0.5 s, 1 s, 2 s … capped at `maximum`."""

    initial: float = 0.5
    maximum: float = 5.0
    factor: float = 2.0
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def delay(self) -> float:
        self._next = self.initial if self._next == 0 else min(self.maximum, self._next * self.factor)
        return self._next


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def watch(
    stub: api_grpc.WorkflowServiceStub,
    workflow_id: str,
    *,
    metadata: Metadata,
    after_sequence: int = 0,
    on_event: Callable[[pb.WorkflowEvent, pb.StatusSnapshot], None],
    on_heartbeat: Callable[[pb.StatusSnapshot], None],
    on_reconnect: Callable[[str, float], None],
    give_up_after: float = 60.0,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> pb.StatusSnapshot:
    """Follow WatchStatus until the workflow reaches a terminal status; return the last snapshot.

    On UNAVAILABLE (or a stream that ends before the terminal event) it reconnects with the
    last sequence seen, so no event is missed nor shown twice. It gives up, re-raising the
    last error, when no message arrived for `give_up_after` seconds of reconnecting.
    """
    backoff = backoff or Backoff()
    last_sequence = after_sequence
    snapshot: pb.StatusSnapshot | None = None
    disconnected_since: float | None = None
    while True:
        request = api.WatchStatusRequest(workflow_id=workflow_id, after_sequence=last_sequence)
        problem: str
        try:
            for response in stub.WatchStatus(request, metadata=metadata):
                disconnected_since = None
                backoff.reset()
                if response.HasField("snapshot"):
                    snapshot = response.snapshot
                current = snapshot if snapshot is not None else pb.StatusSnapshot(workflow_id=workflow_id)
                if response.HasField("event"):
                    if response.event.sequence <= last_sequence:
                        continue  # already shown before a reconnect
                    last_sequence = response.event.sequence
                    on_event(response.event, current)
                else:
                    on_heartbeat(current)
                if statuses.is_terminal(current.status) and current.last_sequence <= last_sequence:
                    return current
            if snapshot is not None and statuses.is_terminal(snapshot.status):
                return snapshot
            # Ended cleanly without a terminal event: nothing after our sequence, or the
            # server is going away. Ask once before reconnecting.
            status = stub.GetStatus(api.GetStatusRequest(workflow_id=workflow_id), metadata=metadata).status
            if statuses.is_terminal(status.status) and status.last_sequence <= last_sequence:
                return status
            problem = "the stream ended before the workflow finished"
            error: grpc.RpcError | None = None
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            problem = f"{exc.code().name}: {exc.details()}"
            error = exc
        now = clock()
        if disconnected_since is None:
            disconnected_since = now
        if now - disconnected_since >= give_up_after:
            if error is not None:
                raise error
            raise CliError(f"gave up watching {workflow_id} after {give_up_after:.0f} s: {problem}")
        delay = backoff.delay()
        on_reconnect(f"{problem}; reconnecting after event #{last_sequence} in {delay:.1f} s", delay)
        sleep(delay)


def exit_code_for(status: int) -> int:
    """0 when COMPLETED, 1 for the other terminal statuses."""
    return 0 if status == pb.WorkflowStatus.WORKFLOW_STATUS_COMPLETED else 1
