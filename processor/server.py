"""The processor server: gRPC service + scheduler over one database.

`create_server` builds everything without side effects on the network or the database;
`Processor.start` opens the database, starts the scheduler and the server; `Processor.stop`
drains in the order that loses nothing: stop claiming and let cycles finish, release leases,
end watch streams, stop the server, close the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import grpc

from auditflow import logs, metrics, procedures, serving, sources, statuses, tracing, trail
from auditflow.auth import settings as auth_settings
from auditflow.config import ConfigError
from auditflow.connections import CapWatch
from auditflow.db import Database
from auditflow.metrics import RpcMetrics
from auditflow.tls import ServerTls, check_plaintext
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from processor import notify, orchestrator, store
from processor import settings as settings_module
from processor.broadcast import EventBroadcast
from processor.runs import Runs
from processor.scheduler import Scheduler
from processor.service import ProcessorService
from processor.settings import Settings
from processor.tail import Tail

logger = logging.getLogger(__name__)

SERVICE_NAME = ps.DESCRIPTOR.services_by_name["ProcessorService"].full_name


class Processor:
    """A processor instance: `server`, bound `port`, `db`, `scheduler`, `runs`, `service`, `hub`."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.settings = settings
        self.host = address.rsplit(":", 1)[0]
        check_plaintext("the processor", self.host, settings.tls.enabled, settings.allow_plaintext)
        self.authenticator = auth_settings.build(settings.auth)
        self.tls = ServerTls(settings.tls) if settings.tls.enabled else None
        self.db = Database(settings.database_url, store.metadata, migrations="processor:migrations", name="processor")
        self.hub: EventBroadcast[ps.ProcessorServiceWatchStatusResponse] = EventBroadcast()
        signer = trail.Signer.from_file(settings.trail_signing_key) if settings.trail_signing_key else None
        self.scheduler = Scheduler(self.db, self.hub, settings, signer)
        self.runs = Runs(self.db, self.hub, self.scheduler, settings, signer)
        self.service = ProcessorService(self.runs, settings)
        self.tail = Tail(self.db, self.hub, poll_interval=settings.poll_interval)
        # On PostgreSQL, other processors' commits wake this one (SQLite: a processor is alone).
        self.listener = (
            None
            if self.db.is_sqlite or not settings.listen
            else notify.Listener(
                settings.database_url,
                {notify.RUNS: self.scheduler.wake, notify.EVENTS: self.tail.wake},
                poll_interval=settings.poll_interval,
                own=self.db.backend_pids,
            )
        )
        rpc_metrics = RpcMetrics(metrics.PROCESSOR) if settings.metrics_address else None
        self.server = serving.new_server(
            self.authenticator,
            settings.connections,
            metrics=rpc_metrics,
            outer=tracing.server_interceptors(),
            strangers=serving.strangers_of(self.authenticator, settings.connections, metrics.PROCESSOR),
            counted_in=metrics.PROCESSOR,
        )
        ps_grpc.add_ProcessorServiceServicer_to_server(self.service, self.server)
        self._health = serving.add_health_and_reflection(self.server, [SERVICE_NAME])
        self.port = serving.bind(self.server, address, self.tls)
        self.cap_watch = CapWatch(self.host, self.port, settings.connections.connection_cap())
        self._started = False
        self.metrics = serving.metrics_endpoint(settings, metrics.PROCESSOR, run_gauges(self.db))
        # Cycles still running on threads after a graceful stop (see Scheduler.stop).
        self.abandoned_cycles = 0

    @property
    def address(self) -> str:
        """host:port actually bound (the port is real even when 0 was asked for)."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        procedures.load(self.settings.plugins)
        await asyncio.to_thread(auth_settings.load, self.authenticator)
        await asyncio.to_thread(sources.configure, self.settings.data)
        await self.authenticator.start()
        await asyncio.to_thread(self.db.start)  # creates the schema: blocking
        await asyncio.to_thread(orchestrator.load, orchestrator.DEFAULT)
        await self.scheduler.start()
        await self.tail.start()
        if self.listener is not None:
            self.listener.start()
        elif not self.db.is_sqlite:
            logger.info(
                "notifications off (--listen false): polling for new runs and events every %.2f s",
                self.settings.poll_interval,
            )
        await self.server.start()
        self.cap_watch.start()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.start)
        await serving.set_serving(self._health, [SERVICE_NAME])
        self.db.observe_outages(serving.DatabaseHealth(self._health, [SERVICE_NAME]))
        self._started = True
        logger.info(
            "processor listening on %s (%s; worker %s); accepts %s",
            self.address,
            "TLS" if self.tls else "plaintext",
            self.scheduler.worker_id,
            "; ".join(self.authenticator.methods()),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: cycles get `grace` seconds (default: settings.grace_period)."""
        if not self._started:
            return
        self._started = False
        grace = self.settings.grace_period if grace is None else grace
        await self._health.enter_graceful_shutdown()
        self.abandoned_cycles = await self.scheduler.stop(grace)
        self.service.close()
        if self.listener is not None:
            await self.listener.stop()
        await self.tail.stop()
        await self.server.stop(min(grace, 2.0))
        await self.cap_watch.stop()
        await self.authenticator.stop()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        await asyncio.to_thread(self.db.close)
        logger.info("processor on %s stopped", self.address)

    def reload(self) -> None:
        """SIGHUP: re-read the tokens, keys and certificate files (blocking)."""
        self.authenticator.reload()
        if self.tls is not None:
            self.tls.reload()


RUNS = "auditflow_processor_runs"


def run_gauges(db: Database) -> metrics.DatabaseCollector:
    """Runs in the database by status (of every processor sharing it), read at scrape time."""

    def read() -> dict[str, list[metrics.Sample]]:
        counts = db.read_blocking(store.count_by_status)
        return {RUNS: [metrics.Sample((statuses.name(status),), n) for status, n in sorted(counts.items())]}

    return metrics.DatabaseCollector(db.name, read, {RUNS: ("Runs in the database by status.", ("status",))})


def create_server(address: str, settings: Settings) -> Processor:
    """A processor bound to `address` ("host:port"; port 0 picks a free one), not yet started."""
    return Processor(address, settings)


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully; the number of abandoned cycles."""
    processor = create_server(settings.address, settings)
    try:
        await processor.start()
    except BaseException:
        await processor.server.stop(0)  # (serving may have begun: no gRPC server left to the interpreter's exit)
        raise
    await serving.run_until_signalled(processor.stop, processor.reload)
    return processor.abandoned_cycles


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = settings_module.parse(argv)
    except ConfigError as exc:
        sys.exit(f"auditflow-processor: {exc}")
    logs.setup(settings.log_level, settings.log_format, service="processor")
    grpc_version = getattr(grpc, "__version__", "?")
    logger.debug("grpc %s", grpc_version)
    try:
        tracing.configure("processor")
        abandoned = asyncio.run(serve(settings))
    except ConfigError as exc:
        sys.exit(f"auditflow-processor: {exc}")
    if abandoned:
        # Threads cannot be stopped and the interpreter would wait for them at exit: the
        # grace period is over, so exit now; their runs' leases expire and they resume.
        logger.warning("exiting with %d cycles still running on threads", abandoned)
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
