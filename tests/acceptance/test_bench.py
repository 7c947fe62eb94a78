"""The benchmarks run end to end (`--quick`) and report every figure docs/benchmarks.md
quotes: they are deliverables, and must not rot between the sessions that read them."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest

from auditflow.limits import DEFAULT_MAX_STREAMS
from bench import fairness, rest, scale, versus, watch
from bench.approve import report
from tests.support.cluster import ROOT

LOAD_KEYS = ("noop@1", "approve@1", "noop@64", "approve@64", "status@64")

# Each benchmark is a script given up to 300 s (`run_quick`); the test waits as long. On a
# 2-core machine busy with a second suite, the REST benchmark took more than pytest's 120 s.
pytestmark = pytest.mark.timeout(300)


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def run_quick(script: str, *flags: str) -> dict[str, Any]:
    """The figures of `bench/<script> --quick --json`, run as a script from the checkout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    settings = figures["observability"]
    assert set(settings) == {
        "metrics off",
        "metrics on",
        "metrics on, tracing (in-memory, default sampling)",
        "metrics on, tracing (in-memory, every call)",
    }
    for setting in settings.values():
        for key in ("noop@64", "approve@64"):
            assert setting[key]["calls"] == 1000 and positive(setting[key]["gateway_cpu_us_per_call"])

    # The human-readable report prints from the same figures.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report(figures, as_json=False)
    text = printed.getvalue()
    for line in ("approve/no-op p50 at 1 caller", "floor: no-op + one durable commit", "approve -> first cycle starts"):
        assert line in text
    assert "CPU per approved run, until it completed" in text
    assert "authentication, Approve at 64 callers" in text and "vs baseline" in text
    assert "observability, Approve at 64 callers" in text and "vs off" in text
    assert "tracing (default sampling) / metrics on:" in text


def test_the_versus_benchmark_alternates_this_checkout_with_an_older_commit() -> None:
    figures = run_quick("versus.py")
    assert figures["commit"] == "89729cc" and len(figures["rounds"]) == 1
    for name in ("89729cc", "this checkout"):
        measured = figures["rounds"][0][name]
        assert set(measured) == {"cpu_us_per_approve@64", "rate_share@64", "approve_p50_ms@1", "p50_ratio@1"}
        assert all(positive(value) for value in measured.values()), (name, measured)
    assert positive(figures["medians"]["cpu_ratio@64"])
    assert "median of the rounds' ratios" in versus.report(figures)


def test_the_handler_benchmark_measures_approve_without_grpc() -> None:
    figures = run_quick("handler.py")
    assert figures["approvals"] == 1280 and figures["callers"] == 64
    assert positive(figures["cpu_us_per_approval"]) and positive(figures["approvals_per_second"])
    assert figures["approvals_per_commit"] > 1  # group commit: concurrent approvals share fsyncs


def test_the_watch_benchmark_delivers_every_event_to_every_watcher_and_reports_every_figure() -> None:
    figures = run_quick("watch.py")

    events = watch.STEPS + 5  # created, approved, queued, started, one per step, completed
    for transport in watch.TRANSPORTS:
        runs = figures[transport]
        assert set(runs) == {"200", "1000"}, transport
        for count, run in runs.items():
            watchers, where = int(count), (transport, count)
            assert run["watchers"] == run["admitted"] == run["gap_free"] == watchers, (where, run)
            assert run["ended"] == {"ok": watchers}, (where, run["ended"])
            assert run["events"] == events, (where, run["events"])
            assert run["delivered"] == run["expected_deliveries"] == watchers * (events - 1), where
            for name in WATCH_FIGURES:
                assert positive(run[name]), (where, name, run[name])
            assert run["latency_p50_ms"] <= run["latency_p99_ms"] <= run["latency_max_ms"], where
            assert run["first_watcher_p50_ms"] <= run["last_watcher_p50_ms"], where
            assert run["approved_first_watcher_ms"] <= run["approved_last_watcher_ms"], where
            assert run["admission_p50_s"] <= run["admission_s"], where
            assert math.isfinite(run["processor_cpu_ms_during_burst"]) and run["processor_cpu_ms_during_burst"] >= 0
            assert isinstance(run["listen_overflows"], int) and run["listen_overflows"] >= 0, where
            assert run["log_problems"] == {"gateway": 0, "processor": 0}, where
        # The processor does not know about watchers: five times as many cost it no more.
        assert runs["1000"]["processor_cpu_ms_per_run"] < 3 * runs["200"]["processor_cpu_ms_per_run"], runs
    assert len(figures["load_average"]) == 3 and figures["cpus"] >= 1

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        watch.report(figures, as_json=False)
    text = printed.getvalue()
    for transport in watch.TRANSPORTS:
        assert f"{transport}: p99 at 1,000 watchers" in text and f"{transport}: gap-free" in text
    assert "processor CPU per run (ms) at each N" in text and "load average" in text


def test_the_watch_benchmark_measures_its_floor_beside_the_gateway() -> None:
    """`--floor`: the same watchers and events served from memory by one bare process."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "watch.py"), "--watchers", "100", "--floor", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout)
    events = watch.STEPS + 5
    for transport in watch.TRANSPORTS:
        assert set(figures[transport]) == {"100", "100 floor"}, transport
        floor = figures[transport]["100 floor"]
        assert floor["watchers"] == floor["admitted"] == floor["gap_free"] == 100, (transport, floor)
        assert floor["events"] == events and floor["delivered"] == 100 * (events - 1), (transport, floor)
        assert floor["log_problems"] == {"floor": 0}, (transport, floor)
        assert positive(floor["latency_p99_ms"]) and positive(floor["gateway_cpu_us_per_event"]), floor
        assert floor["processor_cpu_ms_per_run"] == 0, floor  # no processor behind the floor
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        watch.report(figures, as_json=False)
    assert "100 floor" in printed.getvalue()


WATCH_FIGURES = (
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "first_watcher_p50_ms",
    "last_watcher_p50_ms",
    "approved_first_watcher_ms",
    "approved_last_watcher_ms",
    "admission_p50_s",
    "admission_s",
    "gateway_cpu_us_per_watcher_admitted",
    "gateway_cpu_us_per_event",
    "gateway_fanout_cpu_ms_per_event",
    "processor_cpu_us_per_event",
    "processor_cpu_ms_per_run",
    "gateway_cpu_ms_per_run",
    "gateway_peak_rss_mb",
    "processor_peak_rss_mb",
    "client_cpu_share_max",
    "client_cpu_us_per_event",
)


def test_the_rest_benchmark_compares_rest_with_grpc_and_the_in_memory_design() -> None:
    figures = run_quick("rest.py")

    ours = [(name, key) for name in (rest.REST, rest.GRPC) for key in rest.KEYS]
    loads = [(rest.IN_MEMORY, "approve@1"), (rest.IN_MEMORY, "approve@64"), *ours]
    for name, key in loads:
        load = figures[name][key]
        assert load["calls"] == (100 if key.endswith("@1") else 1000), (name, key)
        for figure in ("per_second", "p50_ms", "p99_ms", "server_cpu_us_per_call"):
            assert positive(load[figure]), (name, key, figure, load[figure])
        assert load["p50_ms"] <= load["p99_ms"], (name, key)
    assert set(figures["rest_over_grpc"]) == set(rest.KEYS)
    for key, ratio in figures["rest_over_grpc"].items():
        assert positive(ratio), key
        assert math.isclose(ratio, figures[rest.REST][key]["per_second"] / figures[rest.GRPC][key]["per_second"])

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rest.report(figures, as_json=False)
    text = printed.getvalue()
    for key in ("approve@64", "status@64"):
        assert f"REST/gRPC rate, {key}:" in text and "target >= 80%" in text
    assert "auditflow REST / in-memory design, approve@64" in text
    assert "seed" not in text.lower()


def test_the_scale_benchmark_compares_auditflow_with_procrastinate_on_postgresql() -> None:
    figures = run_quick("scale.py")

    assert set(figures["throughput"]) == {"1", "2"}
    for count, load in figures["throughput"].items():
        assert load["total_concurrency"] == 4 * int(count)
        for name, workers in (("auditflow", "processors"), ("procrastinate", "workers")):
            run = load[name]
            assert run["runs"] == 80, (count, name)
            for figure in (
                "submitted_per_second",
                "completed_per_second",
                "seen_per_second",
                "client_cpu_us_per_run",
                f"{workers}_cpu_us_per_run",
                "postgres_cpu_us_per_run",
                "total_cpu_us_per_run",
            ):
                assert positive(run[figure]), (count, name, figure, run[figure])
            assert 0 < run["machine_busy_share"] <= 1
            assert run["completed_per_second"] >= run["seen_per_second"] * 0.999  # (seen after the stamp)
        assert positive(load["auditflow"]["gateway_cpu_us_per_run"])
    for mode in ("notify", "polling"):
        cases = figures["latency"][mode]
        for case in ("receiver free", "receiver full"):
            run = cases[case]
            assert run["samples"] == 6, (mode, case)
            stamps = [run[f"{name}_stamp_p50_ms"] for name in ("approved", "queued", "started", "cycle", "completed")]
            assert stamps[0] > 0 and stamps == sorted(stamps), (mode, case, stamps)
            seen = [run[f"{name}_seen_p50_ms"] for name in ("started", "cycle", "completed")]
            assert seen == sorted(seen) and run["completed_stamp_p50_ms"] <= seen[-1], (mode, case, seen)
        # The receiving processor A claims the runs it has a slot for; B those it has none for.
        assert cases["receiver full"]["started_by"] == {"p1": 6}, cases["receiver full"]["started_by"]
        assert cases["receiver free"]["started_by"].get("p0", 0) >= 3, cases["receiver free"]["started_by"]
        theirs = cases["procrastinate"]
        stamps = [theirs[f"{name}_stamp_p50_ms"] for name in ("queued", "started", "completed")]
        assert theirs["samples"] == 6 and stamps[0] > 0 and stamps == sorted(stamps), (mode, stamps)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        scale.report(figures, as_json=False)
    text = printed.getvalue()
    assert text.count("auditflow/procrastinate:") == 2 and "approve -> COMPLETED * p50" in text
    assert "where approve -> COMPLETED goes" in text


def test_the_fingerprint_benchmark_compares_bound_and_plain_runs() -> None:
    figures = run_quick("fingerprint.py")["fingerprint"]
    assert figures["rows"] == 50_000
    assert all(positive(figures[key]) for key in ("cpu_ratio", "wall_ratio", "binding_share"))


def test_the_collection_benchmark_sees_every_change_on_every_queue() -> None:
    results = run_quick("collection.py")["collection"]
    assert [r["watchers"] for r in results] == [1, 20]
    for r in results:
        assert r["complete"] and r["deliveries"] == r["watchers"] * r["plans"]
        assert all(positive(r[key]) for key in ("p50_ms", "p99_ms", "max_ms"))


def test_the_fairness_benchmark_holds_the_flood_to_its_limits_and_fails_nobody_else() -> None:
    apart = os.sched_getaffinity(0) > fairness.FLOOD_CPUS  # (a core for the flood, another for the rest)
    figures = run_quick("fairness.py", "--watch-loop", "--watch-pace", "0.5", "--elsewhere", *["--apart"] * apart)

    paces = {**fairness.PACE, "WatchStatus": 0.5}  # (--watch-pace)
    for phase in ("unloaded", "loaded", fairness.ELSEWHERE):
        for kind, pace in paces.items():
            calls = figures[phase][kind]
            assert calls["failures"] == 0, (phase, figures[phase]["failures_by_status"])
            assert calls["calls"] == 3 * round(4.0 / pace), (phase, kind, calls)
            assert positive(calls["p50_ms"]) and calls["p50_ms"] <= calls["p99_ms"]
        assert positive(figures[phase]["gateway_cpu_share"])
    flood = figures["flood"]
    # The flood met every limit it pushed against, and held exactly the streams it may.
    for refused in (
        "CreateWorkflow RESOURCE_EXHAUSTED",
        "ListWorkflows RESOURCE_EXHAUSTED",
        "WatchStatus RESOURCE_EXHAUSTED",
    ):
        assert flood["calls"].get(refused, 0) > 0, flood
    # It opened collection watches of each kind (answered, or refused: they share the read rate).
    for kind in ("WatchWorkflows", "REST WatchWorkflows", "WatchWorkflows resumed"):
        assert sum(n for answer, n in flood["calls"].items() if answer.rsplit(" ", 1)[0] == kind) > 0, flood
    held = DEFAULT_MAX_STREAMS - sum(fairness.STREAMS_OPENED.values())  # (slots kept for the watches it reopens)
    assert flood["streams_held"] == held, flood
    # The same flood aimed at the other gateway met its limits there (its floor phase).
    assert figures["flood_elsewhere"]["streams_held"] == held, figures["flood_elsewhere"]
    for ratios in ("p99_ratio", "p99_ratio_to_elsewhere", "p99_ratio_elsewhere"):
        assert set(figures[ratios]) == set(fairness.CALLS) and all(map(positive, figures[ratios].values()))
    assert figures["writer_waits"].startswith("flood ") or "; flood " in figures["writer_waits"], figures
    assert all(f"; {name} " in f"; {figures['writer_waits']}" for name in fairness.PEOPLE), figures
    for phase in ("unloaded", "loaded"):  # what held up the gateway's loop (--watch-loop)
        loop = figures["loop"][phase]
        assert positive(loop["lag_p50_ms"]) and loop["lag_p50_ms"] <= loop["lag_p99_ms"] <= loop["lag_max_ms"], loop
        assert loop["full_collections"] >= 0 and loop["collections_ms"] >= 0, loop

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        fairness.report(figures, as_json=False)
    assert "p99 ratio" in printed.getvalue() and "the flood:" in printed.getvalue()
    assert "the gateway's loop loaded" in printed.getvalue()
    assert "beside the flood aimed at another gateway" in printed.getvalue()
    if apart:  # the flooding process on a core of its own, the servers (and the people) off it
        assert figures["flood"]["cpus"] == sorted(fairness.FLOOD_CPUS) == figures["flood_elsewhere"]["cpus"]
        assert figures["gateway_cpus"] and not set(figures["gateway_cpus"]) & fairness.FLOOD_CPUS, figures


def test_the_heap_benchmark_times_a_full_collection_with_and_without_the_start_up_objects() -> None:
    figures = run_quick("heap.py")

    assert figures["frozen_objects"] > 10_000
    before, after = figures["full_collection"]["as started"], figures["full_collection"]["start-up frozen"]
    assert after["tracked"] < before["tracked"] - 10_000
    assert positive(before["median_ms"]) and positive(after["median_ms"]) and positive(figures["ratio"])


def test_the_checkpoints_benchmark_compares_inline_and_thread_checkpoints() -> None:
    figures = run_quick("checkpoints.py")

    for way in ("thread", "inline"):
        for phase in ("alone", "beside the flood"):
            writes = figures[f"{way}, {phase}"]
            assert writes["writes"] == 12 and positive(writes["p50_ms"]) and writes["p50_ms"] <= writes["p99_ms"]
        assert figures["plans_stored_by_the_flood"][way] > 0
    assert figures["checkpoints_by_the_thread"] > 0


def test_the_writer_share_benchmark_reports_both_writers() -> None:
    figures = run_quick("writer_share.py")

    for writer in ("share", "first come"):
        for phase in ("alone", "beside the flood"):
            found = figures[f"{writer}, {phase}"]
            assert found["writes"] == 3 * 4, (writer, phase, found)
            assert positive(found["p50_ms"]) and found["p50_ms"] <= found["p99_ms"]
        assert positive(figures["plans_stored_by_the_flood"][writer])


def test_the_pending_quota_benchmark_counts_from_the_index_and_through_the_rows() -> None:
    figures = run_quick("pending_quota.py")

    assert [found["pending"] for found in figures] == [10, 100]
    for found in figures:
        for name in ("count_from_index_ms", "count_through_rows_ms", "ratio", "new_plan_write_ms"):
            assert positive(found[name]), (found, name)
