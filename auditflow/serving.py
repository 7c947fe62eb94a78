"""What both gRPC servers share: the interceptor, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auditflow.interceptor import CallInterceptor

logger = logging.getLogger(__name__)

# The servicer context of a grpc.aio handler, for annotations.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def new_server(default_user: str) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[CallInterceptor(default_user)],
        options=[
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ],
    )


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health_aio.HealthServicer:
    """Register grpc.health.v1 (every service SERVING) and server reflection."""
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health_servicer


async def set_serving(health_servicer: health_aio.HealthServicer, service_names: Iterable[str]) -> None:
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def bind(server: grpc.aio.Server, address: str) -> int:
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"cannot listen on {address}")
    return port


async def run_until_signalled(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGINT/SIGTERM, then run `stop` (graceful shutdown)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logger.info("stopping")
    await stop()
