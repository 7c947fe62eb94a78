"""The orchestrator plugin interface: what the scheduler calls, once per cycle, to advance a run.

An orchestrator is found by name in the entry point group `auditflow.orchestrators`; the
entry point names a class (instantiated once, without arguments) or a ready object. The
built-in one is `plan = processor.plan_orchestrator:PlanOrchestrator`. It provides:

- `start(run) -> dict`: the initial state of a run (a JSON object), called before its first
  cycle and again whenever a run resumes with no checkpointed state yet.
- `cycle(run, state) -> CycleResult`: one bounded step of work. It returns the new state,
  progress, a message, the findings this cycle found, and whether the run is done (with its
  result). After each cycle the scheduler checkpoints the returned state, progress and cycle
  number, and stores the findings, in one transaction: a cycle rerun after a crash stores its
  findings again exactly once. The result and the state must stay small (findings are stored,
  not carried in them): a run's result travels in every snapshot of it.

Either method may be a plain function or `async def`. Plain functions run in a thread pool,
never on the event loop, so they may block; coroutines are awaited on the event loop and must
not block it.

Cycles are AT-LEAST-ONCE. A processor killed (or losing its lease) in the middle of a cycle
has checkpointed nothing for it; another processor reclaims the run and reruns that cycle
from the last checkpoint. A cycle must therefore be safe to repeat: derive everything from
`state` and write side effects idempotently.

Long work should be cut into cycles through the state. The built-in plan orchestrator does it
for chunked procedures (`auditflow.procedures.register_chunked`): its state is
{"next_step", "results", "chunk_state"}, it calls the current step's chunk function with
`chunk_state` until the step reports its result: per cycle at least the step's share of its
chunks left (so that the plan finishes within `max_cycles` however slow the machine), more
within a time budget (`AUDITFLOW_CYCLE_BUDGET`, default 2 s); a crash reruns the chunks since
the last checkpoint. See docs/plugins.md.

Fencing: `RunInfo.lease_epoch` is the run's lease epoch, one more on every claim. A cycle's
checkpoint commits only while that lease holds, and a processor starts a cycle only with a
safe share of its lease left by its own clock (checked last on the thread that calls `start`
or `cycle`, right before the call); but a cycle under way when its process froze
can still finish after another processor has taken the run over. Side effects outside our
database that must not overlap should carry the epoch and be refused by their target when an
older epoch arrives after a newer one (see docs/architecture.md). Procedures read it from
`auditflow.procedures.current_run()`.

Errors: raising `auditflow.procedures.CriticalError` fails the run (reason CRITICAL_ERROR).
Any other exception is a cycle error: a WARNING event is recorded, the state is not
advanced, and the next cycle retries; too many in a row fail the run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar, cast

from auditflow.plans import ORCHESTRATOR_GROUP

DEFAULT = "plan"
T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    """What an orchestrator knows about the run it advances."""

    workflow_id: str
    title: str
    # The plan steps: [{"procedure": name, "parameters": {...}}, ...].
    plan: list[dict[str, Any]]
    max_cycles: int
    # Number of the cycle about to run (1 for the first); 0 when passed to `start`.
    cycle: int
    # The fencing token of the lease this cycle runs under: higher on every claim of the run
    # (a takeover after a crash or a lost lease). A side effect outside auditflow's database
    # can be fenced with it: the other system refuses a write whose epoch is lower than one
    # it has seen for the run, so a processor that resumes from a freeze cannot overwrite
    # the work of the one that took over.
    lease_epoch: int = 0


@dataclass(frozen=True)
class CycleResult:
    """The outcome of one successful cycle."""

    state: dict[str, Any]
    progress_done: int
    progress_total: int
    message: str
    done: bool = False
    # The run's result (a JSON object) once done.
    result: dict[str, Any] | None = None
    # What this cycle found: {"step", "procedure", "severity", "entry_ids", "amount",
    # "explanation"} each (see processor/findings_store.py); stored with the checkpoint.
    findings: list[dict[str, Any]] = field(default_factory=list)


class Orchestrator(Protocol):
    """Drives a run through cycles; see the module docstring for the contract."""

    def start(self, run: RunInfo) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...

    def cycle(self, run: RunInfo, state: dict[str, Any]) -> CycleResult | Awaitable[CycleResult]: ...


class UnknownOrchestrator(LookupError):
    """No orchestrator is registered under this name."""


@functools.cache
def load(name: str) -> Orchestrator:
    """The orchestrator registered as `name` (loaded once per process)."""
    for ep in entry_points(group=ORCHESTRATOR_GROUP, name=name):
        target = ep.load()
        return cast(Orchestrator, target() if isinstance(target, type) else target)
    raise UnknownOrchestrator(f"no orchestrator named {name!r} in entry points {ORCHESTRATOR_GROUP!r}")


async def call(
    executor: Executor, fn: Callable[..., T | Awaitable[T]], *args: Any, check: Callable[[], None] | None = None
) -> T:
    """Call an orchestrator method: await a coroutine function, run a plain one in `executor`.

    `check`, if given, runs right before `fn` starts, on the thread that runs it: the last
    moment a caller can refuse to start (by raising), after any wait for a free thread."""
    if inspect.iscoroutinefunction(fn):
        if check is not None:
            check()
        return cast(T, await fn(*args))
    loop = asyncio.get_running_loop()
    # In this task's context (its trace span and log fields), as asyncio.to_thread does.
    context = contextvars.copy_context()
    result = await loop.run_in_executor(executor, functools.partial(context.run, _checked, check, fn, *args))
    if inspect.isawaitable(result):  # a plain function that returned an awaitable
        return cast(T, await result)
    return result


def _checked(check: Callable[[], None] | None, fn: Callable[..., T], *args: Any) -> T:
    if check is not None:
        check()
    return fn(*args)
