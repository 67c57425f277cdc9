"""What docs/reference.md promises about what Redis keeps: streams trimmed to about
MOBYT_STREAM_MAXLEN entries, and tracking keys that expire MOBYT_ORDER_TTL seconds after
an order's last change (so the TTL goes back up at every change)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import pytest
import redis

from mobyt_worker.store.inbox import InboxStore
from mobyt_worker.provider.protocol import InboundMessage, RecipientStatus, Status
from mobyt_worker.store.connection import connect
from mobyt_worker.store.orders import OrderStore

NUMBER = "+33612345670"
TTL = 1000
MAXLEN = 40
NODE = 10  # entries per stream node: XADD MAXLEN ~ only drops whole nodes


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = connect(redis_url)
    yield r
    r.close()


def accepted_order(store: OrderStore, order_id: str) -> None:
    verdict, _, token = store.claim_send(order_id, {"message_type": "N"}, lock_seconds=5)
    assert verdict == "send"
    store.mark_accepted(order_id, scheduled=False, recipients=[NUMBER], first_poll_at=0, release_token=token)


@pytest.fixture
def small_nodes(client: redis.Redis) -> Iterator[None]:
    """Small stream nodes, so that trimming shows at a few dozen entries (the session's
    redis-server is shared: the default comes back afterwards)."""
    default = client.config_get("stream-node-max-entries")["stream-node-max-entries"]
    client.config_set("stream-node-max-entries", NODE)
    yield
    client.config_set("stream-node-max-entries", default)


def test_events_and_inbound_streams_stay_about_maxlen_long(client, small_nodes):
    store = OrderStore(client, "mobyt", ttl=TTL, stream_maxlen=MAXLEN)
    inbox = InboxStore(client, "mobyt", ttl=TTL, stream_maxlen=MAXLEN)
    lengths = []
    for i in range(150):
        accepted_order(store, f"TRIM{i}")  # one 'order accepted' event each
        lengths.append(client.xlen(store.keys.events))
    messages = [InboundMessage(i, "+33600000000", NUMBER, f"hello {i}", datetime.now(timezone.utc), "")
                for i in range(1, 151)]
    assert inbox.store_all(messages, source="poll").new == 150
    # XADD MAXLEN ~ N keeps at least N entries and removes whole nodes as soon as one can
    # go: never more than N + one node's entries
    assert max(lengths) <= MAXLEN + NODE, max(lengths)
    assert MAXLEN <= lengths[-1] <= MAXLEN + NODE
    assert MAXLEN <= client.xlen(inbox.keys.inbound) <= MAXLEN + NODE
    newest = client.xrevrange(store.keys.events, count=1)[0][1]
    assert newest["order_id"] == "TRIM149"  # the oldest went, not the newest


def order_key_ttls(client: redis.Redis, store: OrderStore, order_id: str) -> dict[str, int]:
    keys = {"order": store.keys.order(order_id), "rcpt": store.keys.recipients(order_id),
            "history": store.keys.history(order_id)}
    return {name: client.ttl(key) for name, key in keys.items()}


def age_keys(client: redis.Redis, store: OrderStore, order_id: str, left: int = 10) -> None:
    """As if the order's last change were long ago: its keys have ``left`` seconds to live."""
    for key in (store.keys.order(order_id), store.keys.recipients(order_id), store.keys.history(order_id)):
        if client.exists(key):
            client.expire(key, left)


@pytest.mark.parametrize("source", ["poll", "push"])
def test_a_status_change_gives_every_key_of_the_order_its_full_ttl_again(client, source):
    store = OrderStore(client, "mobyt", ttl=TTL)
    accepted_order(store, "TTL1")
    store.apply_statuses("TTL1", [RecipientStatus(NUMBER, Status.SENT, None)], source=source)
    age_keys(client, store, "TTL1")
    assert max(order_key_ttls(client, store, "TTL1").values()) <= 10

    changes = store.apply_statuses("TTL1", [RecipientStatus(NUMBER, Status.DLVRD, datetime.now(timezone.utc))],
                                   source=source)
    assert [c["status"] for c in changes] == ["DLVRD"]
    ttls = order_key_ttls(client, store, "TTL1")
    assert all(TTL - 5 <= t <= TTL for t in ttls.values()), ttls


def test_acceptance_gives_the_record_its_full_ttl_again(client):
    store = OrderStore(client, "mobyt", ttl=TTL)
    verdict, _, token = store.claim_send("TTL2", {"message_type": "N"}, lock_seconds=5)
    age_keys(client, store, "TTL2")
    store.mark_accepted("TTL2", scheduled=False, recipients=[NUMBER], first_poll_at=0, release_token=token)
    ttls = order_key_ttls(client, store, "TTL2")
    assert TTL - 5 <= ttls["order"] <= TTL and TTL - 5 <= ttls["rcpt"] <= TTL, ttls


def _cancel(store: OrderStore) -> None:
    store.mark_cancelled("TTL3")


def _expire(store: OrderStore) -> None:
    store.expire_order("TTL3")


def _fail(store: OrderStore) -> None:
    store.mark_failed("TTL3", RuntimeError("refused"))


@pytest.mark.parametrize("change", [_cancel, _expire, _fail], ids=["cancelled", "expired", "failed"])
def test_a_state_change_gives_the_record_its_full_ttl_again(client, change):
    store = OrderStore(client, "mobyt", ttl=TTL)
    if change is _fail:  # refused on its first attempt: still 'sending'
        store.claim_send("TTL3", {"message_type": "N"}, lock_seconds=5)
    else:
        accepted_order(store, "TTL3")
    age_keys(client, store, "TTL3")
    change(store)
    assert store.get_order("TTL3").state in ("cancelled", "expired", "failed")
    assert TTL - 5 <= client.ttl(store.keys.order("TTL3")) <= TTL
