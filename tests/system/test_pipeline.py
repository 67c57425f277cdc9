"""The sending pipeline end to end: a bare Celery client, real worker and beat processes,
a real Redis, and the simulator over HTTP. Assertions are on what the provider saw and
on what Redis holds."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from celery import Celery

from mobyt_worker.store.connection import connect
from mobyt_worker.producer import connect as connect_producer, send_sms
from mobyt_worker.store.orders import OrderStore

from ..conftest import PASSWORD
from ..producer import bare_client, call
from ..support import broker_messages, wait_for

DLVRD_NUMBER, ERROR_NUMBER = "+33612345670", "+33612345676"


def enqueue(client: Celery, **kwargs):
    return call(client, "mobyt.send_sms", **kwargs)


def order_store(url: str) -> OrderStore:
    return OrderStore(connect(url), "mobyt")


def wait_final(store: OrderStore, order_id: str, timeout: float = 30.0):
    return wait_for(lambda: (r := store.get_order(order_id)) and r.final and r, timeout=timeout,
                    what=f"order {order_id} final")


def test_send_by_name_is_sent_once_and_followed_to_final_statuses(redis_url, simulator, start_process):
    start_process("worker")
    start_process("beat")
    client = bare_client(redis_url)
    result = enqueue(client, recipients=[DLVRD_NUMBER, ERROR_NUMBER], message="Votre code: 1234", sender="ACME")
    reply = result.get(timeout=20)
    order_id = reply["order_id"]
    assert reply["status"] == "accepted" and reply["recipients"] == [DLVRD_NUMBER, ERROR_NUMBER]
    assert reply["credits"] == 2

    [sent] = simulator.requests("SENDSMS")
    assert sent.params["recipient"] == f"{DLVRD_NUMBER},{ERROR_NUMBER}"
    assert sent.params["message"] == "Votre code: 1234"
    assert sent.params["sender"] == "ACME" and sent.params["message_type"] == "N"
    assert sent.params["order_id"] == order_id and sent.params["login"] == "acme"

    store = order_store(redis_url)
    record = wait_final(store, order_id)
    assert record.state == "completed"
    assert record.recipients[DLVRD_NUMBER].status == "DLVRD"
    assert record.recipients[DLVRD_NUMBER].delivered_at
    assert record.recipients[ERROR_NUMBER].status == "ERROR"
    polls = [r for r in simulator.requests("SMSSTATUS") if r.params["order_id"] == order_id]
    assert 1 <= len(polls) <= 6, len(polls)  # backoff, not a busy loop
    assert record.polls == len(polls)
    assert simulator.billed_sends(order_id) == 1
    events = [e for _, e in store.redis.xrange(store.keys.events) if e["order_id"] == order_id]
    final = [(e["recipient"], e["status"]) for e in events if e["type"] == "status" and e["status"] in ("DLVRD", "ERROR")]
    assert sorted(final) == [(DLVRD_NUMBER, "DLVRD"), (ERROR_NUMBER, "ERROR")]


@pytest.mark.parametrize("kind", ["http500", "html", "garbage", "empty", "drop", "slow", "lost_answer", "trickle",
                                  "oversize", "ko503"])
def test_every_fault_on_sendsms_ends_in_exactly_one_billed_send(kind, redis_url, simulator, start_process):
    start_process("worker")
    if kind == "ko503":  # a KO is a refusal: failed at once, nothing billed, no retry
        simulator.inject_fault("SENDSMS", "ko", code="30", message="insufficient credits")
    elif kind == "trickle":  # a byte every 0.2 s, each within the 2 s read timeout: some 30 s in all
        simulator.inject_fault("SENDSMS", kind, delay=0.2)
    else:  # 'slow' answers after the 2 s read timeout; 'oversize' sends 64 MiB past the 1 MiB cap
        simulator.inject_fault("SENDSMS", kind, delay=3.0)
    result = enqueue(bare_client(redis_url), recipients=[DLVRD_NUMBER], message="hello", sender="ACME",
                     order_id=f"FAULT{kind.upper().replace('_', '')}")
    store = order_store(redis_url)
    if kind == "ko503":
        with pytest.raises(Exception) as info:
            result.get(timeout=20)
        assert "insufficient credits" in str(info.value)
        assert simulator.count("SENDSMS") == 1 and simulator.billed_sends() == 0
        record = store.get_order("FAULTKO503")
        assert record.state == "failed" and record.error_code == "30"
        return
    reply = result.get(timeout=30)
    assert reply["status"] == "accepted"
    assert simulator.billed_sends(reply["order_id"]) == 1
    assert simulator.billed_sends() == 1
    if kind in ("slow", "lost_answer", "trickle", "oversize"):  # processed: settled by SMSSTATUS, never sent again
        assert simulator.count("SENDSMS") == 1
        assert simulator.count("SMSSTATUS") >= 1
        assert store.get_order(reply["order_id"]).ambiguous_at  # the attempt was in doubt
        if kind in ("trickle", "oversize"):  # its answer was cut: the worker closed the connection
            wait_for(lambda: simulator.abandoned("SENDSMS") == 1, timeout=10, what="the provider sees it closed")
    else:  # not processed: one more SENDSMS after the provider said it did not know the order
        assert simulator.count("SENDSMS") == 2
    assert store.get_order(reply["order_id"]).state in ("accepted", "completed")


def test_sigkill_in_the_middle_of_sends_then_restart_sends_each_order_once(redis_url, simulator, start_process):
    """Sent through the producer helper, as the README tells producers: the messages the
    killed worker held come back after the visibility timeout, and one it had popped but not
    yet recorded as unacked (kombu's BRPOP window, docs/reliability.md step 7) is published
    again from its intent by the beat. The test only watches."""
    env = {"MOBYT_REPLAY_AFTER": "2"}
    simulator.set_latency(0.4)
    worker = start_process("worker", name="doomed", env=env)
    start_process("beat", env=env)
    app = connect_producer(redis_url, replay_after=2)
    order_ids = [f"KILL{i:03d}" for i in range(30)]
    for oid in order_ids:
        send_sms(app, [DLVRD_NUMBER], f"order {oid}", sender="ACME", order_id=oid)
    wait_for(lambda: simulator.count("SENDSMS") >= 8, timeout=20, what="some sends in flight")
    worker.kill()
    seen_at_kill = simulator.count("SENDSMS")
    assert seen_at_kill < len(order_ids), "the kill came too late to test anything"
    simulator.set_latency(0.0)
    start_process("worker", name="survivor", env=env)
    store = order_store(redis_url)

    wait_for(lambda: all((r := store.get_order(o)) and r.state in ("accepted", "completed") for o in order_ids),
             timeout=40, what="every order accepted after the restart")
    for oid in order_ids:
        assert simulator.billed_sends(oid) == 1, oid
    assert simulator.billed_sends() == len(order_ids)


def test_two_workers_polling_the_same_order_record_each_change_once(redis_url, simulator, start_process):
    start_process("worker", name="a")
    start_process("worker", name="b")
    client = bare_client(redis_url)
    order_id = enqueue(client, recipients=[DLVRD_NUMBER, ERROR_NUMBER], message="race", sender="ACME").get(timeout=20)["order_id"]
    time.sleep(0.8)  # past the simulator's delivery delay: every poll now sees the final statuses
    simulator.set_latency(0.5)  # and all 16 polls are in flight at once before any answer lands
    polls = [client.send_task("mobyt.poll_status", kwargs={"order_id": order_id}, queue="mobyt") for _ in range(16)]
    records = [p.get(timeout=20) for p in polls]
    assert all(r["final"] for r in records)
    store = order_store(redis_url)
    events = [e for _, e in store.redis.xrange(store.keys.events) if e["type"] == "status"]
    assert sorted((e["recipient"], e["status"]) for e in events) == [(DLVRD_NUMBER, "DLVRD"), (ERROR_NUMBER, "ERROR")]
    assert len(store.get_order(order_id).history) == 2
    assert simulator.count("SMSSTATUS") == 16


def test_scheduled_send_then_cancel(redis_url, simulator, start_process):
    start_process("worker")
    client = bare_client(redis_url)
    when = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
    reply = enqueue(client, recipients=[DLVRD_NUMBER], message="later", sender="ACME", scheduled_at=when).get(timeout=20)
    assert reply["status"] == "scheduled"
    [sent] = simulator.requests("SENDSMS")
    assert len(sent.params["scheduled_delivery_time"]) == 14
    cancelled = client.send_task("mobyt.cancel", kwargs={"order_id": reply["order_id"]}, queue="mobyt").get(timeout=20)
    assert cancelled["state"] == "cancelled" and cancelled["cancelled"]
    assert simulator.count("REMOVE_DELAYED") == 1
    store = order_store(redis_url)
    assert store.redis.zscore(store.keys.due, reply["order_id"]) is None
    # the provider no longer knows it, and we do not poll it
    assert simulator.count("SMSSTATUS") == 0

    with pytest.raises(Exception) as unknown:
        client.send_task("mobyt.cancel", kwargs={"order_id": "NOSUCHORDER"}, queue="mobyt").get(timeout=20)
    assert "NOSUCHORDER" in str(unknown.value) and type(unknown.value).__name__ == "OrderNotFound"

    started = enqueue(client, recipients=[DLVRD_NUMBER], message="now", sender="ACME").get(timeout=20)
    with pytest.raises(Exception) as not_scheduled:
        client.send_task("mobyt.cancel", kwargs={"order_id": started["order_id"]}, queue="mobyt").get(timeout=20)
    assert type(not_scheduled.value).__name__ == "OrderNotCancellable"
    assert "not scheduled" in str(not_scheduled.value)
    assert simulator.count("REMOVE_DELAYED") == 1  # refused before any HTTP call


def test_bulk_send_is_split_into_chunks_tied_to_one_batch(redis_url, simulator, start_process):
    start_process("worker", env={"MOBYT_BULK_CHUNK_SIZE": "3"})
    start_process("beat")
    numbers = [f"+3361234567{d}" for d in range(7)]
    reply = enqueue(bare_client(redis_url), recipients=numbers, message="bulk", sender="ACME",
                    order_id="BATCH1").get(timeout=20)
    assert reply["status"] == "batched" and reply["batch_id"] == "BATCH1" and len(reply["orders"]) == 3
    store = order_store(redis_url)
    assert store.batch_orders("BATCH1") == reply["orders"]
    records = [wait_final(store, oid) for oid in reply["orders"]]
    assert [len(r.recipients) for r in records] == [3, 3, 1]
    assert {r.batch_id for r in records} == {"BATCH1"}
    assert simulator.count("SENDSMS") == 3
    assert all(simulator.billed_sends(oid) == 1 for oid in reply["orders"])
    assert sorted(n for r in records for n in r.recipients) == sorted(numbers)


def test_bad_input_fails_the_task_naming_the_field_without_any_http(redis_url, simulator, start_process):
    start_process("worker")
    client = bare_client(redis_url)
    cases = {
        "recipients": {"recipients": ["not a number"], "message": "x", "sender": "ACME"},
        "sender": {"recipients": [DLVRD_NUMBER], "message": "x", "sender": "WAYTOOLONGSENDER"},
        "message": {"recipients": [DLVRD_NUMBER], "message": "x" * 1001, "sender": "ACME"},
        "message_type": {"recipients": [DLVRD_NUMBER], "message": "x", "sender": "ACME", "message_type": "Q"},
        "order_id": {"recipients": [DLVRD_NUMBER], "message": "x", "sender": "ACME", "order_id": "bad-id!"},
        "scheduled_at": {"recipients": [DLVRD_NUMBER], "message": "x", "sender": "ACME",
                         "scheduled_at": "2001-01-01T00:00:00+00:00"},
    }
    for field, kwargs in cases.items():
        with pytest.raises(Exception) as info:
            enqueue(client, **kwargs).get(timeout=20)
        assert type(info.value).__name__ == "InvalidInput", field
        assert str(info.value).startswith(f"{field}:"), (field, str(info.value))
    assert simulator.requests() == []


def _everything_in(r: redis.Redis) -> list[bytes]:
    """Every key, field and value in Redis, with each queued Celery message's body decoded."""
    dump: list[bytes] = []
    for key in r.scan_iter(count=1000):
        dump.append(key)
        kind = r.type(key).decode()
        if kind == "string":
            dump.append(r.get(key))
        elif kind == "hash":
            dump.extend(part for item in r.hgetall(key).items() for part in item)
        elif kind == "list":
            dump.extend(r.lrange(key, 0, -1))
        elif kind == "set":
            dump.extend(r.smembers(key))
        elif kind == "zset":
            dump.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            dump.extend(part for _, fields in r.xrange(key) for item in fields.items() for part in item)
    return dump + [m for value in dump for m in _message_bodies(value)]


def _message_bodies(value: bytes) -> list[bytes]:
    """A kombu message keeps its body base64-encoded: the plain text of it, if ``value`` is one."""
    try:
        message = json.loads(value)
        return [base64.b64decode(message["body"])] if message.get("properties", {}).get("body_encoding") == "base64" else []
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def test_the_password_reaches_no_task_argument_result_redis_value_or_log(redis_url, simulator, start_process):
    """What goes through Redis is watched as it is written (MONITOR: messages consumed since
    count too), and what stays is read back, event messages waiting on a queue nobody reads."""
    seen: list[str] = []
    monitors: list = []
    watching = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(redis_url).monitor() as monitor:
            monitors.append(monitor)
            watching.set()
            try:
                while True:
                    seen.append(monitor.next_command()["command"])
            except (redis.ConnectionError, OSError, ValueError, AttributeError):
                pass

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert watching.wait(10)  # MONITOR is on before the first task
    events = {"MOBYT_EVENT_TASK": "partner.sms_event", "MOBYT_EVENT_QUEUE": "partner"}
    worker = start_process("worker", env=events)
    start_process("beat", env=events)  # polls, so status events are queued
    client = bare_client(redis_url)
    enqueue(client, recipients=[DLVRD_NUMBER], message="secret?", sender="ACME").get(timeout=20)
    with pytest.raises(Exception):
        enqueue(client, recipients=["nope"], message="x", sender="ACME").get(timeout=20)
    simulator.inject_fault("SENDSMS", "http500")  # the worker queues the send again (a retry)
    enqueue(client, recipients=[DLVRD_NUMBER], message="again", sender="ACME").get(timeout=30)
    simulator.inject_fault("SENDSMS", "ko", code="10", message="authentication failed")
    with pytest.raises(Exception):
        enqueue(client, recipients=[DLVRD_NUMBER], message="x", sender="ACME").get(timeout=20)
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: r.llen("partner") >= 2, timeout=20, what="status events queued for the partner task")
    monitors[0].connection.disconnect()
    thread.join(5)
    dump = _everything_in(r)
    assert [b for b in dump if b"partner.sms_event" in b], "no event message read: the test would prove nothing"
    assert [m for m in seen if "LPUSH" in m.upper() or "EVALSHA" in m.upper()], "MONITOR saw no write"
    assert not [v for v in dump if PASSWORD.encode() in v]
    assert not [m for m in seen if PASSWORD in m]
    assert not [m for m in seen for body in re.findall(r'body\\?": \\?"([A-Za-z0-9+/=]+)', m)
                if PASSWORD.encode() in base64.b64decode(body)]
    assert PASSWORD not in worker.output()


def test_redis_restart_while_workers_run(simulator, provider, worker_env, private_redis, start_process):
    """With an AOF-persisted Redis, a restart loses nothing and the workers reconnect. Sends
    go through the producer helper: one whose publish met the restart is published again
    from its intent by the beat, so the test sends each order once and only watches."""
    server = private_redis(appendonly=True)
    env = {"REDIS_URL": server.url, "MOBYT_REPLAY_AFTER": "2"}
    worker = start_process("worker", env=env)
    beat = start_process("beat", env=env)
    app = connect_producer(server.url, replay_after=2)
    before = [send_sms(app, [DLVRD_NUMBER], "before", sender="ACME") for _ in range(3)]
    assert {sent.result.get(timeout=20)["status"] for sent in before} == {"accepted"}
    server.restart(down_for=1.0)
    after = [send_sms(app, [DLVRD_NUMBER], "after", sender="ACME") for _ in range(3)]
    store = order_store(server.url)
    for sent in before + after:
        record = wait_final(store, sent.order_id, timeout=40)
        assert record.recipients[DLVRD_NUMBER].status == "DLVRD"
        assert simulator.billed_sends(sent.order_id) == 1
    assert worker.proc.poll() is None and beat.proc.poll() is None  # both rode it out
    assert "Connected to redis" in worker.output().split("Connection to broker lost")[-1]


def test_producer_helper_fixes_the_order_id_and_duplicate_enqueues_send_once(redis_url, simulator, start_process):
    start_process("worker")
    app = connect_producer(redis_url)
    first = send_sms(app, [DLVRD_NUMBER], "once", sender="ACME")
    # a producer that retries its enqueue (or a duplicated message) names the same order
    again = [send_sms(app, [DLVRD_NUMBER], "once", sender="ACME", order_id=first.order_id) for _ in range(3)]
    replies = [e.result.get(timeout=20) for e in [first, *again]]
    assert {r["order_id"] for r in replies} == {first.order_id}
    assert {r["status"] for r in replies} == {"accepted"}
    assert simulator.count("SENDSMS") == 1 and simulator.billed_sends(first.order_id) == 1


def test_a_refused_order_stays_refused_when_enqueued_again(redis_url, simulator, start_process):
    start_process("worker")
    client = bare_client(redis_url)
    simulator.inject_fault("SENDSMS", "ko", code="21", message="invalid parameter: sender")
    for _ in range(2):
        with pytest.raises(Exception) as info:
            enqueue(client, recipients=[DLVRD_NUMBER], message="x", sender="ACME", order_id="REFUSED1").get(timeout=20)
        assert type(info.value).__name__ == "ProviderRejected" and info.value.code == "21"
    assert simulator.count("SENDSMS") == 1  # the second enqueue did not try again


def _queued_events(redis_url: str, queue: str) -> list[dict]:
    import base64
    import json

    r = redis.Redis.from_url(redis_url)
    out = []
    for raw in r.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "partner.sms_event"
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append(kwargs["event"])
    return out


def test_each_status_change_is_handed_to_the_configured_event_task(redis_url, simulator, start_process, runtime):
    env = {"MOBYT_EVENT_TASK": "partner.sms_event", "MOBYT_EVENT_QUEUE": "partner"}
    start_process("worker", env=env)
    start_process("beat", env=env)
    reply = enqueue(bare_client(redis_url), recipients=[DLVRD_NUMBER], message="hi", sender="ACME").get(timeout=20)
    wait_final(order_store(redis_url), reply["order_id"])
    # the event task is queued right after the status is recorded: wait for it, not for the record
    wait_for(lambda: "DLVRD" in [e["status"] for e in _queued_events(redis_url, "partner")],
             what="the DLVRD event on the partner queue")
    polled = _queued_events(redis_url, "partner")
    assert {e["order_id"] for e in polled} == {reply["order_id"]}
    assert len({(e["recipient"], e["status"]) for e in polled}) == len(polled)  # each change once

    # a push goes through the same Runtime.record_statuses as a poll
    from dataclasses import replace

    from mobyt_worker.provider.protocol import RecipientStatus, Status
    from mobyt_worker.runtime import Runtime

    pushed = Runtime(replace(runtime.settings, event_task="partner.sms_event", event_queue="partner2"))
    store = pushed.store
    _, _, token = store.claim_send("PUSHED1", {"message_type": "N"}, lock_seconds=5)
    store.mark_accepted("PUSHED1", scheduled=False, recipients=[ERROR_NUMBER], first_poll_at=0)
    pushed.record_statuses("PUSHED1", [RecipientStatus(ERROR_NUMBER, Status.ERROR, None)], source="push")
    pushed.record_statuses("PUSHED1", [RecipientStatus(ERROR_NUMBER, Status.ERROR, None)], source="push")
    [event] = _queued_events(redis_url, "partner2")
    assert (event["order_id"], event["status"], event["source"]) == ("PUSHED1", "ERROR", "push")
    pushed.close()


def test_cancel_whose_answer_was_lost_still_ends_cancelled(redis_url, simulator, start_process):
    start_process("worker")
    client = bare_client(redis_url)
    when = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    reply = enqueue(client, recipients=[DLVRD_NUMBER], message="later", sender="ACME", scheduled_at=when).get(timeout=20)
    simulator.inject_fault("REMOVE_DELAYED", "lost_answer")  # removed, but the answer never came
    record = client.send_task("mobyt.cancel", kwargs={"order_id": reply["order_id"]}, queue="mobyt").get(timeout=30)
    assert record["state"] == "cancelled"
    assert simulator.count("REMOVE_DELAYED") == 2  # the retry was refused: the order was gone


def test_a_send_that_exhausts_its_retries_is_settled_by_the_poller(redis_url, simulator, start_process):
    """Every attempt's connection drops (never processed). Each drop leaves the order in
    doubt, settled before the next attempt by clean absence (SMSSTATUS unknown, SMSHISTORY
    without it); once MOBYT_SEND_RETRY_FOR is over the task stops trying, and the poller
    shows the same absence and fails the order: nothing was billed. Absence is readable
    grace + 2 x clock margin (2.3 s here) after an attempt: the window leaves room for two."""
    worker = start_process("worker", env={"MOBYT_SEND_RETRY_FOR": "6"})
    start_process("beat")
    simulator.inject_fault("SENDSMS", "drop", count=1000)
    result = enqueue(bare_client(redis_url), recipients=[DLVRD_NUMBER], message="x", sender="ACME", order_id="GIVEUP1")
    try:
        outcome = result.get(timeout=60)["status"]
    except Exception as exc:  # the last attempt's error, or the poller's verdict seen by the last retry
        outcome = type(exc).__name__
    assert outcome in ("ProviderDisconnected", "ProviderRejected", "in_doubt"), outcome
    store = order_store(redis_url)
    record = wait_for(lambda: (r := store.get_order("GIVEUP1")) and r.state == "failed" and r, timeout=30,
                      what="the poller to settle the order")
    assert "nothing was billed" in (record.error or "")
    assert simulator.billed_sends() == 0
    tries = simulator.count("SENDSMS")
    assert tries >= 2  # retried within the window
    # and no more after it: every message about the order (a retry's countdown too) has
    # run, and the poller has gone through the due set twice since the order failed
    r = redis.Redis.from_url(redis_url)
    polls = poll_due_runs(worker)
    wait_for(lambda: not [m for m in broker_messages(r) if m["kwargs"].get("order_id") == "GIVEUP1"]
             and poll_due_runs(worker) >= polls + 2, timeout=20, what="the order's messages run, two polls since")
    assert store.redis.zscore(store.keys.due, "GIVEUP1") is None
    assert simulator.count("SENDSMS") == tries
    assert simulator.count("SMSHISTORY") >= tries - 1  # each re-send on clean absence


def poll_due_runs(worker) -> int:
    """How many due-set polls the worker has finished (its log says so for each)."""
    return len(re.findall(r"Task mobyt\.poll_due\[[^]]+\] succeeded", worker.output()))


def test_sms_history_over_days_reports_progress_then_every_order_once(redis_url, simulator, start_process):
    start_process("worker")
    client = bare_client(redis_url)
    order_id = enqueue(client, recipients=[DLVRD_NUMBER], message="Historique", sender="ACME").get(timeout=20)["order_id"]
    simulator.set_latency(0.4)  # each window takes a while: the progress can be seen
    now = datetime.now(timezone.utc)
    result = call(client, "mobyt.sms_history", date_from=(now - timedelta(days=2, hours=12)).isoformat(),
                  date_to=(now + timedelta(hours=1)).isoformat())
    seen = []

    def done() -> bool:
        if result.state == "PROGRESS":
            seen.append(result.info)
        return result.ready()

    wait_for(done, timeout=20, what="the history task done")
    rows = result.get(timeout=5)
    assert [row["order_id"] for row in rows] == [order_id]
    assert simulator.count("SMSHISTORY") == 3  # one request per day of the period
    assert seen and {"windows_done", "windows", "orders"} == set(seen[-1]) and seen[-1]["windows"] == 3
    assert {info["windows_done"] for info in seen} <= {1, 2}
