"""The fleet at a glance, read from Redis: what ``GET /readyz``, ``mobyt health`` and the
alert gauges of ``GET /metrics`` show.

Readiness checks, each named in the answer when it fails:

``redis``     Redis answers.
``workers``   at least one worker consuming the ``mobyt`` queue beat within
              ``3 x MOBYT_HEARTBEAT_INTERVAL`` seconds (heartbeat.py).
``beat``      RedBeat's lock exists and a beat that holds it beat recently.
``provider``  the provider answered a call well within ``MOBYT_READY_PROVIDER_AGE``
              seconds (any function; beat polls the inbox every ``MOBYT_INBOX_INTERVAL``).

The age of the oldest queued task is sampled: the broker's messages carry no sending
time, so the first time a message is seen at the head of the queue is stored
(``P:queue:oldest``) and its age counts from then. It is exact to within the interval
between two readings (a scrape, a health check).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from .config import Settings
from .store.connection import connect
from .contract import QUEUE
from .store.credits import CreditsWatch
from .store.keys import Keys
from .store.orders import in_doubt_count


def quick_client(s: Settings) -> redis.Redis:
    """Redis with 2 s timeouts and no retries, following the sentinels like every process."""
    return connect(s.redis_url, sentinel_master=s.sentinel_master, quick=True)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(0.0, now - at), 1)


class Fleet:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis, self.settings = client, settings
        self.keys = Keys(settings.key_prefix)
        self.stale = settings.heartbeat_interval * 3
        self.queue_key = settings.broker_key_prefix + QUEUE

    def heartbeats(self, kind: str) -> list[dict[str, Any]]:
        now = time.time()
        self.redis.zremrangebyscore(self.keys.heartbeats, "-inf", now - self.stale)
        keys = cast(list[str], self.redis.zrange(self.keys.heartbeats, 0, -1))
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            rows = pipe.execute()
        found = []
        for row in rows:
            if row.get("kind") != kind or float(row.get("last_seen", 0)) < now - self.stale:
                continue
            found.append({"host": row["host"], "pid": int(row["pid"]), "version": row.get("version"),
                          "started": row.get("started"), "last_seen_age": _age(float(row["last_seen"]), now),
                          "tasks_run": int(row.get("tasks_run", 0)),
                          **({"queues": row.get("queues", "")} if kind == "worker" else
                             {"holds_lock": row.get("holds_lock") == "1"})})
        return sorted(found, key=lambda r: (r["host"], r["pid"]))

    def oldest_queued_age(self) -> float:
        head = cast(str | None, self.redis.lindex(self.queue_key, -1))  # LPUSHed: the oldest is last
        key = self.keys.queue_oldest
        if head is None:
            self.redis.delete(key)
            return 0.0
        try:
            tag = str(json.loads(head)["properties"]["delivery_tag"])
        except (ValueError, KeyError, TypeError):
            tag = str(hash(head))
        now = time.time()
        seen = cast(dict[str, str], self.redis.hgetall(key))
        if seen.get("tag") != tag:
            self.redis.hset(key, mapping={"tag": tag, "seen": now})
            return 0.0
        return round(now - float(seen["seen"]), 1)

    def queue_length(self) -> int:
        return cast(int, self.redis.llen(self.queue_key))

    def orders_in_doubt(self) -> int:
        return in_doubt_count(self.redis, self.keys)

    def provider_ok(self) -> dict[str, float]:
        return {k: float(v) for k, v in cast(dict[str, str], self.redis.hgetall(self.keys.provider_ok)).items()}

    def snapshot(self) -> dict[str, Any]:
        """Every figure and check; ``ready`` is true when every check passed."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            check = Check("redis", False, f"Redis does not answer ({type(exc).__name__})")
            return {"ready": False, "checks": [asdict(check)], "failed": ["redis"]}
        now = time.time()
        workers, beats = self.heartbeats("worker"), self.heartbeats("beat")
        ok_at = self.provider_ok()
        last_ok = max(ok_at.values(), default=None)
        history = CreditsWatch(self.redis, self.settings.key_prefix).history(1)
        lock = bool(self.redis.exists(self.keys.beat_lock))
        checks = [
            Check("redis", True, "answers"),
            Check("workers", any(QUEUE in w["queues"].split(",") for w in workers),
                  f"{len(workers)} worker(s) beating" if workers else "no worker consumes the mobyt queue"),
            Check("beat", lock and any(b["holds_lock"] for b in beats),
                  "a beat holds the lock" if lock else "no beat holds the RedBeat lock"),
            Check("provider", last_ok is not None and now - last_ok <= self.settings.ready_provider_age,
                  "no successful provider call yet" if last_ok is None
                  else f"last successful call {_age(last_ok, now)} s ago"),
        ]
        failed = [c.name for c in checks if not c.ok]
        return {
            "ready": not failed, "failed": failed, "checks": [asdict(c) for c in checks],
            "workers": workers, "beats": beats,
            "queue_length": self.queue_length(), "oldest_queued_age": self.oldest_queued_age(),
            "orders_due": self.redis.zcard(self.keys.due), "orders_in_doubt": self.orders_in_doubt(),
            "last_credits_check": history[0]["at"] if history else None,
            "last_inbox_poll_age": _age(ok_at.get("SRNEWMESSAGES"), now),
            "last_provider_ok_age": _age(last_ok, now),
        }
