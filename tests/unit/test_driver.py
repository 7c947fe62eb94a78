"""One cycle as the driver runs it, without a database: the lease check is the last thing
before a step starts, on the step's own thread, and the step runs under the lease's epoch."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

import tests.support.procedures  # noqa: F401  (registers the test procedures)
from processor import driver
from processor.lease import LeaseInDoubt
from processor.orchestrator import RunInfo
from processor.store import RunRecord
from processor.transitions import Errored, Succeeded
from tests.unit.test_processor_rules import a_run


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def journaled(journal: Path) -> RunRecord:
    plan = [{"procedure": "test_journal", "parameters": {"journal": str(journal), "step": 1}}]
    return a_run(plan=plan, state={"next_step": 0}, cycle=0, lease_epoch=7)


def info(run: RunRecord) -> RunInfo:
    return RunInfo(run.workflow_id, run.title, run.plan, run.max_cycles, run.cycle + 1, run.lease_epoch)


def no_doubt() -> None:
    pass


def in_doubt() -> None:
    raise LeaseInDoubt("wf")


async def test_the_step_runs_under_the_leases_epoch(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    run = journaled(tmp_path / "journal.txt")
    output = await driver.run_cycle(executor, run, info(run), no_doubt)
    assert isinstance(output.outcome, Succeeded) and output.found == []
    assert [line.split()[::4] for line in (tmp_path / "journal.txt").read_text().splitlines()] == [
        ["start", "7"],
        ["end", "7"],
    ]


async def test_a_lease_in_doubt_starts_no_step(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    run = journaled(tmp_path / "journal.txt")
    with pytest.raises(LeaseInDoubt):
        await driver.run_cycle(executor, run, info(run), in_doubt)
    assert not (tmp_path / "journal.txt").exists()


async def test_a_failing_step_is_an_error_and_a_critical_one_ends_the_run(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    failing = a_run(plan=[{"procedure": "test_fail", "parameters": {"path": str(tmp_path / "count")}}])
    output = await driver.run_cycle(executor, replace(failing, state={"next_step": 0}), info(failing), no_doubt)
    assert output.outcome == Errored("RuntimeError: planned failure 1")
    critical = a_run(plan=[{"procedure": "test_critical", "parameters": {"message": "ledger gone"}}])
    output = await driver.run_cycle(executor, replace(critical, state={"next_step": 0}), info(critical), no_doubt)
    assert output.outcome == Errored("ledger gone", critical=True)


def test_the_procedure_label_is_the_next_steps_when_registered_else_other() -> None:
    assert driver.procedure_of(a_run(state={"next_step": 1})) == "test_noop"
    unknown = a_run(plan=[{"procedure": "not_registered", "parameters": {}}], state={"next_step": 0})
    assert driver.procedure_of(unknown) == "other"
    assert driver.procedure_of(a_run(state={"next_step": 9})) == "other"
