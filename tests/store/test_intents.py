"""Intents: the producer writes the order before publishing, and beat replays the ones
no worker claimed. Real Redis, real worker and beat, the simulator over HTTP."""

from __future__ import annotations

import json
import re

import pytest
import redis

from mobyt_worker.errors import InvalidInput
from mobyt_worker.store.intents import Intents
from mobyt_worker.producer import connect, new_order_id, send_sms
from mobyt_worker.store.keys import Keys
from mobyt_worker.store.orders import OrderStore
from mobyt_worker.store.connection import connect as connect_redis

from ..support import wait_for, wait_until_run

NUMBER = "+33612345670"
KEYS = Keys("mobyt")


def intents(url: str, replay_after: float = 60.0) -> Intents:
    return Intents(connect_redis(url), "mobyt", ttl=3600, replay_after=replay_after)


def kwargs_for(order_id: str) -> dict[str, object]:
    return {"recipients": [NUMBER], "message": "hi", "sender": "ACME", "message_type": None,
            "scheduled_at": None, "order_id": order_id, "return_credits": False}


def test_record_writes_the_queued_order_and_both_indexes(redis_url):
    r = connect_redis(redis_url)
    now = 1_800_000_000.25
    assert intents(redis_url, replay_after=60).record("o1", "send-o1", kwargs_for("o1"), now=now) == "queued"
    record = r.hgetall(KEYS.order("o1"))
    assert record["state"] == "queued" and record["task_id"] == "send-o1" and record["order_id"] == "o1"
    assert json.loads(record["request"]) == kwargs_for("o1")
    assert record["sender"] == "ACME" and record["recipient_count"] == "1" and "message_type" not in record
    assert record["created_at"].startswith("2027-01-15T08:00:00") and record["created_at"].endswith("+00:00")
    assert 0 < r.ttl(KEYS.order("o1")) <= 3600
    assert r.zscore(KEYS.orders, "o1") == now  # listed by creation time
    assert r.zscore(KEYS.intents, "o1") == now + 60  # replayed replay_after later if no worker claimed it


def test_record_never_moves_an_order_back_to_queued(redis_url):
    r = connect_redis(redis_url)
    r.hset(KEYS.order("o2"), mapping={"state": "accepted", "order_id": "o2", "task_id": "send-o2"})
    assert intents(redis_url).record("o2", "send-o2", kwargs_for("o2")) == "accepted"
    assert r.hget(KEYS.order("o2"), "state") == "accepted" and not r.hexists(KEYS.order("o2"), "request")
    assert r.zscore(KEYS.intents, "o2") is None


def test_due_returns_queued_intents_bumps_them_and_drops_claimed_ones(redis_url):
    r = connect_redis(redis_url)
    box = intents(redis_url, replay_after=30)
    box.record("q", "send-q", kwargs_for("q"), now=100)
    box.record("s", "send-s", kwargs_for("s"), now=100)
    box.record("later", "send-later", kwargs_for("later"), now=1000)
    r.hset(KEYS.order("s"), "state", "sending")  # a worker claimed it
    due = box.due(now=200)
    assert [(i.order_id, i.task_id, i.kwargs) for i in due] == [("q", "send-q", kwargs_for("q"))]
    assert r.zscore(KEYS.intents, "q") == 230  # the next replay, if this one is lost too
    assert r.zscore(KEYS.intents, "s") is None
    assert r.zscore(KEYS.intents, "later") == 1030
    assert box.due(now=200) == []


def test_producer_refuses_bad_input_before_writing_or_publishing(redis_url):
    app = connect(redis_url)
    oid = new_order_id()
    with pytest.raises(InvalidInput) as err:
        send_sms(app, ["not a number"], "hi", sender="ACME", order_id=oid)
    assert err.value.field == "recipients"
    with pytest.raises(InvalidInput) as err:
        send_sms(app, [NUMBER], "hi", message_type="X", order_id=oid)
    assert err.value.field == "message_type"
    r = redis.Redis.from_url(redis_url)
    assert r.exists(KEYS.order(oid)) == 0 and r.llen("mobyt") == 0


def test_producer_needs_the_tracking_redis_with_an_amqp_broker():
    with pytest.raises(ValueError, match="redis_url"):
        connect("amqp://guest:guest@127.0.0.1:5672//")


def test_a_message_the_broker_lost_is_replayed_and_sent_once(redis_url, simulator, start_process):
    """The BRPOP window: the intent is written, the message is gone from the queue."""
    app = connect(redis_url, replay_after=1)
    r = redis.Redis.from_url(redis_url)
    lost = send_sms(app, [NUMBER], "lost in the broker", sender="ACME")
    assert r.delete("mobyt") == 1  # the published message vanishes, as a killed BRPOP takes it
    never = new_order_id()  # the producer died between the intent and the publish
    intents(redis_url, replay_after=1).record(never, f"send-{never}", kwargs_for(never))
    env = {"MOBYT_REPLAY_AFTER": "1"}
    start_process("worker", env=env)
    start_process("beat", env=env)
    store = OrderStore(connect_redis(redis_url), "mobyt")
    for oid in (lost.order_id, never):
        record = wait_for(lambda: (rec := store.get_order(oid)) and rec.final and rec, timeout=40,
                          what=f"order {oid} final")
        assert record.recipients[NUMBER].status == "DLVRD"
        assert simulator.billed_sends(oid) == 1
    wait_for(lambda: r.zcard(KEYS.intents) == 0, timeout=10, what="intents index emptied")
    assert simulator.billed_sends() == 2


def test_a_replay_of_a_message_that_was_not_lost_sends_nothing_twice(redis_url, simulator, start_process):
    """A send cap of 2/s holds each message in its task, waiting for a slot before the claim,
    past MOBYT_REPLAY_AFTER: the beat's job publishes those intents again beside their
    messages, and every order is still billed once."""
    env = {"MOBYT_REPLAY_AFTER": "0.5", "MOBYT_SEND_RATE_LIMIT": "2"}
    worker = start_process("worker", env=env)
    start_process("beat", env=env)
    app = connect(redis_url, replay_after=0.5)
    sent = [send_sms(app, [NUMBER], f"slow queue {i}", sender="ACME") for i in range(5)]
    assert {e.result.get(timeout=30)["status"] for e in sent} == {"accepted"}
    store = OrderStore(connect_redis(redis_url), "mobyt")
    for e in sent:
        wait_for(lambda: (rec := store.get_order(e.order_id)) and rec.final, timeout=30, what="final")
    # every copy, originals and replays, has run, and no intent is left to replay
    wait_until_run(redis.Redis.from_url(redis_url), is_send, lambda: app.send_task(
        "mobyt.cancel", kwargs={"order_id": "MARKER1"}).get(timeout=20, propagate=False), what="every send message")
    replayed = [e.order_id for e in sent if f"publishing task send-{e.order_id} again" in worker.output()]
    assert replayed, "no intent was replayed: the test would prove nothing"
    assert redis.Redis.from_url(redis_url).zcard(KEYS.intents) == 0
    assert [simulator.billed_sends(e.order_id) for e in sent] == [1] * 5


def is_send(message: dict) -> bool:
    return message["task"] == "mobyt.send_sms"


@pytest.mark.parametrize("fault, state", [("http429", "unsent"), ("drop", "sending")])
def test_a_send_whose_retry_the_broker_lost_is_published_again_by_the_poller(
        fault, state, redis_url, simulator, start_process):
    """The first attempt fails (surely unsent: a 429 asking for 6 s; or its connection
    dropped, so absence is proven only after the 6 s grace and the clock margins), its retry waits
    in the worker, and the worker is SIGKILLed as the broker loses that message. The poller
    publishes the send task again: sent once, never failed for want of a retry."""
    worker = start_process("worker", env={"MOBYT_DOUBT_GRACE": "6"})
    simulator.inject_fault("SENDSMS", fault, delay=6 if fault == "http429" else 0)
    order_id = new_order_id()
    send_sms(connect(redis_url), [NUMBER], "retry lost", sender="ACME", order_id=order_id)
    store = OrderStore(connect_redis(redis_url), "mobyt")
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: (rec := store.get_order(order_id)) and rec.state == state and r.hlen("unacked") == 1
             and re.search(r"Retry in [5-9](\.\d+)?s", worker.output()), timeout=20, what="the retry held by the worker")
    worker.kill()
    assert r.delete("mobyt", "unacked", "unacked_index") >= 1  # the broker lost the retry
    start_process("worker", name="w2")
    start_process("beat")
    record = wait_for(lambda: (rec := store.get_order(order_id)) and rec.final and rec, timeout=60,
                      what="the order final")
    assert record.state == "completed" and simulator.billed_sends(order_id) == 1
    assert simulator.count("SENDSMS") == 2
