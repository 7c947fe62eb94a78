"""Who is calling. Set once per call by `auditflow.interceptor`; read by handlers.

Nothing else reads call metadata: authentication and roles plug in here later.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable
from dataclasses import dataclass

from auditflow.errors import Unauthenticated

USER_METADATA_KEY = "x-auditflow-user"
_USER_PATTERN = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("auditflow_principal", default=None)


def current() -> Principal:
    """The principal of the call being handled."""
    principal = _current.get()
    if principal is None:  # pragma: no cover - the interceptor always sets one
        raise Unauthenticated()
    return principal


def set_current(principal: Principal) -> None:
    _current.set(principal)


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None, default_user: str) -> Principal:
    """Read the user name from call metadata, falling back to the configured default."""
    for key, value in metadata or ():
        if key == USER_METADATA_KEY:
            name = value.decode() if isinstance(value, bytes) else value
            if not _USER_PATTERN.match(name):
                raise Unauthenticated(f"invalid user name in {USER_METADATA_KEY!r} metadata")
            return Principal(name)
    return Principal(default_user)
