"""The gateway process: `WorkflowService` on a gRPC server, the outbox relay and the mirror.

`create_server(address, settings)` builds everything without starting it (tests use port 0);
`serve(settings)` runs until SIGINT/SIGTERM; `main()` is the `auditflow-gateway` script.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Connection

from auditflow import config, logs, procedures, serving
from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from auditflow.watch import EventHub
from gateway import store
from gateway.mirror import Mirror
from gateway.outbox import OutboxRelay
from gateway.rest import RestGateway
from gateway.service import WorkflowService
from gateway.watch import Watcher

logger = logging.getLogger(__name__)

SERVICE_NAME = wpb.DESCRIPTOR.services_by_name["WorkflowService"].full_name
PROCESSOR_SERVICE = ppb.DESCRIPTOR.services_by_name["ProcessorService"].full_name


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    database_url: str = "sqlite:///var/auditflow-gateway.db"
    processor_target: str = "127.0.0.1:50052"
    default_user: str = "anonymous"
    default_max_cycles: int = 15
    allow_self_approval: bool = False
    # Runs whose status the gateway follows at once (see gateway/mirror.py).
    max_followed: int = 64
    heartbeat_interval: float = 5.0
    outbox_scan_interval: float = 5.0
    plugins: tuple[str, ...] = ()
    log_level: str = "INFO"
    # HTTP port of the REST gateway (gateway/rest/) in this process; 0 picks a free one,
    # None serves no REST (the command line's default is 8080).
    rest_port: int | None = None
    # Origins a browser may call the REST API from ("*" = any); empty: same origin only.
    rest_cors_origins: tuple[str, ...] = ()


class Gateway:
    """A gateway built by `create_server`; `start()`, then `stop()`."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.settings = settings
        procedures.load(settings.plugins)
        self.db = Database(settings.database_url, store.metadata, migrations="gateway:migrations")
        self.channel = grpc.aio.insecure_channel(settings.processor_target)
        stub = ppb_grpc.ProcessorServiceStub(self.channel)
        self.hub: EventHub[dict[str, Any]] = EventHub()
        self.mirror = Mirror(self.db, stub, self.hub.wake, max_followed=settings.max_followed)
        self._processor_health = health_pb2_grpc.HealthStub(self.channel)
        self.relay = OutboxRelay(
            self.db,
            stub,
            self._dispatched,
            self._event_appended,
            self._processor_serving,
            scan_interval=settings.outbox_scan_interval,
        )
        watcher = Watcher(self.db, stub, self.hub, self.mirror, heartbeat_interval=settings.heartbeat_interval)
        self.service = WorkflowService(
            self.db,
            self.relay,
            self.hub,
            watcher,
            default_max_cycles=settings.default_max_cycles,
            self_approval=settings.allow_self_approval,
        )
        self.server = serving.new_server(settings.default_user)
        wpb_grpc.add_WorkflowServiceServicer_to_server(self.service, self.server)
        self._health = serving.add_health_and_reflection(self.server, [SERVICE_NAME])
        self.port = serving.bind(self.server, address)
        self.host = address.rsplit(":", 1)[0]
        self.rest: RestGateway | None = None
        if settings.rest_port is not None:
            # The REST gateway is a client of this server like any other.
            local = "127.0.0.1" if self.host in ("", "0.0.0.0", "[::]", "::") else self.host
            self.rest = RestGateway(
                f"{local}:{self.port}",
                self.host or "127.0.0.1",
                settings.rest_port,
                cors_origins=frozenset(settings.rest_cors_origins),
            )

    @property
    def address(self) -> str:
        """host:port actually bound (the port is real even when 0 was asked for)."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await asyncio.to_thread(self.db.start)
        await self.server.start()
        await self.mirror.start()
        await self.relay.start()
        if self.rest is not None:
            await self.rest.start()
        await serving.set_serving(self._health, [SERVICE_NAME])
        logger.info("gateway listening on %s (processor at %s)", self.address, self.settings.processor_target)

    async def stop(self, grace: float = 5.0) -> None:
        await self._health.enter_graceful_shutdown()
        if self.rest is not None:
            await self.rest.stop()
        await self.server.stop(grace)
        await self.relay.stop()
        await self.mirror.stop()
        await self.channel.close(grace=None)
        await asyncio.to_thread(self.db.close)

    async def _dispatched(self, workflow_id: str, run: ppb.Run, retire: Callable[[Connection], None]) -> None:
        self.hub.wake(workflow_id)  # watchers waiting for the run can follow it now
        await self.mirror.record(workflow_id, run.snapshot, also=retire)

    async def _processor_serving(self) -> bool:
        request = health_pb2.HealthCheckRequest(service=PROCESSOR_SERVICE)
        response = await self._processor_health.Check(request, timeout=2.0)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def _event_appended(self, event: dict[str, Any]) -> None:
        self.hub.publish(event["workflow_id"], event["sequence"], event)


def create_server(address: str, settings: Settings) -> Gateway:
    """A gateway bound to `address` ("host:port"; port 0 picks a free one), not yet started."""
    return Gateway(address, settings)


async def serve(settings: Settings) -> None:
    gateway = create_server(f"{settings.host}:{settings.port}", settings)
    await gateway.start()
    await serving.run_until_signalled(gateway.stop)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="auditflow-gateway",
        description="Serve auditflow.v1.WorkflowService: submissions, instant approvals, live status. "
        "Approved work is forwarded to the processor through a durable outbox.",
    )
    defaults = Settings()
    config.add_common(parser, port=defaults.port, database=defaults.database_url, service="gateway")
    config.add(
        parser,
        "--processor-target",
        default=defaults.processor_target,
        help="host:port of the processor",
        service="gateway",
    )
    config.add(
        parser,
        "--default-max-cycles",
        default=defaults.default_max_cycles,
        type=config.positive_int,
        help="cycles a workflow may take when its request says 0",
        service="gateway",
    )
    config.add(
        parser,
        "--heartbeat-interval",
        default=defaults.heartbeat_interval,
        type=config.positive_float,
        help="seconds between heartbeats on an idle WatchStatus stream",
        service="gateway",
    )
    config.add(
        parser,
        "--allow-self-approval",
        default=False,
        type=config.boolean,
        service="gateway",
        help="let the creator of a plan approve it (separation of duties is on by default)",
    )
    config.add(
        parser,
        "--rest-port",
        default=8080,
        type=rest_port,
        help="HTTP port of the REST/JSON API for the web UI (0 picks a free one, 'off' serves none)",
        service="gateway",
    )
    config.add(
        parser,
        "--rest-cors-origins",
        default="",
        help="comma-separated origins a browser may call the REST API from ('*' = any)",
        service="gateway",
    )
    args = parser.parse_args(argv)
    return Settings(
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        processor_target=args.processor_target,
        default_user=args.default_user,
        default_max_cycles=args.default_max_cycles,
        heartbeat_interval=args.heartbeat_interval,
        allow_self_approval=args.allow_self_approval,
        plugins=tuple(p for p in args.plugin.split(",") if p),
        log_level=args.log_level,
        rest_port=args.rest_port,
        rest_cors_origins=tuple(o.strip() for o in args.rest_cors_origins.split(",") if o.strip()),
    )


def rest_port(text: str) -> int | None:
    """A port number, or off/none for no REST gateway."""
    if text.strip().lower() in ("off", "none", "no", "false"):
        return None
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logs.setup(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        sys.exit(130)
