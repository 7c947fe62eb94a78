"""The catalogue of built-in audit procedures and their shared parts, as plain functions."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from auditflow.procedures import AUDIT_PROCEDURES, BUILT_IN, load
from auditflow.procedures.checks.base import TOP, Finding, Progress, Tally, number, order


def test_each_built_in_is_registered_by_the_module_the_catalogue_names() -> None:
    registry = load()
    for name, module in BUILT_IN.items():
        procedure = registry.get(name)
        assert procedure is not None and procedure.chunk is not None and procedure.validate is not None
        assert getattr(importlib.import_module(module), name) is procedure.chunk
    assert tuple(BUILT_IN) == AUDIT_PROCEDURES


def test_naming_the_built_ins_does_not_import_duckdb() -> None:
    code = "import sys; from auditflow.procedures import AUDIT_PROCEDURES; print('duckdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def finding(severity: str, cents: int, entry: str) -> Finding:
    return Finding("p", severity, [entry], cents, "why")


def test_a_finding_goes_through_json_unchanged() -> None:
    for cents in (0, 5, -5, 123_456, -100_000_000_001):
        f = finding("low", cents, "JE-1")
        assert Finding.from_json(json.loads(json.dumps(f.to_json()))) == f


def test_the_tally_keeps_the_first_findings_in_reading_order() -> None:
    tally = Tally()
    tally.add([finding("low", 900, "A"), finding("high", 10, "B"), finding("medium", -500, "C")])
    tally.add([finding("high", -20, "D"), *(finding("low", c, f"L{c}") for c in range(10))])
    assert [f.entry_ids[0] for f in tally.top] == ["D", "B", "C", "A", "L9"][:TOP]
    assert (tally.count, tally.stake) == (14, 900 + 10 + 500 + 20 + sum(range(10)))
    assert tally.by_severity == {"high": 2, "medium": 1, "low": 11}
    top = [f.to_json() for f in tally.top]
    assert sorted(reversed(top), key=order) == top


def test_a_checkpoint_reads_back_as_a_copy() -> None:
    tally = Tally(own={"cells": {"10": {"4": [1, 2]}}})
    tally.add([finding("high", 10, "B")])
    state = json.loads(json.dumps(Progress(1, 3, 20, tally).to_json()))
    assert set(state) == {"chunk", "chunks", "entries", "acc"}
    assert set(state["acc"]) == {"top", "count", "stake", "by_severity", "extra"}
    again = Progress.from_json(state)
    again.tally.own["cells"]["10"]["4"][0] += 1
    assert state["acc"]["extra"] == {"cells": {"10": {"4": [1, 2]}}}
    assert again.to_json() == {**state, "acc": {**state["acc"], "extra": {"cells": {"10": {"4": [2, 2]}}}}}


def test_a_number_check_refuses_booleans_and_non_finite_values() -> None:
    check = number(0, 10, whole=True)
    assert check(0) and check(10) and check(3.0)
    assert not any(check(v) for v in (True, False, 3.5, -1, 11, float("nan"), float("inf"), "3", None))
