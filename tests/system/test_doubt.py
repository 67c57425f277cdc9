"""Exactly once under doubt, end to end: real worker (and beat), real Redis, the simulator
over HTTP, with the default evidence rule: the simulator answers SMSSTATUS for an order it
does not have with a KO, as a real provider does, and only SMSHISTORY proves absence."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from mobyt_worker.store.connection import connect
from mobyt_worker.metrics import Metrics
from mobyt_worker.store.orders import OrderStore

from ..producer import bare_client, call
from ..support import wait_for

NUMBER = "+33612345670"


def store_of(url: str) -> OrderStore:
    return OrderStore(connect(url), "mobyt")


def send(redis_url: str, order_id: str, **kw):
    return call(bare_client(redis_url), "mobyt.send_sms", recipients=[NUMBER], message="hello", sender="ACME",
                order_id=order_id, **kw)


def state_is(store: OrderStore, order_id: str, *states: str):
    return wait_for(lambda: (r := store.get_order(order_id)) and r.state in states and r, timeout=40,
                    what=f"{order_id} in {states}")


def test_doubt1_lost_answer_then_a_ko_on_smsstatus_is_never_sent_again(redis_url, simulator, start_process):
    """DOUBT1: the provider accepts, the answer is lost, SMSSTATUS answers KO 50 once."""
    start_process("worker")
    simulator.inject_fault("SENDSMS", "lost_answer")
    simulator.inject_fault("SMSSTATUS", "ko", code="50", message="Temporary failure, retry later")
    reply = send(redis_url, "DOUBT1").get(timeout=40)
    assert reply["status"] == "accepted"
    assert simulator.count("SENDSMS") == 1 and simulator.billed_sends("DOUBT1") == 1
    assert simulator.count("SMSSTATUS") >= 2  # the KO, then the read that found it
    assert store_of(redis_url).get_order("DOUBT1").state in ("accepted", "completed")


def test_dupdemo1_500_then_a_lost_answer_bills_once(redis_url, simulator, start_process):
    """500 (ambiguous) -> absent from the history -> sent again -> that answer lost after the
    provider committed -> the next try must ask, not send."""
    start_process("worker")
    simulator.inject_fault("SENDSMS", "http500")
    simulator.inject_fault("SENDSMS", "lost_answer")
    reply = send(redis_url, "DUPDEMO1").get(timeout=40)
    assert reply["status"] == "accepted"
    assert simulator.count("SENDSMS") == 2 and simulator.billed_sends() == 1
    assert simulator.count("SMSHISTORY") >= 1  # absence was shown by the history too
    record = store_of(redis_url).get_order("DUPDEMO1")
    assert record.attempts == 2 and not record.doubt


def order_events(store: OrderStore, order_id: str) -> list[str]:
    return [e["state"] for _, e in store.redis.xrange(store.keys.events)
            if e["order_id"] == order_id and e["type"] == "order"]


def test_a_send_refused_before_commit_during_an_outage_is_delivered_after_it_with_no_operator(
        redis_url, simulator, start_process):
    """Three HTTP 500s the provider answered before committing: each leaves the order in
    doubt, SMSSTATUS answers KO (unknown order), and SMSHISTORY over the attempts without
    it proves absence: sent again under the same order id, billed once, never in_doubt."""
    start_process("worker")
    simulator.inject_fault("SENDSMS", "http500", count=3)
    assert send(redis_url, "OUTAGE1").get(timeout=60)["status"] == "accepted"
    assert simulator.count("SENDSMS") == 4 and simulator.billed_sends() == 1
    assert {r.params["order_id"] for r in simulator.requests("SENDSMS")} == {"OUTAGE1"}
    assert simulator.count("SMSHISTORY") >= 3  # one proof of absence before each new attempt
    store = store_of(redis_url)
    record = store.get_order("OUTAGE1")
    assert record.state in ("accepted", "completed") and record.attempts == 4 and not record.doubt
    assert order_events(store, "OUTAGE1") == ["accepted"]  # no in_doubt, no operator
    assert store.redis.zcard(store.keys.doubt_open) == 0


def test_a_lost_answer_after_commit_is_found_in_the_history_while_smsstatus_says_ko(
        redis_url, simulator, start_process):
    """The provider committed and the answer was lost; SMSSTATUS keeps answering KO. The
    history lists the order: accepted, billed once, never sent again."""
    start_process("worker")
    simulator.inject_fault("SENDSMS", "lost_answer")
    simulator.inject_fault("SMSSTATUS", "ko", count=100, code="31", message="Order not found")
    assert send(redis_url, "LOSTKO1").get(timeout=60)["status"] == "accepted"
    assert simulator.count("SENDSMS") == 1 and simulator.billed_sends("LOSTKO1") == 1
    assert simulator.count("SMSHISTORY") >= 1
    store = store_of(redis_url)
    assert store.get_order("LOSTKO1").state == "accepted" and order_events(store, "LOSTKO1") == ["accepted"]


def test_orders_in_doubt_after_an_outage_share_a_few_history_reads(redis_url, simulator, start_process):
    """An outage on SENDSMS: of 24 sends, 12 refused before commit (500) and 12 committed
    with their answers lost. SMSSTATUS finds the 12 committed; the 12 others are proven
    absent by a few shared SMSHISTORY reads, not one each, and sent once after it."""
    start_process("worker")
    for _ in range(12):
        simulator.inject_fault("SENDSMS", "http500")
        simulator.inject_fault("SENDSMS", "lost_answer")
    ids = [f"FLEET{i}" for i in range(24)]
    results = [send(redis_url, oid) for oid in ids]
    assert [r.get(timeout=90)["status"] for r in results] == ["accepted"] * 24
    assert [simulator.billed_sends(oid) for oid in ids] == [1] * 24
    assert simulator.count("SENDSMS") == 36  # the 12 refused ones sent once more each
    assert simulator.count("SMSHISTORY") <= 4  # shared: a per-order read would be 12 at least
    assert simulator.stats()["history_rows"] <= 5 * 12
    store = store_of(redis_url)
    assert not [oid for oid in ids if "in_doubt" in order_events(store, oid)]


def test_429_with_retry_after_is_honoured_then_sent_once(redis_url, simulator, start_process):
    worker = start_process("worker")
    simulator.inject_fault("SENDSMS", "http429", delay=2.0)  # Retry-After: 2
    reply = send(redis_url, "RATE429").get(timeout=40)
    assert reply["status"] == "accepted"
    sends = simulator.requests("SENDSMS")
    assert len(sends) == 2 and simulator.billed_sends() == 1
    assert sends[1].at - sends[0].at >= 1.9  # the countdown honoured Retry-After (retry cap is 1 s)
    assert simulator.count("SMSSTATUS") == 0  # a 429 was not processed: no doubt to resolve
    assert "ProviderThrottled" in worker.output()


def test_a_refused_cancel_is_cancelled_only_once_the_history_no_longer_lists_the_order(
        redis_url, simulator, start_process):
    """REMOVE_DELAYED refused and SMSSTATUS answering KO prove nothing: while SMSHISTORY
    still lists the order the provider may send it, so it stays scheduled. Removed by a
    try whose answer was lost, it leaves the history: then the refused retry ends cancelled."""
    start_process("worker")
    client = bare_client(redis_url)
    when = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    order_id = send(redis_url, "CANCEL1", scheduled_at=when).get(timeout=20)["order_id"]
    simulator.inject_fault("REMOVE_DELAYED", "ko", code="41", message="order not cancellable")
    simulator.inject_fault("SMSSTATUS", "ko", code="50", message="Temporary failure")
    with pytest.raises(Exception) as info:
        call(client, "mobyt.cancel", order_id=order_id).get(timeout=30)
    assert "not cancellable" in str(info.value)
    assert store_of(redis_url).get_order(order_id).state == "scheduled"  # the provider may still send it
    assert simulator.count("SMSHISTORY") == 1 and simulator.stats()["orders"] == 1
    simulator.inject_fault("REMOVE_DELAYED", "lost_answer")  # removed; the retry is refused (KO 40)
    assert call(client, "mobyt.cancel", order_id=order_id).get(timeout=30)["state"] == "cancelled"
    assert simulator.count("REMOVE_DELAYED") == 3 and simulator.count("SMSHISTORY") == 2


def test_retries_run_out_while_reads_fail_becomes_in_doubt_then_settles_on_evidence(
        redis_url, simulator, start_process):
    """Lost after commit, then SMSSTATUS and SMSHISTORY keep failing: never failed, never
    sent again; in_doubt past the limit (event, WARNING); accepted once a read answers."""
    env = {"MOBYT_DOUBT_LIMIT": "2"}
    worker = start_process("worker", env=env)
    start_process("beat", env=env)
    simulator.inject_fault("SENDSMS", "lost_answer")
    simulator.inject_fault("SMSSTATUS", "http503", count=28)  # 7 reads of 4 tries each
    simulator.inject_fault("SMSHISTORY", "http503", count=12)  # 3 sweeps
    result = send(redis_url, "SETTLE1")
    store = store_of(redis_url)
    record = state_is(store, "SETTLE1", "in_doubt")
    assert record.doubt and simulator.count("SENDSMS") == 1
    wait_for(lambda: "SETTLE1 is in_doubt" in worker.output(), timeout=10, what="the WARNING line")
    assert result.get(timeout=40)["status"] == "in_doubt"  # the task says so; the poller goes on
    record = state_is(store, "SETTLE1", "accepted", "completed")  # the faults ran out: evidence
    assert not record.doubt
    assert simulator.count("SENDSMS") == 1 and simulator.billed_sends() == 1
    events = [e for _, e in store.redis.xrange(store.keys.events) if e["order_id"] == "SETTLE1"]
    assert [e["state"] for e in events if e["type"] == "order"][:2] == ["in_doubt", "accepted"]


def test_a_due_entry_whose_record_is_gone_is_dropped(redis_url, simulator, start_process):
    worker = start_process("worker")
    start_process("beat")
    store = store_of(redis_url)
    store.redis.zadd(store.keys.due, {"GONE1": 0})
    wait_for(lambda: store.redis.zscore(store.keys.due, "GONE1") is None, timeout=20, what="the entry to go")
    assert worker.output().count("GONE1: due for a poll but its record is gone") == 1
    assert simulator.count("SMSSTATUS") == 0


def test_a_queued_intent_that_can_never_be_valid_is_failed_not_replayed(redis_url, simulator, start_process):
    start_process("worker")
    store = store_of(redis_url)
    store.redis.hset(store.keys.order("BADINTENT"), mapping={
        "state": "queued", "order_id": "BADINTENT", "created_at": "2026-01-01T00:00:00+00:00", "task_id": "t"})
    store.redis.zadd(store.keys.intents, {"BADINTENT": 0})
    with pytest.raises(Exception):
        call(bare_client(redis_url), "mobyt.send_sms", recipients=["not a number"], message="x", sender="ACME",
             order_id="BADINTENT").get(timeout=20)
    record = store.get_order("BADINTENT")
    assert record.state == "failed" and "recipient" in (record.error or "")
    assert store.redis.zscore(store.keys.intents, "BADINTENT") is None
    assert simulator.count("SENDSMS") == 0


def test_resend_is_the_operators_explicit_way_out_of_in_doubt(redis_url, worker_env, simulator, start_process,
                                                               monkeypatch, tmp_path, capsys):
    from mobyt_worker import cli
    from mobyt_worker.errors import ProviderTimeout

    monkeypatch.chdir(tmp_path)
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    start_process("worker")
    store = store_of(redis_url)
    request = {"recipients": [NUMBER], "message": "again", "sender": "ACME", "message_type": "N"}
    _, _, token = store.claim_send("STUCK1", {"message_type": "N", "request": json.dumps(request)},
                                   lock_seconds=5)
    store.release_send("STUCK1", token)  # an attempt that may have reached the provider
    store.mark_in_doubt("STUCK1", ProviderTimeout("no answer"))
    assert store.in_doubt_count() == 1
    assert cli.main(["orders", "--status", "in_doubt", "--json"]) == 0
    assert [o["order_id"] for o in json.loads(capsys.readouterr().out)] == ["STUCK1"]
    assert cli.main(["resend", "STUCK1"]) == 2  # the flag is required: no resend by accident
    assert simulator.count("SENDSMS") == 0 and store.get_order("STUCK1").state == "in_doubt"
    assert cli.main(["resend", "STUCK1", "--i-accept-a-possible-duplicate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "accepted"
    assert simulator.billed_sends("STUCK1") == 1 and simulator.requests("SENDSMS")[0].params["message"] == "again"
    raw = store.redis.hgetall(store.keys.order("STUCK1"))
    assert raw["resends"] == "1" and raw["state"] in ("accepted", "completed")
    assert store.in_doubt_count() == 0
    resends = Metrics(store.redis, store.keys.prefix).read()["resends"]
    assert resends == {("", json.dumps({"previous": "in_doubt"}, separators=(",", ":"))): 1.0}
    events = [e for _, e in store.redis.xrange(store.keys.events) if e["order_id"] == "STUCK1"]
    assert [e["state"] for e in events if e["type"] == "order"][:3] == ["in_doubt", "resend", "accepted"]
    assert cli.main(["resend", "STUCK1", "--i-accept-a-possible-duplicate"]) == 1  # settled: refused
