"""The built-in orchestrator: an audit plan's steps in order, one step (or a time budget of
chunks) per cycle.

A plain procedure is one step per cycle: every step is a checkpoint, and a processor that dies
mid-step reruns only that step (procedures are safe to repeat, see `auditflow.procedures`).

A chunked procedure (`auditflow.procedures.register_chunked`, e.g. the built-in audit
procedures over a large ledger) is called once per chunk, and its chunk state is checkpointed
with the run's state. A cycle does chunks of the current step until the step is done or the
cycle has used its time budget (`AUDITFLOW_CYCLE_BUDGET` seconds, default 2; at least one
chunk per cycle), so a cycle never holds a worker for long, and a cancel or a crash loses at
most the chunks of one cycle. The budget, rather than one chunk per cycle, keeps the number of
cycles of a plan near its work time divided by the budget whatever the chunk size, so that a
plan over a million entries fits the default `max_cycles` (15).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from auditflow import procedures
from auditflow.procedures import CriticalError
from processor.orchestrator import CycleResult, RunInfo

logger = logging.getLogger(__name__)

DEFAULT_CYCLE_BUDGET = 2.0


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
        if index < total:
            step = run.plan[index]
            name = step["procedure"]
            procedure = self._registry.get(name)
            if procedure is None:
                raise CriticalError(f"step {index + 1}/{total}: unknown procedure {name!r}")
            parameters = dict(step.get("parameters") or {})
            logger.debug("%s cycle %d: running step %d/%d %s", run.workflow_id, run.cycle, index + 1, total, name)
            if procedure.chunk is None:
                results.append(procedure.run(parameters))
                index += 1
                message = f"step {index}/{total} {name} done"
            else:
                deadline = time.monotonic() + self.budget
                while True:
                    chunk = procedure.chunk(parameters, chunk_state)
                    if chunk.result is not None:
                        results.append(chunk.result)
                        index += 1
                        chunk_state = None
                        message = f"step {index}/{total} {name} done"
                        break
                    chunk_state = chunk.state
                    if time.monotonic() >= deadline:
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
        )


def _result(run: RunInfo, results: list[Any]) -> dict[str, Any]:
    return {
        "steps": [
            {"procedure": step["procedure"], "result": result} for step, result in zip(run.plan, results, strict=False)
        ]
    }
