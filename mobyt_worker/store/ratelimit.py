"""A sends-per-second cap shared by every worker on every host (GCRA in Redis).

GCRA (the generic cell rate algorithm, as in redis-cell and throttled) keeps one
timestamp per limit: the theoretical arrival time (TAT) of the next request. One Lua
call per send either admits it at once or reserves its slot and says how long to wait,
so the cap holds across processes without any coordinator, and a waiting sender asks
once (no herd of threads re-asking every interval). The clock is Redis's own (TIME),
so hosts with skewed clocks still share one timeline. A cap of 0 disables the limiter.
"""

from __future__ import annotations

import time

import redis

from . import scripts


class RateLimiter:
    def __init__(self, client: redis.Redis, key: str, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = key
        self.interval = 1.0 / rate
        self.burst = self.interval * max(0.0, burst - 1)
        self._script = scripts.register(client, "gcra")

    def _call(self, cost: int, max_wait: float) -> float:
        return float(self._script(keys=[self.key], args=[self.interval, self.burst, cost, max_wait]))

    def try_acquire(self, cost: int = 1) -> float:
        """0.0 if admitted now, else the seconds to wait (nothing is reserved then)."""
        return abs(self._call(cost, 0.0))

    def reserve(self, max_wait: float, cost: int = 1) -> float:
        """Take the next slot if it comes within ``max_wait`` seconds (sleeping until it) and
        return 0; otherwise reserve nothing and return the seconds until a slot is free, so
        the caller waits in the queue rather than inside a task."""
        wait = self._call(cost, max_wait)
        if wait < 0:
            return -wait
        if wait > 0:
            time.sleep(wait)
        return 0.0

    def acquire(self, cost: int = 1, timeout: float = 60.0) -> None:
        """Reserve the next slot and sleep until it; TimeoutError if it is past ``timeout``."""
        if self.reserve(timeout, cost):
            raise TimeoutError("send rate limit: no slot in time")
