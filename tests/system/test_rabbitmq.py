"""MOBYT_BROKER_URL=amqp://...: RabbitMQ carries the tasks in a quorum queue with publisher
confirms; Redis stays the result backend and the tracking store."""

from __future__ import annotations

from typing import Iterator

import pytest

from mobyt_worker.producer import connect, send_sms
from mobyt_worker.store.orders import OrderStore
from mobyt_worker.store.connection import connect as connect_redis

from ..support import RabbitVhost, wait_for

NUMBER = "+33612345670"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not RabbitVhost.available(), reason="RabbitMQ is not running here (make test starts it)")]


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    vh = RabbitVhost().create()
    yield vh
    vh.cleanup()


def queue_type(vhost: RabbitVhost, name: str) -> str:
    import subprocess

    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost.name, "name", "type"],
                         capture_output=True, text=True, timeout=60).stdout
    return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line).get(name, "")


def test_sends_through_rabbitmq_are_sent_once_and_tracked_in_redis(redis_url, vhost, simulator, start_process):
    env = {"MOBYT_BROKER_URL": vhost.url}
    start_process("worker", env=env)
    start_process("beat", env=env)
    producer = connect(vhost.url, redis_url=redis_url)
    assert producer.app.conf.broker_transport_options == {"confirm_publish": True}
    sent = [send_sms(producer, [NUMBER], f"via rabbit {i}", sender="ACME") for i in range(3)]
    assert {e.result.get(timeout=30)["status"] for e in sent} == {"accepted"}  # results: Redis
    store = OrderStore(connect_redis(redis_url), "mobyt")
    for e in sent:
        record = wait_for(lambda: (rec := store.get_order(e.order_id)) and rec.final and rec, timeout=30,
                          what="final")
        assert record.recipients[NUMBER].status == "DLVRD"  # polls driven by beat over RabbitMQ
        assert simulator.billed_sends(e.order_id) == 1
    assert queue_type(vhost, "mobyt") == "quorum"
