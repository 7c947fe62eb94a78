"""The authentication settings both servers share: flags (with `AUDITFLOW_<SERVICE>_*`
variables), the settings record, and the `Authenticator` they build."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from auditflow import config
from auditflow.auth import Authenticator, TrustedProxy
from auditflow.auth.oidc import ASYMMETRIC, DEFAULT_ALGORITHMS, JwksError, JwtSettings, JwtVerifier, KeySet, RoleMap
from auditflow.auth.tokens import TokenFile, TokenFileError
from auditflow.config import ConfigError


@dataclass(frozen=True)
class AuthSettings:
    """How callers authenticate. At least one way must be configured: a server never serves
    anonymous callers."""

    tokens_file: str = ""
    jwks_file: str = ""
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwt_principal_claim: str = "sub"
    jwt_roles_claim: str = "roles"
    jwt_leeway: float = 30.0
    role_map: tuple[tuple[str, str], ...] = ()
    proxy_user_header: str = ""
    proxy_groups_header: str = ""
    trusted_proxies: tuple[str, ...] = ()
    # Client certificate identities accepted as gateways (the processor, with mutual TLS).
    service_identities: tuple[str, ...] = ()


def add_flags(parser: argparse.ArgumentParser, service: str, *, proxy: bool) -> None:
    add = config.adder(parser, service)

    add(
        "--tokens-file",
        "TOML file of API token hashes (see `auditflow token create`); re-read when it changes",
        default="",
    )
    add("--jwks-file", "JWKS file of the keys that sign accepted JWTs (re-read when it changes)", default="")
    add("--jwks-url", "the issuer's JWKS URL (https; fetched again for an unknown key id)", default="")
    add("--jwt-issuer", "the 'iss' accepted JWTs must carry", default="")
    add("--jwt-audience", "the 'aud' accepted JWTs must carry", default="")
    add(
        "--jwt-algorithms",
        f"accepted JWT algorithms, among {', '.join(ASYMMETRIC)}",
        default=",".join(DEFAULT_ALGORITHMS),
    )
    add("--jwt-principal-claim", "JWT claim that names the principal (e.g. sub or email)", default="sub")
    add("--jwt-roles-claim", "JWT claim with roles or groups (a dotted path reaches nested claims)", default="roles")
    add("--jwt-leeway", "seconds of clock skew allowed for exp and nbf", default=30.0, type=config.non_negative_float)
    add(
        "--role-map",
        "claim values or proxy groups to roles, e.g. 'auditors=approver,staff=submitter'; role names map to themselves",
        default="",
    )
    if proxy:
        add(
            "--trusted-proxy-header",
            "header carrying the user name set by a trusted proxy, e.g. x-auditflow-user (off when empty)",
            default="",
        )
        add("--trusted-proxy-groups-header", "header carrying the user's groups (mapped by --role-map)", default="")
        add("--trusted-proxies", "comma-separated addresses or networks of the trusted proxies", default="")


def from_args(args: argparse.Namespace, *, service_identities: tuple[str, ...] = ()) -> AuthSettings:
    return AuthSettings(
        tokens_file=args.tokens_file,
        jwks_file=args.jwks_file,
        jwks_url=args.jwks_url,
        jwt_issuer=args.jwt_issuer,
        jwt_audience=args.jwt_audience,
        jwt_algorithms=config.csv(args.jwt_algorithms),
        jwt_principal_claim=args.jwt_principal_claim,
        jwt_roles_claim=args.jwt_roles_claim,
        jwt_leeway=args.jwt_leeway,
        role_map=_pairs(args.role_map, "--role-map"),
        proxy_user_header=getattr(args, "trusted_proxy_header", ""),
        proxy_groups_header=getattr(args, "trusted_proxy_groups_header", ""),
        trusted_proxies=config.csv(getattr(args, "trusted_proxies", "")),
        service_identities=service_identities,
    )


def _pairs(text: str, flag: str) -> tuple[tuple[str, str], ...]:
    try:
        return config.pairs(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def build(settings: AuthSettings) -> Authenticator:
    """The authenticator (no I/O: `load` reads its files). ConfigError says what is wrong."""
    try:
        role_map = RoleMap(dict(settings.role_map))
    except ValueError as exc:
        raise ConfigError(f"--role-map: {exc}") from None
    authenticator = Authenticator(
        tokens=TokenFile(Path(settings.tokens_file)) if settings.tokens_file else None,
        jwt=_jwt(settings, role_map),
        proxy=_proxy(settings),
        role_map=role_map,
        service_identities=frozenset(settings.service_identities),
    )
    if not authenticator.configured:
        raise ConfigError(
            "no way to authenticate callers is configured: give --tokens-file (make one with "
            "`auditflow token create`), or --jwks-file/--jwks-url with --jwt-issuer and --jwt-audience"
        )
    return authenticator


def load(authenticator: Authenticator) -> None:
    """Read the tokens file and the key set (blocking; before serving)."""
    try:
        if authenticator.tokens is not None:
            authenticator.tokens.load()
        if authenticator.jwt is not None:
            authenticator.jwt.keys.load()
    except (TokenFileError, JwksError) as exc:
        raise ConfigError(str(exc)) from None


def _jwt(settings: AuthSettings, role_map: RoleMap) -> JwtVerifier | None:
    if not (settings.jwks_file or settings.jwks_url):
        if settings.jwt_issuer or settings.jwt_audience:
            raise ConfigError("--jwt-issuer/--jwt-audience need --jwks-file or --jwks-url")
        return None
    if settings.jwks_file and settings.jwks_url:
        raise ConfigError("give --jwks-file or --jwks-url, not both")
    if not settings.jwt_issuer or not settings.jwt_audience:
        raise ConfigError("JWT verification needs --jwt-issuer and --jwt-audience")
    try:
        keys = KeySet(file=Path(settings.jwks_file) if settings.jwks_file else None, url=settings.jwks_url or None)
        jwt_settings = JwtSettings(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=settings.jwt_algorithms,
            principal_claim=settings.jwt_principal_claim,
            roles_claim=settings.jwt_roles_claim,
            leeway=settings.jwt_leeway,
        )
        return JwtVerifier(jwt_settings, keys, role_map)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _proxy(settings: AuthSettings) -> TrustedProxy | None:
    if not settings.proxy_user_header:
        if settings.trusted_proxies:
            raise ConfigError("--trusted-proxies needs --trusted-proxy-header")
        return None
    if not settings.trusted_proxies:
        raise ConfigError("--trusted-proxy-header needs --trusted-proxies: the addresses the header is believed from")
    try:
        networks = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"--trusted-proxies: {exc}") from None
    header = settings.proxy_user_header.strip().lower()
    groups = settings.proxy_groups_header.strip().lower()
    if header == "authorization" or groups == "authorization":
        raise ConfigError("the trusted proxy header cannot be 'authorization'")
    return TrustedProxy(header, networks, groups)
