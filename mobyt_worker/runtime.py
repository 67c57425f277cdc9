"""The per-process objects every entry point shares: settings, Redis, store, provider client.

Workers, the web receiver and the CLI each build one :class:`Runtime` from their
settings; the HTTP connection pool and the Redis connection pool are created once per
process (never per task) and shared by all threads. In workers, tasks reach it as
``self.runtime`` (:class:`MobytTask`); signal handlers through :func:`process_runtime`.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

import redis
from celery import Task

from .celeryapp import MobytApp, create_app
from .client import MobytClient
from .config import Settings
from .connection import connect
from .credits import CreditsWatch
from .fleet import Fleet
from .inbox import InboxStore
from .intents import Intents
from .keys import Keys
from .metrics import Metrics
from .optouts import OptOuts
from .ratelimit import RateLimiter
from .store import OrderStore
from .sweeps import HistorySweeps, SweepLedger

if TYPE_CHECKING:
    from .protocol import RecipientStatus


class Runtime:
    def __init__(self, settings: Settings, *, producer: MobytApp | None = None) -> None:
        self.settings = settings
        if producer is not None:
            self.__dict__["producer"] = producer

    @cached_property
    def producer(self) -> MobytApp:
        """The Celery app that enqueues (sends, cancels, MOBYT_EVENT_TASK); workers pass their
        own, others build one on first use."""
        return create_app(self.settings, intents=self.intents)

    def record_statuses(self, order_id: str, rows: Sequence[RecipientStatus], *, source: str) -> list[dict[str, Any]] | str:
        """Apply statuses from a poll or a push, then hand each change to MOBYT_EVENT_TASK."""
        changes = self.store.apply_statuses(order_id, rows, source=source)
        for row in rows:
            if row.written:
                self.metrics.inc("unknown_statuses", status=row.written[:40])
        if isinstance(changes, list) and changes:
            self.metrics.status_changes(changes, source)
        name = self.settings.event_task
        if name and isinstance(changes, list):
            for change in changes:
                self.producer.send_task(name, kwargs={"event": change}, queue=self.settings.event_queue)
        return changes

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings.redis_url, sentinel_master=self.settings.sentinel_master)

    @cached_property
    def store(self) -> OrderStore:
        s = self.settings
        return OrderStore(self.redis, s.key_prefix, ttl=s.order_ttl, stream_maxlen=s.stream_maxlen,
                          poll_intervals=s.poll_intervals)

    @cached_property
    def intents(self) -> Intents:
        s = self.settings
        return Intents(self.redis, s.key_prefix, ttl=s.order_ttl, replay_after=s.replay_after,
                       wait_replicas=s.redis_wait_replicas, wait_timeout=s.redis_wait_timeout)

    @cached_property
    def optouts(self) -> OptOuts:
        return OptOuts(self.redis, self.settings.key_prefix)

    @cached_property
    def inbox(self) -> InboxStore:
        s = self.settings
        return InboxStore(self.redis, s.key_prefix, ttl=s.order_ttl, stream_maxlen=s.stream_maxlen, country=s.country)

    @cached_property
    def credits(self) -> CreditsWatch:
        s = self.settings
        return CreditsWatch(self.redis, s.key_prefix, threshold=s.credit_threshold, stream_maxlen=s.stream_maxlen)

    @cached_property
    def send_limiter(self) -> RateLimiter | None:
        """SENDSMS calls per second across all workers (MOBYT_SEND_RATE_LIMIT, 0 = off)."""
        rate = self.settings.send_rate_limit
        return RateLimiter(self.redis, Keys(self.settings.key_prefix).send_rate, rate) if rate else None

    @cached_property
    def client(self) -> MobytClient:
        return MobytClient(self.settings, on_request=self.metrics.provider_request)

    @cached_property
    def sweeps(self) -> HistorySweeps:
        """SMSHISTORY read once for every order in doubt (sweeps.py)."""
        ledger = SweepLedger(self.redis, Keys(self.settings.key_prefix))
        return HistorySweeps(self.client, ledger, self.store, self.settings)

    @cached_property
    def metrics(self) -> Metrics:
        """Counters of this process, flushed to Redis each second; see metrics.py."""
        return Metrics(self.redis, self.settings.key_prefix, fleet=Fleet(self.redis, self.settings))

    def close(self) -> None:
        if "metrics" in self.__dict__:
            self.metrics.flush()
        if "client" in self.__dict__:
            self.client.close()
        if "redis" in self.__dict__:
            self.redis.close()


_process: tuple[int, Runtime] | None = None
_building = threading.Lock()


def process_runtime(app: MobytApp) -> Runtime:
    """The Runtime of this process, built from the app's settings on first use, and again
    in a forked child (Redis and HTTP pools, and metrics threads, do not survive a fork)."""
    global _process
    current = _process
    if current is None or current[0] != os.getpid():
        with _building:
            current = _process
            if current is None or current[0] != os.getpid():
                current = _process = (os.getpid(), Runtime(app.settings, producer=app))
    return current[1]


class MobytTask(Task):
    """Base of every task of ours (``@app.task(base=MobytTask, bind=True)``): ``self.runtime``
    is the per-process Runtime, shared by every task and thread of the process."""

    @property
    def runtime(self) -> Runtime:
        app = self.app
        if not isinstance(app, MobytApp):
            raise TypeError("mobyt tasks run on the app of mobyt_worker.worker (celeryapp.create_app)")
        return process_runtime(app)
