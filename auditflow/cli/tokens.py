"""`auditflow token create`: add an API token to a tokens file (offline: no server involved).

The file keeps only the token's SHA-256; the token itself is printed once, on stdout, for
whoever will use it (write it to a file of theirs: `> ci-bot.token`). A running server picks
up the new entry within seconds, without a restart.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from auditflow.auth.tokens import TokenFileError, append_entry
from auditflow.cli.client import CliError
from auditflow.principal import ROLES


def add_parser(sub: Any) -> None:
    token = sub.add_parser(
        "token",
        help="manage API tokens in a tokens file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="add a token; prints it once",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("id", help="the token's name in the audit trail (letters, digits, . _ -)")
    create.add_argument("--principal", required=True, help="who the token authenticates")
    create.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=ROLES,
        required=True,
        help="a role of the principal (repeat for several)",
    )
    create.add_argument(
        "--tokens-file",
        default=os.environ.get("AUDITFLOW_TOKENS_FILE", ""),
        required="AUDITFLOW_TOKENS_FILE" not in os.environ,
        help="the servers' tokens file (created if missing) [env AUDITFLOW_TOKENS_FILE]",
    )


def run(args: argparse.Namespace) -> int:
    try:
        token = append_entry(Path(args.tokens_file), args.id, args.principal, sorted(set(args.roles)))
    except TokenFileError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.tokens_file}: {exc.strerror or exc}") from None
    print(token)
    print(
        f"added token {args.id!r} for {args.principal} ({', '.join(sorted(set(args.roles)))}) to "
        f"{args.tokens_file}; the line above is the token, shown this once",
        file=sys.stderr,
    )
    return 0
