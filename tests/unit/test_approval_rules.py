"""The approval rules as plain functions, and the SQL they build deciding exactly as they do."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import Column, ColumnElement, MetaData, String, Table, bindparam, create_engine, insert, select

from auditflow.principal import Principal
from gateway import rules

ALICE = Principal("Alice", frozenset({"approver"}), "token:alice")


def test_a_submitter_may_not_approve_their_own_plan_however_the_name_is_spelled() -> None:
    forbidden = rules.forbidden_key(Principal("ALICE", frozenset(), "jwt:idp"), self_approval=False)
    assert not rules.separated(ALICE.key, forbidden)


def test_another_approver_is_separated_from_the_submitter() -> None:
    bob = Principal("bob", frozenset({"approver"}), "token:bob")
    assert rules.separated(ALICE.key, rules.forbidden_key(bob, self_approval=False))


def test_self_approval_forbids_nobody() -> None:
    forbidden = rules.forbidden_key(ALICE, self_approval=True)
    assert forbidden == rules.NOBODY
    assert rules.separated(ALICE.key, forbidden)


def test_the_plans_own_etag_holds_and_another_plans_does_not() -> None:
    assert rules.etag_holds("e1", "e1")
    assert not rules.etag_holds("e0", "e1")


def test_a_decision_naming_no_etag_decides_on_the_plan_as_stored() -> None:
    assert rules.etag_holds(rules.ANY_ETAG, "e1")


KEYS = ["alice", "bob", ""]
ETAGS = ["e1", "e2", ""]


@pytest.fixture(scope="module")
def plans() -> Table:
    return Table("plans", MetaData(), Column("submitter_key", String), Column("etag", String))


@pytest.mark.parametrize("submitter,forbidden", list(itertools.product(KEYS, KEYS)))
def test_separation_in_sql_decides_as_in_python(plans: Table, submitter: str, forbidden: str) -> None:
    condition = rules.separated(plans.c.submitter_key, bindparam("forbidden"))
    assert _holds_in_sql(plans, condition, {"submitter_key": submitter, "etag": ""}, forbidden=forbidden) is (
        rules.separated(submitter, forbidden)
    )


@pytest.mark.parametrize("asked,stored", list(itertools.product(ETAGS, ETAGS)))
def test_the_etag_rule_in_sql_decides_as_in_python(plans: Table, asked: str, stored: str) -> None:
    condition = rules.etag_holds(bindparam("asked"), plans.c.etag)
    assert _holds_in_sql(plans, condition, {"submitter_key": "", "etag": stored}, asked=asked) is (
        rules.etag_holds(asked, stored)
    )


def _holds_in_sql(plans: Table, condition: ColumnElement[bool], row: dict[str, str], **params: str) -> bool:
    """Whether the stored `row` meets `condition` in a real SQLite database."""
    engine = create_engine("sqlite://")
    plans.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(plans).values(**row))
        found = conn.execute(select(plans.c.etag).where(condition), params).first()
    engine.dispose()
    return found is not None
