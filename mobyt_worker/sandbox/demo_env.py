"""Where the demo runs: its Redis, its keys, and the environment its children get.

Redis, in this order:

1. the local Redis (``REDIS_URL``, else ``redis://localhost:6379``) if it answers, on
   database 15 (never the database named in ``REDIS_URL``), with every key under
   ``mobytdemo:`` (ours through ``MOBYT_KEY_PREFIX``, Celery's through
   ``MOBYT_BROKER_KEY_PREFIX``). The demo deletes those keys before and after, and
   touches nothing else;
2. otherwise a private ``redis-server`` on a free port, in a temporary directory, stopped
   and removed at the end, when the binary is installed;
3. otherwise it says what is missing and exits 2, having started nothing.

The children get an environment built here: the calling shell's ``MOBYT_*`` and
``REDIS_URL`` are not passed on, and they run in a temporary directory, so no ``.env``
is read and production credentials are never used. Short poll intervals and ticks make
the story take seconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import redis

from ..store.connection import connect
from .processes import CannotRun, Child, free_port, wait_until

PREFIX = "mobytdemo"
BROKER_PREFIX = f"{PREFIX}:celery:"
DEMO_DB = 15
LOGIN, PASSWORD = "demo", "demo-password"  # the simulator's demo account (sandbox.DEMO_LOGIN)
DELIVERY_DELAY = 1.5
CHUNK_SIZE = 3

#: Settings of the children: fast ticks so the story takes seconds.
SETTINGS = {
    "MOBYT_KEY_PREFIX": PREFIX,
    "MOBYT_BROKER_KEY_PREFIX": BROKER_PREFIX,
    "MOBYT_LOGIN": LOGIN,
    "MOBYT_PASSWORD": PASSWORD,
    "MOBYT_DEFAULT_SENDER": "DEMO",
    "MOBYT_POLL_TICK": "0.5",
    "MOBYT_POLL_INTERVALS": "0.5,1,2",
    "MOBYT_INBOX_INTERVAL": "1",
    "MOBYT_RECONCILE_INTERVAL": "5",
    "MOBYT_CREDITS_INTERVAL": "2",
    "MOBYT_BULK_CHUNK_SIZE": str(CHUNK_SIZE),
    "MOBYT_WORKER_CONCURRENCY": "8",
    "MOBYT_CONNECT_TIMEOUT": "2",
    "MOBYT_READ_TIMEOUT": "5",
    "MOBYT_CALL_DEADLINE": "7",
    "MOBYT_SEND_RETRY_MAX": "2",
    "MOBYT_VISIBILITY_TIMEOUT": "60",
    "PYTHONUNBUFFERED": "1",
}


def demo_url(url: str, db: int = DEMO_DB) -> str | None:
    """``url`` on database ``db``; None for URLs the demo does not use (unix, sentinel)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return None
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def reachable(url: str) -> bool:
    client = connect(url, quick=True)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def choose_redis(environ: dict[str, str], workdir: Path, say: Callable[[str], None]) -> tuple[str, Child | None]:
    """The Redis URL to use and the private server started for it, if any (module docstring)."""
    given = environ.get("REDIS_URL") or "redis://localhost:6379"
    url, shown = demo_url(given), _without_password(given)
    if url and reachable(url):
        say(f"redis      {_without_password(url)}: the local Redis, database {DEMO_DB}; "
            f"demo keys under {PREFIX}: are removed at the end")
        return url, None
    binary = shutil.which("redis-server")
    why = f"no Redis answers at {shown}" if url else f"REDIS_URL {shown} is not a redis:// URL the demo can use"
    if not binary:
        raise CannotRun(f"{why}, and no redis-server binary is on PATH. Install Redis "
                        "(e.g. `apt-get install redis-server` or `brew install redis`) or start one "
                        "and set REDIS_URL=redis://HOST:PORT.")
    port = free_port()
    data = workdir / "redis"
    data.mkdir()
    server = Child("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(data), "--protected-mode", "no"], workdir / "redis.log")
    say(f"redis      {why}: starting a private redis-server on port {port} (removed at the end)")
    server.start(dict(os.environ), workdir)
    url = f"redis://127.0.0.1:{port}/{DEMO_DB}"
    wait_until(lambda: reachable(url), 10, "the private redis-server", server)
    return url, server


def delete_prefix(client: redis.Redis, prefix: str = PREFIX) -> int:
    """Delete every key under ``prefix:`` (and nothing else); returns how many."""
    removed = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def child_environment(environ: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The calling environment without MOBYT_* and REDIS_URL, plus ``extra``."""
    env = {k: v for k, v in environ.items() if not k.startswith("MOBYT_") and k != "REDIS_URL"}
    env.update(extra)
    return env

