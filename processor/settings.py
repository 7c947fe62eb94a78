"""The processor's settings: flags, with `AUDITFLOW_*` environment variables as defaults."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from auditflow import config, connections, sources, tls
from auditflow.auth import settings as auth_settings
from auditflow.auth.settings import AuthSettings
from auditflow.config import boolean, interval, non_negative_float, positive_int
from auditflow.connections import ConnectionSettings
from auditflow.tls import TlsFiles

DEFAULT_PORT = 50052
DEFAULT_DATABASE = "sqlite:///var/auditflow-processor.db"


def default_worker_id() -> str:
    """Unique per process, readable in the `runs.lease_owner` column: host-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Settings:
    """Everything a processor needs to run; tests build it directly."""

    database_url: str = DEFAULT_DATABASE
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    log_level: str = "INFO"
    log_format: str = "text"  # or "json"
    # HOST:PORT of the Prometheus /metrics endpoint; "" serves none (and records no RPC metrics).
    metrics_address: str = ""
    plugins: tuple[str, ...] = ()
    max_concurrent: int = 3
    max_cycles: int = 15
    cycle_delay: float = 1.0
    lease_seconds: float = 15.0
    poll_interval: float = 0.5
    # PostgreSQL: LISTEN for other processors' commits (polling stays as the fallback).
    listen: bool = True
    heartbeat_interval: float = 5.0
    max_consecutive_failures: int = 3
    grace_period: float = 10.0
    worker_id: str = field(default_factory=default_worker_id)
    auth: AuthSettings = field(default_factory=AuthSettings)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    tls: TlsFiles = field(default_factory=TlsFiles)
    allow_plaintext: bool = False
    data: sources.DataSettings = field(default_factory=sources.DataSettings)
    # Ed25519 key (PEM) that signs the end of every run's trail; "" signs nothing.
    trail_signing_key: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditflow-processor",
        description="Run the auditflow processor: the gRPC service auditflow.v1.ProcessorService that "
        "executes approved workflows in durable, checkpointed cycles. Only gateways may call it: with a "
        "service token (--tokens-file, role gateway) or a client certificate (--tls-client-ca, "
        "--gateway-identities).",
    )
    config.add_common(parser, port=DEFAULT_PORT, database=DEFAULT_DATABASE, service="processor")
    add = config.adder(parser, "processor")
    add(
        "--max-concurrent",
        default=3,
        type=positive_int,
        help="runs driven at the same time",
    )
    add(
        "--max-cycles",
        default=15,
        type=positive_int,
        help="cycle limit of a run whose request says 0",
    )
    add(
        "--cycle-delay",
        default=1.0,
        type=non_negative_float,
        help="seconds between two cycles of a run",
    )
    add(
        "--lease-seconds",
        default=15.0,
        type=interval,
        help="lease length; a dead processor's runs are resumed elsewhere after it expires",
    )
    add(
        "--poll-interval",
        default=0.5,
        type=interval,
        help="seconds between looks for expired leases (and, without notifications, for new runs and events)",
    )
    add(
        "--listen",
        default=True,
        type=boolean,
        help="on PostgreSQL, LISTEN for other processors' commits so that new runs and events are seen at once; "
        "false: poll every --poll-interval only (for a connection pooler in transaction mode, which drops LISTEN)",
    )
    add(
        "--heartbeat-interval",
        default=5.0,
        type=interval,
        help="seconds of silence before WatchStatus sends a heartbeat",
    )
    add(
        "--max-consecutive-failures",
        default=3,
        type=positive_int,
        help="failed cycles in a row that fail the run",
    )
    add(
        "--grace-period",
        default=10.0,
        type=non_negative_float,
        help="seconds running cycles get to finish on SIGTERM before leases are released",
    )
    add(
        "--worker-id",
        default="",
        help="this processor's name in leases, unique among live "
        "processors; a stable one lets a restarted processor resume its runs at once instead of after "
        "their leases expire (empty: HOSTNAME-PID-RANDOM)",
    )
    auth_settings.add_flags(parser, "processor", proxy=False)
    tls.add_flags(parser, "processor", client_ca=True)
    add(
        "--gateway-identities",
        default="auditflow-gateway",
        help="client certificate names (SAN or CN) accepted as gateways, with --tls-client-ca",
    )
    add(
        "--trail-signing-key",
        default="",
        help="Ed25519 private key (PEM) that signs the end of every run's trail, so that a rewrite of the "
        "database is detected by VerifyTrail (give the gateway its public key); empty: no signature",
    )
    sources.add_flags(parser, "processor")
    connections.add_flags(parser, "processor")
    return parser


def parse(argv: Sequence[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    return Settings(
        database_url=args.database_url,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_address=args.metrics_address,
        plugins=config.csv(args.plugin),
        max_concurrent=args.max_concurrent,
        max_cycles=args.max_cycles,
        cycle_delay=args.cycle_delay,
        lease_seconds=args.lease_seconds,
        poll_interval=args.poll_interval,
        listen=args.listen,
        heartbeat_interval=args.heartbeat_interval,
        max_consecutive_failures=args.max_consecutive_failures,
        grace_period=args.grace_period,
        worker_id=args.worker_id or default_worker_id(),
        auth=auth_settings.from_args(
            args, service_identities=config.csv(args.gateway_identities) if args.tls_client_ca else ()
        ),
        connections=connections.from_args(args),
        tls=TlsFiles.from_args(args),
        allow_plaintext=args.allow_plaintext,
        data=sources.from_args(args),
        trail_signing_key=args.trail_signing_key,
    )
