"""Who is calling: the authenticated principal of the call being handled.

Set once per call by the adapter that authenticated it (the gRPC interceptor,
`auditflow.interceptor`, or the REST gateway), from `auditflow.auth`; read by handlers.
Nothing else reads credentials.

A principal's `name` is what the trail records; `key` is the form names are compared in
(separation of duties, "cancel your own"), so that `Alice`, `alice` and the same letters in
full width are one person however a client spells them.
"""

from __future__ import annotations

import contextvars
import unicodedata
from dataclasses import dataclass, field

from confusable_homoglyphs import categories

from auditflow.errors import Unauthenticated

# The roles of people, each including the rights of the ones before it.
VIEWER = "viewer"
SUBMITTER = "submitter"
APPROVER = "approver"
ADMIN = "admin"
HUMAN_ROLES = (VIEWER, SUBMITTER, APPROVER, ADMIN)
# The role of a gateway calling a processor: a service, not a person; no human role implies it.
GATEWAY = "gateway"
ROLES = (*HUMAN_ROLES, GATEWAY)
MAX_NAME = 256


def name_key(name: str) -> str:
    """The form in which two principal names are compared: NFKC, case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_name(name: str) -> str | None:
    """Why `name` cannot be a principal name, or None if it can."""
    if not name or len(name) > MAX_NAME:
        return f"must be 1 to {MAX_NAME} characters"
    if name != name.strip() or not name.isprintable():
        return "must be printable, without leading or trailing spaces"
    scripts = scripts_of(name)
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in SCRIPT_MIXES):
        return f"mixes the scripts {', '.join(sorted(scripts))} (a name is written in one script)"
    return None


# Scripts one name may mix: those of Unicode's "highly restrictive" level (UTS #39), where
# the scripts are written together. Anything else mixed (a Cyrillic a, U+0430, in "alice") is
# how one person would pass for another, or for two, in an N-of-M approval.
SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
_SHARED = frozenset({"COMMON", "INHERITED"})  # digits, punctuation, combining marks


def scripts_of(name: str) -> frozenset[str]:
    """The scripts of a name's letters after NFKC (full-width Latin is Latin)."""
    found = {categories.aliases_categories(c)[0] for c in unicodedata.normalize("NFKC", name)}
    return frozenset(found - _SHARED)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name, its roles, and how it authenticated (`via`, e.g.
    "token:ci-bot", "jwt:https://idp.example", "proxy:10.0.0.5", "mtls:auditflow-gateway")."""

    name: str
    roles: frozenset[str]
    via: str
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", name_key(self.name))

    def has(self, role: str) -> bool:
        """True if the principal holds `role` or a human role that includes it."""
        if role in self.roles:
            return True
        if role not in HUMAN_ROLES:
            return False
        needed = HUMAN_ROLES.index(role)
        return any(r in HUMAN_ROLES and HUMAN_ROLES.index(r) >= needed for r in self.roles)

    def is_(self, other_name: str) -> bool:
        """True if `other_name` names this principal (compared by `key`)."""
        return name_key(other_name) == self.key


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("auditflow_principal", default=None)


def current() -> Principal:
    """The principal of the call being handled."""
    principal = _current.get()
    if principal is None:  # pragma: no cover - every adapter sets one before a handler runs
        raise Unauthenticated()
    return principal


def current_or_none() -> Principal | None:
    """The principal of the call being handled, or None in the service's own tasks."""
    return _current.get()


def set_current(principal: Principal) -> None:
    _current.set(principal)
