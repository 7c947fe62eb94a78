"""What changed between two revisions of a plan: pure functions, for approvers' diffs.

A change is named by the field an approver reads: "title", "max_cycles", "plan[1].procedure",
"plan[0].parameters.threshold", "plan[0].sources[0].sha256", or a whole step ("plan[2]") added
or removed. Values are shown as JSON text. Steps are compared by position: a step inserted in
the middle shows as every later step changed, which is what the run will do differently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from auditflow import convert

ADDED, REMOVED, CHANGED = "added", "removed", "changed"


@dataclass(frozen=True)
class FieldChange:
    field: str
    kind: str  # ADDED, REMOVED or CHANGED
    before: str = ""  # JSON text
    after: str = ""


@dataclass(frozen=True)
class PlanVersion:
    """What an approver approves, as compared: one revision's title, steps and limits."""

    title: str
    steps: list[dict[str, Any]]  # as stored: {"procedure", "parameters", "sources"?}
    max_cycles: int

    @classmethod
    def of(cls, title: str, plan_json: str, max_cycles: int) -> PlanVersion:
        return cls(title, json.loads(plan_json), max_cycles)


def changes(old: PlanVersion, new: PlanVersion) -> list[FieldChange]:
    """Every difference from `old` to `new`, in plan order."""
    found = list(_value("title", old.title, new.title))
    found += _value("max_cycles", old.max_cycles, new.max_cycles)
    for index in range(max(len(old.steps), len(new.steps))):
        where = f"plan[{index}]"
        if index >= len(old.steps):
            found.append(FieldChange(where, ADDED, after=_text(new.steps[index])))
        elif index >= len(new.steps):
            found.append(FieldChange(where, REMOVED, before=_text(old.steps[index])))
        else:
            found += _step(where, old.steps[index], new.steps[index])
    return found


def _step(where: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[FieldChange]:
    yield from _value(f"{where}.procedure", old.get("procedure"), new.get("procedure"))
    yield from _mapping(f"{where}.parameters", old.get("parameters") or {}, new.get("parameters") or {})
    old_sources, new_sources = old.get("sources") or [], new.get("sources") or []
    for index in range(max(len(old_sources), len(new_sources))):
        at = f"{where}.sources[{index}]"
        if index >= len(old_sources):
            yield FieldChange(at, ADDED, after=_text(new_sources[index]))
        elif index >= len(new_sources):
            yield FieldChange(at, REMOVED, before=_text(old_sources[index]))
        else:
            yield from _mapping(at, old_sources[index], new_sources[index])


def _mapping(where: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[FieldChange]:
    for key in sorted(set(old) | set(new)):
        at = f"{where}.{key}"
        if key not in old:
            yield FieldChange(at, ADDED, after=_text(new[key]))
        elif key not in new:
            yield FieldChange(at, REMOVED, before=_text(old[key]))
        else:
            yield from _value(at, old[key], new[key])


def _value(where: str, old: Any, new: Any) -> Iterator[FieldChange]:
    if old != new or type(old) is not type(new):
        yield FieldChange(where, CHANGED, _text(old), _text(new))


def _text(value: Any) -> str:
    return json.dumps(convert.whole_numbers(value), sort_keys=True, ensure_ascii=False)
