"""Opt-outs: a STOP stored by the inbox's Lua script refuses later sends before any HTTP call,
and waits to be applied to the orders scheduled for the number, found in its index."""

from __future__ import annotations

import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker.contract import chunk_order_id, replacement_order_id
from mobyt_worker.errors import RecipientOptedOut
from mobyt_worker.store.inbox import Arrival, InboxStore
from mobyt_worker.store.optouts import OptOuts
from mobyt_worker.provider.protocol import InboundMessage
from mobyt_worker.store.orders import OrderStore

PARIS = ZoneInfo("Europe/Paris")
STOPPED, OTHER = "+33612345671", "+33612345672"


def test_a_stop_refuses_sends_to_that_number_until_it_is_cleared(redis_client):
    optouts, inbox = OptOuts(redis_client, "t"), InboxStore(redis_client, "t", country="FR")
    orders = OrderStore(redis_client, "t", ttl=3600, poll_intervals=(10,))
    stop = InboundMessage(1, "+33700000001", "06 12 34 56 71", "Stop.", datetime.now(PARIS), "")
    inbox.store_all([stop, stop], source="poll")  # twice: one opt-out, one event

    assert list(optouts.all()) == [STOPPED] and optouts.all()[STOPPED]["message_id"] == 1
    assert [f["number"] for _, f in redis_client.xrange(orders.keys.events) if f["type"] == "optout"] == [STOPPED]
    with pytest.raises(RecipientOptedOut) as info:
        optouts.check([OTHER, STOPPED])
    assert info.value.field == "recipients" and STOPPED not in str(info.value)  # masked
    optouts.check([OTHER])
    verdict, _, _ = orders.claim_send("O1", {"message_type": "N"}, lock_seconds=5, recipients=[OTHER, STOPPED])
    assert verdict == "optout" and orders.get_order("O1") is None  # nothing claimed, nothing stored

    assert optouts.clear(STOPPED) and not optouts.clear(STOPPED)
    optouts.check([STOPPED])
    verdict, _, _ = orders.claim_send("O1", {"message_type": "N"}, lock_seconds=5, recipients=[OTHER, STOPPED])
    assert verdict == "send"


def test_a_new_stop_waits_to_be_applied_and_reaches_the_hook_once(redis_client):
    seen: list[Arrival] = []
    inbox = InboxStore(redis_client, "t", country="FR", replay_after=60, on_stored=seen.append)
    optouts = inbox.optouts
    stop = InboundMessage(1, "+33700000001", "0612345671", "arrêt svp", datetime.now(PARIS), "")
    assert inbox.store(stop, source="push") and not inbox.store(stop, source="poll")
    inbox.store(InboundMessage(2, "+33700000001", "0612345671", "STOP", datetime.now(PARIS), ""), source="poll")
    assert seen == [Arrival(1, "push", STOPPED, opted_out=True), Arrival(2, "poll", STOPPED, opted_out=False)]

    assert optouts.pending() == 1 and optouts.due() == []  # not yet: a run is applying it
    assert optouts.due(now=time.time() + 61) == [STOPPED]  # no run finished: published again...
    assert optouts.due(now=time.time() + 61) == []  # ...and looked at again replay_after later
    optouts.applied(STOPPED)
    assert optouts.pending() == 0 and optouts.due(now=time.time() + 10**6) == []
    assert optouts.add(OTHER) and optouts.pending() == 1  # an opt-out recorded by hand waits too
    assert optouts.clear(OTHER) and optouts.pending() == 0


def test_a_sender_that_is_no_number_is_kept_apart_and_never_an_opt_out(redis_client):
    seen: list[Arrival] = []
    inbox = InboxStore(redis_client, "t", country="FR", on_stored=seen.append)
    for message_id, sender in enumerate(["ACME", "12", "0612345671"], start=1):
        inbox.store(InboundMessage(message_id, "+33700000001", sender, "STOP", datetime.now(PARIS), ""), source="poll")

    assert list(inbox.optouts.all()) == [STOPPED] and inbox.optouts.pending() == 1
    assert [(a.number, a.opted_out) for a in seen] == [(None, False), (None, False), (STOPPED, True)]
    apart = inbox.get(1)
    assert (apart["sender"], apart["raw_sender"], apart["bad_sender"], apart["stop"]) == ("", "ACME", True, True)
    number = inbox.get(3)
    assert (number["sender"], number["raw_sender"], number["bad_sender"]) == ("0612345671", "", False)
    streamed = [f for _, f in redis_client.xrange(inbox.keys.inbound)]
    assert [(f["sender"], f["raw_sender"], f["bad_sender"]) for f in streamed] == [
        ("", "ACME", "1"), ("", "12", "1"), ("0612345671", "", "0")]


def test_a_scheduled_claim_indexes_the_order_under_each_recipient_until_its_time(redis_client):
    store, optouts = OrderStore(redis_client, "t", ttl=3600), OptOuts(redis_client, "t")
    later = time.time() + 600
    meta = {"message_type": "N"}
    assert store.claim_send("S1", meta, lock_seconds=5, recipients=[STOPPED, OTHER], scheduled_epoch=later)[0] == "send"
    assert store.claim_send("S2", meta, lock_seconds=5, recipients=[STOPPED], scheduled_epoch=later + 100)[0] == "send"
    assert store.claim_send("NOW1", meta, lock_seconds=5, recipients=[STOPPED])[0] == "send"  # not scheduled
    assert store.scheduled_for(STOPPED) == ["S1", "S2"] and store.scheduled_for(OTHER) == ["S1"]
    assert redis_client.zscore(store.keys.scheduled(OTHER), "S1") == pytest.approx(later)
    assert 690 <= redis_client.ttl(store.keys.scheduled(STOPPED)) <= 762  # until its latest order's time
    assert 590 <= redis_client.ttl(store.keys.scheduled(OTHER)) <= 662

    assert store.scheduled_for(STOPPED, now=later + 1) == ["S2"]  # its time passed: out of the index
    assert redis_client.zrange(store.keys.scheduled(STOPPED), 0, -1) == ["S2"]
    optouts.add("+33612345673")
    verdict, _, _ = store.claim_send("S3", meta, lock_seconds=5, recipients=[OTHER, "+33612345673"],
                                     scheduled_epoch=later)
    assert verdict == "optout" and store.scheduled_for(OTHER) == ["S1"]  # refused: nothing indexed
    store.mark_accepted("S1", scheduled=True, recipients=[STOPPED, OTHER], first_poll_at=later)
    assert store.mark_cancelled("S1", recipients=[STOPPED, OTHER])
    assert store.scheduled_for(OTHER) == [] and store.scheduled_for(STOPPED) == ["S2"]


def test_the_replacement_order_id_is_derived_from_the_old_one():
    new = replacement_order_id("SHARED1")
    assert new == replacement_order_id("SHARED1") and re.fullmatch(r"[0-9a-f]{32}", new)
    assert len({new, "SHARED1", replacement_order_id(new), replacement_order_id("SHARED2"),
                chunk_order_id("SHARED1", 0)}) == 5
