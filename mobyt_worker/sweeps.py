"""Shared SMSHISTORY sweeps (SPEC §4 "Evidence is cheap"): after an outage, the orders in
doubt read the provider's history together, each row about once, not a window each.

The ledger (keys.py) holds the pieces of history already read, ``P:sweep:read``
(``start:end``, whole seconds of the provider's clock, ``end`` excluded), and the order ids
they listed, ``P:sweep:seen``, both scored by when they were read and forgotten together
after SWEEP_RETENTION. An order whose :class:`~.doubt.Window` lies inside the union of the
pieces is absent unless its id was seen; seen, it is accepted.

Pieces read at different times may be joined because each says something that stays
true: a piece read at T ends at most at T minus MOBYT_CLOCK_MARGIN, a second the
provider's clock has surely passed, so no row created after the read can fall in it. A
piece and the ids it listed are written in one transaction once its whole read has
answered: a worker killed mid-sweep leaves nothing half-recorded, and its lock expires.
An id's score only grows (``ZADD GT``), so an id outlives every piece that listed it.

When an order's window is not covered, one worker at a time (``P:sweep:lock``, redis-py's
lock) reads what is missing of the union of that window and the windows of every order in
doubt that is readable now (``P:doubt:open``): one read serves them all. Its own window
first, in pages of SWEEP_PAGE seconds, SWEEP_PAGES pages at most per sweep. A page that
touches the local hour the autumn clock change repeats is not read: the provider's dates
carry no offset, so no answer about it can prove an absence.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Sequence, cast

from redis.exceptions import LockError

from .doubt import Window, window_of
from .provider.protocol import repeated_local_time

if TYPE_CHECKING:
    import redis
    from redis.lock import Lock

    from .provider.client import MobytClient
    from .config import Settings
    from .store.keys import Keys
    from .store.orders import OrderStore

Span = tuple[int, int]  # [start, end) in epoch seconds

#: One SMSHISTORY request covers at most this many seconds, so no answer grows with the period.
SWEEP_PAGE = 3600
#: Pages one sweep reads at most before it lets go of the lock (the rest: the next sweep).
SWEEP_PAGES = 24
#: How long the ledger keeps a piece and its ids: longer than the slowest poll interval (an
#: hour), so every order a sweep served is checked again while its answer is there.
SWEEP_RETENTION = 6 * 3600.0
#: Orders in doubt whose windows one sweep reads for, at most.
SWEEP_ORDERS = 10_000


def merge(spans: Iterable[Span]) -> list[Span]:
    """The union of ``spans``, as disjoint spans in order (touching ones joined)."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def covers(read: Sequence[Span], window: Window) -> bool:
    """Whether one span of ``read`` (merged) holds every second of ``window``."""
    return any(start <= window.start and window.end < end for start, end in read)


def missing(read: Sequence[Span], wanted: Sequence[Span]) -> list[Span]:
    """The parts of ``wanted`` that ``read`` (both merged) does not hold."""
    out: list[Span] = []
    for start, end in wanted:
        cursor = start
        for lo, hi in read:
            if hi <= cursor or lo >= end:
                continue
            if lo > cursor:
                out.append((cursor, lo))
            cursor = max(cursor, hi)
        if cursor < end:
            out.append((cursor, end))
    return out


def pages(spans: Iterable[Span], size: int = SWEEP_PAGE) -> list[Span]:
    return [(at, min(at + size, end)) for start, end in spans for at in range(start, end, size)]


class SweepLedger:
    """The pieces of SMSHISTORY read and the order ids they listed (``P:sweep:*``)."""

    def __init__(self, client: redis.Redis, keys: Keys, retention: float = SWEEP_RETENTION) -> None:
        self.redis = client
        self.keys = keys
        self.retention = retention

    def read(self, now: float) -> list[Span]:
        """The pieces read and not yet forgotten, merged."""
        return _spans(cast(list[str], self.redis.zrangebyscore(self.keys.swept, now - self.retention, "+inf")))

    def answer(self, order_id: str, window: Window, now: float) -> bool | None:
        """True: seen; False: ``window`` read without it; None: not read yet. One snapshot
        (MULTI): a piece and its ids are never seen half forgotten."""
        cutoff = now - self.retention
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrangebyscore(self.keys.swept, cutoff, "+inf")
            pipe.zscore(self.keys.swept_seen, order_id)
            members, score = pipe.execute()
        if score is not None and score >= cutoff:
            return True
        return False if covers(_spans(members), window) else None

    def record(self, span: Span, order_ids: Iterable[str], now: float) -> None:
        """One piece whose whole read answered, with the ids it listed: one transaction."""
        cutoff, ids = f"({now - self.retention}", sorted(set(order_ids))
        with self.redis.pipeline(transaction=True) as pipe:
            for at in range(0, len(ids), 1000):
                pipe.zadd(self.keys.swept_seen, {oid: now for oid in ids[at:at + 1000]}, gt=True)
            pipe.zadd(self.keys.swept, {f"{span[0]}:{span[1]}": now}, gt=True)
            for key in (self.keys.swept, self.keys.swept_seen):
                pipe.zremrangebyscore(key, "-inf", cutoff)
                pipe.expire(key, math.ceil(self.retention))
            pipe.execute()

    def lock(self, timeout: float) -> Lock:
        return self.redis.lock(self.keys.sweep_lock, timeout=timeout, blocking=False)


class HistorySweeps:
    """The workers' :class:`~.doubt.History`: the ledger's answer, after a sweep when it has none."""

    def __init__(self, client: MobytClient, ledger: SweepLedger, store: OrderStore, settings: Settings) -> None:
        self.client = client
        self.ledger = ledger
        self.store = store
        self.settings = settings

    def listed(self, order_id: str, window: Window, now: float) -> bool | None:
        """As of ``now`` (an earlier ``now`` only reads less: it is never later than the clock)."""
        answer = self.ledger.answer(order_id, window, now)
        if answer is not None:
            return answer
        lock = self.ledger.lock(timeout=self.client.longest_read() + 5)  # outlives one page's read
        if not lock.acquire():
            return None  # another worker is sweeping: its read will answer this order too
        try:
            answer = self.ledger.answer(order_id, window, now)  # a sweep may have just ended
            if answer is None:
                self._sweep(window, lock, now)
                answer = self.ledger.answer(order_id, window, now)
        finally:
            try:
                lock.release()
            except LockError:  # expired meanwhile: nothing of ours to release
                pass
        return answer

    def _sweep(self, own: Window, lock: Lock, now: float) -> None:
        """Read what is missing of ``own`` and of every readable window in doubt, page by
        page, each recorded once it answered. A failed read raises (what was recorded stays)."""
        horizon = math.floor(now - self.settings.clock_margin)  # never count a second the provider may not have reached
        read = self.ledger.read(now)
        mine = missing(read, [(own.start, min(own.end + 1, horizon))])
        others = [(w.start, w.end + 1) for w in self._readable(now)]
        rest = missing(merge(read + mine), merge(others))
        todo = pages(merge(mine + rest))  # one request for adjacent gaps
        todo.sort(key=lambda page: (page[1] <= own.start or page[0] > own.end, page))  # its own window first
        for start, end in todo[:SWEEP_PAGES]:
            if repeated_local_time(_utc(start), _utc(end), self.settings.timezone):  # never read (docs/operations.md)
                continue
            try:
                lock.reacquire()
            except LockError:  # held too long: another worker may be sweeping by now
                return
            rows = self.client.sms_history(_utc(start), _utc(end))
            self.ledger.record((start, end), (row.order_id for row in rows if row.order_id), time.time())

    def _readable(self, now: float) -> list[Window]:
        """The windows of the orders in doubt that a sweep may read whole now."""
        s = self.settings
        ended_before = now - s.doubt_grace - 2 * s.clock_margin  # readable_at > last + grace + 2 margins
        windows = (window_of(record, s, now) for record in self.store.open_doubts(ended_before, SWEEP_ORDERS))
        return [w for w in windows if w.readable_at <= now]


def _spans(members: Iterable[str]) -> list[Span]:
    return merge(cast(Span, tuple(int(part) for part in member.split(":"))) for member in members)


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)
