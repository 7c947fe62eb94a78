"""`auditflow secrets DIR`: the files a deployment (docker-compose.yml) reads its secrets from.

Offline, no server involved. It writes, each with mode 0600:

  tokens/gateway-tokens.toml   the gateways' API tokens (hashes only): one for the operator
  operator.token               the operator's token (for `auditflow --token-file`)
  tokens/processor-tokens.toml the processors' tokens file: the gateways' service token
  gateway-to-processor.token the token the gateways present to the processors
  trail-signing.pem          Ed25519 key the processors sign the end of each run's trail with
  trail-signing.pub          its public half, which the gateways check signatures with
  postgres-password          the database password (PostgreSQL reads it at its first start)
  pgpass                     the same password for the services, in libpq's password file format

The tokens files sit in a directory of their own, which the services mount whole: a token
added while they run (`auditflow token create --tokens-file DIR/tokens/gateway-tokens.toml
...`) replaces its file, and a mounted directory shows the new file where a file mounted alone
would keep showing the old one. Nothing is overwritten: a directory that already holds one of
them is refused.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditflow import trail
from auditflow.auth.tokens import append_entry
from auditflow.cli.client import CliError
from auditflow.principal import ADMIN

GATEWAY_TOKENS = "tokens/gateway-tokens.toml"
PROCESSOR_TOKENS = "tokens/processor-tokens.toml"
FILES = (
    GATEWAY_TOKENS,
    "operator.token",
    PROCESSOR_TOKENS,
    "gateway-to-processor.token",
    "trail-signing.pem",
    "trail-signing.pub",
    "postgres-password",
    "pgpass",
)
DATABASE_USER = "auditflow"  # the user docker-compose.yml creates


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "secrets",
        help="write the secret files a deployment reads (offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="where to write them (created if missing)")
    parser.add_argument(
        "--operator", default="operator", help="principal of the operator's token (default: %(default)s)"
    )
    parser.set_defaults(handler=None)


def run(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    present = [name for name in FILES if (directory / name).exists()]
    if present:
        raise CliError(f"{directory} already holds {', '.join(present)}: nothing was written (use an empty directory)")
    try:
        write(directory, args.operator)
    except OSError as exc:
        raise CliError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    print(f"wrote {len(FILES)} files to {directory}; the operator's token is in {directory / 'operator.token'}")
    return 0


def write(directory: Path, operator: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    operator_token = append_entry(directory / GATEWAY_TOKENS, operator, operator, [ADMIN])
    _secret(directory / "operator.token", operator_token)
    link = append_entry(directory / PROCESSOR_TOKENS, "gateway", "auditflow-gateway", ["gateway"])
    _secret(directory / "gateway-to-processor.token", link)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _secret(directory / "trail-signing.pem", pem.decode().strip())
    _secret(directory / "trail-signing.pub", trail.public_pem(key.public_key()).decode().strip())
    password = secrets.token_urlsafe(24)
    _secret(directory / "postgres-password", password)
    _secret(directory / "pgpass", f"*:*:*:{DATABASE_USER}:{password}")


def _secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
