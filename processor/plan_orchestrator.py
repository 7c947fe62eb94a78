"""The built-in orchestrator: an audit plan's steps in order, one step per cycle.

One step per cycle keeps a cycle bounded and makes every step a checkpoint: a processor that
dies mid-step reruns only that step (procedures are safe to repeat, see
`auditflow.procedures`).
"""

from __future__ import annotations

import logging
from typing import Any

from auditflow import procedures
from auditflow.procedures import CriticalError
from processor.orchestrator import CycleResult, RunInfo

logger = logging.getLogger(__name__)


class PlanOrchestrator:
    """State: {"next_step": index of the step to run, "results": [result of each step run]}."""

    def __init__(self) -> None:
        # Built-in procedures and entry-point plugins; --plugin modules are loaded by the server.
        self._registry = procedures.load()

    def start(self, run: RunInfo) -> dict[str, Any]:
        return {"next_step": 0, "results": []}

    def cycle(self, run: RunInfo, state: dict[str, Any]) -> CycleResult:
        total = len(run.plan)
        index = int(state.get("next_step", 0))
        results = list(state.get("results", []))
        if index < total:
            step = run.plan[index]
            name = step["procedure"]
            procedure = self._registry.get(name)
            if procedure is None:
                raise CriticalError(f"step {index + 1}/{total}: unknown procedure {name!r}")
            logger.debug("%s cycle %d: running step %d/%d %s", run.workflow_id, run.cycle, index + 1, total, name)
            results.append(procedure.run(dict(step.get("parameters") or {})))
            index += 1
            message = f"step {index}/{total} {name} done"
        else:
            message = f"all {total} steps done"
        done = index >= total
        return CycleResult(
            state={"next_step": index, "results": results},
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
