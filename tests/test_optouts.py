"""Opt-outs: a STOP stored by the inbox's Lua script refuses later sends before any HTTP call."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker.errors import RecipientOptedOut
from mobyt_worker.inbox import InboxStore
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
