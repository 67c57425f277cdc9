"""An order the provider has forgotten (MOBYT_ORDER_TTL after its creation, 30 days by
default; a few seconds here) is not polled for ever: the next poll marks it ``expired``,
takes it off the due-set and writes an event."""

from __future__ import annotations

from mobyt_worker.store.connection import connect
from mobyt_worker.store.orders import OrderStore

from ..producer import bare_client, call
from ..support import wait_for

NUMBER = "+33612345670"


def test_an_order_past_the_providers_memory_is_expired_and_no_longer_polled(redis_url, simulator, start_process):
    simulator.delivery_delay = 3600  # never final within the test: only the age can end it
    env = {"MOBYT_ORDER_TTL": "4"}
    start_process("worker", env=env)
    start_process("beat", env=env)
    reply = call(bare_client(redis_url), "mobyt.send_sms", recipients=[NUMBER], message="old",
                 sender="ACME").get(timeout=20)
    order_id = reply["order_id"]
    store = OrderStore(connect(redis_url), "mobyt")
    record = wait_for(lambda: (r := store.get_order(order_id)) and r.state == "expired" and r, timeout=20,
                      interval=0.05, what="the order expired")
    polls_at_expiry = simulator.count("SMSSTATUS")
    assert polls_at_expiry >= 2 and not record.recipients[NUMBER].final  # it was followed until then
    assert record.final
    assert store.redis.zscore(store.keys.due, order_id) is None
    events = [e for _, e in store.redis.xrange(store.keys.events)
              if e["order_id"] == order_id and e["type"] == "order"]
    assert [e["state"] for e in events] == ["accepted", "expired"]
    # several poll ticks (0.3 s) later, nobody asked the provider about it again
    credits = simulator.count("CREDITS")
    wait_for(lambda: simulator.count("CREDITS") >= credits + 2, timeout=10, what="beat still ticking")
    assert simulator.count("SMSSTATUS") == polls_at_expiry
