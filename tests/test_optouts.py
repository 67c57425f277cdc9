"""Opt-outs: a STOP stored by the inbox's Lua script refuses later sends before any HTTP call."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker.errors import RecipientOptedOut
from mobyt_worker.inbox import Arrival, InboxStore
from mobyt_worker.optouts import OptOuts
from mobyt_worker.protocol import InboundMessage
from mobyt_worker.store import OrderStore

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
    verdict, _, _ = orders.claim_send("O1", {"message_type": "N"}, lock_seconds=5,
                                      optout_key=optouts.key, recipients=[OTHER, STOPPED])
    assert verdict == "optout" and orders.get_order("O1") is None  # nothing claimed, nothing stored

    assert optouts.clear(STOPPED) and not optouts.clear(STOPPED)
    optouts.check([STOPPED])
    verdict, _, _ = orders.claim_send("O1", {"message_type": "N"}, lock_seconds=5,
                                      optout_key=optouts.key, recipients=[OTHER, STOPPED])
    assert verdict == "send"


def test_a_sender_that_is_no_number_is_kept_apart_and_never_an_opt_out(redis_client):
    seen: list[Arrival] = []
    inbox = InboxStore(redis_client, "t", country="FR", on_stored=seen.append)
    for message_id, sender in enumerate(["ACME", "12", "0612345671"], start=1):
        inbox.store(InboundMessage(message_id, "+33700000001", sender, "STOP", datetime.now(PARIS), ""), source="poll")

    assert list(inbox.optouts.all()) == [STOPPED]
    assert [a.number for a in seen] == [None, None, STOPPED]
    apart = inbox.get(1)
    assert (apart["sender"], apart["raw_sender"], apart["bad_sender"], apart["stop"]) == ("", "ACME", True, True)
    number = inbox.get(3)
    assert (number["sender"], number["raw_sender"], number["bad_sender"]) == ("0612345671", "", False)
    streamed = [f for _, f in redis_client.xrange(inbox.keys.inbound)]
    assert [(f["sender"], f["raw_sender"], f["bad_sender"]) for f in streamed] == [
        ("", "ACME", "1"), ("", "12", "1"), ("0612345671", "", "0")]
