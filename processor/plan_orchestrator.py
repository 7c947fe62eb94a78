"""The built-in orchestrator: an audit plan's steps in order, one step (or a time budget of
chunks) per cycle.

A plain procedure is one step per cycle: every step is a checkpoint, and a processor that dies
mid-step reruns only that step (procedures are safe to repeat, see `auditflow.procedures`).

Findings do not stay in the state or the result: each step hands them over (a plain
procedure under its result's "findings", a chunked one in each `Chunk.findings`) and the cycle
returns them, marked with their step, for the processor to store with the checkpoint. A step's
result without its findings must fit in `MAX_STEP_RESULT`, and all of them in `MAX_RESULT`
(far under a gRPC message's 4 MiB): the run's result is every step's summary, bounded in
size whatever the ledger.

A chunked procedure (`auditflow.procedures.register_chunked`, e.g. the built-in audit
procedures over a large ledger) is called once per chunk, and its chunk state is checkpointed
with the run's state. A cycle's work is bounded by work, not by the clock alone: each step is
given the cycles the run can spare it (the cycles left under `max_cycles`, less one for each
later step), and each cycle of the step does at least its share of the chunks left, so a step,
and the plan, finish within `max_cycles` however slow the machine: a slow one takes longer per
cycle, never more cycles. Past that share, a cycle goes on with more chunks until its time
budget is used (`AUDITFLOW_CYCLE_BUDGET` seconds, default 2), so a fast machine needs fewer
cycles, and a cancel or a crash loses at most the chunks of one cycle. A finished step ends its
cycle. A cycle also ends once it holds `MAX_CYCLE_FINDINGS` findings (they are stored with it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

from auditflow import procedures, tracing
from auditflow.fingerprints import Fingerprint
from auditflow.procedures import CriticalError
from processor.orchestrator import CycleResult, RunInfo

logger = logging.getLogger(__name__)

DEFAULT_CYCLE_BUDGET = 2.0
MAX_STEP_RESULT = 64 * 1024  # bytes of JSON: a step's result without its findings
MAX_RESULT = 1024 * 1024  # bytes of JSON: every step's result together (a snapshot carries it)
MAX_CYCLE_FINDINGS = 100_000  # a cycle ends early past this many (they are stored with it)


def cycle_budget() -> float:
    try:
        return max(0.0, float(os.environ.get("AUDITFLOW_CYCLE_BUDGET", DEFAULT_CYCLE_BUDGET)))
    except ValueError:
        return DEFAULT_CYCLE_BUDGET


class PlanOrchestrator:
    """State: {"next_step": index of the step to run, "results": [result of each step done],
    "chunk_state": the state of the chunked step under way (absent between steps)}."""

    def __init__(self) -> None:
        # Built-in procedures and entry-point plugins; --plugin modules are loaded by the server.
        self._registry = procedures.load()
        self.budget = cycle_budget()

    def start(self, run: RunInfo) -> dict[str, Any]:
        return {"next_step": 0, "results": []}

    def cycle(self, run: RunInfo, state: dict[str, Any]) -> CycleResult:
        total = len(run.plan)
        index = int(state.get("next_step", 0))
        results = list(state.get("results", []))
        chunk_state: dict[str, Any] | None = state.get("chunk_state")
        found: list[dict[str, Any]] = []
        if index < total:
            step = run.plan[index]
            name = step["procedure"]
            procedure = self._registry.get(name)
            if procedure is None:
                raise CriticalError(f"step {index + 1}/{total}: unknown procedure {name!r}")
            parameters = dict(step.get("parameters") or {})
            approved = tuple(Fingerprint.from_json(f) for f in step.get("sources") or ())
            context = procedures.RunContext(run.workflow_id, run.cycle, index + 1, run.lease_epoch, approved)
            step_span, traced = f"step {index + 1} {name}", {"auditflow.procedure": name, "auditflow.step": index + 1}
            logger.debug("%s cycle %d: running step %d/%d %s", run.workflow_id, run.cycle, index + 1, total, name)
            if procedure.chunk is None:
                with procedures.running(context), tracing.span(step_span, attributes=traced):
                    result = dict(procedure.run(parameters))
                found = _tagged(result.pop("findings", None) or [], index, name)
                results.append(_bounded(result, index, name, results))
                index += 1
                message = f"step {index}/{total} {name} done"
            else:
                deadline = time.monotonic() + self.budget
                cycles = cycles_for_step(run, total - index)
                calls = 0
                while True:
                    with procedures.running(context), tracing.span(step_span, attributes=traced) as span:
                        chunk = procedure.chunk(parameters, chunk_state)
                        if span is not None:
                            span.set_attributes(
                                {
                                    "auditflow.chunk": chunk.done,
                                    "auditflow.chunks": chunk.total,
                                    "auditflow.rows": chunk.rows,
                                    "auditflow.findings": len(chunk.findings),
                                }
                            )
                    calls += 1
                    found.extend(_tagged(chunk.findings, index, name))
                    if chunk.result is not None:
                        results.append(_bounded(chunk.result, index, name, results))
                        index += 1
                        chunk_state = None
                        message = f"step {index}/{total} {name} done"
                        break
                    chunk_state = chunk.state
                    share = math.ceil((chunk.total - chunk.done + calls) / cycles)  # the chunks left at the start
                    if (calls >= share and time.monotonic() >= deadline) or len(found) >= MAX_CYCLE_FINDINGS:
                        message = f"step {index + 1}/{total} {name}: chunk {chunk.done}/{chunk.total} done"
                        break
        else:
            message = f"all {total} steps done"
        done = index >= total
        new_state: dict[str, Any] = {"next_step": index, "results": results}
        if chunk_state is not None:
            new_state["chunk_state"] = chunk_state
        return CycleResult(
            state=new_state,
            progress_done=index,
            progress_total=total,
            message=message,
            done=done,
            result=_result(run, results) if done else None,
            findings=found,
        )


def cycles_for_step(run: RunInfo, steps_left: int) -> int:
    """The cycles this step may take, this one included: those left under `max_cycles`, less
    one for each later step (a step takes at least one cycle). At least one."""
    if run.max_cycles <= 0:  # (no limit)
        return 1_000_000
    return max(1, run.max_cycles - run.cycle + 1 - (steps_left - 1))


def _tagged(findings: Any, index: int, procedure: str) -> list[dict[str, Any]]:
    """A step's findings, marked with the step (1 for the first) and its procedure."""
    if not isinstance(findings, list):
        raise CriticalError(f"step {index + 1} {procedure}: findings must be a list")
    return [
        {**f, "step": index + 1, "procedure": f.get("procedure") or procedure} if isinstance(f, dict) else f
        for f in findings
    ]


def _bounded(result: Any, index: int, procedure: str, results: list[Any]) -> Any:
    """A step's result goes into every snapshot of the run: it must stay small (the findings
    are stored apart), and so must all of them together (`results`: the earlier steps'). A
    larger one fails the run: a plugin's bug to fix, not a run to wedge."""
    size = len(json.dumps(result))
    if size > MAX_STEP_RESULT:
        raise CriticalError(
            f"step {index + 1} {procedure}: its result is {size} bytes without its findings, at most "
            f"{MAX_STEP_RESULT}: return findings under 'findings' and keep the result a summary"
        )
    total = size + len(json.dumps(results))
    if total > MAX_RESULT:
        raise CriticalError(
            f"step {index + 1} {procedure}: the run's result would be {total} bytes, at most {MAX_RESULT}: "
            "keep each step's result a short summary"
        )
    return result


def _result(run: RunInfo, results: list[Any]) -> dict[str, Any]:
    return {
        "steps": [
            {"procedure": step["procedure"], "result": result} for step, result in zip(run.plan, results, strict=False)
        ]
    }
