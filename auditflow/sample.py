"""The packaged sample plan over the packaged sample ledger.

One owner for what `auditflow submit --sample`, `auditflow demo` and the review page's submit
form all offer, so that every client submits the same plan.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from auditflow import convert, synthetic
from auditflow.procedures import AUDIT_PROCEDURES
from auditflow.v1 import workflow_pb2 as pb

# The sample plan's length (`submit --sample`'s help says it): the summary, the vendors, the audits.
SAMPLE_STEPS = 2 + len(AUDIT_PROCEDURES)


def sample_ledger_path() -> str:
    """Absolute path of the packaged sample ledger (auditflow/samples/ledger.csv)."""
    ref = resources.files("auditflow").joinpath("samples", "ledger.csv")
    with resources.as_file(ref) as path:  # a real file for normal and editable installs
        return str(Path(path).resolve())


def sample_steps() -> list[dict[str, Any]]:
    """Summarise the sample ledger, rank its vendors, then run every audit procedure: one step a cycle."""
    path = sample_ledger_path()
    steps: list[dict[str, Any]] = [
        {"procedure": "ledger_summary", "parameters": {"path": path}},
        {"procedure": "vendor_totals", "parameters": {"path": path, "top": 5}},
    ]
    holidays = [d.isoformat() for d in synthetic.holidays(range(2026, 2028))]
    for name in AUDIT_PROCEDURES:
        parameters: dict[str, Any] = {"path": path}
        if name == "weekend_postings":
            parameters["holidays"] = holidays
        steps.append({"procedure": name, "parameters": parameters})
    return steps


def sample_plan() -> list[pb.PlanStep]:
    """The sample steps as plan messages."""
    return [
        pb.PlanStep(procedure=step["procedure"], parameters=convert.struct(step["parameters"]))
        for step in sample_steps()
    ]
