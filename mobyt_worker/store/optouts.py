"""Numbers that sent STOP. A send to one of them is refused before any HTTP call:
the provider would blacklist it anyway, and still bill the attempt.

Kept in the hash ``P:optout`` (number -> JSON {at, message_id}); no expiry: an opt-out
lasts until an operator clears it (``mobyt optouts --clear NUMBER``).

A new opt-out must also reach the orders already scheduled for the number
(``mobyt.apply_optout``). Until a run of that task has withdrawn them all, the number
waits in the zset ``P:optout:pending``, scored by when to look again; the beat job
``mobyt.replay_optouts`` publishes the task again for every number past that time, so a
lost message or a crash between the STOP and its application only delays it.
"""

from __future__ import annotations

import json
import time
from typing import Iterable, cast

import redis

from ..errors import RecipientOptedOut
from ..sms import mask_number
from .keys import Keys
from .orders import now_iso


class OptOuts:
    def __init__(self, client: redis.Redis, prefix: str = "mobyt", *, replay_after: float = 120.0) -> None:
        self.redis = client
        keys = Keys(prefix)
        self.key = keys.optout
        self.pending_key = keys.optout_pending
        self.replay_after = replay_after

    @staticmethod
    def entry(message_id: int | None, at: str | None = None) -> str:
        """The stored value of one opt-out (the inbox's Lua script writes it too)."""
        return json.dumps({"at": at or now_iso(), "message_id": message_id})

    def add(self, number: str, *, message_id: int | None = None) -> bool:
        """Record an opt-out, due to be applied to the number's scheduled orders; True if
        the number was not opted out before."""
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(self.key, number, self.entry(message_id))
            pipe.zadd(self.pending_key, {number: time.time() + self.replay_after}, nx=True)
            return bool(pipe.execute()[0])

    def clear(self, number: str) -> bool:
        with self.redis.pipeline() as pipe:
            pipe.hdel(self.key, number)
            pipe.zrem(self.pending_key, number)
            return bool(pipe.execute()[0])

    def all(self) -> dict[str, dict]:
        stored = cast(dict[str, str], self.redis.hgetall(self.key))
        return {number: json.loads(value) for number, value in stored.items()}

    def opted_out(self, numbers: Iterable[str]) -> set[str]:
        """Those of ``numbers`` that sent STOP."""
        numbers = list(numbers)
        if not numbers:
            return set()
        flags = self.redis.hmget(self.key, numbers)
        return {n for n, flag in zip(numbers, flags) if flag is not None}

    def check(self, numbers: Iterable[str]) -> None:
        """Raise :class:`RecipientOptedOut` naming the (masked) numbers that sent STOP."""
        numbers = list(numbers)
        stopped = self.opted_out(numbers)
        if stopped:
            masked = ", ".join(mask_number(n) for n in numbers if n in stopped)
            raise RecipientOptedOut("recipients", f"opted out (sent STOP): {masked}")

    # --- applying new opt-outs to scheduled orders -------------------------------------------

    def due(self, *, limit: int = 500, now: float | None = None) -> list[str]:
        """Numbers whose opt-out no run has finished applying by now; each is looked at
        again ``replay_after`` later unless a run finishes first."""
        now = time.time() if now is None else now
        numbers = cast(list[str], self.redis.zrangebyscore(self.pending_key, "-inf", now, start=0, num=limit))
        if numbers:  # XX: a number a run finished meanwhile stays finished
            self.redis.zadd(self.pending_key, {n: now + self.replay_after for n in numbers}, xx=True)
        return numbers

    def postpone(self, number: str, at: float) -> None:
        """A run must wait (an order is being sent): the beat looks again at ``at`` if no retry did."""
        self.redis.zadd(self.pending_key, {number: at}, xx=True)

    def applied(self, number: str) -> None:
        """No order scheduled before the STOP can reach the number any more."""
        self.redis.zrem(self.pending_key, number)

    def pending(self) -> int:
        return cast(int, self.redis.zcard(self.pending_key))
