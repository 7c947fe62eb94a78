"""gRPC server streams end when their caller's credential is revoked, on a real gateway: a
static token removed from the tokens file, a JWT whose key was removed from the JWKS file.
The revoked caller's streams (WatchStatus, WatchWorkflows) end with the refusal's status and
message; the streams of callers still accepted go on."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from auditflow.auth import RELOAD_INTERVAL
from auditflow.auth.tokens import append_entry
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import step

PLUGINS = ("tests.support.procedures",)
C = grpc.StatusCode
# A revoked stream ends after the next reload of the files (one interval) and the guard's next
# look (another): the bound leaves room for a busy machine.
ENDS_WITHIN = 2 * RELOAD_INTERVAL + 20.0
SPARE_KID = "spare-key"


@dataclass
class Served:
    stub: wpb_grpc.WorkflowServiceStub
    tokens: Path
    jwks: Path
    spare: Any  # the private key of the JWKS's second key


def _jwks(*keys: tuple[str, Any]) -> str:
    public = [(kid, json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))) for kid, key in keys]
    return json.dumps({"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"} for kid, jwk in public]})


def _replace(path: Path, text: str) -> None:
    """Write a credentials file whole by a rename, as an operator's tooling does."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    tokens, jwks = tmp_path / "tokens.toml", tmp_path / "jwks.json"
    _token(tokens, "first", ["viewer"])  # (the file must exist before the gateway starts)
    spare = ec.generate_private_key(ec.SECP256R1())
    jwks.write_text(_jwks((auth.KID, auth.KEY), (SPARE_KID, spare)))
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(**auth.processor_settings(), database_url=f"sqlite:///{tmp_path / 'p.db'}", plugins=PLUGINS),
    )
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **{**auth.gateway_settings(), "auth": auth.gateway_auth(tokens_file=str(tokens), jwks_file=str(jwks))},
            database_url=f"sqlite:///{tmp_path / 'g.db'}",
            processor_target=processor.address,
            plugins=PLUGINS,
        ),
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            yield Served(wpb_grpc.WorkflowServiceStub(channel), tokens, jwks, spare)
    finally:
        await gateway.stop(0)
        await processor.stop(1)


def _token(path: Path, name: str, roles: list[str]) -> str:
    token = append_entry(path, name, name, roles)
    auth.MINTED.add(token)
    return token


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _awaiting_approval(served: Served) -> str:
    request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")])
    created = await served.stub.CreateWorkflow(request, metadata=auth.bearer("sam", ("submitter",)))
    return str(created.workflow.workflow_id)


async def _open(served: Served, workflow_id: str, metadata: Any) -> list[Any]:
    """A WatchStatus and a WatchWorkflows stream of one caller, each past its first message
    (so that both are open and admitted)."""
    status = served.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=metadata)
    collection = served.stub.WatchWorkflows(wpb.WatchWorkflowsRequest(), metadata=metadata)
    for call in (status, collection):
        await asyncio.wait_for(call.read(), ENDS_WITHIN)
    return [status, collection]


async def _ended_with(call: Any) -> grpc.aio.AioRpcError:
    """Read on until the stream ends; the error it ended with."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while (await call.read()) is not grpc.aio.EOF:
            pass
    return ended.value


async def _assert_revoked(calls: list[Any], why: str) -> None:
    for call in calls:
        error = await asyncio.wait_for(_ended_with(call), ENDS_WITHIN)
        assert (error.code(), error.details()) == (C.UNAUTHENTICATED, why)


async def _assert_going_on(served: Served, workflow_id: str, calls: list[Any]) -> None:
    """The other caller's streams are open and still get news: cancelling the workflow reaches
    its WatchStatus (CANCELLED, then the stream ends normally) and its WatchWorkflows."""
    assert not any(call.done() for call in calls)
    cancel = wpb.CancelWorkflowRequest(workflow_id=workflow_id)
    await served.stub.CancelWorkflow(cancel, metadata=auth.bearer("sam", ("submitter",)))
    status, collection = calls
    last = None
    while (message := await asyncio.wait_for(status.read(), ENDS_WITHIN)) is not grpc.aio.EOF:
        last = message
    assert last is not None and last.snapshot.status == pb.WORKFLOW_STATUS_CANCELLED
    assert await status.code() == C.OK
    while True:
        changed = (await asyncio.wait_for(collection.read(), ENDS_WITHIN)).change.workflow
        if changed.workflow_id == workflow_id and changed.status == pb.WORKFLOW_STATUS_CANCELLED:
            break
    collection.cancel()


async def test_streams_of_a_removed_api_token_end_unauthenticated(served: Served) -> None:
    gone = _token(served.tokens, "vic", ["viewer"])
    kept = _token(served.tokens, "kim", ["viewer"])
    await _until_accepted(served, gone)
    workflow_id = await _awaiting_approval(served)
    revoked = await _open(served, workflow_id, _bearer(gone))
    others = await _open(served, workflow_id, _bearer(kept))
    entries = served.tokens.read_text().split("[[token]]")  # (the header, first, vic, kim)
    _replace(served.tokens, "[[token]]".join(entries[:2] + entries[3:]))  # vic's entry is gone
    await _assert_revoked(revoked, "the bearer token is not valid here")
    await _assert_going_on(served, workflow_id, others)


async def test_streams_of_a_jwt_whose_key_was_removed_end_unauthenticated(served: Served) -> None:
    spare = jwt.encode(auth.claims_for("sid", ("viewer",)), served.spare, algorithm="ES256", headers={"kid": SPARE_KID})
    auth.MINTED.add(spare)
    workflow_id = await _awaiting_approval(served)
    revoked = await _open(served, workflow_id, _bearer(spare))
    others = await _open(served, workflow_id, auth.bearer("jo", ("viewer",)))
    _replace(served.jwks, _jwks((auth.KID, auth.KEY)))  # the spare key is gone
    await _assert_revoked(revoked, "the token is signed by a key this server does not know")
    await _assert_going_on(served, workflow_id, others)


async def _until_accepted(served: Served, token: str) -> None:
    """The gateway reads a token added to its file within a reload interval."""
    for _ in range(400):
        try:
            await served.stub.WhoAmI(wpb.WhoAmIRequest(), metadata=_bearer(token))
            return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == C.UNAUTHENTICATED
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never read the new token")
