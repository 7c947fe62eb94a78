"""The default audit plan over large generated ledgers, next to a plain DuckDB script.

For each size (default 100 000 and 1 000 000 entries) it generates a ledger with
`auditflow.synthetic` (not timed), then runs, each in a fresh child process so that peak
memory is that child's own (`os.wait4` rusage, max RSS):

- `plan`: the README's default plan (the sample plan: ledger_summary, vendor_totals, then the
  seven audit procedures) pointed at the ledger, driven by the plan orchestrator cycle by
  cycle as the processor does (the state goes through JSON between cycles, as a checkpoint),
  with the default cycle budget;
- `script`: a plain one-shot DuckDB script doing the same two summaries and seven checks in
  SQL, with none of the service's guarantees (no chunks, no checkpoints, no exact grouping of
  duplicates and split purchases: it counts pairs and windows, so its counts can differ; no
  entry ids or explanations).

- `services`: the same plan through a real processor and gateway (subprocesses, SQLite,
  no cycle delay): from Approve to COMPLETED, the processor's peak RSS, the findings stored,
  then the export of every finding to CSV over REST.

It prints wall time, peak memory, cycles (and the longest cycle) and findings for each. Then,
through the services again, a run of `--findings` made-up findings (default 1 000 000, the
test plugin's `test_findings`): findings stored per second, the processor's peak RSS, and the
CSV export of all of them.

    python bench/audit.py                     # 100k and 1M entries, and a million findings
    python bench/audit.py --rows 20000        # any sizes
    python bench/audit.py --quick             # 20k entries and 50k findings, a smoke test
    python bench/audit.py --rows 1000000 --repeat 10 --services-only   # ten million entries

`--repeat K` makes a ledger K times the generated one with DuckDB (each copy's entry ids and
vendors suffixed, so it finds K times the anomalies): ten million entries in seconds rather
than the generator's minutes. Targets: at 1M entries the services take at most 1.5 times the
plain script's wall time in the same run; at 10M, under 60 s with the processor under 1 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def plan_steps(path: str) -> list[dict[str, Any]]:
    """The sample plan's steps (auditflow.sample.sample_plan), on another ledger."""
    from auditflow import synthetic
    from auditflow.procedures import AUDIT_PROCEDURES  # in the child: the parent stays small

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


def child_plan(path: str) -> dict[str, Any]:
    from auditflow.procedures import AUDIT_PROCEDURES
    from processor.orchestrator import RunInfo
    from processor.plan_orchestrator import PlanOrchestrator

    started = time.perf_counter()
    orchestrator = PlanOrchestrator()
    steps = plan_steps(path)
    info = RunInfo("wf_bench", "bench", steps, 1000, 0)
    state = json.loads(json.dumps(orchestrator.start(info)))
    cycles, longest, per_step = 0, 0.0, {}
    while True:
        cycles += 1
        t = time.perf_counter()
        result = orchestrator.cycle(RunInfo("wf_bench", "bench", steps, 1000, cycles), state)
        spent = time.perf_counter() - t
        longest = max(longest, spent)
        step_name = result.message.split()[2].rstrip(":")
        per_step[step_name] = round(per_step.get(step_name, 0.0) + spent, 2)
        state = json.loads(json.dumps(result.state))  # the checkpoint
        if result.done:
            break
    assert result.result is not None
    findings = {
        s["procedure"]: s["result"]["summary"]["findings"]
        for s in result.result["steps"]
        if s["procedure"] in AUDIT_PROCEDURES
    }
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "cycles": cycles,
        "longest_cycle": round(longest, 2),
        "findings": sum(findings.values()),
        "per_procedure": findings,
        "step_seconds": per_step,
    }


SCRIPT = {
    "duplicate_payments": """SELECT count(*) FROM l a JOIN l b ON a.vendor = b.vendor AND a.cents = b.cents
        AND a.entry_id < b.entry_id AND abs(a.d - b.d) <= 7 WHERE a.cents <> 0""",
    "round_amounts": "SELECT count(*) FROM l WHERE cents <> 0 AND abs(cents) >= 100000 AND abs(cents) % 100000 = 0",
    "weekend_postings": "SELECT count(*) FROM l WHERE isodow(d) >= 6 OR list_contains(CAST(? AS DATE[]), d)",
    "split_purchases": """SELECT count(*) FROM (SELECT sum(cents) OVER w AS total, count(*) OVER w AS n
        FROM l WHERE cents >= 700000 AND cents < 1000000
        WINDOW w AS (PARTITION BY vendor ORDER BY d - DATE '2000-01-01' RANGE BETWEEN CURRENT ROW AND 7 FOLLOWING))
        WHERE total > 1000000 AND n BETWEEN 2 AND 5""",
    "segregation_of_duties": """SELECT count(*) FROM l WHERE coalesce(trim(approved_by), '') = ''
        OR lower(trim(created_by)) = lower(trim(approved_by))""",
}
OUTLIER_GROUPS = """WITH v AS (SELECT vendor, log10(abs(cents)) AS x FROM l WHERE cents <> 0),
    g AS (SELECT vendor, median(x) AS c, count(*) AS n FROM v GROUP BY vendor HAVING count(*) >= 8),
    m AS (SELECT vendor, c, n, median(abs(x - c)) AS mad FROM v JOIN g USING (vendor) GROUP BY vendor, c, n)"""
SUMMARIES = [
    """SELECT account, strftime(d, '%Y-%m') AS month, count(*), sum(amount) FROM l
       GROUP BY GROUPING SETS ((account), (month), ())""",
    "SELECT vendor, sum(amount) AS total, count(*) FROM l GROUP BY vendor ORDER BY total DESC, vendor LIMIT 5",
]


def script_outliers(con: Any) -> int:
    """Modified z per vendor on log10 amounts, high side, the threshold of each group size."""
    from auditflow.procedures.outlier_stats import outlier_threshold

    sizes = [int(n) for (n,) in con.execute(f"{OUTLIER_GROUPS} SELECT DISTINCT n FROM m WHERE mad > 0").fetchall()]
    row = con.execute(
        "SELECT sum(n) FROM (SELECT count(*) AS n FROM l WHERE cents <> 0 GROUP BY vendor) WHERE n >= 8"
    ).fetchone()
    tests = int(row[0]) if row else 0
    limits = [outlier_threshold(tests, group=n) for n in sizes]
    row = con.execute(
        f"""{OUTLIER_GROUPS}, t AS (SELECT unnest(CAST(? AS BIGINT[])) AS n, unnest(CAST(? AS DOUBLE[])) AS lim)
            SELECT count(*) FROM v JOIN m USING (vendor) JOIN t USING (n)
            WHERE mad > 0 AND 0.6745 * (x - c) / mad > lim""",
        [sizes, limits],
    ).fetchone()
    return int(row[0]) if row else 0


def script_benford(con: Any) -> int:
    """First digits: counts per first two digits and magnitude (as the procedure keeps them),
    the MAD verdict, the significant and material over-represented digits, and for each the
    50 largest entries of the band where its excess lies."""
    text = "CAST(abs(cents) AS VARCHAR)"
    cells = con.execute(
        f"SELECT CAST(left({text}, 1) AS INTEGER), length({text}), count(*) FROM l WHERE abs(cents) >= 1000 "
        "GROUP BY 1, 2"
    ).fetchall()
    counts: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for digit, magnitude, count in cells:
        counts[digit] = counts.get(digit, 0) + count
        sizes[magnitude] = sizes.get(magnitude, 0) + count
    n = sum(counts.values())
    benford = {d: math.log10(1 + 1 / d) for d in range(1, 10)}
    mad = sum(abs(counts.get(d, 0) / n - p) for d, p in benford.items()) / 9
    if mad <= 0.012:
        return 0
    flagged = [
        d
        for d, p in benford.items()
        if counts.get(d, 0) / n - p > 0.012
        and (counts.get(d, 0) / n - p - 1 / (2 * n)) / math.sqrt(p * (1 - p) / n) > 2.5758
    ]
    for d in flagged:
        own = {m: c for digit, m, c in cells if digit == d}
        magnitude = max(own, key=lambda m: own[m] - sizes[m] * benford[d])
        unit = 10 ** (magnitude - 1)
        con.execute(
            "SELECT entry_id FROM l WHERE abs(cents) BETWEEN ? AND ? ORDER BY abs(cents) DESC LIMIT 50",
            [d * unit, (d + 1) * unit - 1],
        ).fetchall()
    return len(flagged)


def child_script(path: str) -> dict[str, Any]:
    import duckdb

    from auditflow import synthetic

    started = time.perf_counter()
    con = duckdb.connect(config={"threads": 2})
    con.execute(
        """CREATE TABLE l AS SELECT entry_id, CAST(posting_date AS DATE) AS d, vendor, account,
           CAST(amount AS DECIMAL(38, 6)) AS amount,
           CAST(round(CAST(amount AS DECIMAL(38, 6)) * 100) AS BIGINT) AS cents, created_by, approved_by
           FROM read_csv(?, all_varchar = true)""",
        [path],
    )
    for sql in SUMMARIES:
        con.execute(sql).fetchall()
    holidays = [d.isoformat() for d in synthetic.holidays(range(2026, 2030))]
    findings = {}
    for name, sql in SCRIPT.items():
        row = con.execute(sql, [holidays] if "?" in sql else []).fetchone()
        findings[name] = int(row[0]) if row else 0
    findings["outliers"] = script_outliers(con)
    findings["benford_first_digit"] = script_benford(con)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "findings": sum(findings.values()),
        "per_procedure": findings,
    }


def measure(mode: str, path: Path) -> dict[str, Any]:
    """Run one mode in a child process; its own peak RSS comes from wait4."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", mode, "--ledger", str(path)], stdout=out, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed ({proc.returncode}): {text}")
    report: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    report["wall_seconds"] = round(time.perf_counter() - started, 2)  # including interpreter start-up
    report["peak_mib"] = round(usage.ru_maxrss / 1024)
    report["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)  # every thread's, start-up included
    report["parent_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[Any]:
    """A processor and a gateway as subprocesses (the test suite's harness), no cycle delay."""
    from tests.support.cluster import Pair

    workdir.mkdir(parents=True, exist_ok=True)
    pair = Pair(workdir, processor_args=["--cycle-delay", "0"], log_level="WARNING").start()
    try:
        yield pair
    finally:
        pair.stop()


def through_services(pair: Any, plan: list[dict[str, Any]], title: str, max_cycles: int = 1000) -> dict[str, Any]:
    """Submit, approve, wait for the end; then export every finding as CSV over REST."""
    import grpc

    from auditflow import convert
    from auditflow.v1 import workflow_pb2 as pb
    from auditflow.v1 import workflow_service_pb2 as wpb
    from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
    from tests.support.grpc_helpers import as_user

    steps = [pb.PlanStep(procedure=s["procedure"], parameters=convert.struct(s["parameters"])) for s in plan]
    with grpc.insecure_channel(pair.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        request = wpb.CreateWorkflowRequest(title=title, plan=steps, max_cycles=max_cycles)
        created = stub.CreateWorkflow(request, metadata=as_user("bench-submitter")).workflow
        workflow_id = created.workflow_id
        started, cpu = time.perf_counter(), cpu_seconds(pair.processor.pid)
        approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag)
        stub.Approve(approve, metadata=as_user("bench-approver"))
        last = None
        for message in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("b")):
            last = message.snapshot
        run_seconds = time.perf_counter() - started
        cpu = cpu_seconds(pair.processor.pid) - cpu
        if last is None or last.status != pb.WORKFLOW_STATUS_COMPLETED:
            raise RuntimeError(f"the run did not complete: {last}")
        page = stub.ListFindings(wpb.ListFindingsRequest(workflow_id=workflow_id, page_size=1), metadata=as_user("b"))
        result_bytes = stub.GetWorkflow(
            wpb.GetWorkflowRequest(workflow_id=workflow_id), metadata=as_user("b")
        ).workflow.result.ByteSize()
    peak = peak_rss_mib(pair.processor.pid)
    exported, export_seconds = export_csv(pair, workflow_id)
    return {
        "run_seconds": round(run_seconds, 2),
        "processor_cpu_seconds": round(cpu, 2),
        "cycles": last.cycle,
        "findings": page.total,
        "stored_per_second": round(page.total / run_seconds),
        "result_bytes": result_bytes,
        "processor_peak_mib": round(peak),
        "export_rows": exported,
        "export_seconds": round(export_seconds, 2),
    }


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far, user and system, every thread (/proc/PID/stat).
    On a shared machine a process's CPU time moves far less with the load than its wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export_csv(pair: Any, workflow_id: str) -> tuple[int, float]:
    """Every finding as CSV over REST, read as it streams; (rows, seconds)."""
    import csv
    import io
    import urllib.request

    from tests.support import auth

    url = f"http://127.0.0.1:{pair.gateway.rest_port}/workflows/{workflow_id}/findings/export?format=csv"
    request = urllib.request.Request(url, headers=auth.headers("bench-viewer", ("viewer",)))
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        rows = sum(1 for _ in csv.reader(io.TextIOWrapper(response, encoding="utf-8", newline=""))) - 1
    return rows, time.perf_counter() - started


def print_services(what: str, r: dict[str, Any]) -> None:
    print(
        f"  {what:24} {r['run_seconds']:6.2f} s from Approve to COMPLETED, {r['cycles']} cycles, "
        f"{r['findings']:,} findings stored ({r['stored_per_second']:,}/s), result {r['result_bytes']:,} bytes, "
        f"processor peak {r['processor_peak_mib']} MiB, processor CPU {r['processor_cpu_seconds']:.2f} s"
    )
    print(f"    CSV export over REST: {r['export_rows']:,} findings in {r['export_seconds']:.2f} s")


def repeated(path: Path, copies: int) -> Path:
    """The ledger `copies` times over, each copy's entry ids and vendors suffixed: the same
    anomalies in every copy, and none across copies."""
    import duckdb

    out = path.with_name(f"{path.stem}-x{copies}.csv")
    with duckdb.connect() as con:
        con.execute(
            f"""COPY (SELECT * REPLACE (entry_id || '-' || k AS entry_id, vendor || ' ' || k AS vendor)
                FROM read_csv(?, all_varchar = true), range({copies}) r(k)) TO '{out}' (HEADER)""",
            [str(path)],
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="ledger sizes")
    parser.add_argument("--quick", action="store_true", help="one small ledger (20k entries)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--findings", type=int, default=1_000_000, help="made-up findings of the last run")
    parser.add_argument("--repeat", type=int, default=1, help="copies of the generated ledger in the one measured")
    parser.add_argument("--services-only", action="store_true", help="only the run through the services")
    parser.add_argument("--max-cycles", type=int, default=1000, help="max_cycles of the ledger runs (15: the default)")
    parser.add_argument("--child", choices=("plan", "script"), help=argparse.SUPPRESS)
    parser.add_argument("--ledger", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        report = child_plan(args.ledger) if args.child == "plan" else child_script(args.ledger)
        print(json.dumps(report))
        return 0

    sizes = [20_000] if args.quick else args.rows
    print(f"audit benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="auditflow-bench-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"ledger-{rows}.csv"
            t = time.perf_counter()
            # In a child, so that this process stays small: a child's peak RSS starts from its
            # parent's (Linux keeps the high-water mark across fork and exec).
            command = [sys.executable, "-m", "auditflow.synthetic", "--rows", str(rows), "--seed", str(args.seed)]
            subprocess.run([*command, "--out", str(path)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            if args.repeat > 1:
                path, rows = repeated(path, args.repeat), rows * args.repeat
            size = path.stat().st_size / 2**20
            print(f"\n{rows:,} entries ({size:.0f} MiB CSV, made in {time.perf_counter() - t:.1f} s)")
            script_wall = script_cpu = None
            for mode in () if args.services_only else ("plan", "script"):
                r = measure(mode, path)
                what = "default plan (9 steps)" if mode == "plan" else "plain DuckDB script"
                cycles = f", {r['cycles']} cycles (longest {r['longest_cycle']} s)" if mode == "plan" else ""
                print(
                    f"  {what:24} {r['wall_seconds']:6.2f} s wall ({r['seconds']:.2f} s work, "
                    f"{r['cpu_seconds']:.2f} s CPU), "
                    f"peak {r['peak_mib']} MiB{cycles}, {r['findings']} findings"
                    f" (parent process: {r['parent_mib']} MiB, a floor of the peak)"
                )
                print(f"    findings per procedure: {r['per_procedure']}")
                if mode == "script":
                    script_wall, script_cpu = r["wall_seconds"], r["cpu_seconds"]
                if mode == "plan":
                    print(f"    seconds per step: {r['step_seconds']}")
                    if rows >= 1_000_000 and (r["wall_seconds"] >= 60 or r["peak_mib"] >= 2048):
                        failed = True
                        print("    TARGET MISSED: 1M entries under 1 min and 2 GiB")
            with services(Path(tmp) / f"services-{rows}") as pair:
                r = through_services(pair, plan_steps(str(path)), f"bench {rows}", args.max_cycles)
            print_services("through the services", r)
            if script_wall:
                ratio = r["run_seconds"] / script_wall
                print(f"    services / plain script (wall, same run): {ratio:.2f}x")
                print(
                    f"    processor CPU / plain script CPU (same run): {r['processor_cpu_seconds'] / script_cpu:.2f}x"
                )
                if rows >= 1_000_000 and ratio > 1.5:
                    failed = True
                    print("    TARGET MISSED: at most 1.5x the plain script")
            if rows >= 10_000_000 and (r["run_seconds"] >= 60 or r["processor_peak_mib"] >= 1024):
                failed = True
                print("    TARGET MISSED: 10M entries under 60 s with the processor under 1 GiB")
        count = 50_000 if args.quick else args.findings
        print(f"\n{count:,} made-up findings in one run (test_findings, 50 000 a call)")
        with services(Path(tmp) / "findings") as pair:
            plan = [{"procedure": "test_findings", "parameters": {"count": count, "per_chunk": 50_000}}]
            r = through_services(pair, plan, "bench findings")
        print_services("through the services", r)
        if count >= 1_000_000 and r["processor_peak_mib"] >= 1024:
            failed = True
            print("    TARGET MISSED: processor under 1 GiB with a million findings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
