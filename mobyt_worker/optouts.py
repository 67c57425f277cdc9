"""Numbers that sent STOP. A send to one of them is refused before any HTTP call:
the provider would blacklist it anyway, and still bill the attempt.

Kept in the hash ``P:optout`` (number -> JSON {at, message_id}); no expiry: an opt-out
lasts until an operator clears it (``mobyt optouts --clear NUMBER``).
"""

from __future__ import annotations

import json
from typing import Iterable, cast

import redis

from .errors import RecipientOptedOut
from .sms import mask_number
from .keys import Keys
from .store import now_iso


class OptOuts:
    def __init__(self, client: redis.Redis, prefix: str = "mobyt") -> None:
        self.redis = client
        self.key = Keys(prefix).optout

    @staticmethod
    def entry(message_id: int | None, at: str | None = None) -> str:
        """The stored value of one opt-out (the inbox's Lua script writes it too)."""
        return json.dumps({"at": at or now_iso(), "message_id": message_id})

    def add(self, number: str, *, message_id: int | None = None) -> bool:
        """Record an opt-out; True if the number was not opted out before."""
        return bool(self.redis.hsetnx(self.key, number, self.entry(message_id)))

    def clear(self, number: str) -> bool:
        return bool(self.redis.hdel(self.key, number))

    def all(self) -> dict[str, dict]:
        stored = cast(dict[str, str], self.redis.hgetall(self.key))
        return {number: json.loads(value) for number, value in stored.items()}

    def check(self, numbers: Iterable[str]) -> None:
        """Raise :class:`RecipientOptedOut` naming the (masked) numbers that sent STOP."""
        numbers = list(numbers)
        if not numbers:
            return
        flags = self.redis.hmget(self.key, numbers)
        stopped = [mask_number(n) for n, flag in zip(numbers, flags) if flag is not None]
        if stopped:
            raise RecipientOptedOut("recipients", f"opted out (sent STOP): {', '.join(stopped)}")
