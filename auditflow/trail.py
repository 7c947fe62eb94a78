"""A workflow's trail: every event of both services in one hash chain, the plan's etag, and
an optional signature of the chain's end. Pure functions, used by both services to write
the trail and by the gateway to verify it.

Why. An approval is worth what its record is worth. With the events in one chain (each
event's `hash` is SHA-256 over the previous event's hash and its own canonical content), an
event edited, deleted, inserted or moved in either database no longer matches, and
`verify` names the first one. The plan is bound by its `etag`, recorded in the CREATED event
and in every decision; a completed run's result by its digest in the COMPLETED event.

What it does not stop: someone who can write a database and recompute every later hash
(SHA-256 needs no secret). Signing the end of the chain with a key the databases never see
(`Signer`, Ed25519) closes that for ended workflows: a consistent rewrite then needs the
key. Still open: a workflow deleted whole, a database rolled back as a whole to an earlier
consistent state before the end was signed, and whoever holds the key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format, struct_pb2

from auditflow.config import ConfigError
from auditflow.v1 import workflow_pb2 as pb

GENESIS = "0" * 64  # what the first event links to
VERSION = "auditflow-trail-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --- the plan's etag --------------------------------------------------------------------------


def etag(title: str, plan_json: str, max_cycles: int, orchestrator: str) -> str:
    """What an approver approves, as a hash: the plan's title, steps with their parameters,
    max_cycles and orchestrator, in canonical JSON (keys sorted, no spaces, UTF-8), from the
    stored plan (its numbers as the plan's JSON holds them). The same on every backend and
    after every restart."""
    document = {"title": title, "steps": json.loads(plan_json), "max_cycles": max_cycles, "orchestrator": orchestrator}
    return hashlib.sha256(_canonical_json(document)).hexdigest()


def _canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode()


# (One encoder for every hash: `json.dumps` with options builds a new one per call.)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- the chain -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Content:
    """What an event's hash covers: every field of `WorkflowEvent` but the hash and signature."""

    workflow_id: str
    sequence: int
    type: int
    status: int
    cycle: int
    progress_done: int
    progress_total: int
    message: str
    actor: str
    actor_auth: str
    time: datetime
    etag: str = ""
    result_digest: str = ""

    @classmethod
    def of_message(cls, event: pb.WorkflowEvent) -> Content:
        time = _EPOCH + timedelta(seconds=event.time.seconds, microseconds=event.time.nanos // 1000)
        return cls(
            event.workflow_id,
            event.sequence,
            event.type,
            event.status,
            event.cycle,
            event.progress.done,
            event.progress.total,
            event.message,
            event.actor,
            event.actor_auth,
            time,
            event.etag,
            event.result_digest,
        )

    def canonical(self) -> bytes:
        time = self.time if self.time.tzinfo is not None else self.time.replace(tzinfo=UTC)
        micros = (time - _EPOCH) // _MICROSECOND
        return _canonical_json(
            [
                VERSION,
                self.workflow_id,
                self.sequence,
                self.type,
                self.status,
                self.cycle,
                self.progress_done,
                self.progress_total,
                self.message,
                self.actor,
                self.actor_auth,
                micros,
                self.etag,
                self.result_digest,
            ]
        )


def link(previous: str, content: Content) -> str:
    """The hash of an event: SHA-256 (hex) over the previous event's hash and its content."""
    return hashlib.sha256(bytes.fromhex(previous) + content.canonical()).hexdigest()


def result_digest(result: dict[str, Any] | struct_pb2.Struct | None) -> str:
    """The digest of a run's result without its "trail", over the canonical JSON of the result
    as a protobuf Struct (as every client receives it: numbers are doubles there), so that the
    processor's stored JSON and a client's message give the same digest."""
    if result is None:
        return ""
    struct = result if isinstance(result, struct_pb2.Struct) else _struct(result)
    data = json_format.MessageToDict(struct)
    data.pop("trail", None)
    return hashlib.sha256(_canonical_json(data)).hexdigest()


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


# --- checking a whole trail ----------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    sequence: int  # the first event that does not match (0: not one event's problem)
    text: str


@dataclass(frozen=True)
class Checked:
    """What `check` found: how far the chain held, and the first problem if any."""

    events: int
    head_sequence: int
    head_hash: str
    problem: Problem | None


def check(events: Iterable[pb.WorkflowEvent], *, start: str = GENESIS) -> Checked:
    """Recompute the chain over `events` (sequence order, from 1) and compare each stored
    hash; stop at the first event that does not match, is missing or is out of place."""
    previous, expected, count, head = start, 1, 0, 0
    for event in events:
        if event.sequence != expected:
            what = "missing" if event.sequence > expected else "out of place (a sequence repeats or goes back)"
            return Checked(count, head, previous, Problem(expected, f"event {expected} is {what}"))
        computed = link(previous, Content.of_message(event))
        if computed != event.hash:
            text = f"event {event.sequence} does not match its hash: its content or an earlier event's was changed"
            if not event.hash:
                text = f"event {event.sequence} has no hash"
            return Checked(count, head, previous, Problem(event.sequence, text))
        previous, expected, count, head = computed, expected + 1, count + 1, event.sequence
    return Checked(count, head, previous, None)


# --- signing the end -----------------------------------------------------------------------


def signed_text(workflow_id: str, sequence: int, head: str) -> bytes:
    return f"{VERSION} {workflow_id} {sequence} {head}".encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs the end of ended workflows' trails with an Ed25519 key (PEM, PKCS#8) the
    databases never see."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def from_file(cls, path: str) -> Signer:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the trail signing key {path}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"the trail signing key {path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, workflow_id: str, sequence: int, head: str) -> str:
        return base64.b64encode(self._key.sign(signed_text(workflow_id, sequence, head))).decode()


def load_public_keys(paths: Sequence[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys (PEM) by key id: the keys whose signatures a verifier accepts."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the trail public key {path}: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"the trail public key {path} is not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def signature_valid(public: Ed25519PublicKey, event: pb.WorkflowEvent) -> bool:
    try:
        signature = base64.b64decode(event.signature, validate=True)
        public.verify(signature, signed_text(event.workflow_id, event.sequence, event.hash))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
