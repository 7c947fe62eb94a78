"""The gateway process, wired: the application layer (`api`) behind two adapters (gRPC
`service`, `rest`), the outbox relay, the feed from the processor, the hub and its watchers.
This module only builds and connects them, and starts and stops them in order.

`create_server(address, settings)` builds everything without starting it (tests use port 0);
`serve(settings)` runs until SIGINT/SIGTERM; `main()` is the `auditflow-gateway` script.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditflow import logs, metrics, procedures, serving, sources, tracing, trail
from auditflow.auth import settings as auth_settings
from auditflow.auth.client import bearer_interceptors, read_token_file
from auditflow.config import ConfigError
from auditflow.connections import CapWatch
from auditflow.db import Database
from auditflow.fairwrites import FairWrites
from auditflow.limits import Limiter
from auditflow.metrics import RpcMetrics
from auditflow.revocation import StreamGuard
from auditflow.tls import ServerTls, check_plaintext, host_of
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway import store
from gateway.api import Approvals, WorkflowApi
from gateway.collection import Changes, CollectionWatcher
from gateway.crosscheck import Crosscheck
from gateway.feed import Feed
from gateway.findings import Findings
from gateway.health import Readiness, outbox_gauges
from gateway.hub import WorkflowHub
from gateway.listing import Listing
from gateway.outbox import OutboxRelay
from gateway.pageworkers import PageWorkers
from gateway.rest import RestGateway
from gateway.service import WorkflowService
from gateway.settings import Settings, parse
from gateway.verify import TrailVerifier
from gateway.watch import Watcher

logger = logging.getLogger(__name__)

SERVICE_NAME = wpb.DESCRIPTOR.services_by_name["WorkflowService"].full_name
# The gateway's link to the processor, as a service of its own in grpc.health.v1: SERVING while
# the feed from the processor is up. The gateway itself stays SERVING without it (approvals
# wait in the outbox), so that a probe tells "this gateway is down" from "its processor is".
LINK_NAME = "auditflow.v1.ProcessorService"


class Gateway:
    """A gateway built by `create_server`; `start()`, then `stop()`."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.settings = settings
        self.host = address.rsplit(":", 1)[0]
        check_plaintext("the gateway", self.host, settings.tls.enabled, settings.allow_plaintext)
        procedures.load(settings.plugins)
        self.authenticator = auth_settings.build(settings.auth)
        self.tls = ServerTls(settings.tls) if settings.tls.enabled else None
        # (the writer takes each principal's writes in turn: one cannot hold up another's)
        self.writes = FairWrites(settings.write_share)
        self.db = Database(
            settings.database_url, store.metadata, migrations="gateway:migrations", name="gateway", writes=self.writes
        )
        self.channel = processor_channel(settings)
        stub = ppb_grpc.ProcessorServiceStub(self.channel)
        self.hub = WorkflowHub()
        measured = bool(settings.metrics_address)
        self.limiter = Limiter(settings.limits)  # (each principal's rates and streams, both adapters)
        # (each open stream's credential, checked again after each reload: both adapters)
        self.guard = StreamGuard(self.authenticator)
        rpc_metrics = RpcMetrics(metrics.GATEWAY) if measured else None
        # (calls failing to authenticate, held to a rate per address: both adapters)
        strangers = serving.strangers_of(self.authenticator, settings.connections, metrics.GATEWAY)
        self.server = serving.new_server(
            self.authenticator,
            settings.connections,
            metrics=rpc_metrics,
            outer=tracing.server_interceptors(),
            limiter=self.limiter,
            guard=self.guard,
            strangers=strangers,
            counted_in=metrics.GATEWAY,
        )
        self._health = serving.add_health_and_reflection(self.server, [SERVICE_NAME])
        link = serving.LinkHealth(self._health, LINK_NAME, self._link_changed)
        signer = trail.Signer.from_file(settings.trail_signing_key) if settings.trail_signing_key else None
        keys = trail.load_public_keys(settings.trail_public_keys)
        if signer is not None:
            keys[signer.key_id] = signer.public
        self.feed = Feed(self.db, stub, self.hub, signer=signer, link=link)
        health = health_pb2_grpc.HealthStub(self.channel)
        self.relay = OutboxRelay(self.db, stub, health, self.feed, scan_interval=settings.outbox_scan_interval)
        watcher = Watcher(self.db, stub, self.hub, self.relay, heartbeat_interval=settings.heartbeat_interval)
        # (what another replica committed reaches the watchers here)
        self.crosscheck = Crosscheck(self.db, self.hub, interval=settings.replica_poll_interval)
        listing = Listing(self_approval=settings.allow_self_approval, max_page_bytes=settings.max_page_bytes)
        # (pages are built in processes of their own: their Python never holds this interpreter)
        self.page_workers = PageWorkers(settings.database_url, settings.page_workers)
        self.changes = Changes(self.db, poll_interval=settings.replica_poll_interval)
        self.hub.add_listener(self.changes)
        collection = CollectionWatcher(
            self.db, self.changes, self.page_workers, self.limiter, heartbeat_interval=settings.heartbeat_interval
        )
        self.api = WorkflowApi(
            self.db,
            self.relay,
            self.hub,
            watcher,
            Findings(self.db, stub, self.limiter),
            TrailVerifier(self.db, stub, keys, self.limiter),
            listing,
            self.page_workers,
            collection,
            default_max_cycles=settings.default_max_cycles,
            self_approval=settings.allow_self_approval,
            approvals=Approvals(settings.default_approvals, settings.max_approvals),
            signer=signer,
            limiter=self.limiter,
            plan_limits=settings.plan_limits,
        )
        self.service = WorkflowService(self.api)
        self.rest: RestGateway | None = None
        if settings.rest_port is not None:
            # REST calls the same handlers as gRPC, with the same authentication and policy.
            self.rest = RestGateway(
                self.api,
                self.authenticator,
                self.host or "127.0.0.1",
                settings.rest_port,
                cors_origins=frozenset(settings.rest_cors_origins),
                ssl_context=self.tls.ssl_context() if self.tls is not None else None,
                measured=measured,
                readiness=Readiness(self.db, self.feed),
                limiter=self.limiter,
                connections=settings.connections,
                guard=self.guard,
                strangers=strangers,
            )
        wpb_grpc.add_WorkflowServiceServicer_to_server(self.service, self.server)
        self.port = serving.bind(self.server, address, self.tls)
        self.cap_watch = CapWatch(self.host, self.port, settings.connections.connection_cap())
        self.metrics = serving.metrics_endpoint(settings, metrics.GATEWAY, outbox_gauges(self.db))

    @property
    def address(self) -> str:
        """host:port actually bound (the port is real even when 0 was asked for)."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await asyncio.to_thread(auth_settings.load, self.authenticator)
        await asyncio.to_thread(sources.configure, self.settings.data)
        await self.authenticator.start()
        await self.guard.start()
        await asyncio.to_thread(self.db.start)
        await self._health.set(LINK_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)  # (until the feed is up)
        await self.server.start()
        self.cap_watch.start()
        await self.feed.start()
        await self.relay.start()
        await self.crosscheck.start()
        if self.rest is not None:
            await self.rest.start()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.start)
        await serving.set_serving(self._health, [SERVICE_NAME])
        self.db.observe_outages(serving.DatabaseHealth(self._health, [SERVICE_NAME]))
        logger.info(
            "gateway listening on %s (%s; processor at %s); accepts %s",
            self.address,
            "TLS" if self.tls else "plaintext",
            self.settings.processor_target,
            "; ".join(self.authenticator.methods()),
        )

    async def stop(self, grace: float = 5.0) -> None:
        await self._health.enter_graceful_shutdown()
        if self.rest is not None:
            await self.rest.stop()
        await self.server.stop(grace)
        await self.cap_watch.stop()
        await self.changes.stop()
        await self.crosscheck.stop()
        await self.relay.stop()
        await self.feed.stop()
        await self.channel.close(grace=None)
        await self.authenticator.stop()
        await self.guard.stop()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        await asyncio.to_thread(self.page_workers.close)
        await asyncio.to_thread(self.db.close)
        if self.writes.waits:
            logger.info("waits for the database writer, longest first: %s", self.writes.summary(most=16))

    def _link_changed(self, up: bool) -> None:
        """The feed from the processor is up or broken: the metric, and the relay (so that an
        Approve while it is broken says its work is queued)."""
        metrics.PROCESSOR_LINK_UP.set(1 if up else 0)
        self.relay.link_changed(up)

    def reload(self) -> None:
        """SIGHUP: re-read the tokens, keys and certificate files (blocking)."""
        self.authenticator.reload()
        if self.tls is not None:
            self.tls.reload()


# Calls spread over every processor the target names (a list, or every address a DNS name
# resolves to), and go around one that is down or draining: gRPC's client-side round robin.
BALANCED = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))
# gRPC's own reconnect backoff grows to 120 s by default (10-17 s between attempts after a
# 20-second outage): capped here so that, with the feed's retry loop (at most 2 s between
# attempts), the gateway is linked again within RECONNECT_WITHIN of a processor's return.
RECONNECT_WITHIN = 5.0
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000)]


def processor_target(text: str) -> str:
    """The gRPC target of `--processor-target`: "host:port", "dns:///name:port" (every address
    the name resolves to), or "ip:port,ip:port,..." (a fixed set)."""
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) == 1:
        return entries[0]
    hosts = [host_of(entry) for entry in entries]
    families = {_ip_family(host) for host in hosts}
    if None in families or len(families) != 1 or any(":" not in entry for entry in entries):
        raise ConfigError(
            f"--processor-target {text!r}: a list must hold IP:PORT entries of one family "
            "(for host names, give one DNS name that resolves to every processor: dns:///NAME:PORT)"
        )
    return f"{families.pop()}:{','.join(entries)}"


def _ip_family(host: str) -> str | None:
    try:
        return "ipv4" if ipaddress.ip_address(host.strip("[]")).version == 4 else "ipv6"
    except ValueError:
        return None


def processor_channel(settings: Settings) -> grpc.aio.Channel:
    """The channel to the processors, balanced over all of them, carrying the gateway's
    service token on every call and/or a client certificate. Plaintext only to loopback
    processors unless allowed."""
    link = settings.processor_tls
    target = processor_target(settings.processor_target)
    if not link.enabled:
        for entry in settings.processor_target.split(","):
            check_plaintext("the link to the processor", host_of(entry.strip()), False, settings.allow_plaintext)
    interceptors: list[Any] = []
    if settings.processor_token_file:
        interceptors += bearer_interceptors(read_token_file(settings.processor_token_file))
    elif not link.cert_file:
        raise ConfigError(
            "the gateway needs credentials for the processor: --processor-token-file or --processor-tls-cert"
        )
    if settings.metrics_address:
        interceptors += metrics.client_interceptors()
    interceptors += tracing.client_interceptors()
    options = [BALANCED, *RECONNECT]
    if link.enabled:
        return grpc.aio.secure_channel(
            target, link.credentials(), options=[*link.options(), *options], interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def create_server(address: str, settings: Settings) -> Gateway:
    """A gateway bound to `address` ("host:port"; port 0 picks a free one), not yet started."""
    return Gateway(address, settings)


async def serve(settings: Settings) -> None:
    gateway = create_server(f"{settings.host}:{settings.port}", settings)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop(0)  # (what started before the failure, in order)
        raise
    await serving.run_until_signalled(gateway.stop, gateway.reload)


# How long a thread that wants the interpreter waits before the one holding it must let go
# (Python's default: 5 ms). The event loop shares the interpreter with the worker threads that
# build pages and their JSON: at 5 ms, each of an answer's few hand-overs between loop and
# threads could wait 5 ms beside one caller's paging, and other callers' p99 tripled; at
# 0.5 ms it stays within twice its unloaded value (bench/fairness.py, docs/benchmarks.md).
SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> None:
    try:
        settings = parse(argv)
    except ConfigError as exc:
        sys.exit(f"auditflow-gateway: {exc}")
    sys.setswitchinterval(SWITCH_INTERVAL)
    logs.setup(settings.log_level, settings.log_format, service="gateway")
    try:
        tracing.configure("gateway")
        asyncio.run(serve(settings))
    except ConfigError as exc:
        sys.exit(f"auditflow-gateway: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
