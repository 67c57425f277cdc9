"""Each worker and beat says it is alive, in Redis, so any process can see the fleet.

Storage: the hash ``P:heartbeat:KIND:HOST:PID`` (``host``, ``pid``, ``version``,
``started``, ``last_seen`` as Unix seconds, ``tasks_run``, ``queues`` for workers,
``holds_lock`` for beats) lives ``3 x MOBYT_HEARTBEAT_INTERVAL`` seconds unless
refreshed, and the sorted set ``P:heartbeats`` indexes those keys by last beat. A daemon
thread refreshes them every interval; a clean stop deletes them at once, a SIGKILLed
process simply stops refreshing and drops out when its key expires.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from typing import Callable

import redis

from . import __version__
from .store.keys import Keys
from .store.orders import now_iso

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, client: redis.Redis, prefix: str, kind: str, *, interval: float,
                 queues: str = "", holds_lock: Callable[[], bool] | None = None) -> None:
        self.redis, self.kind, self.interval = client, kind, interval
        keys = Keys(prefix)
        self.index = keys.heartbeats
        self.host, self.pid = platform.node(), os.getpid()
        self.key = keys.heartbeat(kind, self.host, self.pid)
        self.started = now_iso()
        self.queues = queues
        self.holds_lock = holds_lock
        self.tasks_run = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def task_done(self) -> None:
        with self._lock:
            self.tasks_run += 1

    def beat(self) -> None:
        now = time.time()
        fields: dict[str, str | int | float] = {"kind": self.kind, "host": self.host, "pid": self.pid, "version": __version__,
                  "started": self.started, "last_seen": now, "tasks_run": self.tasks_run, "queues": self.queues}
        if self.holds_lock is not None:
            fields["holds_lock"] = int(self.holds_lock())
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(self.key, max(1, int(self.interval * 3)))
            pipe.zadd(self.index, {self.key: now})
            pipe.execute()

    def start(self) -> "Heartbeat":
        threading.Thread(target=self._run, name=f"mobyt-heartbeat-{self.kind}", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as exc:  # Redis away: the next beat tries again
                log.debug("heartbeat not written: %s", type(exc).__name__)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """A clean exit: the fleet sees this process gone at once, not after expiry."""
        self._stop.set()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(self.key)
                pipe.zrem(self.index, self.key)
                pipe.execute()
        except redis.RedisError as exc:
            log.debug("heartbeat not removed: %s", type(exc).__name__)
