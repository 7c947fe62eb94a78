"""The processor server: gRPC service + scheduler over one database.

`create_server` builds everything without side effects on the network or the database;
`Processor.start` opens the database, starts the scheduler and the server; `Processor.stop`
drains in the order that loses nothing: stop claiming and let cycles finish, release leases,
end watch streams, stop the server, close the database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

import grpc

from auditflow import logs, procedures, serving
from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.watch import EventHub
from processor import orchestrator, store
from processor import settings as settings_module
from processor.scheduler import Scheduler
from processor.service import ProcessorService
from processor.settings import Settings

logger = logging.getLogger(__name__)

SERVICE_NAME = ps.DESCRIPTOR.services_by_name["ProcessorService"].full_name


class Processor:
    """A processor instance: `server`, bound `port`, `db`, `scheduler`, `service`, `hub`."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, store.metadata, migrations="processor:migrations")
        self.hub: EventHub[ps.ProcessorServiceWatchStatusResponse] = EventHub()
        self.scheduler = Scheduler(self.db, self.hub, settings)
        self.service = ProcessorService(self.db, self.hub, self.scheduler, settings)
        self.server = serving.new_server(settings.default_user)
        ps_grpc.add_ProcessorServiceServicer_to_server(self.service, self.server)
        self._health = serving.add_health_and_reflection(self.server, [SERVICE_NAME])
        self.port = serving.bind(self.server, address)
        self.host = address.rsplit(":", 1)[0]
        self._started = False
        # Cycles still running on threads after a graceful stop (see Scheduler.stop).
        self.abandoned_cycles = 0

    @property
    def address(self) -> str:
        """host:port actually bound (the port is real even when 0 was asked for)."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        procedures.load(self.settings.plugins)
        await asyncio.to_thread(self.db.start)  # creates the schema: blocking
        await asyncio.to_thread(orchestrator.load, orchestrator.DEFAULT)
        await self.scheduler.start()
        await self.server.start()
        await serving.set_serving(self._health, [SERVICE_NAME])
        self._started = True
        logger.info("processor listening on %s (worker %s)", self.address, self.scheduler.worker_id)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: cycles get `grace` seconds (default: settings.grace_period)."""
        if not self._started:
            return
        self._started = False
        grace = self.settings.grace_period if grace is None else grace
        await self._health.enter_graceful_shutdown()
        self.abandoned_cycles = await self.scheduler.stop(grace)
        self.service.close()
        await self.server.stop(min(grace, 2.0))
        await asyncio.to_thread(self.db.close)
        logger.info("processor on %s stopped", self.address)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def create_server(address: str, settings: Settings) -> Processor:
    """A processor bound to `address` ("host:port"; port 0 picks a free one), not yet started."""
    return Processor(address, settings)


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully; the number of abandoned cycles."""
    processor = create_server(settings.address, settings)
    await processor.start()
    await serving.run_until_signalled(processor.stop)
    return processor.abandoned_cycles


def build_parser() -> argparse.ArgumentParser:
    return settings_module.build_parser()


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_module.parse(argv)
    logs.setup(settings.log_level)
    grpc_version = getattr(grpc, "__version__", "?")
    logger.debug("grpc %s, database %s", grpc_version, settings.database_url)
    abandoned = asyncio.run(serve(settings))
    if abandoned:
        # Threads cannot be stopped and the interpreter would wait for them at exit: the
        # grace period is over, so exit now; their runs' leases expire and they resume.
        logger.warning("exiting with %d cycles still running on threads", abandoned)
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
