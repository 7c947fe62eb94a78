"""Authentication as plain objects: the tokens file, JWT verification against a JWKS (every
attack refused), the trusted proxy rule, principals and the order the authenticator tries."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auditflow.auth import Authenticator, Presented, TrustedProxy
from auditflow.auth import settings as auth_settings
from auditflow.auth.oidc import JwksError, JwtSettings, JwtVerifier, KeySet, RoleMap, claim_values
from auditflow.auth.tokens import TokenFile, TokenFileError, append_entry, parse
from auditflow.config import ConfigError
from auditflow.errors import InvalidToken, Unauthenticated
from auditflow.principal import Principal, check_name, name_key
from tests.support import auth

# --- principals ---------------------------------------------------------------------------


def test_roles_include_the_ones_before_them_but_never_the_service_role() -> None:
    approver = Principal("alice", frozenset({"approver"}), via="token:a")
    assert approver.has("viewer") and approver.has("submitter") and approver.has("approver")
    assert not approver.has("admin") and not approver.has("gateway")
    admin = Principal("root", frozenset({"admin"}), via="token:r")
    assert admin.has("approver") and not admin.has("gateway")
    gateway = Principal("gw", frozenset({"gateway"}), via="mtls:gw")
    assert gateway.has("gateway") and not gateway.has("viewer")


def test_names_compare_however_they_are_cased_or_spelled_in_width() -> None:
    alice = Principal("Alice", frozenset(), via="jwt:x")
    assert alice.is_("alice") and alice.is_("ALICE") and alice.is_("\uff21lice")  # a full-width A
    assert not alice.is_("alice2")
    assert name_key("Straße") == name_key("STRASSE")


SERVICE_UID = 10001  # the image's user

# --- the tokens file ----------------------------------------------------------------------


def test_a_token_file_keeps_hashes_only_and_finds_the_principal(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    token = append_entry(path, "ci-bot", "ci-bot", ["submitter"])
    text = path.read_text()
    assert token not in text and token.startswith("aft_")
    assert path.stat().st_mode & 0o077 == 0
    tokens = TokenFile(path)
    tokens.load()
    found = tokens.lookup(token)
    assert found == Principal("ci-bot", frozenset({"submitter"}), via="token:ci-bot")
    assert tokens.lookup(token + "x") is None and tokens.lookup("") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user takes root")
def test_adding_a_token_keeps_the_files_owner_and_mode(tmp_path: Path) -> None:
    """An operator (root) adds a token to a file handed to the services' user: it stays theirs
    and private, so they can still read it, and nobody else can."""
    path = tmp_path / "tokens.toml"
    append_entry(path, "one", "one", ["viewer"])
    os.chown(path, SERVICE_UID, SERVICE_UID)
    os.chmod(path, 0o640)
    before = path.stat().st_ino
    append_entry(path, "two", "two", ["viewer"])
    after = path.stat()
    assert (after.st_uid, after.st_gid, after.st_mode & 0o777) == (SERVICE_UID, SERVICE_UID, 0o640)
    assert after.st_ino != before  # replaced whole by a rename: never half written
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.toml"]  # no temporary left


def test_a_token_file_is_reloaded_when_it_changes_and_a_broken_one_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    first = append_entry(path, "one", "one", ["viewer"])
    tokens = TokenFile(path)
    tokens.load()
    assert not tokens.reload_if_changed()  # unchanged
    second = append_entry(path, "two", "two", ["viewer"])
    assert tokens.reload_if_changed()
    assert tokens.lookup(second) is not None and tokens.lookup(first) is not None
    path.write_text("this is [not toml")
    assert not tokens.reload_if_changed()
    assert tokens.lookup(second) is not None  # kept


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[token]]\nid='a'\nprincipal='a'\nroles=['viewer']\nsha256='xyz'\n", "sha256"),
        ("[[token]]\nid='a b'\nprincipal='a'\nroles=['viewer']\nsha256='" + "0" * 64 + "'\n", "id must be"),
        ("[[token]]\nid='a'\nprincipal='a'\nroles=['root']\nsha256='" + "0" * 64 + "'\n", "roles must be"),
        ("[[token]]\nid='a'\nprincipal=''\nroles=['viewer']\nsha256='" + "0" * 64 + "'\n", "principal"),
        ("[[token]]\nid='a'\nprincipal='a'\nroles=['viewer']\nsha256='" + "0" * 64 + "'\nextra=1\n", "unknown keys"),
        ("token = 3\n", r"expected \[\[token\]\]"),
    ],
)
def test_a_broken_tokens_file_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(TokenFileError, match=problem):
        parse(text, "tokens.toml")


def test_duplicate_ids_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    append_entry(path, "same", "a", ["viewer"])
    before = path.read_text()
    with pytest.raises(TokenFileError, match="appears twice"):
        append_entry(path, "same", "b", ["viewer"])
    assert path.read_text() == before


# --- JWTs ---------------------------------------------------------------------------------


def verifier(**overrides: Any) -> JwtVerifier:
    settings = JwtSettings(issuer=auth.ISSUER, audience=auth.AUDIENCE, **overrides)
    keys = KeySet(file=auth.JWKS_FILE)
    keys.load()
    return JwtVerifier(settings, keys, RoleMap({"auditors": "approver"}))


def verify(token: str, **overrides: Any) -> Principal:
    return asyncio.run(verifier(**overrides).verify(token))


def refused(token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify(token)
    return caught.value.message


def test_a_valid_token_gives_its_subject_and_mapped_roles() -> None:
    claims = {**auth.claims_for("dana"), "roles": ["auditors", "viewer", "unknown-group"]}
    principal = verify(auth.sign(claims))
    assert principal == Principal("dana", frozenset({"approver", "viewer"}), via=f"jwt:{auth.ISSUER}")


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_every_forgery_and_misuse_is_refused() -> None:
    now = int(time.time())
    valid = auth.claims_for("mallory")
    assert "expired" in refused(auth.sign({**valid, "exp": now - 120}))
    assert "not valid yet" in refused(auth.sign({**valid, "nbf": now + 600}))
    assert "another issuer" in refused(auth.sign({**valid, "iss": "https://evil.example"}))
    assert "another audience" in refused(auth.sign({**valid, "aud": "someone-else"}))
    no_exp = {k: v for k, v in valid.items() if k != "exp"}
    assert "'exp'" in refused(auth.sign(no_exp))
    # alg none: no signature at all
    unsigned = f"{_segment({'alg': 'none', 'typ': 'JWT', 'kid': auth.KID})}.{_segment(valid)}."
    assert "'none'" in refused(unsigned)
    # HS256 "signed" with the public key as the HMAC secret (the RS/HS confusion)
    public_pem = auth.KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _segment({"alg": "HS256", "typ": "JWT", "kid": auth.KID})
    import hashlib
    import hmac as hmac_module

    signing_input = f"{header}.{_segment(valid)}".encode()
    mac = hmac_module.new(public_pem, signing_input, hashlib.sha256).digest()
    confused = signing_input.decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert "'HS256'" in refused(confused)
    # signed by a key we do not know, under a kid we do not know, and under our kid
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert "does not know" in refused(auth.sign(valid, key=stranger, headers={"kid": "other"}))
    assert "signature" in refused(auth.sign(valid, key=stranger))
    # a valid token whose payload was edited
    head, _payload, signature = auth.sign(valid).split(".")
    tampered = f"{head}.{_segment({**valid, 'sub': 'admin', 'roles': ['admin']})}.{signature}"
    assert "signature" in refused(tampered)
    assert "well-formed" in refused("not.a.jwt")


def test_an_rs256_token_with_our_kid_cannot_pass_for_the_es256_key() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = auth.sign(auth.claims_for("mallory"), key=rsa_key, algorithm="RS256")
    assert "RS256" in refused(token) or "signature" in refused(token)


def test_the_principal_claim_must_be_a_usable_name() -> None:
    assert "'sub' claim" in refused(auth.sign({**auth.claims_for("x"), "sub": ""}))
    assert "'sub' claim" in refused(auth.sign({**auth.claims_for("x"), "sub": 42}))
    email = auth.sign({**auth.claims_for("x"), "email": "X@Example.com"})
    assert verify(email, principal_claim="email").name == "X@Example.com"


def test_roles_come_from_lists_strings_and_nested_claims() -> None:
    assert claim_values({"roles": "viewer, approver"}, "roles") == ["viewer", "approver"]
    assert claim_values({"realm_access": {"roles": ["admin"]}}, "realm_access.roles") == ["admin"]
    assert claim_values({"roles": 3}, "roles") == [] and claim_values({}, "a.b") == []


def test_a_verified_token_is_cached_until_it_expires() -> None:
    check = verifier()
    token = auth.sign({**auth.claims_for("cached"), "exp": int(time.time()) + 5})
    first = asyncio.run(check.verify(token))
    check.keys._keys = {}  # no key any more: only the cache can answer now
    assert asyncio.run(check.verify(token)) == first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and token in check._cache and check._cache[token][1] > time.time():
        time.sleep(0.05)
    with pytest.raises(InvalidToken):
        asyncio.run(check.verify(token))


def test_only_asymmetric_algorithms_can_be_configured() -> None:
    with pytest.raises(ValueError, match="HS256"):
        verifier(algorithms=("HS256",))
    with pytest.raises(ValueError):
        verifier(algorithms=("none",))


def test_a_jwks_keeps_no_shared_secret(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    with pytest.raises(JwksError, match="no usable signing key"):
        KeySet(file=path).load()


class _JwksServer:
    """A JWKS endpoint on loopback that counts its fetches and serves what it is given."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = json.loads(auth.JWKS_FILE.read_text())
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer()
    yield server
    server.server.shutdown()


def test_a_jwks_url_is_fetched_again_for_an_unknown_kid_at_a_bounded_rate(jwks_server: _JwksServer) -> None:
    async def scenario() -> None:
        keys = KeySet(url=jwks_server.url, min_refresh=0.5)
        await asyncio.to_thread(keys.load)
        check = JwtVerifier(JwtSettings(issuer=auth.ISSUER, audience=auth.AUDIENCE), keys, RoleMap({}))
        rotated = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(rotated.public_key()))
        jwks_server.document["keys"].append({**public, "kid": "rotated", "alg": "ES256"})
        await asyncio.sleep(0.6)  # past min_refresh since the start-up fetch
        token = auth.sign(auth.claims_for("eve"), key=rotated, headers={"kid": "rotated"})
        assert (await check.verify(token)).name == "eve"
        assert jwks_server.fetches == 2
        for kid in ("random-1", "random-2", "random-3"):  # random kids cannot make us hammer the issuer
            with pytest.raises(InvalidToken):
                await check.verify(auth.sign(auth.claims_for("x"), key=rotated, headers={"kid": kid}))
        assert jwks_server.fetches <= 3

    asyncio.run(scenario())


def test_a_jwks_url_must_be_https_off_loopback() -> None:
    with pytest.raises(JwksError, match="https"):
        KeySet(url="http://idp.example/jwks.json")


# --- the authenticator -------------------------------------------------------------------


def authenticator(tmp_path: Path, **overrides: Any) -> tuple[Authenticator, dict[str, str]]:
    tokens_file = tmp_path / "tokens.toml"
    tokens = {name: append_entry(tokens_file, name, name, [role]) for name, role in (("sam", "submitter"),)}
    settings = auth.gateway_auth(
        tokens_file=str(tokens_file),
        proxy_user_header="X-Auditflow-User",
        proxy_groups_header="X-Groups",
        trusted_proxies=("10.0.0.0/8",),
        role_map=(("audit-team", "approver"),),
        **overrides,
    )
    built = auth_settings.build(settings)
    auth_settings.load(built)
    return built, tokens


def who(authenticator: Authenticator, headers: list[tuple[str, str]], peer: str = "127.0.0.1") -> Principal:
    return asyncio.run(authenticator.authenticate(authenticator.presented(headers, peer)))


def test_tokens_jwts_and_the_trusted_proxy_each_authenticate(tmp_path: Path) -> None:
    check, tokens = authenticator(tmp_path)
    assert who(check, [("Authorization", f"Bearer {tokens['sam']}")]).via == "token:sam"
    assert who(check, [("authorization", f"bearer {auth.jwt_for('jo')}")]).name == "jo"
    proxied = who(check, [("x-auditflow-user", "pat"), ("x-groups", "audit-team,staff")], peer="10.1.2.3")
    assert proxied == Principal("pat", frozenset({"approver"}), via="proxy:10.1.2.3")


def test_a_user_header_is_never_believed_from_elsewhere_and_never_beats_a_token(tmp_path: Path) -> None:
    check, tokens = authenticator(tmp_path)
    with pytest.raises(Unauthenticated, match="only from a trusted proxy"):
        who(check, [("x-auditflow-user", "admin")], peer="192.168.1.9")
    with pytest.raises(Unauthenticated):
        who(check, [("x-auditflow-user", "admin")], peer=None)  # a Unix socket is no proxy address
    forged = [("x-auditflow-user", "admin"), ("authorization", f"Bearer {tokens['sam']}")]
    assert who(check, forged, peer="10.0.0.1").name == "sam"


def test_missing_and_malformed_credentials_are_unauthenticated(tmp_path: Path) -> None:
    check, _ = authenticator(tmp_path)
    with pytest.raises(Unauthenticated) as missing:
        who(check, [])
    assert missing.value.reason == "CREDENTIALS_MISSING" and not missing.value.invalid_token
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer aft_unknown", "token abc"):
        with pytest.raises(InvalidToken):
            who(check, [("authorization", header)])


def test_a_client_certificate_of_a_service_identity_is_a_gateway(tmp_path: Path) -> None:
    check = Authenticator(service_identities=frozenset({"auditflow-gateway"}))
    presented = Presented(tls_identities=("auditflow-gateway",))
    principal = asyncio.run(check.authenticate(presented))
    assert principal.roles == frozenset({"gateway"}) and principal.via == "mtls:auditflow-gateway"
    with pytest.raises(Unauthenticated):
        asyncio.run(check.authenticate(Presented(tls_identities=("someone-else",))))


def test_a_trusted_proxy_needs_its_addresses() -> None:
    proxy = TrustedProxy("x-user", (auth_settings.ipaddress.ip_network("10.0.0.0/8"),))
    assert proxy.trusts("10.9.9.9") and not proxy.trusts("11.0.0.1") and not proxy.trusts("nonsense")
    with pytest.raises(ConfigError, match="--trusted-proxies"):
        auth_settings.build(auth.gateway_auth(proxy_user_header="x-user"))


def test_a_server_without_any_way_to_authenticate_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no way to authenticate"):
        auth_settings.build(auth_settings.AuthSettings())
    with pytest.raises(ConfigError, match="--jwt-issuer"):
        auth_settings.build(auth_settings.AuthSettings(jwks_file=str(auth.JWKS_FILE)))


def test_the_log_scan_of_the_suite_finds_a_credential() -> None:
    """The check that no test's logs carry a credential (tests/conftest.py) can fail."""
    import logging

    from tests.support import secrets

    before = len(secrets.found)
    logging.getLogger("auditflow.example").debug("calling with %s", auth.jwt_for("leaky"))
    logging.getLogger("auditflow.example").info("header was Bearer aft_%s", "x" * 40)
    assert len(secrets.found) == before + 3  # the JWT (by pattern and as minted), the bearer token
    del secrets.found[before:]


def test_the_policy_table_has_a_row_for_every_rpc_and_refuses_what_it_lacks() -> None:
    from auditflow import policy
    from auditflow.errors import RoleRequired
    from auditflow.v1 import processor_service_pb2, workflow_service_pb2

    methods = [
        f"/{service.full_name}/{method.name}"
        for module, name in ((workflow_service_pb2, "WorkflowService"), (processor_service_pb2, "ProcessorService"))
        for service in [module.DESCRIPTOR.services_by_name[name]]
        for method in service.methods
    ]
    assert all(policy.required(m) not in (None, policy.PUBLIC) for m in methods), methods
    admin = Principal("root", frozenset({"admin"}), via="token:root")
    with pytest.raises(RoleRequired, match="not open to anyone"):
        policy.authorize("/auditflow.v1.WorkflowService/DropEverything", admin)
    with pytest.raises(RoleRequired, match="needs the gateway role; root has admin"):
        policy.authorize("/auditflow.v1.ProcessorService/Enqueue", admin)
    policy.authorize("/auditflow.v1.WorkflowService/Approve", admin)


def _rotated_key() -> tuple[Any, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return key, {**public, "kid": "rotated", "alg": "ES256"}


def test_a_key_removed_from_the_jwks_file_stops_verifying_at_the_next_load(tmp_path: Path) -> None:
    async def scenario() -> None:
        rotated, jwk = _rotated_key()
        path = tmp_path / "jwks.json"
        kept = json.loads(auth.JWKS_FILE.read_text())
        path.write_text(json.dumps({"keys": [*kept["keys"], jwk]}))
        keys = KeySet(file=path)
        keys.load()
        check = JwtVerifier(JwtSettings(issuer=auth.ISSUER, audience=auth.AUDIENCE), keys, RoleMap({}))
        token = auth.sign(auth.claims_for("eve"), key=rotated, headers={"kid": "rotated"})
        assert (await check.verify(token)).name == "eve"  # (now cached until it expires)
        path.write_text(json.dumps(kept) + "\n")
        keys.reload_if_changed()
        with pytest.raises(InvalidToken, match="does not know"):
            await check.verify(token)
        assert (await check.verify(auth.jwt_for("dana"))).name == "dana"  # the kept key still verifies

    asyncio.run(scenario())


def test_a_key_removed_from_the_jwks_url_stops_verifying_within_its_refresh_age(jwks_server: _JwksServer) -> None:
    async def scenario() -> None:
        rotated, jwk = _rotated_key()
        jwks_server.document["keys"].append(jwk)
        keys = KeySet(url=jwks_server.url, max_age=0.2)
        await asyncio.to_thread(keys.load)
        check = JwtVerifier(JwtSettings(issuer=auth.ISSUER, audience=auth.AUDIENCE), keys, RoleMap({}))
        token = auth.sign(auth.claims_for("eve"), key=rotated, headers={"kid": "rotated"})
        assert (await check.verify(token)).name == "eve"
        jwks_server.document["keys"].remove(jwk)
        fetched = jwks_server.fetches
        for _ in range(1000):  # each call may start the refresh; the one after it finds the key gone
            try:
                await check.verify(token)
            except InvalidToken:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the removed key still verifies")
        assert jwks_server.fetches > fetched

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("name", "mixed"),
    [
        ("alice", False),
        ("alice.smith@example.com", False),
        ("Jürgen Müller", False),
        ("Иван Петров", False),
        ("山田たろう", False),  # Han and Hiragana are written together
        ("\uff42\uff4f\uff42", False),  # full-width Latin is Latin
        ("\u0430lice", True),  # a Cyrillic a (U+0430) among Latin letters
        ("Ωmega", True),
    ],
)
def test_a_principal_name_is_written_in_one_script(name: str, mixed: bool) -> None:
    problem = check_name(name)
    assert (problem is not None) is mixed, problem
    token = auth.sign(auth.claims_for(name))
    if mixed:
        assert "mixes the scripts" in (problem or "") and "mixes the scripts" in refused(token)
    else:
        assert verify(token).name == name
