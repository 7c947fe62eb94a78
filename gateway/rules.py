"""The approval rules that both ways of deciding apply, each written once.

A decision is checked in two places: the one-statement approval of a plan that needs one
approver (a compare-and-set in SQL, `gateway.workflows`) and the decision on a locked row (in
Python). So that the two can never disagree, each rule here is one expression that reads the
same on Python values (it returns a bool) and on SQLAlchemy columns and bound parameters (it
returns the SQL condition): `==`, `!=` and `|` mean the same in both.

Kept free of I/O so that the rules are read and tested as plain functions.
"""

from __future__ import annotations

from typing import Any, overload

from sqlalchemy import ColumnElement

from auditflow.principal import Principal

ANY_ETAG = ""  # a decision that names no etag decides on the plan as stored
NOBODY = ""  # the key forbidden to approve when the decision is not restricted


def forbidden_key(actor: Principal, *, self_approval: bool) -> str:
    """Whose approval separation of duties refuses: the actor's own key when they may not
    approve their own plan, else NOBODY (no principal has an empty key)."""
    return NOBODY if self_approval else actor.key


@overload
def separated(submitter_key: str, forbidden: str) -> bool: ...
@overload
def separated(submitter_key: ColumnElement[Any], forbidden: Any) -> ColumnElement[bool]: ...
def separated(submitter_key: Any, forbidden: Any) -> Any:
    """Separation of duties: the plan's submitter is not the one forbidden to approve it
    (`forbidden_key`). Names are compared by `Principal.key`, however they are spelled."""
    return submitter_key != forbidden


@overload
def etag_holds(asked: str, stored: str) -> bool: ...
@overload
def etag_holds(asked: Any, stored: ColumnElement[Any]) -> ColumnElement[bool]: ...
def etag_holds(asked: Any, stored: Any) -> Any:
    """The plan the approver saw is the plan stored: the etag they name is the plan's, or
    they name none (ANY_ETAG). Another plan's etag is refused, so nothing is decided on a
    plan its approver did not read."""
    return (asked == ANY_ETAG) | (asked == stored)
