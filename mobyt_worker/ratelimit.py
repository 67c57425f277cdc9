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

# KEYS[1]: the TAT key (seconds, Redis server time, 6 decimals: a double keeps them exact).
# ARGV: emission interval (s), burst tolerance (s), cost, the longest wait the caller accepts (s).
# Returns the wait before the request may go: 0 = at once. A wait within the longest
# accepted one reserves the slot (the caller sleeps, then goes without asking again); a
# longer one reserves nothing and comes back negative. A cost above the burst is admitted
# on credit: the next requests wait for it. The key expires 1 s after the TAT it holds.
_GCRA = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval, burst, cost, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = math.max(0, tat - burst - now)
if wait > max_wait then return string.format('%.6f', -math.max(wait, 0.000001)) end
local new_tat = tat + interval * cost
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now + 1) * 1000))
return string.format('%.6f', wait)
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, key: str, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = key
        self.interval = 1.0 / rate
        self.burst = self.interval * max(0.0, burst - 1)
        self._script = client.register_script(_GCRA)

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
