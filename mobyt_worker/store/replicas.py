"""Writes a failover cannot lose: Redis ``WAIT`` before acting on them.

Redis replicates asynchronously; a master that dies (or is failed over while it still
runs) takes with it the writes its replicas had not received. A send claim lost that way
would let another worker send the order again; an intent lost with its broker message
would lose the order. With ``MOBYT_REDIS_WAIT_REPLICAS`` = n > 0, such a write is
followed by ``WAIT n timeout`` and trusted only if n replicas acknowledged it.

``WAIT`` covers the writes of the connection it runs on, and a client's pool may hand
the next command another connection (or a new master's, after a failover). So the
check rewrites one field of the record, only if the record is there as written, and
waits on that write, both on one connection: acknowledged, it proves everything written
before it on this master reached the replicas.
"""

from __future__ import annotations

import redis

from ..errors import NotReplicated

# KEYS[1] a hash, ARGV[1] a field, ARGV[2] the value it must hold: rewrite it (a write
# replicated after every earlier one) or return 0 when this master does not have it.
_TOUCH = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class Replicas:
    """``require(key, field, value)``: raise :class:`NotReplicated` unless ``key`` holds
    ``field=value`` on the master and ``wanted`` replicas acknowledged it."""

    def __init__(self, client: redis.Redis, wanted: int, timeout: float) -> None:
        self.redis = client
        self.wanted = wanted
        self.timeout_ms = max(1, int(timeout * 1000))
        self._touch = client.register_script(_TOUCH)

    def require(self, key: str, field: str, value: str) -> None:
        if self.wanted <= 0:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            self._touch(keys=[key], args=[field, value], client=pipe)
            pipe.execute_command("WAIT", self.wanted, self.timeout_ms)
            present, acknowledged = pipe.execute()
        if not present:
            raise NotReplicated(0, self.wanted)
        if int(acknowledged) < self.wanted:
            raise NotReplicated(int(acknowledged), self.wanted)
