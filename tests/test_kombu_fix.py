"""kombu#582: a Redis channel closed after its connection puts its unacked messages back
instead of raising AttributeError (which stops the worker)."""

from __future__ import annotations

import redis
from kombu import Connection

from mobyt_worker import kombu_fix


def _channel_closed_after_its_connection(url: str) -> int:
    """Take a message without acking it, close as Celery does when Redis drops, and
    return how many messages are back in the queue."""
    with Connection(url) as conn:
        conn.SimpleQueue("restore-me").put({"n": 1})
        channel = conn.channel()
        message = channel.basic_get("restore-me", no_ack=False)
        assert message is not None and channel.qos._delivered
        channel._disconnect_pools()  # the pools went with the lost Redis connection
        conn._do_close_transport()  # kombu: transport.client = None
        channel.close()  # restore_unacked_once
    return redis.Redis.from_url(url).llen("restore-me")


def test_unacked_message_is_restored_when_the_channel_closes_after_its_connection(redis_url):
    kombu_fix.apply()
    assert _channel_closed_after_its_connection(redis_url) == 1


def test_without_the_fix_kombu_raises_on_that_close(redis_url):
    """Proves the scenario above reaches kombu#582 (run in a fresh interpreter, unpatched)."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, '.'); from tests.test_kombu_fix import _channel_closed_after_its_connection as f;"
            f"f({redis_url!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "'NoneType' object has no attribute 'hostname'" in done.stderr
