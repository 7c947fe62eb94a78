"""The catalogue of audit procedures a plan step may name.

Both services use it: the gateway to reject a plan that names an unknown procedure or bad
parameters before anything is stored, the processor to run the steps. Procedures register
with `@register`; plugins (modules named with `--plugin`, or entry points in the group
`auditflow.procedures`) register theirs the same way on import.

A procedure is a blocking function `run(parameters) -> dict` (the step's JSON result). It is
called on a worker thread, at least once per step: a processor that dies mid-step runs the
step again, so a procedure must be safe to repeat. Findings go under the result's "findings"
(a list of {"procedure", "severity", "entry_ids", "amount", "explanation"}): the plan
orchestrator takes them out and the processor stores them, so a result stays small (a step
result over 64 KiB without its findings fails the step). It raises `CriticalError` when the run
cannot go on (the run fails); any other exception is a cycle error and the step is retried
in the next cycle.

A procedure may also be CHUNKED (`register_chunked`): a function `chunk(parameters, state) ->
Chunk` that does one bounded part of the work per call, and hands over the findings of that
part in `Chunk.findings`. It is first called with `state` None; each call returns the next
state (a JSON object, which the plan orchestrator checkpoints) and, on the last call, the
step's result. It must derive everything from
`parameters` and `state` (never mutate `state`), so that a call repeated after a crash gives
the same answer. Such a procedure is also runnable whole: `run` calls `chunk` until done.

While the processor runs a step, `current_run()` says which run, cycle and step it is, and
the lease epoch: a fencing token, higher on every claim of the run. A procedure whose side
effects leave auditflow (a ticket filed, a file written elsewhere) passes the epoch along,
and the other side refuses a write with an epoch lower than one it has already seen for the
run: a processor that resumes after a freeze and finishes a step another has taken over
meanwhile is then refused instead of overwriting the newer work.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from auditflow.errors import FieldViolation
from auditflow.fingerprints import Fingerprint

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "auditflow.procedures"
# The built-in audit procedures, in the order the sample plan runs them, each with the module
# that registers it (`load` imports them). Here, not there, so that naming them does not
# import DuckDB. A new procedure is a module under auditflow/procedures/checks/ and a line here.
BUILT_IN = {
    "duplicate_payments": "auditflow.procedures.checks.duplicates",
    "benford_first_digit": "auditflow.procedures.checks.benford",
    "round_amounts": "auditflow.procedures.checks.round_amounts",
    "weekend_postings": "auditflow.procedures.checks.weekend",
    "split_purchases": "auditflow.procedures.checks.split",
    "segregation_of_duties": "auditflow.procedures.checks.duties",
    "outliers": "auditflow.procedures.checks.outliers",
}
AUDIT_PROCEDURES = tuple(BUILT_IN)

RunFn = Callable[[dict[str, Any]], dict[str, Any]]
ValidateFn = Callable[[dict[str, Any]], Iterable[FieldViolation]]


@dataclass(frozen=True)
class Chunk:
    """What one call of a chunked procedure did."""

    state: dict[str, Any]  # JSON, passed back to the next call
    done: int  # chunks done so far
    total: int  # chunks in all
    result: dict[str, Any] | None = None  # the step's result, on the last call
    # What this call found ({"procedure", "severity", "entry_ids", "amount", "explanation"}):
    # stored by the processor with the cycle's checkpoint, never kept in the state.
    findings: list[dict[str, Any]] = field(default_factory=list)
    # Rows this call read (0: not counted): shown on the cycle's trace span.
    rows: int = 0


ChunkFn = Callable[[dict[str, Any], dict[str, Any] | None], Chunk]


class CriticalError(Exception):
    """A procedure failed in a way that retrying cannot mend; the run fails."""


class SourceChanged(CriticalError):
    """A data file is not the one approved (see `auditflow.fingerprints`): nothing may read it."""


@dataclass(frozen=True)
class Procedure:
    name: str
    run: RunFn
    description: str = ""
    validate: ValidateFn | None = None
    chunk: ChunkFn | None = None


@dataclass(frozen=True)
class RunContext:
    """The run a procedure is called for (see `current_run`)."""

    workflow_id: str
    cycle: int
    step: int  # 1 for the plan's first
    lease_epoch: int  # the fencing token: higher on every claim of the run
    # The step's data files as approved: a file read for the step must still match.
    sources: tuple[Fingerprint, ...] = ()

    def source(self, given: str) -> Fingerprint | None:
        """The approved fingerprint of the file a parameter names as `given`, if any."""
        return next((f for f in self.sources if f.path == given), None)


_current: ContextVar[RunContext | None] = ContextVar("auditflow_current_run", default=None)


def current_run() -> RunContext | None:
    """The run this procedure call belongs to; None outside the processor (a script, a test)."""
    return _current.get()


@contextmanager
def running(context: RunContext) -> Iterator[None]:
    """Make `context` the current run of the calls made inside (the plan orchestrator does)."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


@dataclass
class Registry:
    """Named procedures. `REGISTRY` is the process-wide one."""

    procedures: dict[str, Procedure] = field(default_factory=dict)

    def register(self, name: str, *, validate: ValidateFn | None = None) -> Callable[[RunFn], RunFn]:
        def decorator(fn: RunFn) -> RunFn:
            doc = (fn.__doc__ or "").strip().splitlines()
            self.procedures[name] = Procedure(name, fn, doc[0] if doc else "", validate)
            return fn

        return decorator

    def register_chunked(self, name: str, *, validate: ValidateFn | None = None) -> Callable[[ChunkFn], ChunkFn]:
        def decorator(fn: ChunkFn) -> ChunkFn:
            def run(parameters: dict[str, Any]) -> dict[str, Any]:
                """The whole step at once, for scripts and tests: its result, with every
                finding under "findings" in the order they were found."""
                state: dict[str, Any] | None = None
                findings: list[dict[str, Any]] = []
                while True:
                    step = fn(parameters, state)
                    findings.extend(step.findings)
                    if step.result is not None:
                        return {**step.result, "findings": findings}
                    state = step.state

            doc = (fn.__doc__ or "").strip().splitlines()
            self.procedures[name] = Procedure(name, run, doc[0] if doc else "", validate, fn)
            return fn

        return decorator

    def get(self, name: str) -> Procedure | None:
        return self.procedures.get(name)

    def names(self) -> list[str]:
        return sorted(self.procedures)


REGISTRY = Registry()
register = REGISTRY.register
register_chunked = REGISTRY.register_chunked

_loaded = False


def load(plugins: Iterable[str] = ()) -> Registry:
    """Import the built-in procedures, the entry-point plugins and the named modules."""
    global _loaded
    if not _loaded:
        importlib.import_module("auditflow.procedures.ledger")
        for module in BUILT_IN.values():
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            logger.debug("loading procedure plugin %s", ep.value)
            ep.load()
        _loaded = True
    for module in plugins:
        importlib.import_module(module)
    return REGISTRY
