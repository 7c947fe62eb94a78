"""Approve on this checkout beside an older commit, alternating in one run.

Each round starts a fresh gateway alone (no processor, SQLite with synchronous=FULL, API
tokens) for each version in turn, loaded by that version's own `bench/approve.py`: no-op and
Approve at 1 caller, then at 64 callers. It prints, per round and as medians over the rounds,
the gateway's CPU per Approve at 64 callers (and the per-round ratio of this checkout to the
older one), Approve's rate as a share of the no-op's, and Approve's p50 at 1 caller against
the no-op's. Alternating is what makes two versions comparable on a machine whose speed
drifts: each round meets both at nearly the same moment.

    python bench/versus.py                     # this checkout beside 89729cc, 3 rounds
    python bench/versus.py --commit abc1234 --rounds 5
    python bench/versus.py --quick             # one small round (smoke test)

The older commit must have `bench/approve.py` with API-token callers (89729cc and later).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Run in a subprocess with the version's checkout first on sys.path: its own benchmark code.
ONE_GATEWAY = r"""
import asyncio, json, sys, tempfile
from pathlib import Path
import bench.approve as a
calls_1, calls_64 = int(sys.argv[1]), int(sys.argv[2])
if __name__ == "__main__":
    figures = {}
    with tempfile.TemporaryDirectory(prefix="auditflow-versus-") as tmp:
        a.CALLERS = a.token_callers(Path(tmp))
        with a.running_pair(Path(tmp) / "gateway", False) as pair:
            target, pid = pair.gateway.target, pair.gateway.pid
            a.run_load(a._client, (target, "noop", ()), ["-"] * 300, 8, 1)  # warm up
            for callers, calls in ((1, calls_1), (64, calls_64)):
                processes = 1 if callers == 1 else 2
                figures[f"noop@{callers}"] = a.timed_load(pid, (target, "noop", ()), ["-"] * calls, callers, processes)
                ids = asyncio.run(a.create_many(target, calls))
                approver = (target, "approve", a.CALLERS.approver)
                figures[f"approve@{callers}"] = a.timed_load(pid, approver, ids, callers, processes)
    print(json.dumps(figures))
"""


def checkout(commit: str, directory: Path) -> Path:
    """The commit's files (git archive), without touching this checkout's work tree."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def one_gateway(root: Path, calls_1: int, calls_64: int) -> dict[str, float]:
    """One fresh gateway of the version at `root`, measured by its own benchmark code."""
    done = subprocess.run(
        [sys.executable, "-c", ONE_GATEWAY, str(calls_1), str(calls_64)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the gateway of {root} failed:\n{done.stderr[-3000:]}")
    loads = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "cpu_us_per_approve@64": loads["approve@64"]["gateway_cpu_us_per_call"],
        "rate_share@64": loads["approve@64"]["per_second"] / loads["noop@64"]["per_second"],
        "approve_p50_ms@1": loads["approve@1"]["p50_ms"],
        "p50_ratio@1": loads["approve@1"]["p50_ms"] / loads["noop@1"]["p50_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="89729cc", help="the older version")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls-1", type=int, default=500, help="calls at 1 caller, per gateway")
    parser.add_argument("--calls-64", type=int, default=3000, help="calls at 64 callers, per gateway")
    parser.add_argument("--quick", action="store_true", help="one small round (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls_1, args.calls_64 = 1, 100, 640
    with tempfile.TemporaryDirectory(prefix="auditflow-older-") as tmp:
        versions = {args.commit: checkout(args.commit, Path(tmp)), "this checkout": ROOT}
        rounds = [
            {name: one_gateway(root, args.calls_1, args.calls_64) for name, root in versions.items()}
            for _ in range(args.rounds)
        ]
    figures = {"commit": args.commit, "rounds": rounds, "medians": medians(rounds)}
    print(json.dumps(figures, indent=2) if args.json else report(figures))


def medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Each figure's median over the rounds, per version, and of this checkout's ratio to the
    older one's CPU per Approve round by round."""
    names = list(rounds[0])
    figures: dict[str, Any] = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]} for name in names
    }
    older, ours = names
    ratios = [r[ours]["cpu_us_per_approve@64"] / r[older]["cpu_us_per_approve@64"] for r in rounds]
    figures["cpu_ratio@64"] = statistics.median(ratios)
    return figures


def report(figures: dict[str, Any]) -> str:
    lines = [f"{'':16}{'CPU us/Approve@64':>19}{'rate vs no-op@64':>18}{'p50 ms@1':>10}{'p50 vs no-op@1':>16}"]
    rows = [(f"round {i + 1}", r) for i, r in enumerate(figures["rounds"])] + [("median", figures["medians"])]
    for label, versions in rows:
        for name in (figures["commit"], "this checkout"):
            f = versions[name]
            lines.append(
                f"{label + ' ' + name:<24}{f['cpu_us_per_approve@64']:11.0f}{f['rate_share@64']:18.0%}"
                f"{f['approve_p50_ms@1']:10.2f}{f['p50_ratio@1']:15.2f}x"
            )
    lines.append(
        f"this checkout / {figures['commit']}, CPU per Approve at 64 callers, median of the rounds' "
        f"ratios: {figures['medians']['cpu_ratio@64']:.3f} (target <= 1)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
