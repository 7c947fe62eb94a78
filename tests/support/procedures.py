"""Test procedures, registered on import (`--plugin tests.support.procedures`).

- test_sleep(seconds): sleeps; records how many run at once in this process (PEAK).
- test_fail(path, failures): fails its first `failures` calls, counting them in the file
  `path`, so the count survives a processor restart or another process.
- test_critical(message): raises CriticalError.
- test_noop: returns at once.
- test_context: returns `current_run()` (the run, cycle, step and lease epoch it runs under).
- test_fenced(store, step, seconds): writes "begin" and "end" to an outside store (a SQLite
  file) that refuses a write whose lease epoch is lower than one it has seen for the run.
- test_findings(count, per_chunk): chunked; finds `count` made-up findings.
- test_result(size, findings): a result of about `size` bytes, with `findings` findings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from auditflow.errors import FieldViolation
from auditflow.procedures import Chunk, CriticalError, current_run, register, register_chunked

_lock = threading.Lock()
ACTIVE = 0
PEAK = 0


def reset_peak() -> None:
    global PEAK
    with _lock:
        PEAK = ACTIVE


def _check_seconds(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    seconds = parameters.get("seconds", 0)
    if not isinstance(seconds, int | float) or not 0 <= seconds <= 60:
        yield FieldViolation("parameters.seconds", "a number of seconds between 0 and 60")


@register("test_sleep", validate=_check_seconds)
def test_sleep(parameters: dict[str, Any]) -> dict[str, Any]:
    """Sleep for `seconds`."""
    global ACTIVE, PEAK
    with _lock:
        ACTIVE += 1
        PEAK = max(PEAK, ACTIVE)
    try:
        time.sleep(float(parameters.get("seconds", 0)))
    finally:
        with _lock:
            ACTIVE -= 1
    return {"slept": parameters.get("seconds", 0)}


@register("test_journal")
def test_journal(parameters: dict[str, Any]) -> dict[str, Any]:
    """Sleep for `seconds` between two lines appended to the file `journal`: "start PID STEP
    TIME EPOCH" and "end PID STEP TIME EPOCH" (TIME: time.time(); EPOCH: the lease epoch), so
    a test sees which process ran which step when, under which lease."""
    journal, number = str(parameters["journal"]), int(parameters["step"])
    context = current_run()
    epoch = context.lease_epoch if context else 0
    with open(journal, "a", encoding="utf-8") as out:
        out.write(f"start {os.getpid()} {number} {time.time()!r} {epoch}\n")
    time.sleep(float(parameters.get("seconds", 0)))
    with open(journal, "a", encoding="utf-8") as out:
        out.write(f"end {os.getpid()} {number} {time.time()!r} {epoch}\n")
    return {"step": number}


@register("test_fail")
def test_fail(parameters: dict[str, Any]) -> dict[str, Any]:
    """Fail the first `failures` calls (counted in the file `path`), then succeed."""
    path = Path(parameters["path"])
    with _lock:
        calls = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(calls))
    if calls <= int(parameters.get("failures", 1)):
        raise RuntimeError(f"planned failure {calls}")
    return {"calls": calls}


@register("test_critical")
def test_critical(parameters: dict[str, Any]) -> dict[str, Any]:
    """Fail the run."""
    raise CriticalError(str(parameters.get("message", "planned critical failure")))


@register("test_noop")
def test_noop(parameters: dict[str, Any]) -> dict[str, Any]:
    """Do nothing."""
    return {"ok": True}


@register("test_context")
def test_context(parameters: dict[str, Any]) -> dict[str, Any]:
    """Return the run this call belongs to (without the step's data fingerprints)."""
    context = current_run()
    if context is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(context).items() if k != "sources"}


class Fenced(Exception):
    """The outside store refused a write from an older lease."""


def fenced_write(path: str, step: int, what: str) -> None:
    """Record `what` for `step` in the outside store at `path`, fenced by the lease epoch: a
    write whose epoch is below the highest the store has accepted for the run is refused (and
    recorded as refused, for the test to see)."""
    context = current_run()
    assert context is not None, "called outside a run"
    with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE IF NOT EXISTS writes (workflow_id, step, what, epoch, pid, accepted)")
        (seen,) = db.execute(
            "SELECT max(epoch) FROM writes WHERE workflow_id = ? AND accepted", (context.workflow_id,)
        ).fetchone()
        accepted = seen is None or context.lease_epoch >= seen
        db.execute(
            "INSERT INTO writes VALUES (?, ?, ?, ?, ?, ?)",
            (context.workflow_id, step, what, context.lease_epoch, os.getpid(), accepted),
        )
        db.execute("COMMIT")
    if not accepted:
        raise Fenced(f"step {step} {what}: lease epoch {context.lease_epoch} < {seen}")


@register("test_fenced")
def test_fenced(parameters: dict[str, Any]) -> dict[str, Any]:
    """Write "begin", sleep `seconds`, write "end" to the fenced outside store `store`."""
    path, number = str(parameters["store"]), int(parameters["step"])
    fenced_write(path, number, "begin")
    time.sleep(float(parameters.get("seconds", 0)))
    fenced_write(path, number, "end")
    return {"step": number}


@register_chunked("test_findings")
def test_findings(parameters: dict[str, Any], state: dict[str, Any] | None) -> Chunk:
    """Find `count` findings (default 1000), `per_chunk` (default 50000) a call: a run with
    more findings than any message could hold."""
    count, per_chunk = int(parameters.get("count", 1000)), int(parameters.get("per_chunk", 50_000))
    start = int((state or {}).get("next", 0))
    end = min(count, start + per_chunk)
    found = [
        {
            "severity": ("high", "medium", "low")[i % 3],
            "entry_ids": [f"JE-{i}"],
            "amount": f"{i % 10_000}.{i % 100:02d}",
            "explanation": f"finding {i} of {count}: look at entry JE-{i}",
        }
        for i in range(start, end)
    ]
    chunks = max(1, -(-count // per_chunk))
    done = -(-end // per_chunk)
    result = {"found": count} if end >= count else None
    return Chunk({"next": end}, done, chunks, result, findings=found)


@register("test_result")
def test_result(parameters: dict[str, Any]) -> dict[str, Any]:
    """A result of about `size` bytes of JSON, and `findings` findings under "findings"."""
    found = [
        {"severity": "low", "entry_ids": [f"E{i}"], "amount": "1", "explanation": "x"}
        for i in range(int(parameters.get("findings", 0)))
    ]
    return {"padding": "x" * int(parameters.get("size", 0)), "findings": found}


@register("test_wait_for_file")
def test_wait_for_file(parameters: dict[str, Any]) -> dict[str, Any]:
    """Wait until the file at `path` exists (at most 60 s): lets a test act between steps."""
    path = Path(str(parameters["path"]))
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise CriticalError(f"{path} did not appear within 60 s")
        time.sleep(0.02)
    return {"waited_for": str(path)}
