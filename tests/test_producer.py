"""The producer helper, as another service uses it, against a real worker over Redis."""

from __future__ import annotations

import redis

from mobyt_worker.producer import connect, send_sms

from .support import wait_for

NUMBERS = "+33612345671,+33698765432"


def test_a_comma_string_is_split_by_the_task_into_one_order(start_process, simulator, redis_url, runtime):
    start_process("worker")
    sent = send_sms(connect(redis_url), NUMBERS, "hi", sender="ACME")
    reply = sent.result.get(timeout=20)
    assert reply["status"] == "accepted" and len(reply["recipients"]) == 2
    assert simulator.count("SENDSMS") == 1
    assert sorted(runtime.store.get_order(sent.order_id).recipients) == sorted(NUMBERS.split(","))


def test_any_task_name_lands_in_the_workers_queue(start_process, simulator, redis_url):
    start_process("worker")
    reply = connect(redis_url).send_task("mobyt.check_credits").get(timeout=20)
    assert reply["balances"] and simulator.count("CREDITS") >= 1


def test_the_broker_key_prefix_of_the_environment_is_honoured(start_process, simulator, redis_url, monkeypatch):
    start_process("worker", env={"MOBYT_BROKER_KEY_PREFIX": "acme:"})
    monkeypatch.setenv("MOBYT_BROKER_KEY_PREFIX", "acme:")
    sent = send_sms(connect(redis_url), "+33612345671", "hi", sender="ACME")
    assert sent.result.get(timeout=20)["status"] == "accepted"
    keys = {k.decode() for k in redis.Redis.from_url(redis_url).keys("*")}
    assert f"acme:celery-task-meta-send-{sent.order_id}" in keys and "mobyt" not in keys


def test_a_send_whose_publish_fails_after_its_intent_is_written_is_still_sent_once(
        start_process, simulator, redis_url, runtime):
    app = connect("redis://127.0.0.1:1/0", redis_url=redis_url, replay_after=1)  # a broker nobody listens on
    sent = send_sms(app, "+33612345671", "hi", sender="ACME")  # no error: the order is recorded
    assert runtime.store.get_order(sent.order_id).state == "queued"
    start_process("worker", env={"MOBYT_REPLAY_AFTER": "1"})
    start_process("beat", env={"MOBYT_REPLAY_AFTER": "1"})
    wait_for(lambda: runtime.store.get_order(sent.order_id).state in ("accepted", "completed"), timeout=30,
             what="the replayed send accepted")
    assert simulator.billed_sends(sent.order_id) == 1


def test_a_result_store_that_does_not_answer_does_not_stop_a_send(start_process, simulator, redis_url, runtime):
    """Results are read only when waited for: a send whose result nobody reads enqueues
    even while the result store's pubsub is gone (Celery would raise RuntimeError there)."""
    app = connect(redis_url, backend_url="redis://127.0.0.1:1/0", redis_url=redis_url)
    sent = send_sms(app, "+33612345671", "hi", sender="ACME")
    start_process("worker")
    wait_for(lambda: runtime.store.get_order(sent.order_id).state in ("accepted", "completed"), timeout=20,
             what="the send accepted")
    assert simulator.billed_sends(sent.order_id) == 1
