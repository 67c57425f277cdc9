"""OrderStore against a real Redis: claims, acceptance, status application, due polls."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker.errors import ProviderConnectError, ProviderRejected
from mobyt_worker.provider.protocol import RecipientStatus, Status
from mobyt_worker.store.orders import OrderStore

PARIS = ZoneInfo("Europe/Paris")
A, B = "+33612345670", "+33612345676"


@pytest.fixture
def store(redis_client):
    return OrderStore(redis_client, "t", ttl=3600, poll_intervals=(10, 20, 40))


def accept(store: OrderStore, oid: str = "O1", recipients=(A, B)) -> None:
    verdict, _, token = store.claim_send(oid, {"message_type": "N"}, lock_seconds=5)
    assert verdict == "send"
    store.mark_accepted(oid, scheduled=False, recipients=recipients, first_poll_at=0)
    store.release_send(oid, token)


def test_claim_verdicts_follow_the_order_state(store):
    verdict, state, token = store.claim_send("O1", {"message_type": "N"}, lock_seconds=5, due_at=123)
    assert (verdict, state) == ("send", "sending")
    assert store.redis.zscore(store.keys.due, "O1") == 123  # due before any HTTP call: a kill is settled
    assert store.claim_send("O1", {}, lock_seconds=5)[0] == "busy"  # lock held
    store.release_send("O1", token)
    # the attempt's outcome is unknown (no accept, no unsent): the next claim must resolve
    verdict, _, token2 = store.claim_send("O1", {}, lock_seconds=5)
    assert verdict == "resolve"
    store.mark_unsent("O1", ProviderConnectError("refused"), token2)  # not this attempt's token: ignored
    assert store.get_order("O1").doubt
    store.release_send("O1", token2)
    assert store.claim_send("O1", {}, lock_seconds=5)[0] == "resolve"
    store.redis.delete(store.keys.send_lock("O1"))
    verdict, _, token = store.claim_send("O1", {}, lock_seconds=5)
    assert store.end_doubt("O1", token)  # clean evidence of absence, with the lock held
    verdict, _, token = store.claim_send("O1", {}, lock_seconds=5, token=token)
    assert verdict == "send"
    store.mark_unsent("O1", ProviderConnectError("refused"), token)  # surely never left
    assert not store.get_order("O1").doubt and store.get_order("O1").state == "unsent"
    store.release_send("O1", token)
    verdict, _, token = store.claim_send("O1", {}, lock_seconds=5)
    assert verdict == "send"
    store.mark_accepted("O1", scheduled=False, recipients=[A], first_poll_at=0)
    store.release_send("O1", token)
    assert store.claim_send("O1", {}, lock_seconds=5)[:2] == ("done", "accepted")
    record = store.get_order("O1")
    assert record.attempts == 3 and record.state == "accepted" and list(record.recipients) == [A]
    assert not record.doubt


def test_doubt_survives_unsent_and_in_doubt_still_resolves(store):
    _, _, token = store.claim_send("D1", {"message_type": "N"}, lock_seconds=5)
    store.release_send("D1", token)  # may have reached the provider
    assert store.end_doubt("D1", "not-the-lock-holder") is False
    store.redis.hset(store.keys.order("D1"), "state", "unsent")  # whatever the state says...
    assert store.claim_send("D1", {}, lock_seconds=5)[0] == "resolve"  # ...the doubt decides
    store.redis.delete(store.keys.send_lock("D1"))
    assert store.mark_in_doubt("D1", ProviderConnectError("x")) is True
    assert store.mark_in_doubt("D1", ProviderConnectError("x")) is False  # one event per change
    assert store.claim_send("D1", {}, lock_seconds=5)[:2] == ("resolve", "in_doubt")
    events = [e for _, e in store.redis.xrange(store.keys.events) if e.get("state") == "in_doubt"]
    assert len(events) == 1


def test_a_queued_intent_is_claimed_like_a_missing_record(store):
    store.redis.hset(store.keys.order("Q1"), mapping={"state": "queued", "order_id": "Q1",
                                                     "created_at": "2026-01-01T00:00:00+00:00", "request": "{}"})
    store.redis.zadd(store.keys.intents, {"Q1": 1})
    verdict, state, _ = store.claim_send("Q1", {"message_type": "N"}, lock_seconds=5)
    assert (verdict, state) == ("send", "sending")
    record = store.get_order("Q1")
    assert record.created_at == "2026-01-01T00:00:00+00:00" and record.attempts == 1 and record.doubt
    assert store.redis.zscore(store.keys.intents, "Q1") is None
    store.redis.hset(store.keys.order("Q2"), mapping={"state": "queued", "order_id": "Q2"})
    store.redis.zadd(store.keys.intents, {"Q2": 1})
    assert store.mark_failed("Q2", ProviderRejected("x"), allowed=("queued",))
    assert store.get_order("Q2").state == "failed" and store.redis.zcard(store.keys.intents) == 0


def test_a_scheduled_order_is_kept_until_its_time_plus_the_ttl(store):
    import time as _time

    later = _time.time() + 3 * 3600  # the store's TTL is 1 h
    _, _, token = store.claim_send("S9", {"message_type": "N"}, lock_seconds=5, scheduled_epoch=later)
    assert store.redis.ttl(store.keys.order("S9")) > 3 * 3600
    store.mark_accepted("S9", scheduled=True, recipients=[A], first_poll_at=later + 10, release_token=token)
    assert store.redis.ttl(store.keys.order("S9")) > 3 * 3600
    store.apply_statuses("S9", [RecipientStatus(A, Status.SCHEDULED, None)], source="push")
    assert store.redis.ttl(store.keys.order("S9")) > 3 * 3600


def test_failed_send_is_terminal(store):
    _, _, token = store.claim_send("O2", {"message_type": "N"}, lock_seconds=5)
    store.mark_failed("O2", ProviderRejected("no credits", "30"))
    store.release_send("O2", token)
    assert store.claim_send("O2", {}, lock_seconds=5)[:2] == ("done", "failed")
    record = store.get_order("O2")
    assert record.error_code == "30" and record.final


def test_statuses_apply_once_and_complete_the_order(store):
    accept(store)
    delivered = datetime(2026, 1, 2, 3, 4, 5, tzinfo=PARIS)
    rows = [RecipientStatus(A, Status.WAIT4DLVR, None), RecipientStatus(B, Status.WAIT4DLVR, None)]
    assert len(store.apply_statuses("O1", rows, source="poll")) == 2
    assert store.apply_statuses("O1", rows, source="poll") == []  # same facts: nothing new
    final = [RecipientStatus(A, Status.DLVRD, delivered), RecipientStatus(B, Status.ERROR, None)]
    changes = store.apply_statuses("O1", final, source="push")
    assert [(c["recipient"], c["status"], c["previous"]) for c in changes] == [
        (A, "DLVRD", "WAIT4DLVR"), (B, "ERROR", "WAIT4DLVR")]
    # a late, older status never moves a final one back
    assert store.apply_statuses("O1", rows, source="poll") == []
    record = store.get_order("O1")
    assert record.state == "completed" and record.final
    assert record.recipients[A].delivered_at == delivered.isoformat()
    assert record.polls == 3
    assert store.redis.zscore(store.keys.due, "O1") is None
    events = store.redis.xrange(store.keys.events)
    status_events = [e for _, e in events if e["type"] == "status"]
    assert len(status_events) == 4
    assert [e["state"] for _, e in events if e["type"] == "order"] == ["accepted", "completed"]


def test_racing_applies_emit_one_event_per_change(store):
    accept(store, recipients=(A,))
    rows = [RecipientStatus(A, Status.DLVRD, datetime(2026, 1, 1, tzinfo=PARIS))]
    results: list = []
    barrier = threading.Barrier(8)

    def apply():
        barrier.wait()
        results.append(store.apply_statuses("O1", rows, source="poll"))

    threads = [threading.Thread(target=apply) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in results) == 1
    assert len([1 for _, e in store.redis.xrange(store.keys.events) if e["type"] == "status"]) == 1


def test_provider_spelling_of_numbers_is_matched(store):
    accept(store, recipients=(A,))
    store.apply_statuses("O1", [RecipientStatus("0033612345670", Status.DLVRD, None)], source="poll")
    assert store.get_order("O1").recipients[A].status == "DLVRD"


def test_due_claim_leases_and_backs_off(store):
    accept(store, "O1", (A,))
    accept(store, "O3", (A,))
    store.reschedule_poll("O3", 1000)  # not due
    assert store.claim_due(limit=10, lease=60) == ["O1"]
    assert store.claim_due(limit=10, lease=60) == []  # leased
    before = store.redis.zscore(store.keys.due, "O1")
    store.apply_statuses("O1", [RecipientStatus(A, Status.WAIT4DLVR, None)], source="poll", now=100.0)
    assert store.redis.zscore(store.keys.due, "O1") == 110.0 != before  # first interval
    store.apply_statuses("O1", [RecipientStatus(A, Status.WAIT4DLVR, None)], source="poll", now=100.0)
    assert store.redis.zscore(store.keys.due, "O1") == 120.0  # second interval


def test_cancelled_order_ignores_statuses_and_leaves_due_set(store):
    _, _, token = store.claim_send("S1", {"message_type": "N"}, lock_seconds=5)
    store.mark_accepted("S1", scheduled=True, recipients=[A], first_poll_at=10**10)
    store.release_send("S1", token)
    assert store.get_order("S1").state == "scheduled"
    store.mark_cancelled("S1")
    assert store.apply_statuses("S1", [RecipientStatus(A, Status.DLVRD, None)], source="push") == "cancelled"
    record = store.get_order("S1")
    assert record.cancelled and record.state == "cancelled"
    assert store.due_count() == 0


def test_keys_expire(store):
    accept(store)
    store.apply_statuses("O1", [RecipientStatus(A, Status.WAIT4DLVR, None)], source="poll")
    for key in store.keys.order_keys("O1"):
        assert 0 < store.redis.ttl(key) <= 3600, key


def test_recent_orders_filters_by_state(store):
    accept(store, "O1")
    store.claim_send("O2", {"message_type": "N"}, lock_seconds=5)
    assert [r.order_id for r in store.recent_orders()] == ["O2", "O1"]
    assert [r.order_id for r in store.recent_orders(states=["accepted"])] == ["O1"]


def test_a_late_earlier_status_does_not_move_a_recipient_back(store):
    accept(store, recipients=(A,))
    assert store.apply_statuses("O1", [RecipientStatus(A, Status.WAIT4DLVR, None)], source="poll")
    assert store.apply_statuses("O1", [RecipientStatus(A, Status.WAITING, None)], source="push") == []
    assert store.get_order("O1").recipients[A].status == "WAIT4DLVR"
    assert store.apply_statuses("O1", [RecipientStatus(A, Status.ERROR, None)], source="push")
    assert store.get_order("O1").recipients[A].status == "ERROR"


def test_a_recorded_batch_ends_its_intent_but_never_a_real_order(store):
    store.redis.hset(store.keys.order("BULK1"), mapping={"order_id": "BULK1", "state": "queued"})
    store.redis.zadd(store.keys.intents, {"BULK1": 1, "BULK2": 1})
    store.record_batch("BULK1", ["C0", "C1"])
    assert store.batch_orders("BULK1") == ["C0", "C1"]
    assert store.get_order("BULK1") is None  # no longer an intent the replay job would publish again
    assert store.redis.zscore(store.keys.intents, "BULK1") is None
    accept(store, "BULK2")  # an order sent under the same id earlier keeps its record
    store.record_batch("BULK2", ["C2"])
    assert store.require_order("BULK2").state == "accepted"


def in_doubt(store: OrderStore, oid: str) -> None:
    # recipient_count, as the send task claims: a push may add that many recipients before acceptance
    _, _, token = store.claim_send(oid, {"message_type": "N", "recipient_count": 1}, lock_seconds=5)
    store.release_send(oid, token)  # the attempt may have reached the provider
    assert store.mark_in_doubt(oid, ProviderConnectError("no answer"))


def test_every_way_out_of_in_doubt_leaves_the_in_doubt_index(store):
    before = time.time()
    for oid in ("ACC", "FAIL", "RESEND", "PUSH", "CANCEL", "STAYS"):
        in_doubt(store, oid)
    after = time.time()
    assert store.in_doubt_count() == 6
    assert store.mark_in_doubt("STAYS", None) is False and store.in_doubt_count() == 6  # counted once
    # scored by when the record expires: marked within [before, after], plus the store's TTL
    assert before + store.ttl <= store.redis.zscore(store.keys.in_doubt, "STAYS") <= after + store.ttl

    store.mark_accepted("ACC", scheduled=False, recipients=[A], first_poll_at=0)  # evidence: it was accepted
    store.mark_failed("FAIL", ProviderRejected("absent", "0"), allowed=("in_doubt",))  # evidence: never sent
    assert store.allow_resend("RESEND").state == "unsent"  # an operator's decision
    store.apply_statuses("PUSH", [RecipientStatus(A, Status.DLVRD, None)], source="push")  # a push settles it
    store.mark_cancelled("CANCEL")
    assert not store.expire_order("STAYS")  # no way out: only an order being followed expires
    assert store.get_order("PUSH").state == "completed"
    assert store.redis.zrange(store.keys.in_doubt, 0, -1) == ["STAYS"]
    assert store.in_doubt_count() == 1

    store.redis.zadd(store.keys.in_doubt, {"GONE": time.time() - 1})  # its record expired meanwhile
    assert store.in_doubt_count() == 1 and store.redis.zscore(store.keys.in_doubt, "GONE") is None
