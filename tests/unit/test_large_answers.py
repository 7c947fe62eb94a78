"""The answers that can weigh a mebibyte are encoded off the event loop on both transports:
REST reads `messages.LARGE_ANSWERS`; the gRPC adapter encodes exactly those on a thread."""

from __future__ import annotations

import inspect

from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import messages
from gateway.api import WorkflowApi
from gateway.service import WorkflowService


def test_the_grpc_adapter_encodes_exactly_the_large_answers_off_the_loop() -> None:
    unary = [
        method.name
        for method in wpb.DESCRIPTOR.services_by_name["WorkflowService"].methods
        if not method.server_streaming
    ]
    encoded = {name for name in unary if "_encoded_off_loop(" in inspect.getsource(getattr(WorkflowService, name))}
    assert encoded == messages.LARGE_ANSWERS


def test_the_answers_built_apart_are_asked_for_in_each_transports_encoding() -> None:
    """A prebuilt answer comes as bytes: the application layer takes the encoding to make."""
    assert messages.PREBUILT_ANSWERS.isdisjoint(messages.LARGE_ANSWERS)
    for name in messages.PREBUILT_ANSWERS:
        assert "encoding" in inspect.signature(getattr(WorkflowApi, name)).parameters
