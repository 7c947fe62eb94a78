"""The in-memory broadcast and hub as plain objects: the processor's followers (bounded, cut when too
far behind, no duplicates) and the gateway's logs (contiguous, filled once for everyone)."""

from __future__ import annotations

import asyncio

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import pages
from gateway.collection import CollectionItem, ListedItem
from gateway.encoded import Joined
from gateway.hub import KEPT, Item, WorkflowHub
from processor.broadcast import EventBroadcast

WF = "wf_" + "0" * 32


def item(sequence: int, status: int = pb.WORKFLOW_STATUS_RUNNING, workflow_id: str = WF) -> Item:
    event = pb.WorkflowEvent(workflow_id=workflow_id, sequence=sequence, status=status)  # type: ignore[arg-type]
    snapshot = pb.StatusSnapshot(
        workflow_id=workflow_id,
        status=status,
        last_sequence=sequence,  # type: ignore[arg-type]
        is_completed=status == pb.WORKFLOW_STATUS_COMPLETED,
    )
    return Item.event(event, snapshot)


async def test_a_follower_gets_every_event_once_and_is_cut_when_too_far_behind() -> None:
    hub: EventBroadcast[str] = EventBroadcast()
    follower = hub.follow(limit=3)
    hub.publish(WF, 1, "a")
    hub.publish(WF, 1, "a again")  # the tail republishing what the processor published: ignored
    hub.publish(WF, 2, "b")
    assert [e for _w, _s, e in follower.take()] == ["a", "b"]
    for sequence in range(3, 7):
        hub.publish(WF, sequence, str(sequence))
    assert follower.overflowed and follower.take() == []  # cut: it catches up from the log
    hub.unfollow(follower)
    assert hub.followers == 0 and hub.published(WF) == 6


async def test_the_gateway_log_is_contiguous_and_ignores_what_it_has() -> None:
    hub = WorkflowHub()
    for sequence in (1, 2, 2, 3):
        hub.publish(item(sequence))
    assert [i.sequence for i in hub.after(WF, 0) or []] == [1, 2, 3]
    assert hub.after(WF, 3) == []
    hub.publish(item(7))  # after a gap: the log restarts there, and earlier positions need a fill
    assert hub.after(WF, 3) is None and [i.sequence for i in hub.after(WF, 6) or []] == [7]
    hub.seed("wf_" + "1" * 32, 40)
    assert hub.published("wf_" + "1" * 32) == 40 and hub.after("wf_" + "1" * 32, 40) == []


async def test_an_unwatched_log_keeps_a_few_items_and_a_watched_one_more() -> None:
    hub = WorkflowHub()
    for sequence in range(1, KEPT + 11):
        hub.publish(item(sequence))
    assert hub.after(WF, 0) is None and len(hub.after(WF, 10) or []) == KEPT
    hub.subscribe(WF)
    for sequence in range(KEPT + 11, KEPT + 61):
        hub.publish(item(sequence))
    assert len(hub.after(WF, 10) or []) == KEPT + 50


async def test_a_log_is_filled_once_for_every_watcher_that_needs_it() -> None:
    hub = WorkflowHub()
    hub.publish(item(9))  # the newest is here; 1..8 are not
    reads = 0

    async def read() -> tuple[list[Item], int]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)
        return [item(s) for s in range(1, 9)], 9

    async def watcher() -> list[int]:
        if hub.after(WF, 0) is None:
            await hub.fill(WF, read)
        return [i.sequence for i in hub.after(WF, 0) or []]

    answers = await asyncio.gather(*(watcher() for _ in range(500)))
    assert reads == 1
    assert all(a == list(range(1, 10)) for a in answers)


async def test_a_log_behind_its_seeded_position_is_filled_and_its_watchers_woken() -> None:
    # The mirror went to 9 but this log was published only to 8 (a feed session broke between
    # its write and its publish): the catch-up seeds 9, and 9 comes from the sources.
    hub = WorkflowHub()
    for sequence in range(1, 9):
        hub.publish(item(sequence))
    waiting = hub.waiter(WF)
    hub.seed(WF, 9)
    assert waiting.is_set()  # a watcher waiting at 8 looks again...
    assert hub.after(WF, 8) is None  # ...and finds it must fill
    hub.publish(item(9, pb.WORKFLOW_STATUS_COMPLETED))  # the feed's own 9, arriving late, is no use:
    assert hub.after(WF, 8) is None  # the position says it was published
    await hub.fill(WF, lambda: asyncio.sleep(0, ([item(s) for s in range(1, 10)], 9)))
    assert [i.sequence for i in hub.after(WF, 8) or []] == [9]


async def test_a_fill_ahead_of_the_feed_leaves_the_feed_its_position() -> None:
    # A watcher read the run's log from the processor (to its end) before the feed brought
    # those events, with the workflow row mirrored to 2: the feed must still take 3 to 5 (it
    # mirrors them on the row), and watchers see each only once it is mirrored.
    hub = WorkflowHub()
    hub.publish(item(1))
    ahead = [*(item(s) for s in range(1, 5)), item(5, pb.WORKFLOW_STATUS_COMPLETED)]
    await hub.fill(WF, lambda: asyncio.sleep(0, (ahead, 2)))
    assert hub.published(WF) == 2  # the row's position, not the processor's
    assert [i.sequence for i in hub.after(WF, 0) or []] == [1, 2] and hub.after(WF, 2) == []
    waiting = hub.waiter(WF)
    hub.publish(item(3))  # the feed, after its mirror
    assert waiting.is_set() and [i.sequence for i in hub.after(WF, 2) or []] == [3]
    hub.publish(item(4))
    hub.publish(item(5, pb.WORKFLOW_STATUS_COMPLETED))
    assert hub.published(WF) == 5 and hub.latest(WF) is not None and hub.latest(WF).is_completed  # type: ignore[union-attr]
    assert [i.sequence for i in hub.after(WF, 0) or []] == [1, 2, 3, 4, 5]  # the held items, none twice


async def test_the_hub_knows_a_workflows_position_only_with_its_newest_event() -> None:
    hub = WorkflowHub()
    assert hub.position(WF) is None  # never heard of
    hub.publish(item(1))
    hub.publish(item(2))
    assert hub.position(WF) == (2, False)
    hub.seed(WF, 5)  # a position ahead of the events it holds: not enough to answer from
    assert hub.position(WF) is None
    other = "wf_" + "1" * 32
    hub.publish(item(1, workflow_id=other))
    hub.publish(item(2, pb.WORKFLOW_STATUS_COMPLETED, workflow_id=other))
    assert hub.position(other) == (2, True)


async def test_the_feed_knows_which_runs_it_saw_start_and_not_end() -> None:
    hub = WorkflowHub()
    hub.publish(item(1, pb.WORKFLOW_STATUS_AWAITING_APPROVAL, "wf_" + "a" * 32))  # not dispatched: not asked for
    hub.publish(item(4, pb.WORKFLOW_STATUS_RUNNING, "wf_" + "b" * 32))
    hub.publish(item(5, pb.WORKFLOW_STATUS_COMPLETED, "wf_" + "c" * 32))
    assert hub.unfinished() == ["wf_" + "b" * 32]


async def test_the_crosscheck_looks_at_watched_workflows_whose_end_the_hub_has_not_seen() -> None:
    hub = WorkflowHub()
    waiting, running, ended, unwatched = ("wf_" + c * 32 for c in "abcd")
    hub.publish(item(1, pb.WORKFLOW_STATUS_AWAITING_APPROVAL, waiting))  # may be rejected elsewhere
    hub.publish(item(4, pb.WORKFLOW_STATUS_RUNNING, running))
    hub.publish(item(5, pb.WORKFLOW_STATUS_COMPLETED, ended))
    hub.publish(item(1, pb.WORKFLOW_STATUS_AWAITING_APPROVAL, unwatched))
    for workflow_id in (waiting, running, ended):
        hub.subscribe(workflow_id)
    hub.subscribe(unwatched)
    hub.unsubscribe(unwatched)
    assert sorted(hub.watched_unfinished()) == [waiting, running]


def test_an_item_is_encoded_once_in_each_form() -> None:
    first = item(5, pb.WORKFLOW_STATUS_COMPLETED)
    assert first.wire is first.wire and first.terminal
    assert first.sse.startswith(b"id: 5\ndata: {") and first.sse is first.sse
    assert first.ndjson.endswith(b"\n") and b'"sequence":"5"' in first.ndjson
    beat = Item.heartbeat(pb.StatusSnapshot(workflow_id=WF), pb.Heartbeat())
    assert beat.sse == b": heartbeat\n\n" and beat.sequence == 0 and not beat.terminal


async def test_idle_watchers_share_one_wake_up_and_a_publish_puts_it_off() -> None:
    hub = WorkflowHub()
    hub.subscribe(WF)
    hub.publish(item(1))
    waiting = hub.waiter(WF)
    beats = hub.beat_after(WF, 0.05)
    assert hub.beat_after(WF, 0.05) == beats  # a second watcher: the same wake-up, no other
    hub.publish(item(2))  # news before the interval: no heartbeat is due
    assert waiting.is_set() and hub.beats(WF) == beats
    waiting = hub.waiter(WF)
    beats = hub.beat_after(WF, 0.05)
    await asyncio.wait_for(waiting.wait(), 10)  # idle for the interval: woken, with a new count
    assert hub.beats(WF) == beats + 1 and hub.after(WF, 2) == []
    hub.beat_after(WF, 0.05)
    hub.unsubscribe(WF)  # the last watcher left: nothing is left due
    waiting = hub.waiter(WF)
    await asyncio.sleep(0.1)
    assert not waiting.is_set() and hub.beats(WF) == beats + 1


def test_a_watcher_reads_only_what_follows_it_in_a_long_log() -> None:
    hub = WorkflowHub()
    hub.subscribe(WF)
    for sequence in range(1, 1001):
        hub.publish(item(sequence))
    assert [i.sequence for i in hub.after(WF, 997) or []] == [998, 999, 1000]
    assert hub.after(WF, 1000) == [] and len(hub.after(WF, 0) or []) == 1000


def test_a_collection_item_is_encoded_once_in_each_form() -> None:
    change = CollectionItem(wpb.WatchWorkflowsResponse(resume_token="t1"))
    assert change.wire is change.wire and change.ndjson is change.ndjson
    assert change.sse.startswith(b"id: t1\ndata: {") and change.sse is change.sse
    beat = CollectionItem(wpb.WatchWorkflowsResponse(resume_token="t2", heartbeat=pb.Heartbeat()))
    assert beat.sse == b"id: t2\n: heartbeat\n\n"


def test_an_item_encoded_by_a_page_worker_is_sent_as_the_gateway_would_have_made_it() -> None:
    change = wpb.WorkflowChange(type=wpb.CHANGE_TYPE_ADDED, workflow=pb.Workflow(workflow_id="wf-1", title="Q3 é"))
    made = CollectionItem(wpb.WatchWorkflowsResponse(change=change, resume_token="t1"))
    over_grpc = ListedItem(pages.encoded(made.message, "wire"), "wire", "t1")
    in_json = ListedItem(pages.encoded(made.message, "json"), "json", "t1")
    assert over_grpc.wire == made.wire and over_grpc.message == made.message
    assert in_json.sse == made.sse and in_json.ndjson == made.ndjson and in_json.message == made.message
    assert over_grpc.sse == made.sse and in_json.wire == made.wire  # (the other forms, parsed back)


def test_items_ready_together_are_written_as_one() -> None:
    ready = [item(3), item(4), item(5, pb.WORKFLOW_STATUS_COMPLETED)]
    joined = Joined(ready)
    assert joined.sse == b"".join(i.sse for i in ready) and joined.sse.count(b"\n\nid: ") == 2
    assert joined.ndjson.count(b"\n") == 3 and joined.ndjson.startswith(ready[0].ndjson)
