"""An OpenAPI 3 document of the REST routes, generated from the same descriptors.

Schemas follow the proto3 JSON mapping with proto field names (what the gateway sends):
64-bit integers are strings, enums their value names, Timestamp an RFC 3339 string, Struct
any JSON object. The few answers reshaped for the web UI (gateway/rest/hooks.py) say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.rest import hooks
from gateway.rest.routes import _VARIABLE, Route

T = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    T.TYPE_FLOAT: {"type": "number", "format": "float"},
    T.TYPE_INT64: {"type": "string", "format": "int64"},
    T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    T.TYPE_SINT64: {"type": "string", "format": "int64"},
    T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    T.TYPE_INT32: {"type": "integer", "format": "int32"},
    T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    T.TYPE_BOOL: {"type": "boolean"},
    T.TYPE_STRING: {"type": "string"},
    T.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A gRPC status: its code number and name, message and google.rpc details.",
    "properties": {
        "code": {"type": "integer"},
        "status": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
    },
    "required": ["code", "status", "message", "details"],
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def ref(self, descriptor: Descriptor | EnumDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion stops here
            if isinstance(descriptor, EnumDescriptor):
                self.components[name] = {"type": "string", "enum": [v.name for v in descriptor.values]}
            else:
                self.components[name] = self._message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, descriptor: Descriptor) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {f.name: self.field(f) for f in descriptor.fields},
        }

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.field(message.fields_by_name["value"])}
        if message is not None:
            single = self.ref(message)
        elif field.enum_type is not None:
            single = self.ref(field.enum_type)
        else:
            single = dict(_SCALARS[field.type])
        return {"type": "array", "items": single} if field.is_repeated else single


def _path(template: str) -> str:
    return _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template)


def document(routes: list[Route], title: str = "auditflow REST API", version: str = "v1") -> dict[str, Any]:
    """The OpenAPI 3.0 document of `routes`."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, schemas)
        paths.setdefault(_path(route.template), {})[route.http_method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": schemas.components, "securitySchemes": SECURITY_SCHEMES},
        # Every operation needs a bearer token (an API token or an OIDC JWT); behind a trusted
        # proxy configured on the server, the proxy's identity header stands in for it.
        "security": [{"bearer": []}],
    }


DESCRIPTION = (
    "Every call authenticates with `Authorization: Bearer <token>` (an API token or an OIDC JWT). "
    "A missing or refused credential is 401 with a `WWW-Authenticate` challenge; a caller without "
    "the role a call needs (viewer, submitter, approver, admin) is 403. Each caller has its own "
    "limits (GET /whoami shows them): past a rate of calls, 429 with a `Retry-After` header (seconds); "
    "past its open streams or its plans awaiting approval, 429 without one."
)
# What an operation does, where a client needs more than its name.
DESCRIPTIONS: dict[str, str] = {
    "GetRevision": "One revision of the plan (0: the current one), and with compare_to what changed since "
    "another revision.",
    "WatchWorkflows": "Server-Sent Events: the workflows matching the filter (change type ADDED), a synced "
    "message, then every change live (ADDED, MODIFIED, REMOVED). Each event's id is a resume token: "
    "reconnect with Last-Event-ID (or resume_token) to get every change since.",
    "GetWorkflow": "A workflow with its whole plan: each step's parameters and data files with their "
    "fingerprints (`changed` warns that a file no longer matches while the plan awaits a decision).",
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API token (aft_...) or an OIDC JWT"}
}


@dataclass(frozen=True)
class Decision:
    """What a decision's body must hold beyond its schema, and how it is refused: the
    descriptors cannot say that a proto3 string is required."""

    required: tuple[str, ...]
    description: str


_READ_FIRST = (
    "Send the `etag` of the revision you reviewed (`GET /workflows/{workflow_id}` returns it as "
    "`workflow.etag`): without it the answer is 400 with a field violation on `etag` (read the workflow "
    "first); if the plan was revised since, 409 `FAILED_PRECONDITION`, reason `ETAG_MISMATCH`, and "
    "nothing is stored: read it again, review, then decide."
)
DECISIONS = {
    "Approve": Decision(("etag",), "Approve the revision of the plan you reviewed. " + _READ_FIRST),
    "Reject": Decision(
        ("etag", "comment"),
        "Reject the revision of the plan you reviewed, saying why: a blank `comment` is 400 with a field "
        "violation on `comment`. " + _READ_FIRST,
    ),
    "RequestChanges": Decision(
        ("etag", "reason"),
        "Ask the submitter for changes, saying what should change: the workflow waits for a revision "
        "(status WORKFLOW_STATUS_CHANGES_REQUESTED). " + _READ_FIRST,
    ),
    "ReviseWorkflow": Decision(
        ("etag",),
        "The submitter's new revision of a plan awaiting a decision: a new etag, and the approvals of earlier "
        "revisions dismissed. Without plan and title it fingerprints the plan's data files again. `etag` is the "
        "revision being revised; 409 ETAG_MISMATCH when it is not the current one.",
    ),
}


def _decision(operation: dict[str, Any], decision: Decision) -> None:
    """Mark a decision's required fields and document its refusals (400 and 409)."""
    body = operation["requestBody"]
    body["required"] = True
    content = body["content"]["application/json"]
    content["schema"] = {"allOf": [content["schema"], {"type": "object", "required": list(decision.required)}]}
    operation["description"] = decision.description
    error = operation["responses"]["default"]
    operation["responses"]["400"] = {**error, "description": "a required field is missing or malformed"}
    operation["responses"]["409"] = {**error, "description": "already decided, or the plan was revised (ETAG_MISMATCH)"}


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    method = route.method
    request = method.input_type
    path_fields = {field_path for _, field_path in route.variables}
    parameters: list[dict[str, Any]] = [
        {"name": field_path, "in": "path", "required": True, "schema": {"type": "string"}}
        for field_path in sorted(path_fields)
    ]
    if route.body != "*":
        for field in request.fields:
            if field.name in path_fields or field.name == route.body:
                continue
            if field.message_type is not None and field.message_type.full_name not in _WELL_KNOWN:
                # A message is not a query parameter; its scalar fields are, dotted ("filter.steps").
                for inner in field.message_type.fields:
                    if inner.message_type is None:
                        parameters.append(_query(f"{field.name}.{inner.name}", schemas.field(inner)))
                continue
            parameters.append(_query(field.name, schemas.field(field)))
    if method.name in hooks.RESUME_FIELDS:
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": f"resume where a broken stream stopped (sets {hooks.RESUME_FIELDS[method.name]})",
            }
        )
    operation: dict[str, Any] = {
        "operationId": method.name,
        **({"description": DESCRIPTIONS[method.name]} if method.name in DESCRIPTIONS else {}),
        "parameters": parameters,
        "responses": _responses(route, schemas),
    }
    if route.body:
        body_schema = schemas.ref(request) if route.body == "*" else schemas.field(request.fields_by_name[route.body])
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body_schema}}}
    if method.name in DECISIONS:
        _decision(operation, DECISIONS[method.name])
    return operation


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "explode": True}


def _responses(route: Route, schemas: _Schemas) -> dict[str, Any]:
    error = {
        "description": "a gRPC error in JSON",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    response = schemas.ref(route.method.output_type)
    if route.response_body:
        response = schemas.field(route.method.output_type.fields_by_name[route.response_body])
    download = hooks.DOWNLOADS.get(route.method.name)
    if download is not None:
        content = {kind: {"schema": {"type": "string", "format": "binary"}} for kind in download.types}
        return {"200": {"description": "the file, streamed", "content": content}, "default": error}
    if route.streaming:
        content = {
            "text/event-stream": {"schema": {"type": "string", "description": "one SSE event per message"}},
            "application/x-ndjson": {"schema": response},
        }
        return {"200": {"description": "a stream of messages", "content": content}, "default": error}
    shaped = hooks.RESPONSE_SCHEMAS.get(route.method.name)
    if shaped is not None:
        return {**shaped(schemas.ref), "default": error}
    return {"200": {"description": "OK", "content": {"application/json": {"schema": response}}}, "default": error}
