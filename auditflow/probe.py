"""`python -m auditflow.probe TARGET`: is an auditflow server SERVING? For container health
checks and readiness probes, where no grpcurl is installed.

It asks the server's `grpc.health.v1.Health/Check` (the overall status, or one named service
with --service) and exits 0 when the answer is SERVING, 1 otherwise (NOT_SERVING, unknown
service, unreachable, timed out), printing one line that says which. Health needs no
credentials, so the probe carries none; with --tls-ca it speaks TLS, as every non-loopback
port of a server does unless it allows plaintext.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditflow.config import ConfigError
from auditflow.tls import ClientTls

SERVING = health_pb2.HealthCheckResponse.SERVING


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m auditflow.probe", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("target", help="host:port of the gateway or processor")
    parser.add_argument("--service", default="", help="a named service to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    parser.add_argument("--tls-ca", default="", help="CA certificate of the server's TLS certificate (enables TLS)")
    parser.add_argument("--tls-server-name", default="", help="name to expect in the server's certificate")
    return parser


def check(target: str, service: str = "", timeout: float = 3.0, tls: ClientTls | None = None) -> tuple[bool, str]:
    """(serving, what was found) for one Health/Check."""
    tls = tls or ClientTls()
    if tls.enabled:
        channel = grpc.secure_channel(target, tls.credentials(), options=tls.options())
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{target}: {exc.code().name}: {exc.details() or 'no answer'}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == SERVING, f"{target}{' ' + service if service else ''}: {name}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        serving, text = check(
            args.target, args.service, args.timeout, ClientTls(args.tls_ca, server_name=args.tls_server_name)
        )
    except ConfigError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 2
    print(text, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
