"""Per-route adjustments for the web UI's contract, keyed by RPC name.

Routing and request mapping stay descriptor-driven; these only reshape a few answers:
- Approve: the web UI's `status: "success"` beside the ApproveResponse fields.
- GetStatus (`/status/live`): the snapshot's fields at the top level, 202 while processing.
- WatchStatus: the SSE event id and the `Last-Event-ID` resume field.
- ExportFindings: a file download (its content type and name), not a stream of messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import export

# (response message, its JSON) -> (HTTP status, body)
ResponseHook = Callable[[Message, Any], tuple[int, Any]]


def _approve(message: Message, body: Any) -> tuple[int, Any]:
    assert isinstance(message, wpb.ApproveResponse)
    return 200, {"status": "success", **body}


def _live_status(message: Message, body: Any) -> tuple[int, Any]:
    assert isinstance(message, wpb.GetStatusResponse)
    snapshot = dict(body["status"])
    progress = message.status.progress
    snapshot["progress_percent"] = round(100 * progress.done / progress.total) if progress.total else 0
    return (202 if message.status.is_processing else 200), snapshot


RESPONSE_HOOKS: dict[str, ResponseHook] = {
    "Approve": _approve,
    "GetStatus": _live_status,
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _approve_schema(ref: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    ui = {"type": "object", "properties": {"status": {"type": "string", "enum": ["success"]}}}
    schema = {"allOf": [ref(wpb.ApproveResponse.DESCRIPTOR), ui]}
    return {"200": _json(schema, "approved (with the web UI's `status` field)")}


def _live_status_schema(ref: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    extra = {"type": "object", "properties": {"progress_percent": {"type": "integer"}}}
    schema = {"allOf": [ref(wpb.GetStatusResponse.DESCRIPTOR.fields_by_name["status"].message_type), extra]}
    return {"200": _json(schema, "not processing"), "202": _json(schema, "processing in the background")}


# The OpenAPI responses of the reshaped answers, given a function that returns a message's schema ref.
RESPONSE_SCHEMAS: dict[str, Callable[[Callable[[Any], dict[str, Any]]], dict[str, Any]]] = {
    "Approve": _approve_schema,
    "GetStatus": _live_status_schema,
}

# Streaming RPCs that resume after a sequence: the request field that `Last-Event-ID` sets.
RESUME_FIELDS: dict[str, str] = {"WatchStatus": "after_sequence", "WatchWorkflows": "resume_token"}


@dataclass(frozen=True)
class Download:
    """A streaming RPC served as one file: the `data` of each message, in order."""

    content_type: Callable[[Message], str]
    filename: Callable[[Message], str]
    types: tuple[str, ...]  # every content type it may have (for OpenAPI)


def _export_format(message: Message) -> str:
    assert isinstance(message, wpb.ExportFindingsRequest)
    return export.check_format(message.format)


def _export_name(message: Message) -> str:
    assert isinstance(message, wpb.ExportFindingsRequest)
    return export.filename(message.workflow_id, _export_format(message))


DOWNLOADS: dict[str, Download] = {
    "ExportFindings": Download(
        content_type=lambda m: export.content_type(_export_format(m)),
        filename=_export_name,
        types=tuple(export.content_type(name) for name in export.FORMATS),
    ),
}
