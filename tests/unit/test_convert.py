"""Conversions that the hot path takes shortcuts in must agree with the library's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from auditflow import convert
from auditflow.v1 import workflow_pb2 as pb

VALUES = [
    datetime(2026, 11, 25, 12, 30, 45, 123456, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: negative seconds
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=UTC),
    datetime(2026, 6, 1, 8, 0, 0, 5, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
]


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_timestamp_matches_from_datetime(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert convert.timestamp(value) == expected


@pytest.mark.parametrize("value", VALUES[:4], ids=str)
def test_naive_datetimes_are_utc(value: datetime) -> None:
    assert convert.timestamp(value.replace(tzinfo=None)) == convert.timestamp(value)


def test_timestamp_of_none_is_none() -> None:
    assert convert.timestamp(None) is None


def test_cached_plan_is_not_shared_with_the_messages_built_from_it() -> None:
    text = '[{"parameters": {"path": "a.csv"}, "procedure": "ledger_summary"}]'
    workflow = pb.Workflow(plan=convert.plan_from_json(text))
    workflow.plan[0].procedure = "changed"
    workflow.plan[0].parameters["path"] = "b.csv"
    again = convert.plan_from_json(text)
    assert again[0].procedure == "ledger_summary"
    assert again[0].parameters["path"] == "a.csv"
