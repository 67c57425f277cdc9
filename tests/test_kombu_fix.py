"""kombu#582: a Redis channel closed after its connection puts its unacked messages back
instead of raising AttributeError (which stops the worker). The Sentinel case is in
tests/system/test_claims_sentinel_failover.py, next to its cluster."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import redis
from kombu import Connection

from mobyt_worker import kombu_fix


def channel_closed_after_its_connection(url: str, transport_options: dict[str, Any] | None = None) -> None:
    """Take a message without acking it, then close as Celery does when Redis drops."""
    with Connection(url, transport_options=transport_options or {}) as conn:
        conn.SimpleQueue("restore-me").put({"n": 1})
        channel = conn.channel()
        message = channel.basic_get("restore-me", no_ack=False)
        assert message is not None and channel.qos._delivered
        channel._disconnect_pools()  # the pools went with the lost Redis connection
        conn._do_close_transport()  # kombu: transport.client = None
        channel.close()  # restore_unacked_once


def unpatched_close_fails_with(url: str, transport_options: dict[str, Any] | None = None) -> str:
    """The same close in a fresh interpreter without the patch; returns its stderr."""
    code = ("import sys; sys.path.insert(0, '.'); from tests.test_kombu_fix import channel_closed_after_its_connection as f;"
            f"f({url!r}, {transport_options!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stderr
    return done.stderr


def test_unacked_message_is_restored_when_the_channel_closes_after_its_connection(redis_url):
    kombu_fix.apply()
    channel_closed_after_its_connection(redis_url)
    assert redis.Redis.from_url(redis_url).llen("restore-me") == 1


def test_without_the_fix_kombu_raises_on_that_close(redis_url):
    """Proves the scenario above reaches kombu#582."""
    assert "'NoneType' object has no attribute 'hostname'" in unpatched_close_fails_with(redis_url)
