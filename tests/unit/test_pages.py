"""A page of workflows as a page worker builds it (`gateway.pages`), read from a real SQLite
database: bounded by rows and by bytes, read in rounds, and encoded for either transport
exactly as the adapters would encode the message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine

from auditflow import migrations
from auditflow.principal import Principal
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import pages, store, workflows
from gateway.collection import CollectionItem, pb_change
from gateway.rest.app import _dumps
from gateway.rest.routes import to_json
from gateway.store import ListFilter

CAROL = Principal("carol", frozenset({"submitter"}), via="test")
ADDED = wpb.CHANGE_TYPE_ADDED
EVERYTHING = ListFilter(statuses=(), created_by_key=None, title_contains="", awaiting_key=None)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    migrations.upgrade(engine, "gateway:migrations")
    yield engine
    engine.dispose()


def submit(conn: Connection, count: int, note: str, steps: int = 20, title: str = "Q3") -> list[str]:
    plan = json.dumps([{"procedure": "test_noop", "parameters": {"note": note}}] * steps)
    return [
        workflows.create(conn, workflows.NewWorkflow(title, plan, steps, "plan", 10, CAROL, "")).record.workflow_id
        for _ in range(count)
    ]


def test_a_page_that_ends_after_a_few_large_rows_reads_only_its_first_round(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as conn:
        submit(conn, 40, "n" * 900)  # rows of about 300 bytes (a row carries no parameters)
    limits: list[int] = []
    list_page = store.list_page

    def counted(conn: Connection, filter_: ListFilter, limit: int, after: Any) -> Any:
        limits.append(limit)
        return list_page(conn, filter_, limit, after)

    monkeypatch.setattr(store, "list_page", counted)
    with engine.connect() as conn:
        page = pages.build(conn, pages.Request(EVERYTHING, None, pages.Bounds(500, 2_000)))
    assert limits == [pages.FIRST_READ + 1]
    assert 1 < len(page.workflows) < pages.FIRST_READ and page.ByteSize() <= 2_000
    limits.clear()
    with engine.connect() as conn:  # a page of many small rows reads in growing rounds
        page = pages.build(conn, pages.Request(EVERYTHING, None, pages.Bounds(30, 1_000_000)))
    assert limits == [9, 23] and len(page.workflows) == 30 and page.next_page_token


def test_pages_resume_after_their_token_and_lose_no_row(engine: Engine) -> None:
    with engine.begin() as conn:
        made = submit(conn, 13, "small", steps=1)
    shown, after = [], None
    with engine.connect() as conn:
        for expected in (5, 5, 3):
            page = pages.build(conn, pages.Request(EVERYTHING, after, pages.Bounds(5, 1_000_000)))
            assert len(page.workflows) == expected
            shown += [w.workflow_id for w in page.workflows]
            after = pages.decode_token(page.next_page_token) if page.next_page_token else None
    assert shown == made[::-1] and after is None


def test_a_page_encodes_as_each_adapter_sends_a_message(engine: Engine) -> None:
    with engine.begin() as conn:
        submit(conn, 3, "é ✓ \u2028", steps=2, title="Prüfung «Q3»")
    with engine.connect() as conn:
        page = pages.build(conn, pages.Request(EVERYTHING, None, pages.Bounds(2, 1_000_000)))
    assert wpb.ListWorkflowsResponse.FromString(pages.encoded(page, "wire")) == page
    assert pages.encoded(page, "json").decode() == _dumps(to_json(page))
    assert json.loads(pages.encoded(page, "json"))["workflows"][0]["title"] == "Prüfung «Q3»"
    assert pages.encoded(wpb.ListWorkflowsResponse(), "json") == b'{"workflows":[],"next_page_token":""}'


def test_a_watchs_initial_list_is_the_first_page_each_row_a_message_as_the_gateway_made_it(engine: Engine) -> None:
    with engine.begin() as conn:
        made = submit(conn, 3, "é ✓", steps=2, title="Prüfung «Q3»")
        records = [store.get(conn, workflow_id) for workflow_id in made]
    asked = pages.FirstList(EVERYTHING, 2, resume_token="t1")
    with engine.connect() as conn:
        listed, token = pages.first_list(conn, asked, "wire")
        in_json, same_token = pages.first_list(conn, asked, "json")
    newest, second = records[2], records[1]
    assert newest is not None and second is not None
    assert [row.workflow_id for row in listed] == made[:0:-1] and token == same_token
    assert pages.decode_token(token) == (second.created_at, second.workflow_id)  # (ListWorkflows pages on)
    made_here = CollectionItem(wpb.WatchWorkflowsResponse(change=pb_change(ADDED, newest), resume_token="t1"))
    assert listed[0].encoded == made_here.wire and in_json[0].encoded + b"\n" == made_here.ndjson
    assert (listed[0].last_sequence, listed[0].updated_at) == (newest.last_sequence, newest.updated_at)
    with engine.connect() as conn:
        everything, last = pages.first_list(conn, pages.FirstList(EVERYTHING, 50, "t1"), "wire")
    assert [row.workflow_id for row in everything] == made[::-1] and last == ""


def test_a_catch_up_read_in_batches_sends_every_workflow_written_since_oldest_first(engine: Engine) -> None:
    with engine.begin() as conn:
        made = submit(conn, 13, "small", steps=1)
        first = store.get(conn, made[0])
    assert first is not None
    seen: list[str] = []
    start: datetime | None = first.updated_at
    with engine.connect() as conn:
        while start is not None:  # as the watcher reads it: batches of 5, each from the last one's time
            rows, start = pages.since(conn, pages.Since(EVERYTHING, start, first.updated_at, 5), "wire")
            seen += [row.workflow_id for row in rows if row.workflow_id not in seen]  # (a row may come twice)
    assert seen == made
    last = wpb.WatchWorkflowsResponse.FromString(rows[-1].encoded)
    assert last.change.type == wpb.CHANGE_TYPE_MODIFIED
    assert pages.resume_point(last.resume_token) >= first.updated_at
