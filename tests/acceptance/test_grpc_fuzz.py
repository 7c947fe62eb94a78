"""A gRPC fuzzer against running servers: every RPC of both services gets random bytes and
random messages built from its descriptor (odd strings, extreme numbers, NaN, deep and wide
parameters, real and made-up workflow ids), without credentials, as a person with every role,
and (to the processor) as the gateway. No answer may be INTERNAL or UNKNOWN, and none may hang.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import workflow_service_pb2 as wpb
from tests.support import auth
from tests.support.cluster import Pair

EXAMPLES = 40  # per RPC and credential; the whole file stays within a couple of minutes
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CREDENTIALS = {
    "none": (),
    "person": auth.bearer("fuzzer", ("admin",)),
    "gateway": (("authorization", f"Bearer {auth.GATEWAY_TOKEN}"),),
}
WORKFLOW_IDS = st.sampled_from(["", "wf_" + "0" * 32, "wf_" + "f" * 32, "WF_X", "wf_" + "a" * 33])

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60).map(float),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        if field.name == "workflow_id":
            return WORKFLOW_IDS | st.text(max_size=50)
        return st.text(max_size=300) | st.sampled_from(["", "a\x00b", "\u202e", "x" * 5000, "ledger_summary"])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(min_value=-5, max_value=20)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(min_value=-(2**31), max_value=2**31 - 1)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=100)
    return st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def message_of(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        data = draw(st.dictionaries(st.text(max_size=12), json_value, max_size=5))
        with contextlib.suppress(ValueError, TypeError):
            message.update(data)  # type: ignore[attr-defined]
        return message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None:
            if depth > 3:
                continue
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            for _ in range(count):
                child = draw(message_of(field.message_type, depth + 1))
                if field.is_repeated:
                    getattr(message, field.name).add().CopyFrom(child)
                else:
                    getattr(message, field.name).CopyFrom(child)
            continue
        values = draw(st.lists(scalar(field), max_size=3)) if field.is_repeated else [draw(scalar(field))]
        try:
            if field.is_repeated:
                getattr(message, field.name).extend(values)
            else:
                setattr(message, field.name, values[0])
        except (ValueError, TypeError):  # a value protobuf itself refuses to hold: leave the field unset
            pass
    return message


def payloads(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    structured = message_of(descriptor).map(lambda m: m.SerializeToString())
    return st.one_of(structured, structured, st.binary(max_size=512))


def methods() -> Iterator[tuple[str, str, Descriptor, bool]]:
    for module, service in ((wpb, "WorkflowService"), (ps, "ProcessorService")):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            target = "gateway" if service == "WorkflowService" else "processor"
            path = f"/{method.containing_service.full_name}/{method.name}"
            yield target, path, method.input_type, method.server_streaming


def call(channel: grpc.Channel, path: str, streaming: bool, data: bytes, metadata: Any) -> grpc.StatusCode:
    identity = lambda raw: raw  # noqa: E731  (bytes in, bytes out: the fuzzer writes the wire form)
    try:
        if streaming:
            stream = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
            responses = stream(data, metadata=metadata, timeout=10)
            next(iter(responses), None)  # the first answer (or the refusal) is enough: a valid id streams on
            responses.cancel()
        else:
            unary = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
            unary(data, metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_no_rpc_answers_internal_or_unknown_to_anything(pair: Pair, credential: str) -> None:
    channels = {
        "gateway": grpc.insecure_channel(pair.gateway.target),
        "processor": grpc.insecure_channel(pair.processor.target),
    }
    try:
        for target, path, descriptor, streaming in methods():
            fuzz_one(channels[target], path, descriptor, streaming, CREDENTIALS[credential])
    finally:
        for channel in channels.values():
            channel.close()


def fuzz_one(channel: grpc.Channel, path: str, descriptor: Descriptor, streaming: bool, metadata: Any) -> None:
    seen: dict[grpc.StatusCode, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(payloads(descriptor))
    def probe(data: bytes) -> None:
        code = call(channel, path, streaming, data, metadata)
        seen[code] = seen.get(code, 0) + 1
        assert code not in FORBIDDEN, (path, data[:200])
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, (path, "hung", data[:200])

    probe()
    assert sum(seen.values()) >= EXAMPLES and not math.isnan(len(seen))
