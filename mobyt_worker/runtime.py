"""The per-process objects every entry point shares: settings, Redis, store, provider client.

Workers, the web receiver and the CLI each build one :class:`Runtime` from their
settings; the HTTP connection pool and the Redis connection pool are created once per
process (never per task) and shared by all threads. In workers and beat the app owns it
(:class:`WorkerApp`): tasks reach it as ``self.runtime`` (:class:`MobytTask`), signal
handlers through the app they serve.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

import redis
from celery import Task
from kombu.exceptions import KombuError

from .celeryapp import MobytApp, configure, create_app
from .provider.client import MobytClient
from .config import Settings
from .store.connection import connect
from .contract import APPLY_OPTOUT, QUEUE
from .store.credits import CreditsWatch
from .fleet import Fleet
from .store.inbox import Arrival, InboxStore
from .store.intents import Intents
from .store.keys import Keys
from .metrics import Metrics
from .store.optouts import OptOuts
from .producer import Producer
from .store.ratelimit import RateLimiter
from .store.replicas import Replicas
from .sms import mask_number
from .store.orders import OrderStore
from .sweeps import HistorySweeps, SweepLedger

if TYPE_CHECKING:
    from .provider.protocol import RecipientStatus

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, *, app: MobytApp | None = None) -> None:
        self.settings = settings
        if app is not None:
            self.__dict__["app"] = app

    @cached_property
    def app(self) -> MobytApp:
        """The Celery app that enqueues (sends, cancels, MOBYT_EVENT_TASK); workers pass their
        own, others build one on first use."""
        return create_app(self.settings)

    @cached_property
    def producer(self) -> Producer:
        """What enqueues sends: the app, writing each send's intent first."""
        return Producer(self.app, self.intents)

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
                self.app.send_task(name, kwargs={"event": change}, queue=self.settings.event_queue)
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
        return Intents(self.redis, s.key_prefix, ttl=s.order_ttl, replay_after=s.replay_after, replicas=self.replicas)

    @cached_property
    def replicas(self) -> Replicas:
        """MOBYT_REDIS_WAIT_REPLICAS: the writes a failover must not lose (intents, send claims)."""
        s = self.settings
        return Replicas(self.redis, s.redis_wait_replicas, s.redis_wait_timeout)

    @cached_property
    def optouts(self) -> OptOuts:
        return OptOuts(self.redis, self.settings.key_prefix, replay_after=self.settings.replay_after)

    @cached_property
    def inbox(self) -> InboxStore:
        s = self.settings
        return InboxStore(self.redis, s.key_prefix, ttl=s.order_ttl, stream_maxlen=s.stream_maxlen, country=s.country,
                          replay_after=s.replay_after, on_stored=self._inbound_stored)

    def _inbound_stored(self, arrival: Arrival) -> None:
        """A new inbound SMS: count a sender that is no number; a new opt-out is applied to
        the number's scheduled orders by a worker (the inbox stays fast)."""
        if arrival.number is None:
            self.metrics.inc("inbound_bad_senders", source=arrival.source)
        if arrival.opted_out:
            try:
                self.producer.send_task(APPLY_OPTOUT, kwargs={"number": arrival.number}, queue=QUEUE)
            except (KombuError, OSError, redis.RedisError) as exc:  # still pending: mobyt.replay_optouts publishes it
                log.warning("opt-out of %s stored; applying it waits for the next replay (%s)",
                            mask_number(arrival.number or ""), type(exc).__name__)

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


class WorkerApp(MobytApp):
    """The app of the worker and beat processes (worker.py). It owns the process's Runtime,
    built from its settings on first use, and again in a forked child (Redis and HTTP
    pools, and metrics threads, do not survive a fork)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._runtime: tuple[int, Runtime] | None = None
        self._building = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        current = self._runtime
        if current is None or current[0] != os.getpid():
            with self._building:
                current = self._runtime
                if current is None or current[0] != os.getpid():
                    current = self._runtime = (os.getpid(), Runtime(self.settings, app=self))
        return current[1]


def create_worker_app(settings: Settings) -> WorkerApp:
    return configure(WorkerApp(settings))


class MobytTask(Task):
    """Base of every task of ours (``@app.task(base=MobytTask, bind=True)``): ``self.runtime``
    is the per-process Runtime of its app, shared by every task and thread of the process."""

    @property
    def runtime(self) -> Runtime:
        app = self.app
        if not isinstance(app, WorkerApp):
            raise TypeError("mobyt tasks run on the app of mobyt_worker.worker (runtime.create_worker_app)")
        return app.runtime
