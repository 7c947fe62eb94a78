"""`auditflow`: the command-line client of the gateway, and the end-to-end demo.

    auditflow submit --sample                 # prints the new workflow id
    auditflow --user bob approve wf_...       # answers at once; the plan runs in the background
    auditflow watch wf_...                    # live progress until the workflow ends
    auditflow demo                            # start both servers, run the sample, stop them

Exit codes: 0 success (watch/demo: the workflow COMPLETED), 1 the workflow FAILED, was
CANCELLED or REJECTED, 2 usage or RPC error (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import grpc

from auditflow import __version__
from auditflow.cli import commands, demo
from auditflow.cli.client import (
    CliError,
    default_target,
    default_user,
    format_rpc_error,
    open_channel,
    workflow_stub,
)
from auditflow.principal import USER_METADATA_KEY

EXIT_OK = 0
EXIT_WORKFLOW_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[commands.Context, argparse.Namespace], int]


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--target, --user, --json: with defaults on the main parser; after a command they only
    override (so `auditflow get ID --json` works too)."""
    if top:
        target_help = "gateway address host:port [env AUDITFLOW_TARGET; default: %(default)s]"
        user_help = f"who you are, sent as {USER_METADATA_KEY} metadata [env AUDITFLOW_USER; default: %(default)s]"
    else:
        target_help, user_help = "gateway address host:port", f"who you are ({USER_METADATA_KEY} metadata)"
    parser.add_argument("--target", default=default_target() if top else argparse.SUPPRESS, help=target_help)
    parser.add_argument("--user", default=default_user() if top else argparse.SUPPRESS, help=user_help)
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON (proto3 JSON mapping) instead of text",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditflow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, handler: Handler | None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[] if handler is None else [common])
        p.set_defaults(handler=handler)
        return p

    p = command("submit", "submit an audit plan; prints the new workflow id", commands.submit)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", metavar="FILE", help='JSON file: a list of {"procedure", "parameters"} steps')
    source.add_argument(
        "--sample", action="store_true", help="the packaged sample plan (ledger_summary, then vendor_totals)"
    )
    p.add_argument("--title", default="", help="title of the workflow (default: from the plan)")
    p.add_argument(
        "--max-cycles",
        type=_non_negative,
        default=0,
        metavar="N",
        help="cycles the run may take (0: server default)",
    )
    p.add_argument("--request-id", default="", help="idempotency key: a retried submit returns the same workflow")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the workflow id (for scripts)")

    p = command("approve", "approve a plan; answers at once while it runs in the background", commands.approve)
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--comment", default="", help="why you approve")
    p.add_argument("--request-id", default="", help="idempotency key: a retry returns the same answer")

    p = command("reject", "reject a plan awaiting approval", commands.reject)
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--comment", default="", help="why you reject")
    p.add_argument("--request-id", default="", help="idempotency key")

    p = command("cancel", "cancel a workflow (a running one stops between cycles)", commands.cancel)
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--reason", default="", help="why you cancel")

    p = command("get", "show one workflow: status, progress, error, result", commands.get)
    p.add_argument("workflow_id", metavar="ID")

    p = command("list", "list workflows, newest first", commands.list_)
    p.add_argument(
        "--status",
        type=commands.status_arg,
        nargs="+",
        action="extend",
        metavar="S",
        help="only these statuses (e.g. running completed)",
    )
    p.add_argument("--page-size", type=_positive, default=50, metavar="N", help="workflows per page (default: 50)")
    p.add_argument("--page-token", default="", help="continue from a previous page")
    p.add_argument("--all", action="store_true", help="follow next_page_token to the last page")

    p = command("watch", "follow a workflow live until it ends (exit 0 if it COMPLETED)", commands.watch_cmd)
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--after", type=_non_negative, default=0, metavar="N", help="only events after sequence N")
    p.add_argument(
        "--give-up-after",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="stop reconnecting after this long without the server (default: %(default)s)",
    )

    p = command("demo", "start a processor and a gateway, run the sample plan end to end, stop them", None)
    p.add_argument("--data-dir", default="./var/demo", help="databases and server logs (default: %(default)s)")
    p.add_argument("--gateway-port", type=_non_negative, default=0, help="0 picks a free port (default)")
    p.add_argument("--processor-port", type=_non_negative, default=0, help="0 picks a free port (default)")
    p.add_argument("--submitter", default="demo-submitter", help="user who submits (default: %(default)s)")
    p.add_argument("--approver", default="demo-approver", help="user who approves (default: %(default)s)")
    p.add_argument("--max-cycles", type=_non_negative, default=0, help="0: server default")
    p.add_argument(
        "--startup-timeout",
        type=_seconds,
        default=30.0,
        help="seconds to wait for SERVING (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo.run(args)
        with open_channel(args.target) as channel:
            ctx = commands.Context(stub=workflow_stub(channel), user=args.user, json=args.json)
            handler: Handler = args.handler
            return handler(ctx, args)
    except grpc.RpcError as exc:
        print(format_rpc_error(exc), file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `auditflow list | head`
        return EXIT_OK
