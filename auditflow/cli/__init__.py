"""`auditflow`: the command-line client of the gateway, and the end-to-end demo.

    auditflow demo                                        # start both servers, run the sample, stop them
    auditflow --token-file submitter.token submit --sample  # prints the new workflow id
    auditflow --token-file approver.token approve wf_...  # answers at once; the plan runs in the background
    auditflow watch wf_...                                # live progress until the workflow ends
    auditflow get wf_...                                  # status, each step's summary, the first findings
    auditflow verify wf_...                               # the trail of events: intact, or where not
    auditflow findings wf_... --format csv -o findings.csv  # every finding, as a file
    auditflow token create ci-bot --principal ci-bot --role submitter --tokens-file tokens.toml

Your token comes from --token-file (or --token), AUDITFLOW_TOKEN_FILE, AUDITFLOW_TOKEN, or
the config file ~/.config/auditflow/config.toml (target, token_file, tls_ca); it is never
printed. TLS with --tls (system CAs) or --tls-ca FILE.

Exit codes: 0 success (watch/demo: the workflow COMPLETED), 1 the workflow FAILED, was
CANCELLED or REJECTED, 2 usage or RPC error (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import grpc

from auditflow import __version__, sample
from auditflow.cli import commands, demo, render, secrets, tokens
from auditflow.cli.client import (
    CliError,
    Connection,
    default_target,
    find_token,
    format_rpc_error,
    open_channel,
    workflow_stub,
)
from auditflow.findings_contract import EXPORT_FORMATS as FORMATS
from auditflow.findings_contract import ORDERS, SEVERITIES

EXIT_OK = 0
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
    """--target, credentials, TLS, --json: with defaults on the main parser; after a command
    they only override (so `auditflow get ID --json` works too)."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    target_help = "gateway address host:port" + (" [env AUDITFLOW_TARGET; default: %(default)s]" if top else "")
    parser.add_argument("--target", default=default(default_target() if top else None), help=target_help)
    parser.add_argument(
        "--token-file",
        default=default(None),
        metavar="FILE",
        help="file holding your API token or JWT [env AUDITFLOW_TOKEN_FILE, or AUDITFLOW_TOKEN with the token]",
    )
    parser.add_argument(
        "--token", default=default(None), help="your token itself (visible to other users in `ps`: prefer --token-file)"
    )
    parser.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS (system CAs)")
    parser.add_argument(
        "--tls-ca",
        default=default(""),
        metavar="FILE",
        help="connect with TLS, trusting this CA [env AUDITFLOW_TLS_CA]",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=default(False),
        help="send the token without TLS to a non-loopback gateway (only on a network you trust)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON instead of text: the proto field names (snake_case), counts as numbers",
    )


# The subcommand maker of build_parser: (name, help, handler) -> its parser.
Command = Callable[[str, str, Handler | None], argparse.ArgumentParser]


def _reviewed(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of a decision on a revision the person reviewed: ID, --etag, --yes."""
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument(
        "--etag",
        default="",
        help="the etag of the revision you reviewed (auditflow get shows it): the decision is refused if the "
        "plan was revised since; without --yes the plan is shown and you are asked to confirm",
    )
    p.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="do not ask: decide on the revision --etag names (for scripts; needs --etag)",
    )
    return p


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

    _add_plan_commands(command)
    _add_workflow_commands(command)
    _add_read_commands(command)
    tokens.add_parser(sub)
    secrets.add_parser(sub)
    _add_demo(command)
    return parser


def _add_plan_commands(command: Command) -> None:
    """submit, and the decisions on a plan awaiting approval: approve, reject, request-changes, revise."""
    p = command("submit", "submit an audit plan; prints the new workflow id", commands.submit)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", metavar="FILE", help='JSON file: a list of {"procedure", "parameters"} steps')
    source.add_argument(
        "--sample",
        action="store_true",
        help=f"the packaged sample plan over the sample ledger: {sample.SAMPLE_STEPS} steps (ledger_summary, "
        "vendor_totals, then each audit procedure)",
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
    p.add_argument(
        "--approvals",
        type=_non_negative,
        default=0,
        metavar="N",
        help="distinct approvers the plan needs before it runs (0: the server's default, 1)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the workflow id (for scripts)")

    p = _reviewed(
        command(
            "approve",
            "review a plan (steps, parameters, data fingerprints, approvals so far), confirm, and approve it; "
            "answers at once while it runs in the background",
            commands.approve,
        )
    )
    p.add_argument("--comment", default="", help="why you approve")
    p.add_argument("--request-id", default="", help="idempotency key: a retry returns the same answer")

    p = _reviewed(
        command("reject", "review a plan awaiting approval, confirm, and reject it with a reason", commands.reject)
    )
    p.add_argument("--comment", default="", help="why you reject (required)")
    p.add_argument("--request-id", default="", help="idempotency key")

    p = _reviewed(
        command(
            "request-changes",
            "review a plan, confirm, and ask its submitter for changes: it waits for a revision",
            commands.request_changes,
        )
    )
    p.add_argument("--reason", required=True, help="what should change (required)")

    p = command(
        "revise",
        "revise your own plan while it awaits approval: a new revision (earlier approvals are dismissed); "
        "with neither --plan nor --title, fingerprint its data files again",
        commands.revise,
    )
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--plan", metavar="FILE", help="the new steps (a JSON file, as for submit)")
    p.add_argument("--title", default="", help="the new title (default: keep)")
    p.add_argument("--max-cycles", type=_non_negative, default=0, metavar="N", help="0: keep")
    p.add_argument("--reason", default="", help="why (shown to approvers, kept in the trail)")
    p.add_argument("--etag", default="", help="the etag of the revision you revise (default: the current one)")
    p.add_argument("--request-id", default="", help="idempotency key")


def _add_workflow_commands(command: Command) -> None:
    """verify, cancel and get: one workflow by its ID."""
    p = command(
        "verify",
        "check a workflow's trail: the server's verification, then every hash recomputed here "
        "(exit 0 if intact, 1 if not)",
        commands.verify,
    )
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="an Ed25519 public key (PEM) to check the signature of the trail's end here (repeatable)",
    )

    p = command("cancel", "cancel a workflow (a running one stops between cycles)", commands.cancel)
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--reason", default="", help="why you cancel")

    p = command("get", "show one workflow: status, who approved, each step's summary, the first findings", commands.get)
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument(
        "--findings", type=_non_negative, default=10, metavar="N", help="findings to show (default: %(default)s)"
    )


def _add_read_commands(command: Command) -> None:
    """findings, list, watch and whoami."""
    p = command(
        "findings",
        "every finding of a workflow, as text or as a file (CSV, JSON, Parquet), filtered and ordered",
        commands.findings,
    )
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--severity", nargs="+", action="extend", choices=SEVERITIES, help="only these severities")
    p.add_argument(
        "--step", nargs="+", action="extend", type=_positive, metavar="N", help="only these plan steps (1: the first)"
    )
    p.add_argument("--procedure", nargs="+", action="extend", metavar="NAME", help="only these procedures")
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="severity",
        help="severity (high first, then by amount; default), amount (largest first), found (as the run found them)",
    )
    p.add_argument(
        "--format",
        choices=("text", *FORMATS),
        default="text",
        help="text (default), or a file: csv, json (an array), parquet",
    )
    p.add_argument("-o", "--output", default="", metavar="FILE", help="write the file here (default: stdout)")
    p.add_argument("--limit", type=_non_negative, default=0, metavar="N", help="text: at most N findings (0: all)")

    p = command("list", "list workflows, newest first", commands.list_)
    p.add_argument(
        "--status",
        type=commands.status_arg,
        nargs="+",
        action="extend",
        metavar="S",
        help="only these statuses (e.g. running completed)",
    )
    p.add_argument("--awaiting-me", action="store_true", help="only the plans you may approve now (your queue)")
    p.add_argument("--mine", action="store_true", help="only the workflows you submitted")
    p.add_argument("--title", default="", metavar="TEXT", help="only titles containing TEXT (any case)")
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

    command("whoami", "show who the gateway takes you to be: principal, roles, how you authenticated", commands.whoami)


def _add_demo(command: Command) -> None:
    """demo: both servers started here, the sample plan end to end."""
    p = command("demo", "start a processor and a gateway, run the sample plan end to end, stop them", None)
    p.add_argument("--data-dir", default="./var/demo", help="databases and server logs (default: %(default)s)")
    p.add_argument("--gateway-port", type=_non_negative, default=0, help="0 picks a free port (default)")
    p.add_argument("--processor-port", type=_non_negative, default=0, help="0 picks a free port (default)")
    p.add_argument(
        "--rest-port",
        type=_non_negative,
        default=0,
        help="the gateway's REST port and status page; 0 picks a free port (default)",
    )
    p.add_argument("--submitter", default="demo-submitter", help="principal who submits (default: %(default)s)")
    p.add_argument("--approver", default="demo-approver", help="principal who approves (default: %(default)s)")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the sample run, keep both servers up (Ctrl-C stops them) to try the CLI, grpcurl and curl",
    )
    p.add_argument("--max-cycles", type=_non_negative, default=0, help="0: server default")
    p.add_argument(
        "--startup-timeout",
        type=_seconds,
        default=30.0,
        help="seconds to wait for SERVING (default: %(default)s)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo.run(args)
        if args.command == "token":
            return tokens.run(args)
        if args.command == "secrets":
            return secrets.run(args)
        token = find_token(args.token, args.token_file)
        connection = Connection(args.target, tls=args.tls, tls_ca=args.tls_ca, plaintext=args.plaintext)
        with open_channel(connection, token) as channel:
            ctx = commands.Context(stub=workflow_stub(channel), token=token, json=args.json)
            handler: Handler = args.handler
            return handler(ctx, args)
    except grpc.RpcError as exc:
        print(render.printable(format_rpc_error(exc)), file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(render.printable(f"error: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `auditflow list | head`
        return EXIT_OK
