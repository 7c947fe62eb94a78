"""HTTP routes read from the `google.api.http` options of a service's descriptors.

Nothing here knows auditflow's RPCs: an annotated method gets a route, its path template's
variables, query parameters and `body` are mapped onto the request message by the
google.api.http rules (https://cloud.google.com/apis/design/custom_methods and
google/api/http.proto), and JSON follows the proto3 JSON mapping (`json_format`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

_VERBS = ("get", "put", "post", "delete", "patch")
# A Variable of the template grammar: "{" FieldPath [ "=" Segments ] "}".
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")
_JSON_MAX_DEPTH = 64


class BadRequest(ValueError):
    """The HTTP request cannot become a request message (answered with 400)."""


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str  # GET, POST, ...
    template: str  # as written in the annotation, e.g. /workflows/{workflow_id}
    path: str  # the aiohttp path pattern, variables renamed v0, v1 ...
    variables: tuple[tuple[str, str], ...]  # (aiohttp name, field path)
    body: str  # "", "*" or a field name
    response_body: str  # "" or a field name of the response
    method: MethodDescriptor
    request_class: type[Message]
    streaming: bool = field(default=False)

    @property
    def rpc_path(self) -> str:
        """The gRPC method path, /package.Service/Method."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


def routes_of(service: ServiceDescriptor) -> list[Route]:
    """Every HTTP binding (the rule and its additional_bindings) of every annotated method."""
    found: list[Route] = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            found.append(_route(method, binding))
    return found


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise ValueError(f"{method.full_name}: google.api.http has no pattern")
    if pattern == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = pattern.upper(), str(getattr(rule, pattern))
    if pattern not in (*_VERBS, "custom"):
        raise ValueError(f"{method.full_name}: unknown pattern {pattern}")
    path, variables = _aiohttp_path(template)
    for _, field_path in variables:
        _field_at(method.input_type, field_path.split("."))  # fails at start-up, not per request
    if rule.body not in ("", "*"):
        _field_at(method.input_type, [rule.body])
    return Route(
        http_method=verb,
        template=template,
        path=path,
        variables=tuple(variables),
        body=rule.body,
        response_body=rule.response_body,
        method=method,
        request_class=message_factory.GetMessageClass(method.input_type),
        streaming=method.server_streaming,
    )


def _segments_regex(segments: str) -> str:
    parts = []
    for segment in segments.split("/"):
        if segment == "**":
            parts.append(".+")
        elif segment == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def _aiohttp_path(template: str) -> tuple[str, list[tuple[str, str]]]:
    """`/a/{x.y=b/*}/c:verb` -> (`/a/{v0:b/[^/]+}/c:verb`, [("v0", "x.y")])."""
    if not template.startswith("/"):
        raise ValueError(f"path template must start with '/': {template!r}")
    variables: list[tuple[str, str]] = []
    out: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(template):
        out.append(_literal(template[position : match.start()], len(variables)))
        name = f"v{len(variables)}"
        variables.append((name, match.group(1)))
        regex = _segments_regex(match.group(2)) if match.group(2) else "[^/]+"
        out.append(f"{{{name}:{regex}}}")
        position = match.end()
    out.append(_literal(template[position:], len(variables)))
    return "".join(out), variables


def _literal(text: str, index: int) -> str:
    """Literal parts of a template; anonymous `*`/`**` segments become unnamed-ish variables."""
    parts = []
    for i, segment in enumerate(text.split("/")):
        if segment in ("*", "**"):
            parts.append(f"{{w{index}_{i}:{_segments_regex(segment)}}}")
        else:
            parts.append(segment)
    return "/".join(parts)


def _field_at(descriptor: Descriptor, path: list[str]) -> FieldDescriptor:
    current: Descriptor | None = descriptor
    found: FieldDescriptor | None = None
    for name in path:
        if current is None:
            raise BadRequest(f"{'.'.join(path)}: {found.name if found else ''} has no fields")
        found = current.fields_by_name.get(name) or _by_json_name(current, name)
        if found is None:
            raise BadRequest(f"unknown field {'.'.join(path)!r}")
        current = found.message_type
    assert found is not None
    return found


def _by_json_name(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    for candidate in descriptor.fields:
        if candidate.json_name == name:
            return candidate
    return None


def _nest(target: dict[str, Any], path: list[str], value: Any) -> None:
    for name in path[:-1]:
        child = target.setdefault(name, {})
        if not isinstance(child, dict):
            raise BadRequest(f"{'.'.join(path)} conflicts with another parameter")
        target = child
    target[path[-1]] = value


def _parse(data: dict[str, Any], message: Message, where: str) -> None:
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False, max_recursion_depth=_JSON_MAX_DEPTH)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise BadRequest(f"{where}: {exc}") from exc


def load_json(body: bytes) -> Any:
    """The request body as JSON; an empty body is an empty object."""
    if not body.strip():
        return {}
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc


def build_request(
    route: Route, path_values: Mapping[str, str], query: Iterator[tuple[str, str]], body: bytes
) -> Message:
    """The request message from path variables, query parameters and body (path wins)."""
    message = route.request_class()
    if route.body == "*":
        data = load_json(body)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        _parse(data, message, "body")
    elif route.body:
        _parse({route.body: load_json(body)}, message, "body")
    covered = {name for _, name in route.variables}
    if route.body != "*":
        _parse(_query_dict(route, query, covered), message, "query")
    path_data: dict[str, Any] = {}
    for name, field_path in route.variables:
        _nest(path_data, field_path.split("."), path_values[name])
    _parse(path_data, message, "path")
    return message


def _query_dict(route: Route, query: Iterator[tuple[str, str]], covered: set[str]) -> dict[str, Any]:
    values: dict[str, list[str]] = {}
    for key, value in query:
        values.setdefault(key, []).append(value)
    data: dict[str, Any] = {}
    for key, given in values.items():
        if key in covered or (route.body and key.split(".")[0] == route.body):
            raise BadRequest(f"query parameter {key!r} is set by the path or the body")
        path = key.split(".")
        leaf = _field_at(route.method.input_type, path)
        if leaf.message_type is not None and leaf.message_type.full_name not in _SCALAR_MESSAGES:
            raise BadRequest(f"query parameter {key!r} names a message; use its fields")
        if leaf.type == FieldDescriptor.TYPE_BOOL:
            given = [_boolean(key, value) for value in given]  # type: ignore[misc]
        if _is_repeated(leaf):
            _nest(data, path, given)
        elif len(given) > 1:
            raise BadRequest(f"query parameter {key!r} given {len(given)} times")
        else:
            _nest(data, path, given[0])
    return data


def _boolean(key: str, value: str) -> bool:
    """A query parameter's true or false, as a URL writes it (?x=true, ?x=1)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise BadRequest(f"query parameter {key!r} must be true or false, not {value[:40]!r}")


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    return bool(descriptor.is_repeated)


# Well-known messages whose JSON form is a single string or number.
_SCALAR_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        *(
            f"google.protobuf.{name}Value"
            for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
        ),
    }
)


def to_json(message: Message) -> dict[str, Any]:
    """Proto3 JSON with the proto field names (snake_case, as the web UI reads them) and every field."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def response_json(route: Route, message: Message) -> Any:
    """The HTTP body of a response: the message, or its `response_body` field."""
    data = to_json(message)
    if route.response_body:
        return data.get(route.response_body)
    return data
