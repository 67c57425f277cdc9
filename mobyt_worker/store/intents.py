"""Send intents: the order is written to Redis before its task is published.

A broker may lose a message (kombu's Redis transport pops it before it records it as
unacked, so a worker killed in that instant takes it along). The record may not be lost:
producers write ``P:order:{order_id}`` with ``state=queued`` and the exact task kwargs,
and index it in ``P:intents`` scored by when it should be replayed if no worker has
claimed it by then. The worker's claim turns ``queued`` into ``sending`` and removes the
index entry; the beat job ``mobyt.replay_intents`` publishes the still-``queued`` ones
again with the same task id and kwargs. A replay of a message that was not lost is
harmless: the claim sees the order and sends nothing twice.

One call writes an intent (any language can do the same with ``EVAL`` of the script as
registered, ``scripts.source("record_intent")``: see docs/reference.md, "Producers")::

    Intents(redis_client, "mobyt", ttl=..., replay_after=120).record(order_id, task_id, kwargs)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping, cast

import redis

from . import scripts
from .keys import Keys
from .orders import now_iso
from .replicas import Replicas
from ..states import QUEUED


@dataclass(frozen=True)
class Intent:
    """A queued order to publish again: its task id and exact kwargs."""

    order_id: str
    task_id: str
    kwargs: dict[str, Any]


class Intents:
    def __init__(self, client: redis.Redis, prefix: str, *, ttl: int, replay_after: float,
                 replicas: Replicas | None = None) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.ttl = ttl
        self.replay_after = replay_after
        self.replicas = replicas
        self._record = scripts.register(client, "record_intent")

    def record(self, order_id: str, task_id: str, kwargs: Mapping[str, Any], *, now: float | None = None) -> str:
        """Write the intent before publishing; returns the order's state (``queued``, or
        the state of an order already past it, which is left untouched). With ``replicas``,
        raises :class:`NotReplicated` when too few replicas have a new intent: do not
        publish; it may still be replayed, so retry with the same order id."""
        now = time.time() if now is None else now
        fields: dict[str, Any] = {
            "order_id": order_id, "created_at": now_iso(now), "task_id": task_id,
            "request": json.dumps(dict(kwargs), sort_keys=True), "polls": 0, "final": 0, "cancelled": 0,
        }
        recipients = kwargs.get("recipients")
        if isinstance(recipients, (list, tuple)):
            fields["recipient_count"] = len(recipients)
        for name in ("batch_id", "message_type", "sender", "scheduled_at", "replaces"):
            if kwargs.get(name) not in (None, ""):
                fields[name] = kwargs[name]
        flat = [str(part) for pair in fields.items() for part in pair]
        state = cast(str, self._record(
            keys=[self.keys.order(order_id), self.keys.orders, self.keys.intents],
            args=[order_id, now, now + self.replay_after, self.ttl, json.dumps(flat)],
        ))
        # a message published for an intent a failover loses is lost with it
        if state == QUEUED and self.replicas is not None:
            self.replicas.require(self.keys.order(order_id), "task_id", task_id)
        return state

    def due(self, *, limit: int = 500, now: float | None = None) -> list[Intent]:
        """Intents past their replay time that no worker has claimed; their next replay is
        pushed ``replay_after`` later. Entries of orders past ``queued`` (or gone) are dropped."""
        now = time.time() if now is None else now
        ids = cast(list[str], self.redis.zrangebyscore(self.keys.intents, "-inf", now, start=0, num=limit))
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for oid in ids:
                pipe.hmget(self.keys.order(oid), "state", "task_id", "request")
            rows = pipe.execute()
        found, done = [], []
        for oid, (state, task_id, request) in zip(ids, rows):
            if state == QUEUED and task_id and request:
                found.append(Intent(oid, task_id, json.loads(request)))
            else:
                done.append(oid)
        with self.redis.pipeline(transaction=False) as pipe:
            if found:  # XX: an entry the claim removed meanwhile stays removed
                pipe.zadd(self.keys.intents, {i.order_id: now + self.replay_after for i in found}, xx=True)
            if done:
                pipe.zrem(self.keys.intents, *done)
            pipe.execute()
        return found

    def pending(self) -> int:
        return cast(int, self.redis.zcard(self.keys.intents))
