"""What the load benchmarks share: callers spread over client processes, and percentiles.

A client function takes `(*head, ids, concurrency)` and returns `(latencies, first, last)`:
the latency of each call, and the wall-clock times of its first call and last answer.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

Client = Callable[[tuple[Any, ...]], tuple[list[float], float, float]]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(
    client: Client, head: tuple[Any, ...], ids: list[str], concurrency: int, processes: int
) -> dict[str, float]:
    """`concurrency` callers over `processes` client processes, each taking a share of `ids`.
    The rate counts from the first call to the last answer (not the processes' start-up)."""
    return summary(*collect(client, head, ids, concurrency, processes))


def collect(
    client: Client, head: tuple[Any, ...], ids: list[str], concurrency: int, processes: int
) -> tuple[list[float], float]:
    """run_load's raw figures: every call's latency, and the span from the first call to the
    last answer (loads measured in parts are summed with `summary` over all their parts)."""
    processes = min(processes, concurrency)
    shards = [ids[i::processes] for i in range(processes)]
    per_process = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(client, [(*head, s, c) for s, c in zip(shards, per_process, strict=True)])
    latencies = [x for r in results for x in r[0]]
    return latencies, max(r[2] for r in results) - min(r[1] for r in results)


def summary(latencies: list[float], span: float) -> dict[str, float]:
    return {
        "calls": len(latencies),
        "per_second": len(latencies) / span,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }
