"""A worker with sends in flight rides out Redis restarts (AOF): nothing lost, nothing
sent twice, the worker process still the same one."""

from __future__ import annotations

import time

import redis

from mobyt_worker.producer import connect, send_sms
from mobyt_worker.store.orders import OrderStore
from mobyt_worker.store.connection import connect as connect_redis

from ..support import wait_for

NUMBER = "+33612345670"


def test_worker_with_sends_in_flight_survives_redis_restarts(simulator, worker_env, start_process, private_redis):
    server = private_redis(appendonly=True)  # stopped after the worker and beat: none hangs on a dead Redis
    env = {"REDIS_URL": server.url, "MOBYT_REPLAY_AFTER": "5"}
    simulator.set_latency(0.8)  # every send holds its message unacked for a while
    worker = start_process("worker", env=env)
    start_process("beat", env=env)
    app = connect(server.url, replay_after=5)
    r = redis.Redis.from_url(server.url)
    order_ids = []
    for restart in range(2):
        order_ids += [send_sms(app, [NUMBER], f"in flight {restart}-{i}", sender="ACME").order_id
                      for i in range(30)]
        wait_for(lambda: r.hlen("unacked") >= 4, timeout=20, what="messages unacked in the worker")
        server.restart(down_for=1.0)
        time.sleep(3.0)
    simulator.set_latency(0.0)
    store = OrderStore(connect_redis(server.url), "mobyt")
    for oid in order_ids:
        wait_for(lambda: (rec := store.get_order(oid)) and rec.final, timeout=90, what=f"order {oid} final")
    assert [oid for oid in order_ids if simulator.billed_sends(oid) != 1] == []
    assert worker.proc.poll() is None, worker.output()[-3000:]
    assert "Unrecoverable error" not in worker.output()
