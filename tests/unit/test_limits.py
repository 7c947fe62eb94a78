"""The per-principal limiter on a clock the test moves: buckets refill at their rate, a page
costs by its rows, a principal's streams are counted until they end, idle principals are
forgotten, services are never limited."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import CollectorRegistry, Counter

from auditflow import findings_contract, limits
from auditflow.errors import LimitExceeded
from auditflow.limits import Kind, Limiter, LimitSettings, PublicStreams, Rate
from auditflow.principal import Principal
from gateway import listing

ALICE = Principal("Alice", frozenset({"submitter"}), "jwt:test")
# Alice in full width: the same person, by key.
ALICE_AGAIN = Principal("\uff21\uff2c\uff29\uff23\uff25", frozenset({"viewer"}), "token:other")
BOB = Principal("bob", frozenset({"submitter"}), "jwt:test")
GATEWAY = Principal("gateway", frozenset({"gateway"}), "token:gw")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_parse_and_print() -> None:
    assert Rate.parse("10:40") == Rate(10, 40)
    assert Rate.parse("0.5") == Rate(0.5, 1) and Rate.parse("3") == Rate(3, 6)
    assert not Rate.parse("off").limited and str(Rate.parse("off")) == "off"
    assert str(Rate(2.5, 7)) == "2.5:7"
    for bad in ("-1", "nan", "inf", "x", "1:0"):
        with pytest.raises(ValueError):
            Rate.parse(bad)


async def test_a_bucket_serves_its_burst_then_its_rate_and_says_when() -> None:
    clock = Clock()
    limiter = Limiter(LimitSettings(write=Rate(2, 3)), clock, hold=0)
    for _ in range(3):
        await limiter.admit("/auditflow.v1.WorkflowService/Approve", ALICE)
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit("/auditflow.v1.WorkflowService/CreateWorkflow", ALICE_AGAIN)  # same key, same bucket
    assert caught.value.retry_after == pytest.approx(0.5) and caught.value.limit == "write_rate"
    await limiter.admit("/auditflow.v1.WorkflowService/Approve", BOB)  # bob's own bucket
    await limiter.admit("/auditflow.v1.WorkflowService/GetStatus", ALICE)  # reads: not limited here
    clock.now += 0.5
    await limiter.admit("/auditflow.v1.WorkflowService/Approve", ALICE)
    with pytest.raises(LimitExceeded):
        await limiter.admit("/auditflow.v1.WorkflowService/Approve", ALICE)
    clock.now += 100  # refills to the burst, no further
    for _ in range(3):
        await limiter.admit("/auditflow.v1.WorkflowService/Reject", ALICE)
    with pytest.raises(LimitExceeded):
        await limiter.admit("/auditflow.v1.WorkflowService/Reject", ALICE)


async def test_kinds_and_costs() -> None:
    assert limits.kind_of("/auditflow.v1.WorkflowService/WatchStatus") == Kind.WATCH
    assert limits.kind_of("ExportFindings") == Kind.WATCH
    assert limits.kind_of("/auditflow.v1.WorkflowService/CancelWorkflow") == Kind.WRITE
    assert limits.kind_of("/auditflow.v1.WorkflowService/VerifyTrail") == Kind.READ
    assert limits.cost(500) == 50 and limits.cost("500") == 50 and limits.cost(11) == 2 and limits.cost(10) == 1
    assert limits.cost(size=64 * 1024) == 4 and limits.cost(size=100) == 1 and limits.cost(10, 40_000) == 3
    assert limits.cost(0) == limits.cost(None) == limits.cost("") == limits.cost("-5") == limits.cost("9" * 5000) == 1
    assert limits.cost(0, default_rows=50) == limits.cost("", default_rows=50) == limits.cost(50) == 5
    assert limits.cost(None, default_rows=50) == 1  # (no page asked for: a resumed collection watch)


async def test_a_page_of_the_default_size_costs_what_asking_for_that_size_does() -> None:
    assert limits.DEFAULT_PAGE_ROWS["ListWorkflows"] == listing.DEFAULT_PAGE_SIZE
    assert limits.DEFAULT_PAGE_ROWS["WatchWorkflows"] == listing.DEFAULT_PAGE_SIZE
    assert limits.DEFAULT_PAGE_ROWS["ListFindings"] == findings_contract.DEFAULT_PAGE
    limiter = Limiter(LimitSettings(read=Rate(1, 10)), Clock(), hold=0)
    await limiter.admit("/auditflow.v1.WorkflowService/ListWorkflows", ALICE, 0)  # 50 rows: 5 of 10
    await limiter.admit("/auditflow.v1.WorkflowService/ListWorkflows", ALICE, "")  # (REST: no page_size)
    with pytest.raises(LimitExceeded):
        await limiter.admit("/auditflow.v1.WorkflowService/ListWorkflows", ALICE, 0)
    await limiter.admit("/auditflow.v1.WorkflowService/GetStatus", BOB)  # (no page: one token)
    clock = Clock()
    limiter = Limiter(LimitSettings(read=Rate(1, 5)), clock, hold=0)
    await limiter.admit("ListWorkflows", ALICE, 500)  # costs the whole burst (5)
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit("ListWorkflows", ALICE, "500")
    assert caught.value.retry_after == pytest.approx(5.0)


def test_streams_are_held_until_they_end() -> None:
    limiter = Limiter(LimitSettings(max_streams=2), Clock())
    with limiter.stream(ALICE), limiter.stream(ALICE_AGAIN):
        assert limiter.open_streams(ALICE) == 2
        with pytest.raises(LimitExceeded) as caught, limiter.stream(ALICE):
            pass
        assert caught.value.retry_after is None and caught.value.quota == "streams of Alice"
        with limiter.stream(BOB):
            assert limiter.open_streams(BOB) == 1
    assert limiter.open_streams(ALICE) == 0
    with pytest.raises(RuntimeError), limiter.stream(ALICE):  # a stream that fails frees its slot
        raise RuntimeError
    assert limiter.open_streams(ALICE) == 0


def test_public_streams_are_bounded_by_address_and_in_all() -> None:
    streams = PublicStreams(total=5, per_peer=3)
    with contextlib.ExitStack() as held:
        for _ in range(3):
            held.enter_context(streams.stream("10.0.0.1"))
        with pytest.raises(LimitExceeded) as caught, streams.stream("10.0.0.1"):
            pass
        assert caught.value.limit == "public_streams" and caught.value.retry_after is None
        assert caught.value.quota == "public streams of one address"
        held.enter_context(streams.stream("10.0.0.2"))
        held.enter_context(streams.stream(None))  # (a peer with no address: a Unix socket)
        assert streams.open_streams() == 5
        with pytest.raises(LimitExceeded) as caught, streams.stream("10.0.0.3"):  # a new address, the server full
            pass
        assert caught.value.quota == "public streams of the server"
    assert streams.open_streams() == 0
    with streams.stream("10.0.0.1"), streams.stream("10.0.0.1"), streams.stream("10.0.0.1"):
        pass  # (each address's slots freed with its streams)
    with pytest.raises(RuntimeError), streams.stream("10.0.0.1"):  # a stream that fails frees its slot
        raise RuntimeError
    assert streams.open_streams() == 0


def test_a_public_slot_is_given_back_once_and_refusals_are_counted_where_told() -> None:
    refusals = Counter("refusals", "", ("limit",), registry=CollectorRegistry())
    streams = PublicStreams(total=2, per_peer=1, refusals=refusals)
    give_back = streams.take("10.0.0.1")
    with pytest.raises(LimitExceeded):
        streams.take("10.0.0.1")
    assert refusals.labels("public_streams")._value.get() == 1
    held = streams.take("10.0.0.2")
    give_back()
    give_back()  # (the call's end and its handler's `finally` both give it back: once)
    assert streams.open_streams() == 1
    held()
    assert streams.open_streams() == 0


def test_no_bound_on_public_streams_when_told() -> None:
    streams = PublicStreams(total=0)
    with contextlib.ExitStack() as held:
        for _ in range(100):
            held.enter_context(streams.stream("10.0.0.1"))
    assert PublicStreams(total=4).per_peer == 4  # (an address never holds more than the whole)


async def test_services_are_not_limited() -> None:
    limiter = Limiter(LimitSettings(read=Rate(0.001, 1), max_streams=1), Clock(), hold=0)
    for _ in range(10):
        await limiter.admit("/auditflow.v1.ProcessorService/GetRun", GATEWAY)
    with limiter.stream(GATEWAY), limiter.stream(GATEWAY):
        pass


async def test_idle_principals_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "SWEEP_AT", 10)
    clock = Clock()
    limiter = Limiter(LimitSettings(read=Rate(1, 2), max_streams=5), clock, hold=0)
    with limiter.stream(ALICE):
        await limiter.admit("GetStatus", BOB)
        for n in range(20):
            await limiter.admit("GetStatus", Principal(f"user{n}", frozenset({"viewer"}), "jwt:test"))
        clock.now += 10  # every bucket full again
        for n in range(20, 40):
            await limiter.admit("GetStatus", Principal(f"user{n}", frozenset({"viewer"}), "jwt:test"))
        assert len(limiter._callers) < 30
        assert limiter.open_streams(ALICE) == 1  # a principal with a stream open is kept


async def test_a_refusal_is_held_for_the_wait_at_most_hold_seconds() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock()
    limiter = Limiter(LimitSettings(write=Rate(20, 1)), clock, hold=0.2)
    await limiter.admit("Approve", ALICE)
    started = loop.time()
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit("Approve", ALICE)  # a token in 0.05 s: held that long, then "retry now"
    assert loop.time() - started >= 0.05 and caught.value.retry_after == pytest.approx(0.0)
    slow = Limiter(LimitSettings(write=Rate(0.01, 1)), clock, hold=0.2)
    await slow.admit("Approve", ALICE)
    started = loop.time()
    with pytest.raises(LimitExceeded) as caught:
        await slow.admit("Approve", ALICE)  # a token in 100 s: held 0.2 s, then "retry in 99.8 s"
    assert loop.time() - started >= 0.2 and caught.value.retry_after == pytest.approx(99.8)


async def test_spending_waits_for_the_tokens_a_burst_at_a_time_and_never_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream's work that grows after admission (a catch-up) waits for the caller's tokens:
    25 tokens at 10 a second with a burst of 10 is the burst at once, then two waits (1 s for
    the next 10, 0.5 s for the last 5). Services spend nothing."""
    clock = Clock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # (the clock moves as long as the wait)
        waits.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(limits.asyncio, "sleep", sleep)
    limiter = Limiter(LimitSettings(read=Rate(10, 10)), clock, hold=0)
    await limiter.spend(ALICE, Kind.READ, 25)
    assert waits == [pytest.approx(1.0), pytest.approx(0.5)]
    await limiter.spend(GATEWAY, Kind.READ, 1_000)
    await Limiter(LimitSettings(), clock).spend(ALICE, Kind.READ, 1_000)  # (no rate, no wait)
    assert len(waits) == 2
    with pytest.raises(LimitExceeded):  # (what it took is gone for her calls too)
        await limiter.admit("GetStatus", ALICE)


async def test_a_check_refuses_a_caller_with_no_token_left_and_takes_none() -> None:
    """Before a body of unknown size is read: a caller with a token left passes and keeps it;
    one without is refused, as admit would refuse it; services and unlimited kinds pass."""
    clock = Clock()
    limiter = Limiter(LimitSettings(write=Rate(1, 2)), clock, hold=0)
    create = "/auditflow.v1.WorkflowService/CreateWorkflow"
    await limiter.check(create, ALICE)
    await limiter.admit(create, ALICE, size=2 * limits.BYTES_PER_TOKEN)  # (the check took nothing: both left)
    with pytest.raises(LimitExceeded) as refused:
        await limiter.check(create, ALICE)
    assert "retry in 1.0 s" in str(refused.value)
    await limiter.check(create, BOB)  # (another principal's bucket)
    await limiter.check(create, GATEWAY)
    await limiter.check("/auditflow.v1.WorkflowService/GetStatus", ALICE)  # (reads: no rate here)
    clock.now += 1
    await limiter.check(create, ALICE)
