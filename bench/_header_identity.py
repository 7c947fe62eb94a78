"""`python -m bench._header_identity [gateway flags]`: the gateway with authentication replaced
by what it did before there was any: believe the user name in an `x-auditflow-user` header.

Only the authentication benchmark (bench/approve.py) starts it, as the baseline that tokens
and JWTs are compared against in the same run. It is not, and must never be, a way to run
auditflow: anyone can type that header.
"""

from __future__ import annotations

from collections.abc import Iterable

from auditflow import auth
from auditflow.principal import ADMIN, Principal
from gateway.server import main

HEADER = "x-auditflow-user"


def _presented(
    self: auth.Authenticator, headers: Iterable[tuple[str, str | bytes]], peer: str | None, tls: tuple[str, ...] = ()
) -> auth.Presented:
    for key, value in headers:
        if key == HEADER:
            return auth.Presented(proxy_user=value.decode() if isinstance(value, bytes) else value)
    return auth.Presented()


async def _authenticate(self: auth.Authenticator, presented: auth.Presented) -> Principal:
    return Principal(presented.proxy_user or "anonymous", frozenset({ADMIN}), via="header")


auth.Authenticator.presented = _presented  # type: ignore[method-assign]
auth.Authenticator.authenticate = _authenticate  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
