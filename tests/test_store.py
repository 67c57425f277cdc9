"""OrderStore against a real Redis: claims, acceptance, status application, due polls."""

from __future__ import annotations

import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker.errors import ProviderConnectError, ProviderRejected
from mobyt_worker.protocol import RecipientStatus, Status
from mobyt_worker.store import OrderStore

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
    verdict, state, token = store.claim_send("O1", {"message_type": "N"}, lock_seconds=5)
    assert (verdict, state) == ("send", "sending")
    assert store.claim_send("O1", {}, lock_seconds=5)[0] == "busy"  # lock held
    store.release_send("O1", token)
    # the attempt's outcome is unknown (no accept, no unsent): the next claim must resolve
    verdict, _, token = store.claim_send("O1", {}, lock_seconds=5)
    assert verdict == "resolve"
    store.mark_unsent("O1", ProviderConnectError("refused"))
    store.release_send("O1", token)
    verdict, _, token = store.claim_send("O1", {}, lock_seconds=5)
    assert verdict == "send"
    store.mark_accepted("O1", scheduled=False, recipients=[A], first_poll_at=0)
    store.release_send("O1", token)
    assert store.claim_send("O1", {}, lock_seconds=5)[:2] == ("done", "accepted")
    record = store.get_order("O1")
    assert record.attempts == 2 and record.state == "accepted" and list(record.recipients) == [A]


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
