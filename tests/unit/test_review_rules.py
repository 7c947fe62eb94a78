"""The review rules as plain functions: revision diffs, data fingerprints, how a change looks
through a collection filter, and the collection watch's resume tokens."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auditflow import convert, fingerprints
from auditflow.errors import InvalidArgument
from auditflow.fingerprints import Fingerprint, Mismatch, Verifier
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import collection, pages, revisions
from gateway.revisions import FieldChange, PlanVersion
from gateway.store import ApprovalRecord, ListFilter, WorkflowRecord

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


# --- revision diffs ----------------------------------------------------------------------------


def version(title: str = "t", max_cycles: int = 15, *steps: dict[str, object]) -> PlanVersion:
    return PlanVersion.of(title, json.dumps(list(steps)), max_cycles)


def test_identical_revisions_have_no_changes() -> None:
    step = {"procedure": "outliers", "parameters": {"path": "a.csv", "z": 3}}
    assert revisions.changes(version("t", 15, step), version("t", 15, step)) == []


def test_changes_name_the_field_an_approver_reads() -> None:
    old = version("Q1", 15, {"procedure": "outliers", "parameters": {"path": "a.csv", "z": 3}})
    new = version(
        "Q1 again",
        20,
        {"procedure": "outliers", "parameters": {"path": "a.csv", "z": 2.5, "top": 5}},
        {"procedure": "round_amounts", "parameters": {}},
    )
    assert revisions.changes(old, new) == [
        FieldChange("title", "changed", '"Q1"', '"Q1 again"'),
        FieldChange("max_cycles", "changed", "15", "20"),
        FieldChange("plan[0].parameters.top", "added", after="5"),
        FieldChange("plan[0].parameters.z", "changed", "3", "2.5"),
        FieldChange("plan[1]", "added", after='{"parameters": {}, "procedure": "round_amounts"}'),
    ]
    assert [c.kind for c in revisions.changes(new, old)][-1] == "removed"


def test_a_fingerprint_change_is_a_change_of_the_plan() -> None:
    source = {"parameter": "path", "path": "a.csv", "size_bytes": 10, "sha256": "a" * 64, "modified_ns": 1}
    old = version("t", 15, {"procedure": "p", "parameters": {}, "sources": [source]})
    new = version("t", 15, {"procedure": "p", "parameters": {}, "sources": [{**source, "sha256": "b" * 64}]})
    assert revisions.changes(old, new) == [
        FieldChange("plan[0].sources[0].sha256", "changed", json.dumps("a" * 64), json.dumps("b" * 64))
    ]


def test_a_value_of_another_type_is_a_change() -> None:
    old = version("t", 15, {"procedure": "p", "parameters": {"flag": 1}})
    new = version("t", 15, {"procedure": "p", "parameters": {"flag": True}})
    assert [c.field for c in revisions.changes(old, new)] == ["plan[0].parameters.flag"]


# --- fingerprints ----------------------------------------------------------------------------------


def test_a_fingerprint_round_trips_through_the_stored_plan(tmp_path: Path) -> None:
    ledger = tmp_path / "l.csv"
    ledger.write_bytes(b"id,amount\n1,2\n")
    taken = fingerprints.take(ledger, "path", "l.csv")
    assert taken.size_bytes == 14 and taken.modified_ns == ledger.stat().st_mtime_ns
    step = pb.PlanStep(procedure="p", sources=[convert.source_message(taken)])
    [stored] = convert.plan_from_json(convert.plan_to_json([step]))
    assert convert.source_fingerprint(stored.sources[0]) == taken
    # A step without sources is stored as it always was (its plan's etag is unchanged).
    assert "sources" not in convert.plan_to_json([pb.PlanStep(procedure="p")])


def test_the_verifier_refuses_other_bytes_naming_both_digests(tmp_path: Path) -> None:
    ledger = tmp_path / "l.csv"
    ledger.write_bytes(b"id,amount\n1,2\n")
    approved = fingerprints.take(ledger, "path", "l.csv")
    verifier = Verifier()
    identity = verifier.check(ledger, approved)
    Verifier.unchanged(ledger, approved, identity)
    ledger.write_bytes(b"id,amount\n1,3\n")  # same size
    os.utime(ledger, ns=(approved.modified_ns, approved.modified_ns))  # and the old modification time
    with pytest.raises(Mismatch) as refused:
        Verifier.unchanged(ledger, approved, identity)
    assert "l.csv" in str(refused.value)
    with pytest.raises(Mismatch) as refused:
        verifier.check(ledger, approved)
    now = fingerprints.digest(ledger)[1]
    assert approved.sha256 in str(refused.value) and now in str(refused.value)


def test_changed_tells_approvers_what_changed(tmp_path: Path) -> None:
    ledger = tmp_path / "l.csv"
    ledger.write_bytes(b"id,amount\n1,2\n")
    approved = fingerprints.take(ledger, "path", "l.csv")
    verifier = Verifier()
    assert verifier.changed(ledger, approved) == ""
    os.utime(ledger, ns=(approved.modified_ns + 10**9, approved.modified_ns + 10**9))  # touched, same bytes
    assert verifier.changed(ledger, approved) == ""
    ledger.write_bytes(b"id,amount\n1,2\n2,5\n")
    assert verifier.changed(ledger, approved).startswith("changed since it was fingerprinted: now sha256")
    assert verifier.changed(None, approved).startswith("missing")


def test_only_file_parameters_name_data_files() -> None:
    found = list(fingerprints.named_files({"path": "a.csv", "source": "erp", "table": "t", "top": 5}))
    assert found == [("path", "a.csv")]
    assert list(fingerprints.named_files({"path": ""})) == []


# --- collection filters and changes ------------------------------------------------------------


def record(**values: object) -> WorkflowRecord:
    base = WorkflowRecord(
        workflow_id="wf_" + "0" * 32,
        title="Quarter close",
        plan_json="[]",
        orchestrator="plan",
        created_by="carol",
        created_by_key="carol",
        created_by_auth=None,
        create_request_id=None,
        status=pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
        decision=None,
        decided_by=None,
        decided_by_auth=None,
        decision_comment=None,
        decision_request_id=None,
        decided_at=None,
        cancel_requested=False,
        dispatched=False,
        max_cycles=15,
        cycle=0,
        progress_done=0,
        progress_total=1,
        last_message="",
        error_reason=None,
        error_message=None,
        result_json=None,
        last_sequence=1,
        created_at=NOW,
        updated_at=NOW,
        etag="e" * 64,
        required_approvals=2,
        approvals_count=0,
        approvals_json="[]",
        revision=1,
        changes_requested_json=None,
    )
    return replace(base, **values)  # type: ignore[arg-type]


def approved_by(key: str) -> str:
    return json.dumps([ApprovalRecord(key, key, "", NOW, "", "e" * 64, "").to_json()])


def test_awaiting_my_approval() -> None:
    mine = ListFilter(awaiting_key="alice")
    assert mine.matches(record())
    assert not mine.matches(record(created_by_key="alice"))  # one's own plan
    assert ListFilter(awaiting_key="alice", self_approval=True).matches(record(created_by_key="alice"))
    assert not mine.matches(record(approvals_json=approved_by("alice")))  # approved already
    assert mine.matches(record(approvals_json=approved_by("bob")))
    assert not mine.matches(record(status=pb.WORKFLOW_STATUS_CHANGES_REQUESTED))


def test_other_filters() -> None:
    assert ListFilter(title_contains="CLOSE").matches(record())
    assert not ListFilter(title_contains="open").matches(record())
    assert ListFilter(created_by_key="carol").matches(record())
    assert not ListFilter(statuses=(pb.WORKFLOW_STATUS_RUNNING,)).matches(record())


def test_how_a_change_looks_through_a_filter() -> None:
    awaiting = ListFilter(awaiting_key="bob")
    waiting, done = record(), record(status=pb.WORKFLOW_STATUS_APPROVED, last_sequence=3)
    assert collection.change_type(awaiting, waiting, None) == wpb.CHANGE_TYPE_ADDED
    assert collection.change_type(awaiting, waiting, waiting) == wpb.CHANGE_TYPE_MODIFIED
    assert collection.change_type(awaiting, done, waiting) == wpb.CHANGE_TYPE_REMOVED
    assert collection.change_type(awaiting, done, done) is None
    assert collection.change_type(awaiting, done, None) == wpb.CHANGE_TYPE_REMOVED  # harmless if never shown


def test_resume_tokens_round_trip_and_refuse_anything_else() -> None:
    point = NOW + timedelta(microseconds=123)
    assert pages.resume_point(pages.resume_token(point)) == point
    for bad in ("", "%%%", "w1:12", "eDE6MTI", pages.resume_token(point)[:-2] + "!!", "A" * 5000):
        with pytest.raises(InvalidArgument):
            pages.resume_point(bad)


def test_fingerprint_json_is_exact() -> None:
    taken = Fingerprint("path", "a.csv", 1, "f" * 64, 1_733_000_000_123_456_789)
    assert Fingerprint.from_json(json.loads(json.dumps(taken.to_json()))) == taken


def test_numbers_are_shown_as_written() -> None:
    old = version("t", 15, {"procedure": "p", "parameters": {"top": 5.0, "z": 2.5}})
    new = version("t", 15, {"procedure": "p", "parameters": {"top": 10.0, "z": 2.5}})
    assert revisions.changes(old, new) == [FieldChange("plan[0].parameters.top", "changed", "5", "10")]
