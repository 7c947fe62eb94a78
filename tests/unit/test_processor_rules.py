"""The processor's pure rules: transitions after a cycle, the plan orchestrator, and how
orchestrator methods are called (plain functions off the event loop, coroutines awaited)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

import tests.support.procedures  # noqa: F401  (registers test_noop, test_critical)
from auditflow import statuses
from auditflow.procedures import CriticalError
from auditflow.v1 import workflow_pb2 as pb
from processor import orchestrator, transitions
from processor.orchestrator import CycleResult, RunInfo
from processor.plan_orchestrator import PlanOrchestrator
from processor.store import RunRecord
from processor.transitions import Errored, Succeeded

E = pb.EventType
S = pb.WorkflowStatus
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def a_run(**changes: Any) -> RunRecord:
    base = RunRecord(
        workflow_id="wf_" + "0" * 32,
        title="t",
        plan=[{"procedure": "test_noop", "parameters": {}}] * 3,
        orchestrator="plan",
        status=S.WORKFLOW_STATUS_RUNNING,
        cycle=1,
        max_cycles=5,
        state={"next_step": 1},
        progress_done=1,
        progress_total=3,
        last_message="",
        error_reason=None,
        error_message=None,
        result=None,
        cancel_requested=False,
        consecutive_failures=0,
        findings_count=0,
        base_sequence=2,
        last_sequence=5,
        last_hash=None,
        lease_owner="me",
        lease_epoch=1,
        approved_at=None,
        trace_context=None,
        lease_expires_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(base, **changes)


def ok(done: bool = False) -> Succeeded:
    return Succeeded(CycleResult({"next_step": 2}, 2, 3, "step 2/3 x done", done, {"steps": []} if done else None))


def after(run: RunRecord, outcome: transitions.Outcome, cycle: int = 2) -> tuple[list[Any], dict[str, Any]]:
    return transitions.after_cycle(run, cycle, outcome, max_failures=3, lease_expires_at=NOW)


def test_a_successful_cycle_checkpoints_and_renews_the_lease() -> None:
    events, changes = after(a_run(consecutive_failures=2), ok())
    assert [e.type for e in events] == [E.EVENT_TYPE_CYCLE_COMPLETED]
    assert (events[0].cycle, events[0].progress_done, events[0].status) == (2, 2, S.WORKFLOW_STATUS_RUNNING)
    assert changes == {"state_json": '{"next_step": 2}', "consecutive_failures": 0, "lease_expires_at": NOW}


def test_the_last_cycle_completes_the_run_and_releases_the_lease() -> None:
    events, changes = after(a_run(), ok(done=True))
    assert [e.type for e in events] == [E.EVENT_TYPE_CYCLE_COMPLETED, E.EVENT_TYPE_COMPLETED]
    assert events[1].status == S.WORKFLOW_STATUS_COMPLETED and events[1].result == {"steps": []}
    assert events[0].result is None  # the snapshot as of the cycle event has no result yet
    assert changes["lease_owner"] is None


def test_a_cycle_error_keeps_the_state_and_counts_the_failure() -> None:
    events, changes = after(a_run(consecutive_failures=1), Errored("boom"))
    assert [e.type for e in events] == [E.EVENT_TYPE_CYCLE_FAILED]
    assert events[0].message == "cycle 2 failed: boom" and events[0].progress_done == 1
    assert "state_json" not in changes and changes["consecutive_failures"] == 2


def test_the_third_failure_in_a_row_fails_the_run() -> None:
    events, _ = after(a_run(consecutive_failures=2), Errored("boom"))
    assert [e.type for e in events] == [E.EVENT_TYPE_CYCLE_FAILED, E.EVENT_TYPE_FAILED]
    assert events[1].error_reason == statuses.TOO_MANY_FAILURES


def test_a_critical_error_fails_at_once() -> None:
    events, changes = after(a_run(), Errored("corrupt", critical=True))
    assert [e.type for e in events] == [E.EVENT_TYPE_FAILED]
    assert (events[0].error_reason, events[0].error_message, events[0].cycle) == (statuses.CRITICAL_ERROR, "corrupt", 2)
    assert changes["lease_owner"] is None


def test_the_last_allowed_cycle_without_done_fails_the_run() -> None:
    events, _ = after(a_run(cycle=4), ok(), cycle=5)
    assert [e.type for e in events] == [E.EVENT_TYPE_CYCLE_COMPLETED, E.EVENT_TYPE_FAILED]
    assert events[1].error_reason == statuses.MAX_CYCLES_EXCEEDED


def test_completion_wins_over_a_pending_cancel_and_cancel_wins_otherwise() -> None:
    done, _ = after(a_run(cancel_requested=True), ok(done=True))
    assert done[-1].type == E.EVENT_TYPE_COMPLETED
    cancelled, changes = after(a_run(cancel_requested=True), ok())
    assert cancelled[-1].type == E.EVENT_TYPE_CANCELLED and cancelled[-1].status == S.WORKFLOW_STATUS_CANCELLED
    assert changes["lease_owner"] is None


def test_cancel_request_rules() -> None:
    queued, _ = transitions.cancel_requested(a_run(status=S.WORKFLOW_STATUS_QUEUED), "bob", "why")
    assert [e.type for e in queued] == [E.EVENT_TYPE_CANCELLED] and queued[0].actor == "bob"
    running, changes = transitions.cancel_requested(a_run(), "bob", "")
    assert [e.type for e in running] == [E.EVENT_TYPE_CANCEL_REQUESTED] and changes == {"cancel_requested": True}
    assert transitions.cancel_requested(a_run(cancel_requested=True), "bob", "") == ([], {})
    assert transitions.cancel_requested(a_run(status=S.WORKFLOW_STATUS_COMPLETED), "bob", "") == ([], {})


def test_started_versus_resumed() -> None:
    first, _ = transitions.started(a_run(status=S.WORKFLOW_STATUS_QUEUED, cycle=0), "w1")
    assert first[0].status == S.WORKFLOW_STATUS_RUNNING and "w1" in first[0].message
    again, _ = transitions.started(a_run(cycle=4), "w2")
    assert again[0].message == "resumed from checkpoint at cycle 4"


def test_plan_orchestrator_runs_one_step_per_cycle() -> None:
    plan = [{"procedure": "test_noop", "parameters": {}}, {"procedure": "test_critical", "parameters": {}}]
    info = RunInfo("wf_x", "t", plan, 5, 1)
    plugin = PlanOrchestrator()
    state = plugin.start(info)
    first = plugin.cycle(info, state)
    assert (first.progress_done, first.progress_total, first.done) == (1, 2, False)
    assert first.message == "step 1/2 test_noop done" and first.state == {"next_step": 1, "results": [{"ok": True}]}
    with pytest.raises(CriticalError):
        plugin.cycle(replace(info, cycle=2), first.state)
    last = plugin.cycle(replace(info, plan=plan[:1]), state)
    assert last.done and last.result == {"steps": [{"procedure": "test_noop", "result": {"ok": True}}]}


def test_findings_leave_the_result_marked_with_their_step_and_a_cycle_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = [
        {"procedure": "test_result", "parameters": {"findings": 3}},
        {"procedure": "test_findings", "parameters": {"count": 10, "per_chunk": 2}},
    ]
    plugin = PlanOrchestrator()
    plugin.budget = 60  # only the findings bound ends a cycle early here
    info = RunInfo("wf_x", "t", plan, 50, 1)
    first = plugin.cycle(info, plugin.start(info))
    assert first.state["results"] == [{"padding": ""}]  # the findings are not in the result
    assert [(f["step"], f["procedure"], f["entry_ids"]) for f in first.findings] == [
        (1, "test_result", ["E0"]),
        (1, "test_result", ["E1"]),
        (1, "test_result", ["E2"]),
    ]
    monkeypatch.setattr("processor.plan_orchestrator.MAX_CYCLE_FINDINGS", 4)
    second = plugin.cycle(replace(info, cycle=2), first.state)  # two chunks: 4 findings, then stop
    assert [f["entry_ids"] for f in second.findings] == [["JE-0"], ["JE-1"], ["JE-2"], ["JE-3"]]
    assert {f["step"] for f in second.findings} == {2} and second.message == "step 2/2 test_findings: chunk 2/5 done"


def test_a_result_too_large_for_a_snapshot_fails_the_run_saying_why() -> None:
    plugin = PlanOrchestrator()
    big = [{"procedure": "test_result", "parameters": {"size": 70_000}}]
    info = RunInfo("wf_x", "t", big, 5, 1)
    with pytest.raises(CriticalError, match="its result is 70015 bytes without its findings, at most 65536"):
        plugin.cycle(info, plugin.start(info))
    many = [{"procedure": "test_result", "parameters": {"size": 60_000}}] * 20
    info = RunInfo("wf_x", "t", many, 50, 1)
    state = plugin.start(info)
    with pytest.raises(CriticalError, match="step 18 test_result: the run's result would be") as caught:
        for cycle in range(1, 21):
            state = plugin.cycle(replace(info, cycle=cycle), state).state
    assert "at most 1048576" in str(caught.value)


async def test_plain_methods_run_in_the_pool_and_coroutines_are_awaited() -> None:
    loop_thread = threading.current_thread()

    def plain(x: int) -> tuple[int, bool]:
        return x + 1, threading.current_thread() is loop_thread

    async def coroutine(x: int) -> tuple[int, bool]:
        return x + 2, threading.current_thread() is loop_thread

    with ThreadPoolExecutor(1) as pool:
        assert await orchestrator.call(pool, plain, 1) == (2, False)
        assert await orchestrator.call(pool, coroutine, 1) == (3, True)


def test_the_plan_orchestrator_is_registered_as_an_entry_point() -> None:
    assert isinstance(orchestrator.load("plan"), PlanOrchestrator)
    with pytest.raises(orchestrator.UnknownOrchestrator):
        orchestrator.load("nope")


def test_a_cycle_does_its_share_of_the_chunks_however_slow_the_machine() -> None:
    """With no time budget at all (the slowest machine), a step of five chunks given two
    cycles does three, then two: it finishes within max_cycles."""
    plan = [{"procedure": "test_findings", "parameters": {"count": 10, "per_chunk": 2}}]
    plugin = PlanOrchestrator()
    plugin.budget = 0
    info = RunInfo("wf_x", "t", plan, 2, 1)
    first = plugin.cycle(info, plugin.start(info))
    assert len(first.findings) == 6 and first.message == "step 1/1 test_findings: chunk 3/5 done"
    last = plugin.cycle(replace(info, cycle=2), first.state)
    assert last.done and len(last.findings) == 4
    roomy = plugin.cycle(replace(info, max_cycles=50), plugin.start(info))  # spare cycles: one chunk each
    assert roomy.message == "step 1/1 test_findings: chunk 1/5 done"
