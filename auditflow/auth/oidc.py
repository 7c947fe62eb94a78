"""OIDC bearer JWTs, verified with PyJWT against a JWKS (a file, or an issuer's URL).

What is checked, and why:
- the signature, with a key of the JWKS chosen by the token's `kid`; keys of type `oct`
  (shared secrets) are never loaded, and PyJWT binds each JWK to one algorithm, so a token
  cannot have a public key used as an HMAC secret (the HS/RS confusion);
- the algorithm against a fixed allow-list of asymmetric algorithms (never `none`, never HS*);
- `iss` and `aud` equal to the configured ones, `exp` required, `exp`/`nbf` with a small leeway;
- the principal claim (default `sub`) is a usable name; roles come from a claim (a list, or a
  space- or comma-separated string; a dotted path reaches nested claims such as
  `realm_access.roles`) through the role map.

A verified token is cached until it expires, so Approve pays for a signature check once per
token, not per call. From a URL the key set is fetched off the event loop: at start-up, when
a token names a `kid` we do not know (at most once per `min_refresh` seconds, so random kids
cannot make us hammer the issuer), and in the background when it is older than `max_age`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from auditflow.errors import InvalidToken
from auditflow.principal import ROLES, Principal, check_name
from auditflow.tls import is_loopback

logger = logging.getLogger(__name__)

ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MAX_JWKS_BYTES = 1024 * 1024
CACHE_SIZE = 10_000


class JwksError(ValueError):
    """The key set cannot be used; the message names its source and the problem."""


class RoleMap:
    """Claim values (roles or groups) to auditflow roles: a role's own name maps to itself,
    other values through the configured mapping, unknown values to nothing."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        bad = sorted(role for role in mapping.values() if role not in ROLES)
        if bad:
            raise ValueError(f"unknown roles in the role map: {', '.join(bad)} (known: {', '.join(ROLES)})")
        self._mapping = dict(mapping)

    def roles(self, values: Iterable[str]) -> frozenset[str]:
        found = set()
        for value in values:
            role = value if value in ROLES else self._mapping.get(value)
            if role is not None:
                found.add(role)
        return frozenset(found)


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """The strings of a (dotted) claim: a list, or one string split on spaces and commas."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return []
        value = value.get(part)
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class KeySet:
    """The JWKS: keys by kid, from a file or a URL (https, or http on loopback only)."""

    def __init__(
        self, *, file: Path | None = None, url: str | None = None, min_refresh: float = 30.0, max_age: float = 3600.0
    ) -> None:
        if (file is None) == (url is None):
            raise ValueError("a key set comes from a file or from a URL")
        plain_loopback = (
            url is not None and url.startswith("http://") and is_loopback(urllib.parse.urlsplit(url).hostname or "")
        )
        if url is not None and not url.startswith("https://") and not plain_loopback:
            raise JwksError(f"the JWKS URL must use https (http only on loopback): {url}")
        self.source = str(file or url)
        self._file = file
        self._url = url
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._loaded_at = 0.0
        self._stamp: tuple[int, int] | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.generation = 0  # counts the loads: a key may have been removed since a token verified

    def load(self) -> None:
        """Read the key set (blocking); JwksError if it cannot be used."""
        text = self._read()
        try:
            data = json.loads(text)
            keys = data["keys"] if isinstance(data, dict) else None
            if not isinstance(keys, list):
                raise ValueError("no 'keys' list")
        except (ValueError, KeyError) as exc:
            raise JwksError(f"{self.source}: not a JWKS document: {exc}") from None
        found: dict[str | None, jwt.PyJWK] = {}
        for item in keys:
            if not isinstance(item, dict) or item.get("kty") == "oct" or item.get("use", "sig") != "sig":
                continue  # shared secrets and encryption keys never verify a token here
            try:
                key = jwt.PyJWK(item)
            except jwt.PyJWTError as exc:
                logger.warning("%s: skipping key %s: %s", self.source, item.get("kid"), exc)
                continue
            found[item.get("kid")] = key
        if not found:
            raise JwksError(f"{self.source}: no usable signing key")
        self._keys = found
        self.generation += 1
        self._loaded_at = time.monotonic()

    def _read(self) -> str:
        if self._file is not None:
            try:
                stat = self._file.stat()
                text = self._file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise JwksError(f"cannot read the JWKS file {self._file}: {exc}") from None
            self._stamp = (stat.st_mtime_ns, stat.st_size)
            return text
        assert self._url is not None
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body: bytes = response.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise JwksError(f"cannot fetch the JWKS from {self._url}: {exc}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError(f"{self._url}: the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return body.decode("utf-8", "replace")

    def reload_if_changed(self) -> None:
        """From a file: read it again if it changed (blocking). A broken file keeps the old keys."""
        if self._file is None:
            return
        try:
            stat = self._file.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                self.load()
                logger.info("reloaded the JWKS file %s", self._file)
        except (OSError, JwksError) as exc:
            logger.error("%s; keeping the keys loaded before", exc)

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def refresh_if_old(self) -> None:
        """From a URL: fetch the set again in the background once it is older than its maximum
        age, so that a key the issuer removed stops verifying within that time."""
        if self._url is not None and time.monotonic() - self._loaded_at > self._max_age:
            self._refresh_in_background()

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for `kid`; from a URL, an unknown kid refreshes the set (rate-limited)."""
        self.refresh_if_old()
        found = self._find(kid)
        if found is not None or self._url is None:
            return found
        async with self._lock:  # one fetch at a time; the others find its keys
            if self._find(kid) is None and time.monotonic() - self._loaded_at >= self._min_refresh:
                await self._refresh()
        return self._find(kid)

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except JwksError as exc:
            logger.warning("%s; keeping the keys loaded before", exc)
            self._loaded_at = time.monotonic()  # (rate-limits retries too)

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._refresh(), name="jwks-refresh")


@dataclass(frozen=True)
class JwtSettings:
    issuer: str
    audience: str
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    principal_claim: str = "sub"
    roles_claim: str = "roles"
    leeway: float = 30.0


class JwtVerifier:
    """Verifies bearer JWTs; a verified token is cached until it expires."""

    def __init__(self, settings: JwtSettings, keys: KeySet, role_map: RoleMap) -> None:
        bad = [a for a in settings.algorithms if a not in ASYMMETRIC]
        if bad or not settings.algorithms:
            raise ValueError(f"JWT algorithms must be among {', '.join(ASYMMETRIC)} (got {', '.join(bad) or 'none'})")
        if not settings.issuer or not settings.audience:
            raise ValueError("JWT verification needs an issuer and an audience")
        self.settings = settings
        self.keys = keys
        self._role_map = role_map
        # token -> (principal, expiry, the key set's generation it was verified against)
        self._cache: dict[str, tuple[Principal, float, int]] = {}
        self._via = f"jwt:{settings.issuer}"

    async def verify(self, token: str) -> Principal:
        self.keys.refresh_if_old()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.time() and cached[2] == self.keys.generation:
            return cached[0]  # (a new key set verifies again: its key may be gone)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is neither a known API token nor a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise InvalidToken(f"tokens signed with {algorithm!r} are not accepted")
        key = await self.keys.key(header.get("kid"))
        if key is None:
            raise InvalidToken("the token is signed by a key this server does not know")
        claims = self._decode(token, key)
        principal = self._principal(claims)
        self._remember(token, principal, float(claims["exp"]))
        return principal

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        s = self.settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(s.algorithms),
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token comes from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.exceptions.InvalidSubjectError:
            raise InvalidToken("the token's 'sub' claim is not a string") from None
        except jwt.PyJWTError:
            raise InvalidToken("the token's signature or claims are not valid") from None
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        claim = self.settings.principal_claim
        name = claims.get(claim)
        problem = check_name(name) if isinstance(name, str) else "is missing"
        if problem:
            raise InvalidToken(f"the token's {claim!r} claim {problem}")
        assert isinstance(name, str)
        roles = self._role_map.roles(claim_values(claims, self.settings.roles_claim))
        return Principal(name, roles, via=self._via)

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        if len(self._cache) >= CACHE_SIZE:
            now = time.time()
            self._cache = {t: v for t, v in self._cache.items() if v[1] > now}
            while len(self._cache) >= CACHE_SIZE:  # all still valid: forget the oldest
                del self._cache[next(iter(self._cache))]
        self._cache[token] = (principal, expires, self.keys.generation)
