"""Where procedures may read ledgers from: files under the server's data roots, and databases
the operator named. A plan never gives a database URL, and never reaches a file elsewhere.

A plan's `path` is either relative (looked up under each data root in turn) or absolute (it
must lie under one). It is resolved first (symbolic links followed, `..` refused outright),
and only a path that resolves inside a root is ever looked at, so a refusal says the same
thing for an existing and a missing file outside the roots. Inside, it must be a regular
file no larger than `max_ledger_bytes`. Procedures then open the resolved path, not the one
given, so a link swapped after the check leads nowhere new.

A database source is `{"source": NAME, "table": ...}`, NAME one of the server's
`--data-source NAME=URL` (the URL, with its credentials, stays on the server; `NAME=@FILE`
reads it from a file). Every table of that database is then readable by plans: point the
URL at a role that can read the ledger tables and nothing else.

Both services check a plan with the same rules (the gateway at CreateWorkflow, the processor
at Enqueue and when it opens the ledger). A process that never configures this module (a
script calling procedures directly) is not confined: the servers always configure it.
"""

from __future__ import annotations

import argparse
import errno
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from auditflow import config
from auditflow.config import ConfigError

DEFAULT_MAX_LEDGER_BYTES = 1024 * 1024 * 1024  # a CSV of ten million entries is about 750 MB
DEFAULT_MAX_LEDGER_ROWS = 10_000_000
MAX_SHOWN = 120  # characters of a caller's path a message repeats


def samples_dir() -> Path:
    """The packaged sample ledgers (the default data root)."""
    with resources.as_file(resources.files("auditflow").joinpath("samples")) as path:
        return Path(path).resolve()


class Refused(ValueError):
    """The plan names a ledger it may not read; the message says what to do instead."""


@dataclass(frozen=True)
class DataSettings:
    roots: tuple[str, ...] = ()
    sources: tuple[tuple[str, str], ...] = ()
    max_ledger_bytes: int = DEFAULT_MAX_LEDGER_BYTES
    max_ledger_rows: int = DEFAULT_MAX_LEDGER_ROWS


@dataclass(frozen=True)
class DataAccess:
    """The confinement rules of one process (see the module docstring)."""

    roots: tuple[Path, ...] = ()
    urls: Mapping[str, str] = field(default_factory=dict)
    max_ledger_bytes: int = DEFAULT_MAX_LEDGER_BYTES
    max_ledger_rows: int = DEFAULT_MAX_LEDGER_ROWS
    confined: bool = True

    def file(self, given: str) -> Path:
        """The regular file `given` names under a data root (resolved); Refused otherwise. A
        path the system cannot even look up (too long, a loop of symbolic links) is refused
        like any other, naming it as the caller gave it."""
        try:
            return self._file(given)
        except RuntimeError:  # (a loop of symbolic links, on Python before 3.13)
            raise Refused(f"{self._shown_given(given)}: a loop of symbolic links") from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Refused(f"{self._shown_given(given)}: the path or one of its names is too long") from None
            if exc.errno == errno.ELOOP:
                raise Refused(f"{self._shown_given(given)}: a loop of symbolic links") from None
            raise Refused(f"{self._shown_given(given)}: cannot be read ({exc.strerror})") from None

    def _file(self, given: str) -> Path:
        if not self.confined:
            return _regular(Path(given).resolve(), repr(given), self.max_ledger_bytes)
        path = Path(given)
        shown = self._shown_given(given)
        if ".." in path.parts:
            raise Refused(f"{shown}: '..' is not allowed in a ledger path")
        if not self.roots:
            raise Refused("this server reads no ledger files (it has no data root)")
        if path.is_absolute():
            resolved = path.resolve()
            if not any(resolved.is_relative_to(root) for root in self.roots):
                raise Refused("the path is not under a data root of this server: give a path relative to one")
            return _regular(resolved, repr(self.shown(resolved)), self.max_ledger_bytes)
        for root in self.roots:
            resolved = (root / path).resolve()
            if resolved.is_relative_to(root) and (resolved.exists() or resolved.is_symlink()):
                return _regular(resolved, shown, self.max_ledger_bytes)
        raise Refused(f"{shown}: no such file under the data roots")

    def shown(self, path: Path) -> str:
        """How a message names a resolved file: relative to its data root (the server's own
        layout is nobody's business), or by its name alone outside the roots."""
        for root in self.roots:
            if path.is_relative_to(root):
                return str(path.relative_to(root))
        return path.name

    def _shown_given(self, given: str) -> str:
        """A caller's path in a message: relative as given, never an absolute one, and short."""
        path = Path(given)
        text = given
        if path.is_absolute():
            under = [root for root in self.roots if path.is_relative_to(root)]
            if not under:
                return "the path"
            text = str(path.relative_to(under[0]))
        return repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…")

    def url(self, name: str) -> str:
        """The database URL of a named data source; Refused naming the known ones."""
        url = self.urls.get(name)
        if url is None:
            known = ", ".join(sorted(self.urls)) or "none are configured"
            raise Refused(f"no data source named {name!r} (known: {known})")
        return url


def _regular(resolved: Path, shown: str, limit: int) -> Path:
    """`resolved` if it is a regular file of at most `limit` bytes (`shown`: how to name it)."""
    try:
        info = resolved.stat()
    except FileNotFoundError:
        raise Refused(f"{shown}: no such file") from None
    if stat.S_ISDIR(info.st_mode):
        raise Refused(f"{shown} is a directory; name a ledger file (CSV, Parquet or Excel) in it")
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{shown} is not a regular file")
    if info.st_size > limit:
        raise Refused(f"{shown} is {info.st_size} bytes; the server reads ledgers of at most {limit} bytes")
    return resolved


UNCONFINED = DataAccess(confined=False)
_current: DataAccess = UNCONFINED


def current() -> DataAccess:
    """The rules of this process (unconfined until a server configures them)."""
    return _current


def configure(settings: DataSettings) -> DataAccess:
    """Build and install this process's rules (blocking: reads `@FILE` URLs); ConfigError
    names a setting that cannot be used."""
    global _current
    roots = []
    for text in settings.roots or (str(samples_dir()),):
        root = Path(text).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"--data-root {text}: not a directory")
        roots.append(root)
    urls = {name: _url(name, value) for name, value in settings.sources}
    if settings.max_ledger_bytes < 1 or settings.max_ledger_rows < 1:
        raise ConfigError("--max-ledger-bytes and --max-ledger-rows must be at least 1")
    _current = DataAccess(tuple(roots), urls, settings.max_ledger_bytes, settings.max_ledger_rows)
    return _current


def _url(name: str, value: str) -> str:
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--data-source {name}: cannot read {value[1:]}: {exc.strerror}") from None


def add_flags(parser: argparse.ArgumentParser, service: str) -> None:
    add = config.adder(parser, service)

    add(
        "--data-root", "comma-separated directories plans may read ledger files from (default: the samples)", default=""
    )
    add("--data-source", "comma-separated NAME=URL database sources plans may name (URL, or @FILE)", default="")
    add(
        "--max-ledger-bytes",
        "largest ledger file a plan may name",
        default=DEFAULT_MAX_LEDGER_BYTES,
        type=config.positive_int,
    )
    add(
        "--max-ledger-rows", "most entries a ledger may have", default=DEFAULT_MAX_LEDGER_ROWS, type=config.positive_int
    )


def from_args(args: argparse.Namespace) -> DataSettings:
    try:
        named = config.pairs(args.data_source)
    except ValueError as exc:
        raise ConfigError(f"--data-source: {exc}") from None
    return DataSettings(config.csv(args.data_root), named, args.max_ledger_bytes, args.max_ledger_rows)
