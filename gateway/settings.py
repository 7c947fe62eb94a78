"""The gateway's settings: flags, with `AUDITFLOW_GATEWAY_*` environment variables as defaults."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from auditflow import config, connections, fairwrites, limits, plans, sources, tls
from auditflow.auth import settings as auth_settings
from auditflow.auth.settings import AuthSettings
from auditflow.config import positive_int
from auditflow.connections import ConnectionSettings
from auditflow.limits import LimitSettings, Rate
from auditflow.tls import ClientTls, TlsFiles
from gateway import listing, pageworkers
from gateway.findings import FINDINGS_PER_TOKEN
from gateway.quota import PlanLimits

SERVICE = "gateway"
DEFAULT_PORT = 50051
DEFAULT_DATABASE = "sqlite:///var/auditflow-gateway.db"
DEFAULT_PROCESSOR = "127.0.0.1:50052"
DEFAULT_MAX_PENDING_PLANS = 100
DEFAULT_MAX_PLAN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything a gateway needs to run; tests build it directly."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str = DEFAULT_DATABASE
    processor_target: str = DEFAULT_PROCESSOR
    default_max_cycles: int = 15
    allow_self_approval: bool = False
    heartbeat_interval: float = 5.0
    outbox_scan_interval: float = 5.0
    # Seconds between looks at rows written by other gateways (its own writes it hears of at
    # once): the collection watch's (`gateway.collection`) and the crosscheck's
    # (`gateway.crosscheck`), each only while someone watches.
    replica_poll_interval: float = 1.0
    plugins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"  # or "json"
    # HOST:PORT of the Prometheus /metrics endpoint; "" serves none (and records no RPC metrics).
    metrics_address: str = ""
    # HTTP port of the REST gateway (gateway/rest/) in this process; 0 picks a free one,
    # None serves no REST (the command line's default is 8080).
    rest_port: int | None = None
    # Origins a browser may call the REST API from ("*" = any); empty: same origin only.
    rest_cors_origins: tuple[str, ...] = ()
    auth: AuthSettings = field(default_factory=AuthSettings)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    tls: TlsFiles = field(default_factory=TlsFiles)
    allow_plaintext: bool = False
    # How the gateway proves itself to the processor: a service token and/or a client certificate.
    processor_token_file: str = ""
    processor_tls: ClientTls = field(default_factory=ClientTls)
    data: sources.DataSettings = field(default_factory=sources.DataSettings)
    # Approvers a plan needs when its request says 0, and the most a plan may ask for.
    default_approvals: int = 1
    max_approvals: int = 5
    # Ed25519 key (PEM) that signs the end of workflows that end here; "" signs nothing.
    trail_signing_key: str = ""
    # Public keys (PEM) whose signatures VerifyTrail checks (the processor's, and others).
    trail_public_keys: tuple[str, ...] = ()
    # Each principal's rates and streams, and what it may submit. Built in code there are no
    # per-principal limits unless given; the command line's defaults are auditflow.limits'
    # DEFAULT_* and DEFAULT_MAX_* here.
    limits: LimitSettings = field(default_factory=LimitSettings)
    plan_limits: PlanLimits = field(default_factory=PlanLimits)
    # A ListWorkflows page stops before this many bytes (protobuf encoding); at least one row.
    max_page_bytes: int = listing.DEFAULT_MAX_PAGE_BYTES
    # Processes that build pages of workflows (one page at a time each, principals in turn).
    page_workers: int = pageworkers.DEFAULT_WORKERS
    # Bytes of writes one principal may put into one commit of the database writer (0: none).
    write_share: int = fairwrites.DEFAULT_SHARE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditflow-gateway",
        description="Serve auditflow.v1.WorkflowService: submissions, instant approvals, live status. "
        "Approved work is forwarded to the processor through a durable outbox. Every caller "
        "authenticates (API tokens, OIDC JWTs, or a trusted proxy); TLS on every port unless on loopback.",
    )

    add = config.adder(parser, SERVICE)

    config.add_common(parser, port=DEFAULT_PORT, database=DEFAULT_DATABASE, service=SERVICE)
    add(
        "--processor-target",
        "the processors: host:port, dns:///NAME:PORT (every address NAME resolves to) or "
        "IP:PORT,IP:PORT,...; calls are balanced round robin and go around a processor that is down",
        default=DEFAULT_PROCESSOR,
    )
    add("--default-max-cycles", "cycles a workflow may take when its request says 0", default=15, type=positive_int)
    add(
        "--heartbeat-interval",
        "seconds between heartbeats on an idle WatchStatus stream (> 0)",
        default=5.0,
        type=config.interval,
    )
    add(
        "--replica-poll-interval",
        "seconds between looks at what other gateways on the same database changed, for "
        "WatchStatus and WatchWorkflows (this gateway's own changes are sent at once) (> 0)",
        default=1.0,
        type=config.interval,
        aliases=("--collection-poll-interval",),
    )
    add(
        "--allow-self-approval",
        "let the creator of a plan approve it (separation of duties is on by default)",
        default=False,
        type=config.boolean,
    )
    add(
        "--rest-port",
        "HTTP port of the REST/JSON API and status page (0 picks a free one, 'off' serves none)",
        default=8080,
        type=rest_port,
    )
    add("--rest-cors-origins", "comma-separated origins a browser may call the REST API from ('*' = any)", default="")
    auth_settings.add_flags(parser, SERVICE, proxy=True)
    tls.add_flags(parser, SERVICE, client_ca=False)
    add("--processor-token-file", "file holding the service token this gateway presents to the processor", default="")
    add(
        "--processor-tls-ca",
        "CA certificate of the processor's TLS certificate (enables TLS to the processor)",
        default="",
    )
    add("--processor-tls-cert", "client certificate for mutual TLS with the processor", default="")
    add("--processor-tls-key", "key of --processor-tls-cert", default="")
    add("--processor-tls-server-name", "name to expect in the processor's certificate (default: its host)", default="")
    add("--default-approvals", "distinct approvers a plan needs when its request says 0", default=1, type=positive_int)
    add("--max-approvals", "the most approvers a plan may require", default=5, type=positive_int)
    add(
        "--trail-signing-key",
        "Ed25519 private key (PEM) that signs the trail's end of workflows ending here "
        "(rejected, cancelled before dispatch); empty: no signature",
        default="",
    )
    add(
        "--trail-public-keys",
        "comma-separated Ed25519 public keys (PEM files) whose trail signatures "
        "VerifyTrail checks, e.g. the processor's",
        default="",
    )
    sources.add_flags(parser, SERVICE)
    add_limit_flags(parser)
    connections.add_flags(parser, SERVICE)
    return parser


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Each principal's share of the gateway (0 or 'off': no limit)."""

    add = config.adder(parser, SERVICE)

    rate = "per principal, as CALLS_PER_SECOND:BURST ('off': no limit)"
    add(
        "--write-rate",
        f"create, approve, reject and cancel calls {rate}; a request costs one call per "
        f"{limits.BYTES_PER_TOKEN // 1024} KiB it sends",
        default=str(limits.DEFAULT_WRITE),
        type=Rate.parse,
    )
    add(
        "--read-rate",
        f"reads {rate}; a page costs one call per {limits.ROWS_PER_TOKEN} rows it asks for, an export "
        f"one per {FINDINGS_PER_TOKEN:,} findings",
        default=str(limits.DEFAULT_READ),
        type=Rate.parse,
    )
    add("--watch-rate", f"streams opened (status, exports) {rate}", default=str(limits.DEFAULT_WATCH), type=Rate.parse)
    add(
        "--max-streams-per-principal",
        "streams one principal may hold open at once (0: no limit)",
        default=limits.DEFAULT_MAX_STREAMS,
        type=config.non_negative_int,
    )
    add(
        "--max-pending-plans",
        "plans one principal may have awaiting approval (0: no limit)",
        default=DEFAULT_MAX_PENDING_PLANS,
        type=config.non_negative_int,
    )
    add(
        "--max-plan-bytes",
        "size of a plan's steps as sent, in bytes (0: no limit but the 4 MiB message)",
        default=DEFAULT_MAX_PLAN_BYTES,
        type=config.non_negative_int,
    )
    add(
        "--max-plan-steps",
        f"steps a plan may have (at most {plans.MAX_STEPS})",
        default=plans.MAX_STEPS,
        type=config.bounded_int(1, plans.MAX_STEPS),
    )
    add(
        "--max-parameters-bytes",
        f"size of one step's parameters as sent, in bytes (at most {plans.MAX_PARAMETERS_BYTES})",
        default=plans.MAX_PARAMETERS_BYTES,
        type=config.bounded_int(1, plans.MAX_PARAMETERS_BYTES),
    )
    add(
        "--max-page-bytes",
        "bytes a page of workflows stops before (it holds at least one workflow; the page token covers the rest)",
        default=listing.DEFAULT_MAX_PAGE_BYTES,
        type=positive_int,
    )
    add(
        "--page-workers",
        "processes that build pages of workflows and collection watches' initial lists, one at a "
        "time each, at a lower CPU priority; waiting pages are taken one principal at a time in turn",
        default=pageworkers.DEFAULT_WORKERS,
        type=config.bounded_int(1, pageworkers.MAX_WORKERS),
    )
    add(
        "--write-share",
        "bytes of writes (plans, decisions) one principal may put into one commit of the database writer, "
        "which takes the principals in turn; another principal's write then waits for at most that much of "
        "anyone's (0: first come, first served)",
        default=fairwrites.DEFAULT_SHARE,
        type=config.non_negative_int,
    )


def parse(argv: Sequence[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    if args.default_approvals > args.max_approvals:
        raise config.ConfigError(
            f"--default-approvals ({args.default_approvals}) is more than --max-approvals ({args.max_approvals})"
        )
    return Settings(
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        processor_target=args.processor_target,
        default_max_cycles=args.default_max_cycles,
        heartbeat_interval=args.heartbeat_interval,
        replica_poll_interval=args.replica_poll_interval,
        allow_self_approval=args.allow_self_approval,
        plugins=config.csv(args.plugin),
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_address=args.metrics_address,
        rest_port=args.rest_port,
        rest_cors_origins=config.csv(args.rest_cors_origins),
        auth=auth_settings.from_args(args),
        connections=connections.from_args(args),
        tls=TlsFiles.from_args(args),
        allow_plaintext=args.allow_plaintext,
        processor_token_file=args.processor_token_file,
        processor_tls=ClientTls(
            ca_file=args.processor_tls_ca,
            cert_file=args.processor_tls_cert,
            key_file=args.processor_tls_key,
            server_name=args.processor_tls_server_name,
        ),
        data=sources.from_args(args),
        default_approvals=args.default_approvals,
        max_approvals=args.max_approvals,
        trail_signing_key=args.trail_signing_key,
        trail_public_keys=config.csv(args.trail_public_keys),
        limits=LimitSettings(args.write_rate, args.read_rate, args.watch_rate, args.max_streams_per_principal),
        plan_limits=PlanLimits(
            args.max_plan_bytes, args.max_plan_steps, args.max_parameters_bytes, args.max_pending_plans
        ),
        max_page_bytes=args.max_page_bytes,
        page_workers=args.page_workers,
        write_share=args.write_share,
    )


def rest_port(text: str) -> int | None:
    """A port number, or off/none for no REST gateway."""
    if text.strip().lower() in ("off", "none", "no", "false"):
        return None
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value
