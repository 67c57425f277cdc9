"""The unit tier (`make unit`) never reaches a Redis server; fakeredis runs our Lua."""

from __future__ import annotations

import pytest
import redis

from ..support import RedisServerRefused, free_port


@pytest.mark.parametrize("make", [
    lambda port: redis.Redis(port=port),
    lambda port: redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", decode_responses=True),
    lambda port: redis.Redis.from_url("redis://localhost:6379/0"),
    lambda port: redis.Redis(unix_socket_path="/tmp/redis.sock"),
], ids=["tcp", "url", "default-port", "unix"])
def test_a_unit_test_cannot_connect_to_a_redis_server(make, no_redis_server_in_the_unit_tier):
    attempts = no_redis_server_in_the_unit_tier
    with pytest.raises(RedisServerRefused):
        make(free_port()).ping()
    assert len(attempts) == 1  # refused at the first try: no retry, no wait
    attempts.clear()  # this refusal was the point; any other fails the test at teardown


def test_celery_and_kombu_connections_are_refused_too(no_redis_server_in_the_unit_tier):
    from kombu import Connection  # noqa: PLC0415

    with Connection(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2) as conn:
        with pytest.raises(RedisServerRefused):
            conn.ensure_connection(max_retries=1)
    assert no_redis_server_in_the_unit_tier
    no_redis_server_in_the_unit_tier.clear()


def test_fakeredis_runs_lua_with_cjson_and_time(redis_client, no_redis_server_in_the_unit_tier):
    script = redis_client.register_script(
        "local t = redis.call('TIME') redis.call('SET', KEYS[1], cjson.encode({n = tonumber(ARGV[1])}))"
        " return {tonumber(t[1]) > 0 and 1 or 0, redis.call('GET', KEYS[1])}")
    assert script(keys=["k"], args=[7]) == [1, '{"n":7}']
    assert no_redis_server_in_the_unit_tier == []
