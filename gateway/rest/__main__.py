"""`python -m gateway.rest --target host:port --port N`: the REST gateway on its own."""

from __future__ import annotations

import argparse
import asyncio
import sys

from auditflow import config, logs, serving
from gateway.rest.app import RestGateway


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.rest",
        description="Serve the REST/JSON API of auditflow.v1.WorkflowService, forwarding every call to a gateway "
        "over gRPC.",
    )
    config.add(parser, "--target", default="127.0.0.1:50051", help="host:port of the gRPC gateway", service="rest")
    config.add(parser, "--host", default="127.0.0.1", help="address to listen on", service="rest")
    config.add(parser, "--port", default=8080, type=int, help="HTTP port (0 picks a free one)", service="rest")
    config.add(
        parser,
        "--cors-origins",
        default="",
        help="comma-separated origins allowed to call from a browser ('*' = any)",
        service="rest",
    )
    config.add(parser, "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR", service="rest")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    origins = frozenset(o.strip() for o in args.cors_origins.split(",") if o.strip())
    rest = RestGateway(args.target, args.host, args.port, cors_origins=origins)
    await rest.start()
    print(f"REST gateway on {rest.url}", flush=True)
    await serving.run_until_signalled(rest.stop)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup(args.log_level)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
