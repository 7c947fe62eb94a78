"""A header too large (or malformed) for the REST or gRPC port is refused, and the token it
carries never reaches a log: not in a message, not in a traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import grpc
import pytest

from auditflow.connections import ConnectionSettings
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from tests.integration.test_connections import gateway_with
from tests.support import auth


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message and traceback."""
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


async def test_an_oversized_header_never_puts_the_token_in_a_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = auth.jwt_for("olga", ("viewer",))
    async with gateway_with(tmp_path, ConnectionSettings()) as gateway:
        assert gateway.rest is not None
        async with aiohttp.ClientSession() as http:
            oversized = {"Authorization": f"Bearer {token} {'x' * 20_000}"}
            async with http.get(f"{gateway.rest.url}/whoami", headers=oversized) as answer:
                assert answer.status == 400
            async with http.get(f"{gateway.rest.url}/whoami", headers=auth.headers("olga", ("viewer",))) as answer:
                assert answer.status == 200  # the port serves on
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = wpb_grpc.WorkflowServiceStub(channel)
            metadata = (("authorization", f"Bearer {token} {'x' * 20_000}"),)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.WhoAmI(wpb.WhoAmIRequest(), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert token[:16] not in (refused.value.details() or "")
    text = logged(caplog)
    assert token[:16] not in text  # (not even the start of it)
    assert "could not be parsed" in text  # (one debug line, naming the kind of error)
