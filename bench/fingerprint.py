"""What binding the data to the approval costs a large audit run.

For one generated ledger (default 1 000 000 entries) it runs the default audit plan (the sample
plan's nine steps: ledger_summary, vendor_totals and the seven audit procedures) driven by the
plan orchestrator cycle by cycle, as the processor drives it, in two ways that alternate
(A B A B ...), each in a fresh child process:

- `plain`: the plan as it ran before data files were fingerprinted;
- `bound`: what a bound plan costs end to end: the file fingerprinted as at submission
  (size, SHA-256, modification time), then the same plan with each step's approved
  fingerprint, so that every step checks the file before reading it (the hash once per file
  identity, a stat after every load).

It prints each round's wall and CPU times (the CPU of every thread of the child) and the time
spent fingerprinting and checking, then the medians of the ratios bound / plain and of that
time's share of the plain run: the target is that binding adds under 10 %. On a busy machine
the wall ratio moves by more than that from pair to pair; the CPU ratio and the measured share
are the steadier figures.

    python bench/fingerprint.py                 # 1M entries, 3 rounds
    python bench/fingerprint.py --rows 200000 --rounds 5
    python bench/fingerprint.py --quick         # 50k entries, 1 round: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def steps_for(path: str) -> list[dict[str, Any]]:
    from auditflow import synthetic
    from auditflow.procedures import AUDIT_PROCEDURES

    holidays = [d.isoformat() for d in synthetic.holidays(range(2026, 2030))]
    steps: list[dict[str, Any]] = [
        {"procedure": "ledger_summary", "parameters": {"path": path}},
        {"procedure": "vendor_totals", "parameters": {"path": path, "top": 5}},
    ]
    for name in AUDIT_PROCEDURES:
        parameters: dict[str, Any] = {"path": path}
        if name == "weekend_postings":
            parameters["holidays"] = holidays
        steps.append({"procedure": name, "parameters": parameters})
    return steps


def child(mode: str, ledger: str) -> dict[str, Any]:
    """One run of the plan, in this (fresh) process."""
    from auditflow import fingerprints
    from processor.orchestrator import RunInfo
    from processor.plan_orchestrator import PlanOrchestrator

    spent = {"seconds": 0.0}
    for name in ("check", "unchanged"):  # the time the checks themselves take, summed
        setattr(fingerprints.VERIFIER, name, _timed(getattr(fingerprints.VERIFIER, name), spent))
    started = time.perf_counter()
    steps = steps_for(ledger)
    if mode == "bound":
        t = time.perf_counter()
        taken = fingerprints.take(Path(ledger), "path", ledger).to_json()
        spent["seconds"] += time.perf_counter() - t
        steps = [{**step, "sources": [taken]} for step in steps]
    orchestrator = PlanOrchestrator()
    state = json.loads(json.dumps(orchestrator.start(RunInfo("wf_bench", "bench", steps, 1000, 0))))
    cycle = 0
    while True:
        cycle += 1
        result = orchestrator.cycle(RunInfo("wf_bench", "bench", steps, 1000, cycle), state)
        state = json.loads(json.dumps(result.state))  # the checkpoint, as the processor keeps it
        if result.done:
            break
    return {"mode": mode, "seconds": time.perf_counter() - started, "cycles": cycle, "binding": spent["seconds"]}


def _timed(fn: Any, spent: dict[str, float]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - t

    return timed


def run_child(mode: str, ledger: Path) -> dict[str, float]:
    """One child's wall time, CPU time (every thread of it, from wait4) and binding time."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", mode, "--ledger", str(ledger)], stdout=out, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{mode} failed: {text[-2000:]}")
    report = json.loads(text.strip().splitlines()[-1])
    return {"wall": report["seconds"], "cpu": usage.ru_utime + usage.ru_stime, "binding": report["binding"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="ledger entries (default 1 000 000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs (default 3)")
    parser.add_argument("--quick", action="store_true", help="50k entries, one round")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", choices=("plain", "bound"), help=argparse.SUPPRESS)
    parser.add_argument("--ledger", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.ledger)))
        return 0
    rows, rounds = (50_000, 1) if args.quick else (args.rows, args.rounds)
    from auditflow import synthetic

    with tempfile.TemporaryDirectory(prefix="auditflow-fingerprint-") as tmp:
        ledger = Path(tmp) / f"ledger-{rows}.csv"
        entries, _ = synthetic.generate(rows, seed=11)
        with ledger.open("w", newline="") as out:
            synthetic.write_csv(entries, out)
        del entries
        size = ledger.stat().st_size
        say = print if not args.json else (lambda *a, **k: None)
        say(f"ledger: {rows} entries, {size / 1e6:.1f} MB; {rounds} alternating round(s) of plain, bound")
        cpu_ratios, wall_ratios, shares = [], [], []
        for index in range(rounds):
            plain, bound = run_child("plain", ledger), run_child("bound", ledger)
            cpu_ratios.append(bound["cpu"] / plain["cpu"])
            wall_ratios.append(bound["wall"] / plain["wall"])
            shares.append(bound["binding"] / plain["wall"])
            say(
                f"  round {index + 1}: plain {plain['wall']:.2f} s ({plain['cpu']:.2f} s CPU), bound "
                f"{bound['wall']:.2f} s ({bound['cpu']:.2f} s CPU), of which fingerprinting and checks "
                f"{bound['binding']:.2f} s"
            )
        figures = {
            "rows": rows,
            "cpu_ratio": round(statistics.median(cpu_ratios), 3),
            "wall_ratio": round(statistics.median(wall_ratios), 3),
            "binding_share": round(statistics.median(shares), 3),
        }
        if args.json:
            print(json.dumps({"fingerprint": figures}))
        else:
            print(
                f"median bound/plain: CPU {figures['cpu_ratio']:.3f}, wall {figures['wall_ratio']:.3f}; "
                f"fingerprinting and checks alone: {figures['binding_share']:.1%} of the plain run's wall time "
                "(target: under 10 %)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
