"""Sends enqueued without an ``order_id``: the id is derived from the Celery task id, which
a retry and a redelivery keep, so neither bills the order twice. Bulk chunks have ids
derived from the batch, so a redelivered bulk task enqueues the same chunks again."""

from __future__ import annotations

import pytest
import redis

from mobyt_worker.store.connection import connect
from mobyt_worker.store.orders import OrderStore
from mobyt_worker.contract import order_id_for_task

from ..producer import bare_client, call
from ..support import wait_for, wait_until_run

NUMBER = "+33612345670"


def sent_order_ids(simulator) -> list[str]:
    return [r.params["order_id"] for r in simulator.requests("SENDSMS")]


@pytest.mark.parametrize("kind", ["http500", "lost_answer"])
def test_a_retried_send_keeps_the_order_id_derived_from_its_task_id(kind, redis_url, simulator, start_process):
    """http500: not processed, sent again under the same id; lost_answer: processed, its
    answer lost, settled by SMSSTATUS under the same id."""
    start_process("worker")
    simulator.inject_fault("SENDSMS", kind)
    result = call(bare_client(redis_url), "mobyt.send_sms", recipients=[NUMBER], message="derived", sender="ACME")
    reply = result.get(timeout=30)
    order_id = order_id_for_task(result.id)
    assert reply["order_id"] == order_id and reply["status"] == "accepted"
    expected_posts = 2 if kind == "http500" else 1
    assert sent_order_ids(simulator) == [order_id] * expected_posts
    assert [r.params["order_id"] for r in simulator.requests("SMSSTATUS")][:1] == [order_id]  # asked first
    assert simulator.billed_sends(order_id) == 1 and simulator.billed_sends() == 1
    record = OrderStore(connect(redis_url), "mobyt").get_order(order_id)
    assert record.task_id == result.id and record.state in ("accepted", "completed")


def test_sends_redelivered_after_a_sigkill_keep_their_derived_order_ids(redis_url, simulator, start_process):
    """Bare sends (no order id, so no intent): the messages the killed worker held come
    back after the visibility timeout under the same task id, so the same derived order id.
    A message it had popped but not yet recorded as unacked went with it (kombu's BRPOP
    window; only an intent covers that, docs/reliability.md step 7): one BRPOP is in flight
    at a time, so at most one, and it never ran. The test sends each once and watches."""
    simulator.set_latency(0.5)  # the provider processes each send, then answers late
    doomed = start_process("worker", name="doomed")
    client = bare_client(redis_url)
    results = [call(client, "mobyt.send_sms", recipients=[NUMBER], message=f"derived {i}", sender="ACME")
               for i in range(12)]
    order_ids = [order_id_for_task(r.id) for r in results]
    wait_for(lambda: simulator.count("SENDSMS") >= 4, timeout=20, what="sends in flight")
    doomed.kill()
    posted_before = set(sent_order_ids(simulator))
    assert len(posted_before) < len(order_ids), "the kill came too late to test anything"
    simulator.set_latency(0.0)
    start_process("worker", name="survivor")
    wait_until_run(redis.Redis.from_url(redis_url), lambda m: m["task"] == "mobyt.send_sms",
                   lambda: call(client, "mobyt.cancel", order_id="MARKER1").get(timeout=20, propagate=False),
                   what="every send message the broker kept run and acked")

    store = OrderStore(connect(redis_url), "mobyt")
    lost = [oid for result, oid in zip(results, order_ids) if not result.ready()]
    assert len(lost) <= 1, lost
    assert [(store.get_order(oid), simulator.billed_sends(oid)) for oid in lost] == [(None, 0)] * len(lost)
    answered = [oid for oid in order_ids if oid not in lost]
    replies = [result.get(timeout=5) for result, oid in zip(results, order_ids) if oid in answered]
    assert [reply["order_id"] for reply in replies] == answered
    assert set(sent_order_ids(simulator)) == set(answered)  # no SENDSMS under any other id
    assert [simulator.billed_sends(oid) for oid in answered] == [1] * len(answered)
    assert simulator.billed_sends() == len(answered)
    # the orders posted before the kill were settled by asking, not by sending again
    assert all(sent_order_ids(simulator).count(oid) == 1 for oid in posted_before)


def test_a_redelivered_bulk_task_sends_each_chunk_once(redis_url, simulator, start_process):
    worker = start_process("worker", env={"MOBYT_BULK_CHUNK_SIZE": "3"})
    client = bare_client(redis_url)
    numbers = [f"+3361234567{d}" for d in range(7)]
    kwargs = {"recipients": numbers, "message": "bulk", "sender": "ACME"}
    first = client.send_task("mobyt.send_sms", kwargs=kwargs, queue="mobyt", task_id="bulk-task-1")
    reply = first.get(timeout=30)
    batch_id = order_id_for_task("bulk-task-1")
    assert reply["status"] == "batched" and reply["batch_id"] == batch_id and len(reply["orders"]) == 3
    store = OrderStore(connect(redis_url), "mobyt")
    wait_for(lambda: all((r := store.get_order(o)) and r.state != "sending" for o in reply["orders"]),
             timeout=30, what="every chunk accepted")
    # the same message again, as a redelivery hands it back: same task id, same arguments
    client.send_task("mobyt.send_sms", kwargs=kwargs, queue="mobyt", task_id="bulk-task-1")
    # 2 bulk runs + 3 chunks + the 3 chunks the second run enqueued again
    wait_for(lambda: worker.output().count("succeeded") >= 8, timeout=30, what="the second run and its chunks")
    assert sorted(sent_order_ids(simulator)) == sorted(reply["orders"])
    assert [simulator.billed_sends(oid) for oid in reply["orders"]] == [1, 1, 1]
    assert store.batch_orders(batch_id) == reply["orders"]
