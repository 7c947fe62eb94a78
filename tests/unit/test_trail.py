"""The trail's rules as plain functions: the etag, the chain, the result digest, signatures."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import struct_pb2

from auditflow import convert, trail
from auditflow.config import ConfigError
from auditflow.v1 import workflow_pb2 as pb

PLAN = json.dumps([{"procedure": "round_amounts", "parameters": {"multiple": 1000.0, "path": "l.csv"}}])
T0 = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)


def test_the_etag_covers_what_is_approved_and_nothing_else() -> None:
    base = trail.etag("Q3 audit", PLAN, 15, "plan")
    assert len(base) == 64 and base == trail.etag("Q3 audit", PLAN, 15, "plan")
    reordered = json.dumps([{"parameters": {"path": "l.csv", "multiple": 1000.0}, "procedure": "round_amounts"}])
    assert trail.etag("Q3 audit", reordered, 15, "plan") == base  # the same plan, keys in another order
    changed = PLAN.replace("1000.0", "1000.5")
    for other in (
        trail.etag("Q3 audit!", PLAN, 15, "plan"),
        trail.etag("Q3 audit", changed, 15, "plan"),
        trail.etag("Q3 audit", PLAN, 16, "plan"),
        trail.etag("Q3 audit", PLAN, 15, "other"),
    ):
        assert other != base


def events(count: int) -> list[pb.WorkflowEvent]:
    """A chain of `count` events, hashed as the services hash them."""
    chain: list[pb.WorkflowEvent] = []
    previous = trail.GENESIS
    for sequence in range(1, count + 1):
        event = pb.WorkflowEvent(
            workflow_id="wf_1",
            sequence=sequence,
            type=pb.EVENT_TYPE_CYCLE_COMPLETED,
            status=pb.WORKFLOW_STATUS_RUNNING,
            cycle=sequence,
            progress=pb.Progress(done=sequence, total=count),
            message=f"step {sequence}",
            actor="processor",
            time=convert.timestamp(T0 + timedelta(seconds=sequence)),
        )
        event.hash = trail.link(previous, trail.Content.of_message(event))
        previous = event.hash
        chain.append(event)
    return chain


def test_an_intact_chain_checks_to_its_head() -> None:
    chain = events(5)
    checked = trail.check(chain)
    assert (checked.events, checked.head_sequence, checked.head_hash, checked.problem) == (5, 5, chain[-1].hash, None)


def test_the_content_hashed_is_the_same_from_a_record_and_from_its_message() -> None:
    content = trail.Content("wf_1", 3, 8, 4, 2, 1, 9, "m", "alice", "jwt:x", T0.replace(tzinfo=None), "e", "d")
    message = pb.WorkflowEvent(
        workflow_id="wf_1",
        sequence=3,
        type=8,
        status=4,
        cycle=2,
        progress=pb.Progress(done=1, total=9),  # type: ignore[arg-type]
        message="m",
        actor="alice",
        actor_auth="jwt:x",
        time=convert.timestamp(T0),
        etag="e",
        result_digest="d",
    )
    assert trail.Content.of_message(message).canonical() == content.canonical()


@pytest.mark.parametrize(
    ("tamper", "sequence", "words"),
    [
        (lambda c: setattr(c[2], "message", "step 3, edited"), 3, "does not match its hash"),
        (lambda c: setattr(c[2], "actor", "mallory"), 3, "does not match its hash"),
        (lambda c: c.__delitem__(2), 3, "is missing"),
        (lambda c: c.insert(1, c.pop(3)), 2, "is missing"),  # event 4 moved before 2
        (lambda c: setattr(c[1], "hash", ""), 2, "has no hash"),
        (lambda c: c[0].time.FromDatetime(T0 + timedelta(microseconds=1)), 1, "does not match its hash"),
    ],
)
def test_an_edited_deleted_or_moved_event_is_named(tamper: object, sequence: int, words: str) -> None:
    chain = events(6)
    tamper(chain)  # type: ignore[operator]
    checked = trail.check(chain)
    assert checked.problem is not None and checked.problem.sequence == sequence and words in checked.problem.text
    assert checked.events == sequence - 1


def test_a_rewritten_chain_with_fresh_hashes_passes_the_chain_but_not_the_signature() -> None:
    key = Ed25519PrivateKey.generate()
    signer = trail.Signer(key)
    chain = events(4)
    chain[-1].signature = signer.sign("wf_1", 4, chain[-1].hash)
    assert trail.signature_valid(signer.public, chain[-1])
    chain[1].message = "rewritten"
    previous = chain[0].hash
    for event in chain[1:]:  # whoever edits recomputes every later hash: the chain holds again
        event.hash = trail.link(previous, trail.Content.of_message(event))
        previous = event.hash
    assert trail.check(chain).problem is None
    assert not trail.signature_valid(signer.public, chain[-1])  # but the signed end does not
    chain[-1].signature = "not base64!"
    assert not trail.signature_valid(signer.public, chain[-1])


def test_the_result_digest_is_the_same_from_stored_json_and_from_the_message() -> None:
    result = {"steps": [{"procedure": "p", "result": {"found": 7, "amount": "1.50"}}]}
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(result)))  # a client's copy: numbers are doubles
    assert trail.result_digest(result) == trail.result_digest(struct)
    assert trail.result_digest({**result, "trail": {"hash": "x"}}) == trail.result_digest(result)
    assert trail.result_digest({"steps": []}) != trail.result_digest(result)
    assert trail.result_digest(None) == ""


def test_keys_are_read_from_pem_files_and_bad_ones_are_a_clear_config_error(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private = tmp_path / "trail.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = tmp_path / "trail.pub"
    public.write_bytes(trail.public_pem(key.public_key()))
    signer = trail.Signer.from_file(str(private))
    assert list(trail.load_public_keys([str(public)])) == [signer.key_id]
    for bad in (tmp_path / "missing.pem", public):
        with pytest.raises(ConfigError, match="trail signing key"):
            trail.Signer.from_file(str(bad))
    with pytest.raises(ConfigError, match="trail public key"):
        trail.load_public_keys([str(private)])
