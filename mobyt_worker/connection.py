"""Redis clients that ride out a restart or a Sentinel failover: one place builds them
for every process (workers, beat, web, CLI, producers)."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel


#: Client options that ride out a Redis restart or failover (~30 s of jittered retries).
REDIS_RETRY = {
    "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 20),
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    "health_check_interval": 15,
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
}


def connect(url: str, *, sentinel_master: str = "mymaster") -> redis.Redis:
    """A Redis client that survives restarts and failovers.

    ``sentinel://h1:26379;sentinel://h2:26379/0`` (kombu's form) asks the sentinels for
    the current master of ``sentinel_master`` and follows it across failovers.
    """
    if url.startswith("sentinel://"):
        hosts, db, password = parse_sentinel_url(url)
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": 5, "password": password})
        return sentinel.master_for(sentinel_master, db=db, password=password, decode_responses=True,
                                   **REDIS_RETRY)
    return redis.Redis.from_url(url, decode_responses=True, **REDIS_RETRY)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """``sentinel://[:pw@]h1:p1;sentinel://h2:p2/db`` -> ([(h1, p1), (h2, p2)], db, pw)."""
    hosts, db, password = [], 0, None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"not a sentinel:// URL: {part.strip()!r}")
        hosts.append((parsed.hostname, parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        password = parsed.password or password
    return hosts, db, password

