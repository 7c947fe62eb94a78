"""The benchmarks run end to end (`--quick`) and report every figure docs/benchmarks.md
quotes: they are deliverables, and must not rot between the sessions that read them."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from typing import Any

from bench.approve import report
from tests.support.cluster import ROOT

LOAD_KEYS = ("noop@1", "approve@1", "noop@64", "approve@64", "status@64")


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def run_quick(script: str) -> dict[str, Any]:
    """The figures of `bench/<script> --quick --json`, run as a script from the checkout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def test_the_approve_benchmark_runs_and_reports_every_figure() -> None:
    figures = run_quick("approve.py")

    for phase in ("gateway alone", "pair"):
        for key in LOAD_KEYS:
            load = figures[phase][key]
            assert load["calls"] == (200 if key.endswith("@1") else 2000), (phase, key)
            for name in ("per_second", "p50_ms", "p99_ms", "gateway_cpu_us_per_call"):
                assert positive(load[name]), (phase, key, name, load[name])
            assert load["p50_ms"] <= load["p99_ms"]
    for floor in ("durable_commit", "thread_round_trip"):
        assert positive(figures[floor]["p50_ms"]) and figures[floor]["p50_ms"] <= figures[floor]["p99_ms"]
    first = figures["approve_to_first_cycle"]
    assert first["samples"] == 20
    assert 0 < first["to_started_p50_ms"] <= first["to_first_cycle_done_p50_ms"]
    cost = figures["cost_per_run"]
    assert cost["runs"] == 50
    assert positive(cost["gateway_cpu_us_per_run"]) and positive(cost["processor_cpu_us_per_run"])
    ways = figures["authentication"]
    assert set(ways) == {"baseline (typed-in header)", "API token", "JWT"}
    for way in ways.values():
        for key in ("noop@64", "approve@64"):
            assert way[key]["calls"] == 2000 and positive(way[key]["gateway_cpu_us_per_call"])

    # The human-readable report prints from the same figures.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report(figures, as_json=False)
    text = printed.getvalue()
    for line in ("approve/no-op p50 at 1 caller", "floor: no-op + one durable commit", "approve -> first cycle starts"):
        assert line in text
    assert "CPU per approved run, until it completed" in text
    assert "authentication, Approve at 64 callers" in text and "vs baseline" in text


def test_the_handler_benchmark_measures_approve_without_grpc() -> None:
    figures = run_quick("handler.py")
    assert figures["approvals"] == 1280 and figures["callers"] == 64
    assert positive(figures["cpu_us_per_approval"]) and positive(figures["approvals_per_second"])
    assert figures["approvals_per_commit"] > 1  # group commit: concurrent approvals share fsyncs
