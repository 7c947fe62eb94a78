"""Validation of what a client submits, shared by the gateway (before storing) and the
processor (before accepting an Enqueue). Every input is bounded before it is used: lengths,
counts, nesting, and the characters and numbers both databases can store (no NUL, no control
characters but tab and newlines in free text, no NaN or Infinity)."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from auditflow import convert, fingerprints, procedures, sources
from auditflow.errors import FieldViolation, InvalidArgument, invalid
from auditflow.v1 import workflow_pb2 as pb

WORKFLOW_ID = re.compile(r"^wf_[0-9a-f]{32}$")
MAX_TITLE = 200
MAX_STEPS = 100
MAX_PARAMETERS_BYTES = 16 * 1024
MAX_CYCLES_LIMIT = 10_000
MAX_COMMENT = 2_000
MAX_REQUEST_ID = 128
MAX_PARAMETER_DEPTH = 16
ORCHESTRATOR_GROUP = "auditflow.orchestrators"
# C0 controls (NUL included) and DEL, but tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_workflow_id(workflow_id: str, field: str = "workflow_id") -> str:
    if not workflow_id:
        raise invalid(field, "required")
    if not WORKFLOW_ID.match(workflow_id):
        raise invalid(field, "malformed: expected 'wf_' followed by 32 lowercase hex digits")
    return workflow_id


def check_text(value: str, field: str, limit: int) -> str:
    problem = text_problem(value, limit)
    if problem:
        raise invalid(field, problem)
    return value


def text_problem(value: str, limit: int) -> str | None:
    """Why `value` cannot be stored as free text, or None."""
    if len(value) > limit:
        return f"too long: {len(value)} characters, at most {limit}"
    if _CONTROL.search(value):
        return "contains a control character (NUL, escape …); only tab and line breaks are allowed"
    return None


def value_problems(value: Any, where: str, depth: int = 0) -> list[FieldViolation]:
    """What in a JSON value (a step's parameters) cannot be stored or used as given."""
    if depth > MAX_PARAMETER_DEPTH:
        return [FieldViolation(where, f"nested deeper than {MAX_PARAMETER_DEPTH} levels")]
    if isinstance(value, float) and not math.isfinite(value):
        return [FieldViolation(where, "NaN and Infinity are not numbers a plan may use")]
    if isinstance(value, str):
        return [FieldViolation(where, "contains a NUL character")] if "\x00" in value else []
    found: list[FieldViolation] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key or not key:
                found.append(FieldViolation(where, f"a parameter name is empty or contains NUL: {key!r}"))
            else:
                found.extend(value_problems(item, f"{where}.{key}", depth + 1))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(value_problems(item, f"{where}[{index}]", depth + 1))
    return found


@functools.cache
def orchestrator_names() -> frozenset[str]:
    """Names of the installed orchestrators. Cached: scanning the entry points of every
    installed distribution takes milliseconds, and what is installed does not change while
    a process runs (the processor loads orchestrators once per process too)."""
    return frozenset(ep.name for ep in entry_points(group=ORCHESTRATOR_GROUP))


def check_plan(
    title: str,
    plan: Sequence[pb.PlanStep],
    max_cycles: int,
    orchestrator: str,
    *,
    max_steps: int = MAX_STEPS,
    max_parameters_bytes: int = MAX_PARAMETERS_BYTES,
) -> None:
    """Raise InvalidArgument listing every bad field of a submitted workflow. The gateway may
    hold plans to fewer steps and smaller parameters than the maxima (which the processor
    checks, so that it accepts whatever any gateway accepted)."""
    violations: list[FieldViolation] = []
    if not title.strip():
        violations.append(FieldViolation("title", "required"))
    elif problem := text_problem(title, MAX_TITLE):
        violations.append(FieldViolation("title", problem))
    if not plan:
        violations.append(FieldViolation("plan", "empty: a plan needs at least one step"))
    elif len(plan) > max_steps:
        violations.append(
            FieldViolation("plan", f"too many steps: {len(plan)}, at most {max_steps}", limit="plan_steps")
        )
    else:
        violations.extend(_check_steps(plan, max_parameters_bytes))
    if not 0 <= max_cycles <= MAX_CYCLES_LIMIT:
        violations.append(FieldViolation("max_cycles", f"must be between 0 (default) and {MAX_CYCLES_LIMIT}"))
    if orchestrator and orchestrator not in orchestrator_names():
        known = ", ".join(sorted(orchestrator_names())) or "none"
        shown = orchestrator[:100].encode("unicode_escape").decode()
        violations.append(FieldViolation("orchestrator", f"unknown orchestrator {shown!r} (known: {known})"))
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        raise InvalidArgument(f"invalid workflow: {summary}", violations=violations)


def _check_steps(plan: Sequence[pb.PlanStep], max_parameters_bytes: int) -> list[FieldViolation]:
    registry = procedures.load()
    violations: list[FieldViolation] = []
    for index, step in enumerate(plan):
        where = f"plan[{index}]"
        procedure = registry.get(step.procedure)
        if procedure is None:
            known = ", ".join(registry.names())
            shown = step.procedure[:100].encode("unicode_escape").decode()
            violations.append(FieldViolation(f"{where}.procedure", f"unknown procedure {shown!r} (known: {known})"))
            continue
        parameters = convert.struct_to_dict(step.parameters)
        problems = value_problems(parameters, f"{where}.parameters")
        if problems:
            violations.extend(problems)
            continue
        size = len(json.dumps(parameters))
        if size > max_parameters_bytes:
            violations.append(
                FieldViolation(
                    f"{where}.parameters",
                    f"too large: {size} bytes, at most {max_parameters_bytes}",
                    limit="plan_parameters",
                )
            )
            continue
        if procedure.validate is not None:
            for v in procedure.validate(parameters):
                violations.append(FieldViolation(f"{where}.{v.field}", v.description))
    return once_per_plan(violations)


def once_per_plan(violations: list[FieldViolation]) -> list[FieldViolation]:
    """Each problem once: steps that read the same bad ledger give the same violation, which
    is reported at the first of them, naming the others, rather than once per step."""
    first: dict[tuple[str, str], int] = {}
    others: dict[int, list[str]] = {}
    for index, v in enumerate(violations):
        step, _, rest = v.field.partition(".")
        key = (rest, v.description)
        if key in first:
            others.setdefault(first[key], []).append(step)
        else:
            first[key] = index
    return [
        FieldViolation(v.field, f"{v.description} (the same for {', '.join(others[i])})") if i in others else v
        for i, v in enumerate(violations)
        if first[(v.field.partition(".")[2], v.description)] == i
    ]


def fingerprinted(plan: Sequence[pb.PlanStep]) -> list[pb.PlanStep]:
    """The plan's steps with the fingerprints of the data files they read (`sources`, replacing
    any a client sent). Blocking (it hashes every file): run it off the event loop. A file that
    cannot be read is an INVALID_ARGUMENT naming the parameter."""
    access = sources.current()
    steps: list[pb.PlanStep] = []
    violations: list[FieldViolation] = []
    for index, step in enumerate(plan):
        taken: list[pb.DataSource] = []
        for parameter, given in fingerprints.named_files(convert.struct_to_dict(step.parameters)):
            try:
                file = access.file(given)
            except sources.Refused:
                continue  # not a data file this server reads: the procedure's own check refuses it, if it must
            try:
                taken.append(convert.source_message(fingerprints.take(file, parameter, given)))
            except (OSError, fingerprints.Mismatch) as exc:
                problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                violations.append(
                    FieldViolation(f"plan[{index}].parameters.{parameter}", f"cannot read {given!r}: {problem}")
                )
        steps.append(pb.PlanStep(procedure=step.procedure, parameters=step.parameters, sources=taken))
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        raise InvalidArgument(f"invalid workflow: {summary}", violations=violations)
    return steps


def source_warnings(plan: Sequence[pb.PlanStep]) -> list[pb.PlanStep]:
    """The plan's steps with each source's `changed` set for approvers (see
    `fingerprints.Verifier.changed`). Blocking: run it off the event loop."""
    access = sources.current()
    steps: list[pb.PlanStep] = []
    for step in plan:
        shown = []
        for source in step.sources:
            try:
                file: Path | None = access.file(source.path)
            except (sources.Refused, OSError):
                file = None
            change = fingerprints.VERIFIER.changed(file, convert.source_fingerprint(source))
            shown.append(convert.source_message(convert.source_fingerprint(source), change))
        steps.append(pb.PlanStep(procedure=step.procedure, parameters=step.parameters, sources=shown))
    return steps
