"""The driver: runs one claimed run's cycles, each under a lease the keeper vouches for.

Per cycle: call the orchestrator (off the event loop), then ONE transaction, conditional on
still holding the lease, that checkpoints the cycle, appends its event(s) and renews the
lease. A cycle whose commit finds the lease gone is abandoned: whoever holds the lease now
reruns it from the last checkpoint (cycles are at-least-once). Event sequences and cycle
numbers thus stay gap-free across crashes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection

from auditflow import logs, metrics, procedures, statuses, tracing, trail
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import Unavailable
from auditflow.procedures import CriticalError
from auditflow.waits import wait_for
from processor import findings_store, messages, orchestrator, store, transitions
from processor.lease import LeaseInDoubt, LeaseKeeper, lease_end
from processor.orchestrator import CycleResult, RunInfo
from processor.settings import Settings
from processor.store import Appended, EventRecord, RunRecord
from processor.transitions import Errored, Outcome, Succeeded, Transition

# One logger name for a run's lifecycle, whichever part logs it (operators filter on it).
logger = logging.getLogger("processor.scheduler")


@dataclass(frozen=True)
class Workshop:
    """What every driver of this processor shares."""

    db: Database
    hub: messages.Broadcast
    settings: Settings
    executor: Executor
    # Set when the processor stops: drivers stop between cycles.
    stopping: asyncio.Event
    signer: trail.Signer | None = None


@dataclass(frozen=True)
class CycleOutput:
    """How a cycle ended, and the findings to store with its checkpoint."""

    outcome: Outcome
    found: list[dict[str, Any]] = field(default_factory=list)


class Driver:
    """Drives one run, from its claim until it ends, its lease is lost or the processor stops.
    Use on the event loop only."""

    def __init__(self, shop: Workshop, keeper: LeaseKeeper) -> None:
        self._shop = shop
        self.keeper = keeper
        self.workflow_id = keeper.workflow_id
        # Set to cut the pause between cycles short (stop, or a cancel arrived here).
        self.wake = asyncio.Event()

    async def drive(self, run: RunRecord) -> None:
        """Drive `run` until it ends or is let go; never raises but for cancellation."""
        logs.bind(workflow_id=run.workflow_id)  # (this task's records; its renewer copies them)
        renewer = asyncio.create_task(self.keeper.keep(), name=f"lease {run.workflow_id}")
        try:
            await self._cycles(run)
        except asyncio.CancelledError:
            logger.warning("%s: abandoned mid-cycle on shutdown; it resumes from its checkpoint", run.workflow_id)
            raise
        except Unavailable:
            logger.warning("%s: the database is unavailable; the run resumes from its checkpoint", run.workflow_id)
        except Exception:
            logger.exception("%s: driving the run failed; it resumes once its lease expires", run.workflow_id)
        finally:
            renewer.cancel()

    async def _cycles(self, run: RunRecord) -> None:
        """The first cycle starts at once; `cycle_delay` only separates later ones."""
        while True:
            if run.cancel_requested:
                await self._commit(run, transitions.cancelled_between_cycles)
                return
            committed = await self._one_cycle(run)
            if committed is None or statuses.is_terminal(committed.status):
                return
            refreshed = await self._between_cycles(committed)
            if refreshed is None:
                return
            run = refreshed

    async def _between_cycles(self, run: RunRecord) -> RunRecord | None:
        """Wait `cycle_delay` (cut short by stop or a cancel), then re-read the run: a cancel
        may have been requested through any processor. None: stop driving it."""
        await wait_for(self.wake, self._shop.settings.cycle_delay)
        self.wake.clear()
        if self._shop.stopping.is_set():
            return None
        current = await self._shop.db.read(functools.partial(store.get_run, workflow_id=run.workflow_id))
        if current is None or current.lease != self.keeper.lease or statuses.is_terminal(current.status):
            owner = current.lease_owner if current else None
            logger.warning("%s: lease lost to %s; abandoning the run", run.workflow_id, owner)
            return None
        return current

    async def _one_cycle(self, run: RunRecord) -> RunRecord | None:
        if not await self.keeper.holds():
            return None
        cycle = run.cycle + 1
        logs.bind(cycle=cycle)
        epoch = self.keeper.lease.epoch
        info = RunInfo(run.workflow_id, run.title, run.plan, run.max_cycles, cycle, epoch)
        logger.debug("%s cycle %d: state %s", run.workflow_id, cycle, run.state)
        procedure = procedure_of(run)
        attributes = {
            "auditflow.workflow_id": run.workflow_id,
            "auditflow.cycle": cycle,
            "auditflow.procedure": procedure,
            "auditflow.lease_epoch": epoch,
        }
        with tracing.span(f"cycle {cycle}", parent=run.trace_context or "", attributes=attributes) as span:
            started = time.perf_counter()
            output = await self._call_orchestrator(run, info)
            if output is None:
                return None
            _count(procedure, output.outcome, time.perf_counter() - started)
            committed = await self._commit(run, self._after_cycle(cycle, output.outcome), output.found)
            if span is not None and committed is not None:
                span.set_attributes(
                    {
                        "auditflow.status": statuses.name(committed.status),
                        "auditflow.message": committed.last_message,
                        "auditflow.findings": len(output.found),
                    }
                )
            return committed

    def _after_cycle(self, cycle: int, outcome: Outcome) -> Callable[[RunRecord], Transition]:
        settings = self._shop.settings

        def decide(locked: RunRecord) -> Transition:
            end = lease_end(utcnow(), settings.lease_seconds)
            return transitions.after_cycle(
                locked, cycle, outcome, max_failures=settings.max_consecutive_failures, lease_expires_at=end
            )

        return decide

    async def _call_orchestrator(self, run: RunRecord, info: RunInfo) -> CycleOutput | None:
        """Run one cycle and classify how it ended; never raises (except cancellation).
        None: the lease was lost before the cycle could start.

        The lease is checked again on the cycle's thread right before the orchestrator runs,
        after the hop to it: a pause there (a stopped process, a busy pool) renews the lease
        first, or lets the run go."""
        while True:
            try:
                return await run_cycle(self._shop.executor, run, info, self.keeper.check)
            except LeaseInDoubt:
                if not await self.keeper.holds():
                    return None

    async def _commit(
        self, run: RunRecord, decide: Callable[[RunRecord], Transition], found: list[dict[str, Any]] | None = None
    ) -> RunRecord | None:
        """Apply `decide(locked run)` and store the cycle's findings in one transaction if we
        still hold the lease; publish the events. None when the lease was lost (the run is
        abandoned to its new owner, and so are the findings: it stores them when it reruns)."""
        lease, signer = self.keeper.lease, self._shop.signer

        def tx(conn: Connection) -> Appended | None:
            locked = store.lock_run(conn, run.workflow_id, lease=lease)
            if locked is None:
                return None
            events, changes = decide(locked)
            if found:
                findings_store.add(conn, locked.workflow_id, locked.findings_count + 1, found)
                changes = {**changes, "findings_count": locked.findings_count + len(found)}
            return store.append(conn, locked, events, changes, utcnow(), signer)

        started = self.keeper.now()
        committed = await self._shop.db.write(tx)
        if committed is None:
            metrics.FENCED.inc()
            logger.warning("%s: lease lost; abandoning the run to its new owner", run.workflow_id)
            return None
        self.keeper.extended(started)
        messages.publish(self._shop.hub, committed.events)
        _log_events(committed.run, committed.events)
        return committed.run


async def run_cycle(executor: Executor, run: RunRecord, info: RunInfo, check: Callable[[], None]) -> CycleOutput:
    """Call the run's orchestrator for one cycle (`check` runs right before each of its
    methods starts, on its thread) and classify how the cycle ended; raises only LeaseInDoubt
    (from `check`: nothing started) and cancellation."""
    try:
        plugin = orchestrator.load(run.orchestrator)
        state = run.state
        if state is None:
            state = await orchestrator.call(executor, plugin.start, replace(info, cycle=0), check=check)
        result = await orchestrator.call(executor, plugin.cycle, info, state, check=check)
        _check_result(result)
        found = await asyncio.get_running_loop().run_in_executor(executor, _normalized, result.findings)
    except LeaseInDoubt:
        raise
    except (CriticalError, orchestrator.UnknownOrchestrator) as exc:
        # Logged at ERROR with the FAILED event it causes.
        return CycleOutput(Errored(str(exc) or type(exc).__name__, critical=True))
    except Exception as exc:
        logger.warning(
            "%s cycle %d failed: %s: %s", run.workflow_id, info.cycle, type(exc).__name__, exc, exc_info=True
        )
        return CycleOutput(Errored(f"{type(exc).__name__}: {exc}"))
    return CycleOutput(Succeeded(result), found)


def procedure_of(run: RunRecord) -> str:
    """The procedure of the step a cycle works on, for metrics: the plan orchestrator's next
    step, if it names a registered procedure (a bounded label set); else "other"."""
    state = run.state or {}
    index = state.get("next_step", 0) if isinstance(state, dict) else 0
    if run.orchestrator == orchestrator.DEFAULT and isinstance(index, int) and 0 <= index < len(run.plan):
        name = run.plan[index].get("procedure")
        if isinstance(name, str) and procedures.REGISTRY.get(name) is not None:
            return name
    return metrics.OTHER


def _count(procedure: str, outcome: Outcome, seconds: float) -> None:
    metrics.CYCLE_SECONDS.labels(procedure).observe(seconds)
    if isinstance(outcome, Errored):
        metrics.CYCLE_ERRORS.labels(procedure, "critical" if outcome.critical else "error").inc()


def _normalized(raw: list[Any]) -> list[dict[str, Any]]:
    """A cycle's findings, checked and bounded for the table (ValueError: the cycle fails)."""
    return [findings_store.normalize(f, int(f.get("step", 0)) if isinstance(f, dict) else 0, "") for f in raw]


def _check_result(result: Any) -> None:
    """Reject what cannot be checkpointed before it reaches the transaction."""
    if not isinstance(result, CycleResult):
        raise TypeError(f"cycle returned {type(result).__name__}, not CycleResult")
    json.dumps(result.state)
    json.dumps(result.result)


def _log_events(run: RunRecord, events: list[EventRecord]) -> None:
    for event in events:
        wid = event.workflow_id
        if event.status == statuses.S.WORKFLOW_STATUS_FAILED:
            logger.error("%s: %s (reason %s)", wid, event.message, event.error_reason)
        elif event.type == transitions.E.EVENT_TYPE_CYCLE_FAILED:
            logger.debug("%s: recorded %s", wid, event.message)  # the WARNING was logged with its traceback
        else:
            progress = f"{event.progress_done}/{event.progress_total}"
            logger.info("%s cycle %d/%d: %s (progress %s)", wid, event.cycle, run.max_cycles, event.message, progress)
