"""Failed authentications by address, on a clock the test moves: a burst answered at once,
then one answer per 1/rate seconds, at most `hold`; each address (an IPv6 /64) on its own;
full buckets forgotten; held answers counted."""

from __future__ import annotations

import ipaddress

import pytest
from prometheus_client import CollectorRegistry, Counter

from auditflow import strangers
from auditflow.auth import TrustedProxy
from auditflow.interceptor import peer_address
from auditflow.limits import Rate
from auditflow.strangers import Strangers, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_at_once_then_turns_at_the_rate_and_never_past_the_hold() -> None:
    clock = Clock()
    held = Strangers(Rate(10, 3), clock=clock, hold=0.5)
    assert [held.turn("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    # Calls failing together queue: each takes the next token, 0.1 s after the one before.
    turns = [held.turn("10.0.0.1") for _ in range(7)]
    assert turns[:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert turns[5:] == [0.5, 0.5]  # past the hold: held that long, no token taken
    clock.now += 0.5  # five tokens back, all of them taken ahead of time by the queue
    assert held.turn("10.0.0.1") == pytest.approx(0.1)
    clock.now += 100  # refilled to the burst, no further
    assert [held.turn("10.0.0.1") for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


def test_each_address_has_its_own_turns_and_an_ipv6_host_its_network() -> None:
    held = Strangers(Rate(1, 1), clock=Clock(), hold=5)
    assert held.turn("10.0.0.1") == 0.0 and held.turn("10.0.0.1") == pytest.approx(1.0)
    assert held.turn("10.0.0.2") == 0.0  # another address
    assert held.turn("2001:db8:1:2::1") == 0.0
    assert held.turn("2001:db8:1:2:ffff::9") == pytest.approx(1.0)  # the same /64
    assert held.turn("2001:db8:1:3::1") == 0.0  # another /64
    assert held.turn("::ffff:10.0.0.2") == pytest.approx(1.0)  # IPv4 mapped: its IPv4 address
    assert held.turn(None) == 0.0 and held.turn(None) == pytest.approx(1.0)  # (no address: one shared)


def test_address_keys() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8::1") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key(None) == "" and address_key("") == ""
    assert address_key("unix:/tmp/s") == "unix:/tmp/s"  # (not an address: as it is)


def test_off_holds_nothing_and_remembers_nothing() -> None:
    held = Strangers(Rate(), clock=Clock())
    assert all(held.turn("10.0.0.1") == 0.0 for _ in range(1000))
    assert held.addresses() == 0


def test_addresses_whose_bucket_is_full_again_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strangers, "SWEEP_AT", 3)
    clock = Clock()
    held = Strangers(Rate(1, 2), clock=clock)
    held.turn("10.0.0.1")
    held.turn("10.0.0.2")
    held.turn("10.0.0.3")
    clock.now += 0.5  # each has 1.5 tokens of 2: none full, none forgotten
    held.turn("10.0.0.4")
    assert held.addresses() == 4
    clock.now += 10  # all full again
    for n in range(5, 8):
        held.turn(f"10.0.0.{n}")
    assert held.addresses() < 7


async def test_a_held_answer_waits_its_turn_and_is_counted() -> None:
    registry = CollectorRegistry()
    counter = Counter("refusals", "test", ("limit",), registry=registry)
    held = Strangers(Rate(0.01, 1), refusals=counter, hold=0.05)  # (no token back: held the hold)
    await held.wait_turn("10.0.0.1")  # the burst: at once, not counted
    assert registry.get_sample_value("refusals_total", {"limit": "anonymous"}) is None
    await held.wait_turn("10.0.0.1")
    assert registry.get_sample_value("refusals_total", {"limit": "anonymous"}) == 1


def test_a_trusted_proxy_is_never_held() -> None:
    proxy = TrustedProxy("x-user", (ipaddress.ip_network("10.1.0.0/16"),))
    held = Strangers(Rate(1, 1), trusted=proxy, clock=Clock())
    assert all(held.turn("10.1.2.3") == 0.0 for _ in range(100))  # (its clients are many)
    assert held.turn("10.2.0.1") == 0.0 and held.turn("10.2.0.1") == pytest.approx(1.0)


def test_grpc_peers_are_read_as_addresses() -> None:
    class Context:
        def __init__(self, peer: str) -> None:
            self._peer = peer

        def peer(self) -> str:
            return self._peer

    assert peer_address(Context("ipv4:192.0.2.7:5000")) == "192.0.2.7"  # type: ignore[arg-type]
    assert peer_address(Context("ipv6:%5B2001:db8::1%5D:5000")) == "2001:db8::1"  # type: ignore[arg-type]
    assert peer_address(Context("ipv6:[::1]:5000")) == "::1"  # type: ignore[arg-type]
    assert peer_address(Context("unix:/tmp/s")) is None  # type: ignore[arg-type]
