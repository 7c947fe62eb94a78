"""Calls without a principal, held to a rate per address.

A call that fails to authenticate, or that needs no credentials (health checks, reflection, a
gRPC method that does not exist; over REST the health, readiness, OpenAPI and page paths, and
paths that do not exist), has no principal, so no principal's limit holds it. Answering it is
cheap, but not free (some hundred microseconds of the event loop: the request parsed, a
token's signature checked, the answer sent). A stranger sending such calls as fast as it
could kept the gateway's loop busy, and every person calling it waited behind them (three
people's GetStatus p99 five times their usual with failed authentications; Approve's nearly
three times with health checks).

So each address has a bucket of such calls: a burst is answered at once, then the answers
wait their turn, one per 1/rate seconds, at most `hold` seconds each. The answer itself does
not change (UNAUTHENTICATED with its message, a health check's status): a caller that
authenticates is never held, whatever its address, and a load balancer's probes or a client
sending a bad token now and then never notice. A client repeating them is slowed to the rate,
or, with many calls at once, to one answer per call and `hold`. Each held answer counts in the
refusals metric as `anonymous`.

IPv6 addresses count by their /64 network (one host is often given a whole /64); peers
without an address (a Unix socket) share one bucket. Addresses whose bucket is full again are
forgotten. A proxy in front of the servers shares one address among its clients: their calls
without credentials are then held together, their authenticated ones are not. A trusted proxy
(`--trusted-proxies`, which authenticates the users itself and is trusted to limit them) is
never held: every browser behind it loading the page would share one burst.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable

from prometheus_client import Counter

from auditflow.auth import TrustedProxy
from auditflow.limits import MAX_HOLD, Bucket, Rate, count_refusal

# The default: a burst of 100 calls without a principal from one address, then 10 a second.
DEFAULT_ANONYMOUS = Rate(10, 100)
# Addresses kept before full buckets are forgotten (a sweep, at most once per this many new ones).
SWEEP_AT = 10_000
LIMIT = "anonymous"  # (its label in the refusals metric)


class Strangers:
    """Calls without a principal by peer address, one server's (its gRPC and REST ports share it)."""

    def __init__(
        self,
        rate: Rate,
        *,
        refusals: Counter | None = None,
        trusted: TrustedProxy | None = None,
        clock: Callable[[], float] = time.monotonic,
        hold: float = MAX_HOLD,
    ) -> None:
        self.rate = rate
        self._refusals = refusals
        self._trusted = trusted
        self._clock = clock
        self._hold = hold
        self._buckets: dict[str, Bucket] = {}
        self._sweep_at = SWEEP_AT

    async def wait_turn(self, peer: str | None) -> None:
        """A call from `peer` without a principal: return when its answer may go."""
        wait = self.turn(peer)
        if wait > 0:
            count_refusal(LIMIT, self._refusals)
            await asyncio.sleep(wait)

    def turn(self, peer: str | None) -> float:
        """Seconds until this call's answer may go (0.0: at once), at most `hold`; its
        token is taken now, even if it comes back later (a queue at the rate). Past `hold`,
        none is taken: the answer waits `hold`."""
        if not self.rate.limited or (self._trusted is not None and self._trusted.trusts(peer)):
            return 0.0
        now = self._clock()
        key = address_key(peer)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self._buckets[key] = Bucket(self.rate, now)
        return bucket.reserve(now, self._hold)

    def addresses(self) -> int:
        """Addresses remembered (for tests and the curious)."""
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if not bucket.full(now)}
        self._sweep_at = len(self._buckets) + SWEEP_AT


def address_key(peer: str | None) -> str:
    """What a peer's calls count under: its address, an IPv6 address's /64 network."""
    if not peer:
        return ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
