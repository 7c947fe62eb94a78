"""Static API tokens: a TOML file of token hashes, each naming a principal and its roles.

For service accounts, scripts and the embedded default (the demo writes one). Only the SHA-256
of a token is stored, so the file is not a secret in itself; the token is shown once, when
`auditflow token create` makes it. The file is read again when it changes, so tokens are
added and revoked without a restart:

    [[token]]
    id = "ci-bot"                   # names the token in the audit trail ("token:ci-bot")
    principal = "ci-bot"
    roles = ["submitter"]
    sha256 = "9f86d0…"              # hex digest of the token

A presented token is looked up by its digest and the digest is then compared with
`hmac.compare_digest`. Looking up by digest leaks at most which digests exist, never anything
about a token: an attacker cannot choose a digest without knowing its token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from auditflow.principal import ROLES, Principal, check_name

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "aft_"
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class TokenEntry:
    id: str
    principal: Principal
    digest: bytes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    """A fresh random token: 256 bits, URL-safe, with a prefix that secret scanners can find."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse(text: str, source: str) -> dict[bytes, TokenEntry]:
    """The entries of a tokens file, by digest; TokenFileError names what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{source}: not valid TOML: {exc}") from None
    raw = data.get("token", [])
    if not isinstance(raw, list):
        raise TokenFileError(f"{source}: expected [[token]] tables")
    entries: dict[bytes, TokenEntry] = {}
    ids: set[str] = set()
    for index, item in enumerate(raw):
        entry = _entry(item, f"{source}: token {index + 1}")
        if entry.id in ids:
            raise TokenFileError(f"{source}: token id {entry.id!r} appears twice")
        if entry.digest in entries:
            raise TokenFileError(f"{source}: token {entry.id!r} has the same sha256 as {entries[entry.digest].id!r}")
        ids.add(entry.id)
        entries[entry.digest] = entry
    return entries


def _entry(item: object, where: str) -> TokenEntry:
    if not isinstance(item, dict):
        raise TokenFileError(f"{where}: expected a table")
    unknown = set(item) - {"id", "principal", "roles", "sha256"}
    if unknown:
        raise TokenFileError(f"{where}: unknown keys: {', '.join(sorted(unknown))}")
    token_id, name, roles, hexdigest = item.get("id"), item.get("principal"), item.get("roles"), item.get("sha256")
    if not isinstance(token_id, str) or not _ID.match(token_id):
        raise TokenFileError(f"{where}: id must be 1 to 64 letters, digits, '.', '_' or '-'")
    problem = check_name(name) if isinstance(name, str) else "must be a string"
    if problem:
        raise TokenFileError(f"{where} ({token_id}): principal {problem}")
    if not isinstance(roles, list) or not roles or not all(r in ROLES for r in roles):
        raise TokenFileError(f"{where} ({token_id}): roles must be a non-empty list of {', '.join(ROLES)}")
    if not isinstance(hexdigest, str) or not _HEX.match(hexdigest):
        raise TokenFileError(f"{where} ({token_id}): sha256 must be 64 lowercase hex digits")
    assert isinstance(name, str)
    principal = Principal(name, frozenset(roles), via=f"token:{token_id}")
    return TokenEntry(token_id, principal, bytes.fromhex(hexdigest))


class TokenFile:
    """The tokens of one file, re-read when it changes (`reload_if_changed`, blocking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[bytes, TokenEntry] = {}
        self._stamp: tuple[int, int, int] | None = None
        self.generation = 0  # counts the loads: what was authenticated before may be revoked

    def load(self) -> None:
        """Read the file (blocking); TokenFileError if it cannot be used."""
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"cannot read the tokens file {self.path}: {exc}") from None
        self._entries = parse(text, str(self.path))
        self.generation += 1
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def reload_if_changed(self) -> bool:
        """Read the file again if it changed; on a broken file keep the tokens we have (and
        say why). True if new tokens were loaded."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            logger.error("cannot read the tokens file %s: %s; keeping the tokens loaded before", self.path, exc)
            return False
        if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._stamp:
            return False
        try:
            self.load()
        except TokenFileError as exc:
            logger.error("%s; keeping the tokens loaded before", exc)
            return False
        logger.info("reloaded the tokens file %s (%d tokens)", self.path, len(self._entries))
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        presented = digest(token)
        entry = self._entries.get(presented)
        if entry is None or not hmac.compare_digest(entry.digest, presented):
            return None
        return entry.principal


def append_entry(path: Path, token_id: str, principal: str, roles: list[str]) -> str:
    """Add a new token to the file (created with mode 0600 if missing); returns the token,
    which is not stored anywhere and must be handed to its user now."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    token = new_token()
    block = (
        f"\n[[token]]\nid = {_toml_string(token_id)}\nprincipal = {_toml_string(principal)}\n"
        f"roles = [{', '.join(_toml_string(r) for r in roles)}]\nsha256 = {_toml_string(digest(token).hex())}\n"
    )
    text = (existing or "# auditflow API tokens: SHA-256 hashes only (see `auditflow token create --help`).\n") + block
    parse(text, str(path))  # refuses a duplicate id, a bad name or role before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return token


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    import json

    return json.dumps(value, ensure_ascii=False)
