"""`python -m auditflow.probe`: exit 0 only when the server says SERVING."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from auditflow import probe


@pytest.fixture
def server() -> Iterator[tuple[str, health.HealthServicer]]:
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", servicer
    grpc_server.stop(0)


def test_serving_exits_0_and_anything_else_1(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    target, servicer = server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.main([target]) == 0 and f"{target}: SERVING" in capsys.readouterr().out
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe.main([target]) == 1 and f"{target}: NOT_SERVING" in capsys.readouterr().err
    assert probe.main([target, "--service", "auditflow.v1.Nothing"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_an_unreachable_server_exits_1_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["127.0.0.1:1", "--timeout", "2"]) == 1
    assert "127.0.0.1:1: UNAVAILABLE" in capsys.readouterr().err
