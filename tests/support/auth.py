"""Credentials for tests, made once per test process in a temporary directory.

- A test identity provider: an EC P-256 key whose public half is a JWKS file the servers
  verify against; `jwt_for(name, roles)` mints a real signed JWT for anyone.
- The gateway's service token for the processor (a tokens file with its hash, role gateway).
- Data roots that cover the packaged samples and the temporary directory tests write to.

Every credential made here is remembered in `MINTED`, so that the log check
(tests/conftest.py) can prove that none reached a log.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from auditflow import sources
from auditflow.auth.client import bearer_interceptors
from auditflow.auth.settings import AuthSettings
from auditflow.auth.tokens import append_entry

ISSUER = "https://idp.test.auditflow.dev"
AUDIENCE = "auditflow"
KID = "test-key-1"
DEFAULT_ROLES = ("submitter", "approver")

DIR = Path(tempfile.mkdtemp(prefix="auditflow-test-auth-"))
atexit.register(shutil.rmtree, DIR, ignore_errors=True)

KEY = ec.generate_private_key(ec.SECP256R1())
JWKS_FILE = DIR / "jwks.json"
_public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
JWKS_FILE.write_text(json.dumps({"keys": [{**_public, "kid": KID, "alg": "ES256", "use": "sig"}]}))

MINTED: set[str] = set()

PROCESSOR_TOKENS = DIR / "processor-tokens.toml"
GATEWAY_TOKEN = append_entry(PROCESSOR_TOKENS, "gateway", "auditflow-gateway", ["gateway"])
MINTED.add(GATEWAY_TOKEN)
GATEWAY_TOKEN_FILE = DIR / "gateway-to-processor.token"
GATEWAY_TOKEN_FILE.write_text(GATEWAY_TOKEN + "\n")

_cache: dict[tuple[str, tuple[str, ...]], str] = {}


def sign(
    claims: dict[str, Any], *, key: Any = KEY, algorithm: str = "ES256", headers: dict[str, Any] | None = None
) -> str:
    """A JWT of these exact claims (for tests of what the servers refuse)."""
    token = jwt.encode(claims, key, algorithm=algorithm, headers={"kid": KID, **(headers or {})})
    MINTED.add(token)
    return token


def claims_for(name: str, roles: tuple[str, ...] = DEFAULT_ROLES, lifetime: float = 3600) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": name, "roles": list(roles), "iat": now, "exp": now + int(lifetime)}


def jwt_for(name: str, roles: tuple[str, ...] = DEFAULT_ROLES) -> str:
    """A valid JWT (an hour) for `name` with `roles`, minted once per process."""
    key = (name, tuple(roles))
    if key not in _cache:
        _cache[key] = sign(claims_for(name, tuple(roles)))
    return _cache[key]


def bearer(name: str, roles: tuple[str, ...] = DEFAULT_ROLES) -> tuple[tuple[str, str]]:
    """gRPC metadata authenticating as `name`."""
    return (("authorization", f"Bearer {jwt_for(name, roles)}"),)


def headers(name: str, roles: tuple[str, ...] = DEFAULT_ROLES) -> dict[str, str]:
    """HTTP headers authenticating as `name`."""
    return {"Authorization": f"Bearer {jwt_for(name, roles)}"}


def gateway_auth(**overrides: Any) -> AuthSettings:
    """The gateway accepts the test identity provider's JWTs."""
    return AuthSettings(**{"jwks_file": str(JWKS_FILE), "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, **overrides})


def processor_auth() -> AuthSettings:
    """The processor accepts the gateway's service token."""
    return AuthSettings(tokens_file=str(PROCESSOR_TOKENS))


DATA = sources.DataSettings(roots=(str(sources.samples_dir()), tempfile.gettempdir()))


def gateway_settings() -> dict[str, Any]:
    """Keyword arguments of gateway.settings.Settings for a test gateway."""
    return {"auth": gateway_auth(), "processor_token_file": str(GATEWAY_TOKEN_FILE), "data": DATA}


def processor_settings() -> dict[str, Any]:
    """Keyword arguments of processor.settings.Settings for a test processor."""
    return {"auth": processor_auth(), "data": DATA}


def gateway_link() -> list[Any]:
    """Client interceptors that present the gateway's service token (to call a processor)."""
    return bearer_interceptors(GATEWAY_TOKEN)


def data_args() -> list[str]:
    return ["--data-root", ",".join(DATA.roots)]


# A test gateway serves a whole test's load as one or two identities, so its subprocesses
# run without per-principal limits (a gateway built in code has none either); the limits' own
# tests and bench/fairness.py set them.
NO_PRINCIPAL_LIMITS = (
    "--write-rate",
    "off",
    "--read-rate",
    "off",
    "--watch-rate",
    "off",
    "--max-streams-per-principal",
    "0",
    "--max-pending-plans",
    "0",
)


def gateway_args(principal_limits: bool = False) -> list[str]:
    """Command-line flags of a test gateway subprocess (`principal_limits`: the defaults)."""
    return [
        "--jwks-file",
        str(JWKS_FILE),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--processor-token-file",
        str(GATEWAY_TOKEN_FILE),
        *data_args(),
        *(() if principal_limits else NO_PRINCIPAL_LIMITS),
    ]


def processor_args() -> list[str]:
    """Command-line flags of a test processor subprocess."""
    return ["--tokens-file", str(PROCESSOR_TOKENS), *data_args()]


def _default_only(interceptor: Any) -> Any:
    """Make a bearer interceptor skip calls that carry credentials of their own."""
    add = interceptor._details

    def details(call: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if any(key == "authorization" for key, _ in call.metadata or ()):
            return call
        return add(call)

    interceptor._details = details
    return interceptor


def channel(address: str) -> grpc.aio.Channel:
    """A channel to a test gateway whose calls without credentials of their own are a viewer's
    (tests read state without credentials in every call)."""
    interceptors = [_default_only(i) for i in bearer_interceptors(jwt_for("observer", ("viewer",)))]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
