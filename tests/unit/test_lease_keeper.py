"""The lease keeper on its own: a fake clock and a recorded renewal stand in for time and the
database, so each rule is shown at the exact moment it changes its answer."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from processor.lease import LEASE_MARGIN, LeaseInDoubt, LeaseKeeper
from processor.store import Lease

SECONDS = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Renewals:
    """The renewal's answers, in order (an exception is raised), and the expiries asked for."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[datetime] = []

    async def __call__(self, end: datetime) -> bool:
        self.asked.append(end)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def keeper(renewals: Renewals, clock: Clock, seconds: float = SECONDS) -> LeaseKeeper:
    return LeaseKeeper("wf_1", Lease("me", 3), leased_at=clock.now, seconds=seconds, renewal=renewals, clock=clock)


def test_a_step_may_start_only_while_the_margin_is_left_by_the_keepers_own_clock() -> None:
    clock = Clock()
    kept = keeper(Renewals(), clock)
    clock.now += SECONDS * (1 - LEASE_MARGIN)  # exactly the margin left
    assert kept.safe()
    kept.check()
    clock.now += 0.001
    assert not kept.safe()
    with pytest.raises(LeaseInDoubt):
        kept.check()


def test_a_write_that_extended_the_lease_counts_from_before_it_and_never_moves_it_back() -> None:
    clock = Clock()
    kept = keeper(Renewals(), clock)
    kept.extended(clock.now + 4)
    assert kept.renewed_at == clock.now + 4
    kept.extended(clock.now + 1)  # a slower write that began earlier
    assert kept.renewed_at == clock.now + 4


async def test_a_safe_lease_holds_without_a_write() -> None:
    renewals = Renewals()
    assert await keeper(renewals, Clock()).holds()
    assert renewals.asked == []


async def test_a_lease_in_doubt_is_renewed_first_and_timed_from_before_the_renewal() -> None:
    clock, renewals = Clock(), Renewals(True)
    kept = keeper(renewals, clock)
    clock.now += SECONDS  # (a pause: a stopped process)
    renewing_at = clock.now
    assert await kept.holds()
    assert len(renewals.asked) == 1 and kept.renewed_at == renewing_at and kept.safe()


@pytest.mark.parametrize("answer", [False, ConnectionError("database down")], ids=["taken over", "renewal failed"])
async def test_no_step_starts_when_a_lease_in_doubt_cannot_be_renewed(answer: bool | Exception) -> None:
    clock = Clock()
    kept = keeper(Renewals(answer), clock)
    clock.now += SECONDS
    before = kept.renewed_at
    assert not await kept.holds()
    assert kept.renewed_at == before and not kept.safe()


async def test_the_keeper_renews_every_third_of_the_lease_until_the_lease_is_lost() -> None:
    renewals = Renewals(True, ConnectionError("a blip"), True, False)
    overdue = time.monotonic() - 1
    kept = LeaseKeeper("wf_1", Lease("me", 3), leased_at=overdue, seconds=0.03, renewal=renewals)
    await asyncio.wait_for(kept.keep(), timeout=30)  # returns once the lease is lost
    assert renewals.answers == [] and len(renewals.asked) == 4
