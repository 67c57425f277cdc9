"""Redis as docs/operations.md asks it to run (AOF, ``appendfsync everysec``) restarted while
sends wait in the queue and others run unacked in the worker: every order is billed
exactly once, and the worker says it lost the broker."""

from __future__ import annotations

import time

import pytest
import redis

from mobyt_worker.store.connection import connect
from mobyt_worker.store.orders import OrderStore

from ..producer import bare_client, call
from ..support import RedisServer, wait_for

NUMBER = "+33612345670"
ORDERS = 24


def everysec(server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    client.config_set("appendfsync", "everysec")
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    client.close()


def crash_and_start(server: RedisServer) -> None:
    """SIGKILL: what the AOF had not yet written to disk (up to a second) is gone."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    server.proc = None
    time.sleep(1.0)
    server.start()


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_redis_restart_crossing_queued_and_unacked_sends_bills_each_order_once(how, simulator, start_process):
    server = RedisServer(appendonly=True).start()
    everysec(server)
    worker = None
    try:
        simulator.set_latency(0.5)
        worker = start_process("worker", env={"REDIS_URL": server.url}, concurrency=4)
        client = bare_client(server.url)
        order_ids = [f"RESTART{i:03d}" for i in range(ORDERS)]
        for oid in order_ids:
            call(client, "mobyt.send_sms", recipients=[NUMBER], message=f"order {oid}", sender="ACME", order_id=oid)
        wait_for(lambda: simulator.count("SENDSMS") >= 2, timeout=20, what="sends in flight")
        probe = redis.Redis(port=server.port)
        queued, unacked = probe.llen("mobyt"), probe.hlen("unacked")
        probe.close()
        assert queued > 0 and unacked > 0, (queued, unacked)  # both kinds cross the restart

        if how == "restart":
            server.restart(down_for=1.0)
        else:
            crash_and_start(server)
        everysec(server)
        simulator.set_latency(0.0)

        store = OrderStore(connect(server.url), "mobyt")
        wait_for(lambda: all((r := store.get_order(o)) and r.state in ("accepted", "completed") for o in order_ids),
                 timeout=90, interval=0.5, what="every order accepted after the restart")
        assert [simulator.billed_sends(oid) for oid in order_ids] == [1] * ORDERS
        assert simulator.billed_sends() == ORDERS
        log = worker.output()
        assert "Connection to broker lost" in log or "consumer: Cannot connect to redis" in log, log[-3000:]
        assert worker.proc.poll() is None, "the worker exited on the restart"
        store.redis.close()
    finally:
        if worker is not None:
            worker.stop()  # before Redis goes: a worker whose broker is gone stops slowly
        server.cleanup()
