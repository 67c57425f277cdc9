"""Redis clients that ride out a restart or a Sentinel failover: one place builds them
for every process (workers, beat, web, CLI, producers).

A ``rediss://`` URL verifies the server's certificate (redis-py's default,
``ssl_cert_reqs=required``) unless its query string says otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

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
        target = parse_sentinel_url(url)
        sentinel = Sentinel(target.hosts, sentinel_kwargs={"socket_timeout": options["socket_connect_timeout"],
                                                           "password": target.password})
        options.update(db=target.db, username=target.username, password=target.password)
        return sentinel.master_for(sentinel_master, **options)
    return redis.Redis.from_url(url, **options)


class SentinelTarget(NamedTuple):
    """What a ``sentinel://`` URL says: the sentinels, and the master's db and credentials."""

    hosts: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``sentinel://[user:pw@]h1:p1;sentinel://h2:p2/db`` -> ([(h1, p1), (h2, p2)], db, user, pw).

    A malformed part is named by its position, never shown: it may hold the password."""
    parts = url.split(";")
    hosts, db, username, password = [], 0, None, None
    for i, part in enumerate(parts, 1):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"part {i} of {len(parts)} is not a sentinel://host:port URL")
        hosts.append((parsed.hostname, parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        username = _unquoted(parsed.username) or username
        password = _unquoted(parsed.password) or password
    return SentinelTarget(hosts, db, username, password)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``redis://user:pw@host/0`` -> (``redis://host/0``, user, pw): a URL that may be shown,
    and the credentials to pass as options, which Celery's settings censor by name."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return bare, _unquoted(parts.username), _unquoted(parts.password)


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None

