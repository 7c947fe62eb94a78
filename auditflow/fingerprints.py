"""Data-source fingerprints: the data an approval is bound to, besides the plan.

An approver approves a plan *on data*: the ledger files its steps read. When a plan is
submitted (or revised), every file a step names (its `path` parameter) is fingerprinted: its
size, the SHA-256 of its bytes and its modification time. The fingerprints are stored in the
plan itself (each step's `sources`), so they are part of the plan's etag and therefore of the
trail: the CREATED (or REVISED) event and every approval record that etag.

Two checks use them:
- Before a step reads a file, the processor makes sure the bytes it reads are the ones that
  were fingerprinted (`Verifier`): it hashes the file, loads it, and checks that the file was
  not touched in between (its inode, size, modification and change times). The change time
  cannot be set by a user, so a file rewritten with the same size and an old modification
  time still shows. A mismatch ends the run with a critical error that names the file and
  both digests; nothing is read from the changed bytes.
- While a plan awaits a decision, `changed` tells approvers that a file no longer matches
  (a cheap stat first; the hash only when the stat differs), so they do not approve a plan
  whose data moved. The submitter refreshes the fingerprints by revising the plan.

A database source (a named source and table) has no bytes to hash and is not fingerprinted.
Hashing runs on the caller's thread: callers on an event loop hop to a thread first.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE_PARAMETERS = ("path",)  # the step parameters that name a data file
_CHUNK = 1024 * 1024


class Mismatch(Exception):
    """A data file is not the one that was fingerprinted; the message names it and both digests."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One data file of one step, as it was when the plan was submitted or revised."""

    parameter: str
    path: str  # as the plan gives it
    size_bytes: int
    sha256: str
    modified_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "modified_ns": self.modified_ns,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        return cls(
            str(data["parameter"]),
            str(data["path"]),
            int(data["size_bytes"]),
            str(data["sha256"]),
            int(data["modified_ns"]),
        )

    @property
    def modified_at(self) -> datetime:
        return datetime.fromtimestamp(self.modified_ns / 1e9, UTC)

    def describe(self) -> str:
        return f"sha256 {self.sha256}, {self.size_bytes} bytes"


Identity = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def identity(stat: os.stat_result) -> Identity:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def digest(file: Path) -> tuple[Identity, str]:
    """The file's identity and SHA-256, read through one open file; Mismatch if it changed
    while it was read (it is being written: the bytes hashed are no one state of it)."""
    with file.open("rb") as handle:
        before = identity(os.fstat(handle.fileno()))
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
        after = identity(os.fstat(handle.fileno()))
    if before != after:
        raise Mismatch(f"{file.name} changed while it was read: it is being written")
    return after, sha


def take(file: Path, parameter: str, given: str) -> Fingerprint:
    """Fingerprint the file `given` names (resolved to `file`)."""
    ident, sha = digest(file)
    return Fingerprint(parameter, given, ident[2], sha, ident[3])


def named_files(parameters: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(parameter, path as given) for every data file a step's parameters name."""
    for name in FILE_PARAMETERS:
        value = parameters.get(name)
        if isinstance(value, str) and value:
            yield name, value


def mismatch_text(given: str, expected: Fingerprint, size: int, sha: str) -> str:
    return (
        f"the data file {given} changed after the plan was approved: it now has sha256 {sha} ({size} bytes), "
        f"the approved plan has sha256 {expected.sha256} ({expected.size_bytes} bytes). Nothing was read from "
        "the changed file; submit the plan again (or have its submitter revise it) and have it approved"
    )


class Verifier:
    """Checks, before a step reads a file, that its bytes are the fingerprinted ones.

    A file is hashed once per identity: a later step (or chunk) that finds the same inode,
    size, modification and change times trusts the earlier hash; any write changes the change
    time and brings a new hash."""

    def __init__(self, size: int = 256) -> None:
        self._known: OrderedDict[tuple[str, Identity], str] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def check(self, file: Path, expected: Fingerprint) -> Identity:
        """The file's identity, once its bytes are known to match `expected`; Mismatch if not."""
        ident, known = self._digest(file, identity(file.stat()))
        if known != expected.sha256:
            raise Mismatch(mismatch_text(expected.path, expected, ident[2], known))
        return ident

    def _digest(self, file: Path, ident: Identity) -> tuple[Identity, str]:
        """The file's SHA-256, hashed again only when its identity is new."""
        with self._lock:
            known = self._known.get((str(file), ident))
        if known is not None:
            return ident, known
        ident, known = digest(file)
        with self._lock:
            self._known[(str(file), ident)] = known
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return ident, known

    @staticmethod
    def unchanged(file: Path, expected: Fingerprint, ident: Identity) -> None:
        """After the bytes were loaded: Mismatch if the file was touched since `check`."""
        if identity(file.stat()) != ident:
            raise Mismatch(
                f"the data file {expected.path} was written while the step read it; nothing was read from it: "
                "run the plan again once the file is settled"
            )

    def changed(self, file: Path | None, expected: Fingerprint) -> str:
        """For approvers: "" when the file still matches `expected`, else what changed."""
        if file is None:
            return "missing: the file is no longer readable under the server's data roots"
        try:
            stat = file.stat()
            if stat.st_size == expected.size_bytes and stat.st_mtime_ns == expected.modified_ns:
                return ""
            ident, known = self._digest(file, identity(stat))
        except (OSError, Mismatch) as exc:
            return f"unreadable: {exc.strerror if isinstance(exc, OSError) else exc}"
        if known == expected.sha256:
            return ""
        when = datetime.fromtimestamp(ident[3] / 1e9, UTC).isoformat(timespec="seconds")
        return f"changed since it was fingerprinted: now sha256 {known}, {ident[2]} bytes, modified {when}"


VERIFIER = Verifier()
