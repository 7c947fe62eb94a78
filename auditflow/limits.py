"""Per-principal limits: no caller can take the service away from the others.

Every person calling is held to their own share, in the manner of the Kubernetes API server's
priority and fairness and Temporal's per-namespace rate limits:
- a request rate per kind of call (write, read, watch), as a token bucket per principal: a
  burst is served at once, then calls at the steady rate;
- open streams (WatchStatus, ExportFindings) per principal;
- a collection watch's catch-up (every workflow written since its resume token) takes read
  tokens as it sends, one per ten workflows, and past the rate it waits, never refused
  (`spend`): its size is not known when the stream is admitted;
- (the gateway's, `gateway.quota`) plans awaiting approval per principal, and a plan's size;
- streams of the public methods (health Watch, reflection), which carry no credentials and so
  no principal: a few per peer address, and a bound for the whole server (`PublicStreams`).

Past a rate, the call ends RESOURCE_EXHAUSTED (REST: 429) saying when a token comes back
(`retry_after`: gRPC trailing metadata `retry-after` and a google.rpc.RetryInfo detail; REST
the Retry-After header), after being held up to a second: refusing is cheap but not free, and
a client that ignores Retry-After would otherwise keep the server busy refusing it. Past a
quota (streams, pending plans) it ends RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure and
no retry time: what frees a slot is the caller's own stream ending, or someone deciding a
plan, not the clock. Every refusal counts in `auditflow_limit_refusals_total` by limit.

Services (a gateway calling a processor) are not people and are not limited. The state is a
few numbers per principal, in memory, checked on the event loop in constant time; principals
idle long enough to have full buckets and no stream are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from prometheus_client import Counter

from auditflow import findings_contract, metrics
from auditflow.errors import LimitExceeded
from auditflow.principal import GATEWAY, Principal


class Kind(enum.StrEnum):
    """What a call costs the service, for its rate."""

    WRITE = "write"
    READ = "read"
    WATCH = "watch"


# RPCs by kind (by method name); any other method of a person is a read.
KINDS: dict[str, Kind] = {
    "CreateWorkflow": Kind.WRITE,
    "Approve": Kind.WRITE,
    "Reject": Kind.WRITE,
    "CancelWorkflow": Kind.WRITE,
    "WatchStatus": Kind.WATCH,
    "ExportFindings": Kind.WATCH,
}


# The rows of a page left to its default size, by method (the workflows' listing's default
# and the findings'; a unit test keeps them equal to the listings' own): the default page costs
# what asking for its size does.
DEFAULT_PAGE_ROWS = {"ListWorkflows": 50, "WatchWorkflows": 50, "ListFindings": findings_contract.DEFAULT_PAGE}


def cost(page_size: object = None, size: int = 0, default_rows: int = 0) -> int:
    """Tokens a call takes: one, one per ROWS_PER_TOKEN rows of the page it asks for (a page
    of 500 workflows is fifty reads' work, not one), or one per BYTES_PER_TOKEN of the request
    (a plan of 64 KiB is four writes' work). `page_size` as the request has it: a number
    (gRPC), text (a REST query; what is not a page size is refused by the call's own checks),
    0 or empty for the default page (`default_rows`), or None for no page at all (a resumed
    collection watch sends no initial list). `size`: the request's bytes, as sent."""
    if isinstance(page_size, str):
        page_size = int(page_size) if page_size.isdigit() and len(page_size) <= 9 else 0
    rows = 0 if page_size is None else (page_size if isinstance(page_size, int) else 0) or default_rows
    return max(1, math.ceil(rows / ROWS_PER_TOKEN), math.ceil(size / BYTES_PER_TOKEN))


def kind_of(method: str) -> Kind:
    """The kind of an RPC, given its name or its full path (/package.Service/Method)."""
    return KINDS.get(_name(method), Kind.READ)


def _name(method: str) -> str:
    return method.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Rate:
    """`per_second` calls on average, `burst` at once; a rate of 0 is no limit."""

    per_second: float = 0.0
    burst: int = 0

    @property
    def limited(self) -> bool:
        return self.per_second > 0

    @classmethod
    def parse(cls, text: str) -> Rate:
        """'RATE:BURST' (calls per second, calls at once), 'RATE' (burst: twice the rate, at
        least 1), or 'off'."""
        if text.strip().lower() in ("off", "0", "none"):
            return cls()
        per_second, _, burst = text.partition(":")
        rate = float(per_second)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("the rate must be a positive number of calls per second, or 'off'")
        size = int(burst) if burst else max(1, math.ceil(2 * rate))
        if size < 1:
            raise ValueError("the burst must be at least 1 call")
        return cls(rate, size)

    def __str__(self) -> str:
        return f"{self.per_second:g}:{self.burst}" if self.limited else "off"


# The defaults of the command line (a Settings built in code has no limits unless given some).
DEFAULT_WRITE = Rate(10, 20)
DEFAULT_READ = Rate(20, 100)
DEFAULT_WATCH = Rate(5, 40)
# A page of this many rows, or a request of this many bytes, costs one token; more costs more
# (at most the burst). A page of 500 summaries costs the gateway some 40 ms of CPU, 50 reads.
ROWS_PER_TOKEN = 10
BYTES_PER_TOKEN = 16 * 1024
DEFAULT_MAX_STREAMS = 50


@dataclass(frozen=True)
class LimitSettings:
    """Each principal's limits; 0 (or an unlimited Rate) is no limit."""

    write: Rate = Rate()
    read: Rate = Rate()
    watch: Rate = Rate()
    max_streams: int = 0

    def rate(self, kind: Kind) -> Rate:
        return {Kind.WRITE: self.write, Kind.READ: self.read, Kind.WATCH: self.watch}[kind]


class Bucket:
    """A token bucket: `burst` tokens, refilled at `per_second`; a call takes one."""

    __slots__ = ("_rate", "_stamp", "_tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate
        self._tokens = float(rate.burst)
        self._stamp = now

    def take(self, now: float, tokens: int = 1) -> float:
        """Take `tokens`: 0.0 if there were as many, else the seconds until there are."""
        self._refill(now)
        if self._tokens >= tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self._rate.per_second

    def wait(self, now: float, tokens: int = 1) -> float:
        """The seconds until there are `tokens` (0.0: there are), taking none."""
        self._refill(now)
        return max(0.0, (tokens - self._tokens) / self._rate.per_second)

    def reserve(self, now: float, most: float) -> float:
        """Take a token now or ahead of time: the seconds until it is there (0.0: now), so that
        calls waiting together go one per 1/rate seconds. Past `most` seconds none is taken,
        and `most` is answered."""
        self._refill(now)
        wait = max(0.0, (1 - self._tokens) / self._rate.per_second)
        if wait > most:
            return most
        self._tokens -= 1
        return wait

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._rate.burst

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self._rate.burst), self._tokens + elapsed * self._rate.per_second)
        self._stamp = now


@dataclass
class _Caller:
    buckets: dict[Kind, Bucket] = field(default_factory=dict)
    streams: int = 0


# The longest a refusal past a rate is held before it is answered (seconds).
MAX_HOLD = 1.0
# Principals kept before idle ones are forgotten (a sweep, at most once per this many new ones).
SWEEP_AT = 10_000


class Limiter:
    """The rate and stream limits of every principal of one server (one per process)."""

    def __init__(
        self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic, hold: float = MAX_HOLD
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._hold = hold
        self._callers: dict[str, _Caller] = {}
        self._sweep_at = SWEEP_AT

    async def admit(self, method: str, caller: Principal, page_size: object = None, size: int = 0) -> None:
        """Take the call's tokens (`cost`) of its kind, or raise LimitExceeded saying when
        to retry. The refusal is held for that long, at most `hold` seconds: a client that
        retries at once, whatever Retry-After says, is slowed to the pace of its refusals
        instead of making the server refuse it thousands of times a second."""
        if GATEWAY in caller.roles:
            return
        kind = kind_of(method)
        rate = self.settings.rate(kind)
        if not rate.limited:
            return
        now = self._clock()
        tokens = cost(page_size, size, DEFAULT_PAGE_ROWS.get(_name(method), 0))
        wait = self._bucket(caller, kind, now).take(now, min(tokens, rate.burst))
        if wait > 0:
            await self._refuse(kind, caller, wait)

    async def check(self, method: str, caller: Principal) -> None:
        """Refuse, as `admit` does, a caller with no token of the call's kind left, taking
        none: before reading a request whose size, and so its cost, is not known yet (a
        chunked REST body), so that a caller past its rate is refused before its body is
        read, not after. `admit` takes the tokens once the size is known."""
        if GATEWAY in caller.roles:
            return
        kind = kind_of(method)
        if not self.settings.rate(kind).limited:
            return
        now = self._clock()
        wait = self._bucket(caller, kind, now).wait(now)
        if wait > 0:
            await self._refuse(kind, caller, wait)

    async def _refuse(self, kind: Kind, caller: Principal, wait: float) -> NoReturn:
        """LimitExceeded saying when to retry, held for that long, at most `hold` seconds."""
        rate = self.settings.rate(kind)
        held = min(wait, self._hold)
        if held > 0:
            await asyncio.sleep(held)
        raise refused(
            f"{kind}_rate",
            f"too many {kind} calls: {caller.name} may make {rate.per_second:g} a second "
            f"(bursts of {rate.burst}); retry in {wait - held:.1f} s",
            retry_after=wait - held,
        )

    async def spend(self, caller: Principal, kind: Kind, tokens: int) -> None:
        """Take `tokens` of the caller's `kind`, waiting for them instead of refusing (a burst
        at a time): the work of a stream that grows after the stream was admitted (a
        collection watch's catch-up, whose size its token does not tell) goes at the caller's
        rate, counted in `auditflow_paced_streams` while it waits."""
        rate = self.settings.rate(kind)
        if not rate.limited or GATEWAY in caller.roles:
            return
        while tokens > 0:
            part = min(tokens, rate.burst)
            now = self._clock()
            wait = self._bucket(caller, kind, now).take(now, part)
            if wait <= 0:
                tokens -= part
                continue
            metrics.PACED_STREAMS.inc()
            try:
                await asyncio.sleep(wait)
            finally:
                metrics.PACED_STREAMS.dec()

    @contextlib.contextmanager
    def stream(self, caller: Principal) -> Iterator[None]:
        """Hold one of the caller's stream slots while the stream is open."""
        limit = self.settings.max_streams
        if limit <= 0 or GATEWAY in caller.roles:
            yield
            return
        state = self._state(caller)
        if state.streams >= limit:
            raise refused(
                "streams",
                f"{caller.name} has {state.streams} streams open, the most one principal may; "
                "close one (or wait for one to end) first",
                quota=f"streams of {caller.name}",
            )
        state.streams += 1
        try:
            yield
        finally:
            state.streams -= 1

    def open_streams(self, caller: Principal) -> int:
        state = self._callers.get(caller.key)
        return state.streams if state is not None else 0

    def _bucket(self, caller: Principal, kind: Kind, now: float) -> Bucket:
        state = self._state(caller)
        bucket = state.buckets.get(kind)
        if bucket is None:
            bucket = state.buckets[kind] = Bucket(self.settings.rate(kind), now)
        return bucket

    def _state(self, caller: Principal) -> _Caller:
        state = self._callers.get(caller.key)
        if state is None:
            if len(self._callers) >= self._sweep_at:
                self._sweep()
            state = self._callers[caller.key] = _Caller()
        return state

    def _sweep(self) -> None:
        """Forget principals that are idle: every bucket full, no stream open."""
        now = self._clock()
        idle = [
            key
            for key, state in self._callers.items()
            if state.streams == 0 and all(b.full(now) for b in state.buckets.values())
        ]
        for key in idle:
            del self._callers[key]
        self._sweep_at = len(self._callers) + SWEEP_AT


# Streams of the public methods one peer address may hold open at once (a load balancer's
# health watch needs one; grpcurl's reflection one at a time).
PUBLIC_STREAMS_PER_PEER = 16
DEFAULT_MAX_PUBLIC_STREAMS = 256  # in all, on one server


class PublicStreams:
    """Open streams of the public methods, by peer address. Health Watch and reflection need
    no credentials, so nobody's stream limit holds them: without this bound a stranger could
    open streams until the server's memory ran out. Past `per_peer` from one address, or
    `total` in all, a new one is refused (RESOURCE_EXHAUSTED, QuotaFailure; counted in
    `refusals` as public_streams); the slot frees when the stream ends. `total` 0: no bound,
    neither in all nor per address. Peers without an address (a Unix socket) share one."""

    def __init__(
        self,
        total: int = DEFAULT_MAX_PUBLIC_STREAMS,
        per_peer: int = PUBLIC_STREAMS_PER_PEER,
        refusals: Counter | None = None,
    ) -> None:
        self.total = total
        self.per_peer = min(per_peer, total) if total else 0
        self._refusals = refusals
        self._open: dict[str, int] = {}
        self._count = 0

    def take(self, peer: str | None) -> Callable[[], None]:
        """A slot of `peer` (an address; None for a peer with none), or LimitExceeded; the
        function returned gives it back (once, however often it is called)."""
        if not self.total:
            return _nothing
        key = peer or ""
        held = self._open.get(key, 0)
        if held >= self.per_peer:
            raise self._refused(
                f"{held} health or reflection streams are open from this address, the most one address may "
                "hold; close one first",
                "public streams of one address",
            )
        if self._count >= self.total:
            raise self._refused(
                f"this server holds {self._count} health or reflection streams, the most it holds; retry later",
                "public streams of the server",
            )
        self._open[key] = held + 1
        self._count += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self._count -= 1
            left = self._open[key] - 1
            if left:
                self._open[key] = left
            else:
                del self._open[key]

        return give_back

    @contextlib.contextmanager
    def stream(self, peer: str | None) -> Iterator[None]:
        """Hold a slot of `peer` while the block runs."""
        give_back = self.take(peer)
        try:
            yield
        finally:
            give_back()

    def open_streams(self) -> int:
        return self._count

    def _refused(self, message: str, quota: str) -> LimitExceeded:
        return refused("public_streams", message, quota=quota, counted_in=self._refusals)


def _nothing() -> None:
    pass


def refused(
    limit: str,
    message: str,
    *,
    retry_after: float | None = None,
    quota: str = "",
    counted_in: Counter | None = None,
) -> LimitExceeded:
    """A LimitExceeded for `limit`, counted in the refusals metric (the gateway's, or
    `counted_in`: the one of the service refusing)."""
    count_refusal(limit, counted_in)
    return LimitExceeded(message, limit=limit, retry_after=retry_after, quota=quota)


def count_refusal(limit: str, counted_in: Counter | None = None) -> None:
    (counted_in or metrics.LIMIT_REFUSALS).labels(limit).inc()
