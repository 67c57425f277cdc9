"""Redis clients that ride out a restart or a Sentinel failover: one place builds them
for every process (workers, beat, web, CLI, producers)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel


def resilient_options() -> dict[str, Any]:
    """Options that ride out a Redis restart or failover (~30 s of jittered retries)."""
    return {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 20),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 15,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
    }


def _quick() -> dict[str, Any]:
    """Options of a probe: 2 s timeouts and no retry, so a dead Redis answers within seconds."""
    return {"socket_connect_timeout": 2, "socket_timeout": 2, "retry": Retry(NoBackoff(), 0)}


def connect(url: str, *, sentinel_master: str = "mymaster", quick: bool = False) -> redis.Redis:
    """A Redis client that survives restarts and failovers (``quick``: one that gives up at once).

    ``sentinel://h1:26379;sentinel://h2:26379/0`` (kombu's form) asks the sentinels for
    the current master of ``sentinel_master`` and follows it across failovers.
    """
    options: dict[str, Any] = _quick() if quick else resilient_options()
    options["decode_responses"] = True
    if url.startswith("sentinel://"):
        hosts, db, password = parse_sentinel_url(url)
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": options["socket_connect_timeout"],
                                                    "password": password})
        options.update(db=db, password=password)
        return sentinel.master_for(sentinel_master, **options)
    return redis.Redis.from_url(url, **options)


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

