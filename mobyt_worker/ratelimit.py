"""A sends-per-second cap shared by every worker on every host (GCRA in Redis).

GCRA (the generic cell rate algorithm, as in redis-cell and throttled) keeps one
timestamp per limit: the theoretical arrival time of the next request. One Lua call
per send either admits it or says how long to wait, so the cap holds across
processes without any coordinator. A cap of 0 disables the limiter.
"""

from __future__ import annotations

import time

import redis

# KEYS[1]: the TAT key. ARGV: now (s), emission interval (s), burst tolerance (s), cost.
# Returns 0 when admitted, else the seconds to wait before trying again.
_GCRA = """
local now, interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - burst - interval * cost
if allow_at > now then return tostring(allow_at - now) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now + 1) * 1000))
return '0'
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, key: str, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = key
        self.interval = 1.0 / rate
        self.burst = self.interval * max(0.0, burst - 1)
        self._script = client.register_script(_GCRA)

    def try_acquire(self, cost: int = 1) -> float:
        """0.0 if admitted now, else the seconds to wait."""
        return float(self._script(keys=[self.key], args=[time.time(), self.interval, self.burst, cost]))

    def acquire(self, cost: int = 1, timeout: float = 60.0) -> None:
        """Block until admitted; raises TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            wait = self.try_acquire(cost)
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise TimeoutError("send rate limit: no slot in time")
            time.sleep(wait)
