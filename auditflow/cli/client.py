"""Talking to the gateway: credentials, channel, readable errors, a resilient watch.

Credentials come from, first found: `--token`, `--token-file`, `AUDITFLOW_TOKEN`,
`AUDITFLOW_TOKEN_FILE`, then the config file (`$AUDITFLOW_CONFIG`, default
`~/.config/auditflow/config.toml`, keys `target`, `token_file`, `token`, `tls_ca`). The token
goes on every call as `authorization: Bearer …` and is never printed. A token is sent in
plaintext only to a loopback gateway, unless `--plaintext` insists.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from auditflow import statuses
from auditflow.backoff import Backoff
from auditflow.tls import host_of, is_loopback
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api
from auditflow.v1 import workflow_service_pb2_grpc as api_grpc

DEFAULT_TARGET = "localhost:50051"
Metadata = tuple[tuple[str, str | bytes], ...]


class CliError(Exception):
    """A problem the user can fix (bad input, unreachable server): one line, exit code 2."""


def config_path() -> Path:
    explicit = os.environ.get("AUDITFLOW_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "auditflow" / "config.toml"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The config file's settings ({} when there is none); CliError if it is broken."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read the config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"the config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"target", "token", "token_file", "tls_ca"}
    if unknown:
        raise CliError(f"the config file {path} has unknown keys: {', '.join(sorted(unknown))}")
    return data


def default_target() -> str:
    try:
        configured = load_config().get("target")
    except CliError:  # (reported when the token is looked up)
        configured = None
    return os.environ.get("AUDITFLOW_TARGET") or str(configured or DEFAULT_TARGET)


def read_token(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token or any(c.isspace() for c in token):
        raise CliError(f"the token file {path} must hold one token and nothing else")
    return token


def find_token(token: str | None, token_file: str | None) -> str | None:
    """The caller's token from the flags, the environment or the config file (or None)."""
    if token:
        return token
    if token_file:
        return read_token(token_file)
    if os.environ.get("AUDITFLOW_TOKEN"):
        return os.environ["AUDITFLOW_TOKEN"].strip()
    if os.environ.get("AUDITFLOW_TOKEN_FILE"):
        return read_token(os.environ["AUDITFLOW_TOKEN_FILE"])
    config = load_config()
    if config.get("token"):
        return str(config["token"])
    if config.get("token_file"):
        return read_token(str(config["token_file"]))
    return None


def auth_metadata(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class Connection:
    """Where the gateway is and how to reach it."""

    target: str
    tls: bool = False
    tls_ca: str = ""
    plaintext: bool = False


def open_channel(connection: Connection | str, token: str | None = None) -> grpc.Channel:
    """A channel to the gateway: TLS when asked (--tls, --tls-ca, or tls_ca in the config),
    else plaintext, which carries a token only to a loopback address unless --plaintext."""
    if isinstance(connection, str):
        connection = Connection(connection)
    ca = connection.tls_ca or os.environ.get("AUDITFLOW_TLS_CA") or str(load_config().get("tls_ca") or "")
    if connection.tls or ca:
        try:
            roots = Path(ca).expanduser().read_bytes() if ca else None
        except OSError as exc:
            raise CliError(f"cannot read the CA certificate {ca}: {exc.strerror}") from None
        return grpc.secure_channel(connection.target, grpc.ssl_channel_credentials(root_certificates=roots))
    host = host_of(connection.target)
    if token and not connection.plaintext and not is_loopback(host):
        raise CliError(
            f"refusing to send your token in plaintext to {host}: use --tls (or --tls-ca FILE), "
            "or --plaintext on a network you trust"
        )
    return grpc.insecure_channel(connection.target)


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
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append("  give your token with --token-file FILE or AUDITFLOW_TOKEN_FILE (see auditflow --help)")
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
    backoff = backoff or Backoff(initial=0.5)
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
        delay = backoff.next()
        on_reconnect(f"{problem}; reconnecting after event #{last_sequence} in {delay:.1f} s", delay)
        sleep(delay)


def exit_code_for(status: int) -> int:
    """0 when COMPLETED, 1 for the other terminal statuses."""
    return 0 if status == pb.WorkflowStatus.WORKFLOW_STATUS_COMPLETED else 1
