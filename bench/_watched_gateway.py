"""`python -m bench._watched_gateway [gateway flags]`: the gateway, with what holds up its
event loop recorded, for `bench/fairness.py --watch-loop`:
- every garbage collection: when, its generation, how long it took (on whichever thread);
- the loop's lag: a thread asks the loop every 5 ms to run a callback, and records how late
  it ran (waiting for the interpreter lock, or for the callbacks ahead of it).
Written as JSON to `$AUDITFLOW_WATCH_FILE` when the gateway stops. `$AUDITFLOW_SWITCH_INTERVAL`
(seconds) sets the interpreter's switch interval in place of the gateway's own, to measure another;
`$AUDITFLOW_GC_THRESHOLD` ("700,10,10") the collector's thresholds; with
`$AUDITFLOW_FREEZE_ON_SIGNAL` set, SIGUSR1 has the gateway collect and freeze once more."""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from auditflow import heap
from gateway import server
from gateway.settings import Settings

EVERY = 0.005
collections: list[tuple[float, int, float]] = []  # (wall clock, generation, seconds)
lags: list[tuple[float, float]] = []  # (wall clock, seconds late)
_began: dict[str, float] = {}


def _collected(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _began["at"] = time.perf_counter()
    elif "at" in _began:
        collections.append((time.time(), int(info["generation"]), time.perf_counter() - _began.pop("at")))


def _sample(loop: asyncio.AbstractEventLoop) -> None:
    def ran(asked: float) -> None:
        lags.append((time.time(), time.perf_counter() - asked))

    while not loop.is_closed():
        try:
            loop.call_soon_threadsafe(ran, time.perf_counter())
        except RuntimeError:  # (the loop closed meanwhile)
            return
        time.sleep(EVERY)


def _write() -> None:
    path = os.environ.get("AUDITFLOW_WATCH_FILE")
    if path:
        with open(path, "w") as out:
            json.dump({"collections": collections, "lags": lags}, out)


_serve = server.serve
_freeze = threading.Event()


def _freeze_when_asked() -> None:
    _freeze.wait()
    heap.freeze_start_up()


async def _watched(settings: Settings) -> None:
    if "AUDITFLOW_SWITCH_INTERVAL" in os.environ:  # (after the gateway's own, to measure another)
        sys.setswitchinterval(float(os.environ["AUDITFLOW_SWITCH_INTERVAL"]))
    threading.Thread(target=_sample, args=(asyncio.get_running_loop(),), name="loop-lag", daemon=True).start()
    await _serve(settings)


if __name__ == "__main__":
    if "AUDITFLOW_GC_THRESHOLD" in os.environ:
        gc.set_threshold(*(int(x) for x in os.environ["AUDITFLOW_GC_THRESHOLD"].split(",")))
    if "AUDITFLOW_FREEZE_ON_SIGNAL" in os.environ:
        signal.signal(signal.SIGUSR1, lambda *_: _freeze.set())
        threading.Thread(target=_freeze_when_asked, name="freeze", daemon=True).start()
    gc.callbacks.append(_collected)
    atexit.register(_write)
    server.serve = _watched  # type: ignore[assignment]
    server.main()
