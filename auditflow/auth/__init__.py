"""Who is calling, from what the caller presented: the one place that reads credentials.

Both adapters (the gRPC interceptor and the REST gateway) collect what a call carries into a
`Presented` and ask `Authenticator.authenticate` for the principal. Accepted, in this order:

1. a verified client certificate whose identity is a configured service identity (mutual
   TLS; the processor accepts its gateways this way);
2. `authorization: Bearer <token>`: a static API token from the tokens file, else an OIDC
   JWT verified against the JWKS;
3. the trusted proxy header (e.g. set by oauth2-proxy), only when configured and only from
   the configured proxy addresses.

Anything else is UNAUTHENTICATED, with a message that says what to send. A user header from
anywhere else is never believed. No credential is ever logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from auditflow.auth.oidc import JwtVerifier, KeySet, RoleMap
from auditflow.auth.tokens import TokenFile
from auditflow.background import Background
from auditflow.errors import InvalidToken, Unauthenticated
from auditflow.principal import GATEWAY, Principal, check_name

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
RELOAD_INTERVAL = 2.0  # seconds between looks at the tokens and JWKS files
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Presented:
    """What a call carried that may prove who sent it."""

    authorization: str | None = None
    proxy_user: str | None = None
    proxy_groups: str | None = None
    # The address the connection came from (an IP address, or None for a Unix socket).
    peer: str | None = None
    # Identities of a client certificate the TLS handshake verified (SAN entries, CN).
    tls_identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustedProxy:
    """A user (and groups) header set by a proxy that authenticated the user itself."""

    user_header: str
    networks: tuple[Network, ...]
    groups_header: str = ""

    def trusts(self, peer: str | None) -> bool:
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


@dataclass
class Authenticator:
    """Authenticates calls; `start()` begins watching the tokens and JWKS files for changes."""

    tokens: TokenFile | None = None
    jwt: JwtVerifier | None = None
    proxy: TrustedProxy | None = None
    role_map: RoleMap = field(default_factory=lambda: RoleMap({}))
    # Client certificate identities accepted as gateways (mutual TLS).
    service_identities: frozenset[str] = frozenset()
    _watcher: Background = field(default_factory=lambda: Background("credentials-reload"), init=False, repr=False)

    @property
    def configured(self) -> bool:
        return any(x is not None for x in (self.tokens, self.jwt, self.proxy)) or bool(self.service_identities)

    def methods(self) -> list[str]:
        """What this authenticator accepts, for the start-up log line (no secrets)."""
        found = []
        if self.service_identities:
            found.append(f"client certificates of {', '.join(sorted(self.service_identities))}")
        if self.tokens is not None:
            found.append(f"API tokens from {self.tokens.path} ({len(self.tokens)})")
        if self.jwt is not None:
            found.append(f"JWTs of {self.jwt.settings.issuer} (keys from {self.jwt.keys.source})")
        if self.proxy is not None:
            found.append(f"the {self.proxy.user_header} header from {', '.join(map(str, self.proxy.networks))}")
        return found

    @property
    def generation(self) -> tuple[int, int]:
        """Changes whenever the tokens or the JWT keys are loaded again: a credential accepted
        before may have been revoked since."""
        return (
            self.tokens.generation if self.tokens is not None else 0,
            self.jwt.keys.generation if self.jwt is not None else 0,
        )

    def header_names(self) -> tuple[str, ...]:
        """The (lower-case) headers `presented` reads."""
        names = [AUTHORIZATION]
        if self.proxy is not None:
            names += [self.proxy.user_header] + ([self.proxy.groups_header] if self.proxy.groups_header else [])
        return tuple(names)

    def presented(
        self, headers: Iterable[tuple[str, str | bytes]], peer: str | None, tls_identities: tuple[str, ...] = ()
    ) -> Presented:
        """Collect what a call carries (`headers`: gRPC metadata or HTTP headers)."""
        found: dict[str, str] = {}
        wanted = self.header_names()
        for key, value in headers:
            name = key.lower()
            if name in wanted and name not in found:
                found[name] = value.decode("latin-1") if isinstance(value, bytes) else value
        proxy = self.proxy
        return Presented(
            authorization=found.get(AUTHORIZATION),
            proxy_user=found.get(proxy.user_header) if proxy else None,
            proxy_groups=found.get(proxy.groups_header) if proxy and proxy.groups_header else None,
            peer=peer,
            tls_identities=tls_identities,
        )

    async def authenticate(self, presented: Presented) -> Principal:
        for identity in presented.tls_identities:
            if identity in self.service_identities:
                return Principal(identity, frozenset({GATEWAY}), via=f"mtls:{identity}")
        if presented.authorization is not None:
            return await self._bearer(presented.authorization)
        if presented.proxy_user is not None and self.proxy is not None:
            return self._proxied(presented)
        raise Unauthenticated()

    async def _bearer(self, authorization: str) -> Principal:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("the authorization header must be 'Bearer <token>'")
        if "." in token:  # a JWT (three dot-separated parts); API tokens never hold a dot
            if self.jwt is not None:
                return await self.jwt.verify(token)
        elif self.tokens is not None:
            principal = self.tokens.lookup(token)
            if principal is not None:
                return principal
        raise InvalidToken("the bearer token is not valid here")

    def _proxied(self, presented: Presented) -> Principal:
        assert self.proxy is not None and presented.proxy_user is not None
        if not self.proxy.trusts(presented.peer):
            raise Unauthenticated(
                f"the {self.proxy.user_header} header is accepted only from a trusted proxy; send a bearer token"
            )
        name = presented.proxy_user.strip()
        problem = check_name(name)
        if problem:
            raise InvalidToken(f"the {self.proxy.user_header} header {problem}")
        groups = (presented.proxy_groups or "").replace(",", " ").split()
        return Principal(name, self.role_map.roles(groups), via=f"proxy:{presented.peer}")

    # --- reloading ------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the tokens and JWKS files again if they changed (blocking; SIGHUP does this)."""
        if self.tokens is not None:
            self.tokens.reload_if_changed()
        if self.jwt is not None:
            self.jwt.keys.reload_if_changed()

    async def start(self) -> None:
        if self.tokens is not None or self.jwt is not None:
            self._watcher.start(self._watch)

    async def stop(self) -> None:
        await self._watcher.stop()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                await asyncio.to_thread(self.reload)
            except Exception:
                logger.exception("reloading credentials failed")


__all__ = ["Authenticator", "KeySet", "Presented", "TrustedProxy"]
