"""Bounded push receivers: a flood of status pushes for one order leaves its record the size
it was, plus each recipient's newest transitions; pushes past MOBYT_PUSH_RATE get 429."""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlencode

import falcon.testing
import pytest
from fakeredis.commands_mixins import server_mixin

from mobyt_worker.config import Settings
from mobyt_worker.provider.protocol import RecipientStatus, Status
from mobyt_worker.runtime import Runtime
from mobyt_worker.store.orders import HISTORY_PER_RECIPIENT, OrderStore
from mobyt_worker.web.app import create_app
from mobyt_worker.web.webhooks import MAX_TEXT

from .webapp import FORM, INBOUND, STATUS, WEBHOOK_TOKEN, WebApp, error_shape, web_app

A, B = "+33612345670", "+33612345671"
BACK_AND_FORTH = ("WAITING", "UNKNOWN")  # equal rank: each is a change, again and again


@pytest.fixture
def web() -> Iterator[WebApp]:
    yield from web_app(MOBYT_PUSH_RATE="0")


def accepted(store: OrderStore, order_id: str = "FLOOD1", recipients: tuple[str, ...] = (A, B)) -> None:
    _, _, token = store.claim_send(order_id, {"message_type": "N", "recipient_count": len(recipients)},
                                   lock_seconds=5)
    store.mark_accepted(order_id, scheduled=False, recipients=recipients, first_poll_at=time.time() + 3600,
                        release_token=token)


def flood(push: Callable[..., Any], pushes: Iterable[int], order_id: str = "FLOOD1") -> dict[str, int]:
    """Status pushes in thirds: A back and forth, recipients the order lacks, B repeated."""
    answers: dict[str, int] = {}
    for i in pushes:
        if i % 3 == 0:
            form = {"order_id": order_id, "recipient": A, "status": BACK_AND_FORTH[(i // 3) % 2]}
        elif i % 3 == 1:
            form = {"order_id": order_id, "recipient": f"+3361{i:07d}", "status": "WAIT4DLVR"}
        else:
            form = {"order_id": order_id, "recipient": B, "status": "WAIT4DLVR"}
        answer = push(STATUS, form)
        assert answer.status_code == 200, answer.text
        key = answer.json.get("ignored") or f"changes={answer.json['changes']}"
        answers[key] = answers.get(key, 0) + 1
    return answers


def test_a_flood_of_status_pushes_keeps_each_recipients_newest_transitions_and_adds_none(web):
    store = web.rt.store
    accepted(store)
    answers = flood(web.push, range(3000))
    assert answers == {"changes=1": 1000 + 1, "changes=0": 999, "unknown_recipient": 1000}
    record = store.get_order("FLOOD1")
    assert sorted(record.recipients) == [A, B]  # not one of the 1000 numbers it never had
    mine = [h for h in record.history if h["recipient"] == A]
    assert len(mine) == HISTORY_PER_RECIPIENT  # of A's 1000 transitions, its newest
    assert [h["status"] for h in mine[-2:]] == ["WAITING", "UNKNOWN"] and mine[-1]["previous"] == "WAITING"
    assert record.recipients[A].status == "UNKNOWN"  # the last push
    assert [h["status"] for h in record.history if h["recipient"] == B] == ["WAIT4DLVR"]
    assert store.redis.llen(store.keys.history("FLOOD1")) == HISTORY_PER_RECIPIENT + 1
    web.rt.metrics.flush()
    assert web.rt.metrics.read()["pushes_ignored"] == {("", '{"reason":"unknown_recipient"}'): 1000.0}


def test_a_push_before_acceptance_adds_at_most_the_sends_recipients(web):
    """The provider may push before the worker recorded its acceptance: the order has no
    recipients yet, so a push may add as many as the send had (recipient_count), no more."""
    store = web.rt.store
    store.claim_send("EARLY1", {"message_type": "N", "recipient_count": 1}, lock_seconds=5)
    first = web.push(STATUS, {"order_id": "EARLY1", "recipient": A, "status": "WAITING"})
    assert first.json == {"ok": True, "changes": 1}
    other = web.push(STATUS, {"order_id": "EARLY1", "recipient": B, "status": "WAITING"})
    assert other.json == {"ok": True, "ignored": "unknown_recipient"}
    spelled = web.push(STATUS, {"order_id": "EARLY1", "recipient": "0033612345670", "status": "WAIT4DLVR"})
    assert spelled.json == {"ok": True, "changes": 1}  # the provider's spelling of A is A
    record = store.get_order("EARLY1")
    assert list(record.recipients) == [A] and record.recipients[A].status == "WAIT4DLVR"


def test_a_poll_still_records_what_the_provider_lists(web):
    """Polls are the provider's own answer for our order: only pushes are held to its recipients."""
    store = web.rt.store
    accepted(store, "POLL1", (A,))
    changes = store.apply_statuses("POLL1", [RecipientStatus(B, Status.WAITING, None)], source="poll")
    assert not isinstance(changes, str), changes
    assert [c["recipient"] for c in changes] == [B]


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """fakeredis's TIME (the limiter's only clock) stands still until the test moves it."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(server_mixin, "time", SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture
def limited(frozen_clock: list[float]) -> Iterator[WebApp]:
    yield from web_app(MOBYT_PUSH_RATE="5")  # a second's worth (5) at once, then one per 0.2 s


def test_pushes_past_the_rate_get_429_with_retry_after_and_store_nothing(limited, frozen_clock):
    web, store = limited, limited.rt.store
    accepted(store, "RATE1", (A,))
    forms = [{"order_id": "RATE1", "recipient": A, "status": s} for s in ("WAITING", "UNKNOWN") * 4]
    answers = [web.push(STATUS, form) for form in forms]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
    refused = answers[-1]
    assert error_shape(refused)["error"] == "rate_limited" and refused.headers["Retry-After"] == "1"
    assert [h["status"] for h in store.get_order("RATE1").history] == ["WAITING", "UNKNOWN"] * 2 + ["WAITING"]

    inbound = web.push(INBOUND, {"id": "7", "text": "oui", "sender": A, "recipient": "+33700000001",
                                 "delivery_date": "20260309113910"})
    assert inbound.status_code == 200  # a budget of its own: a status flood delays no STOP
    frozen_clock[0] += 0.2
    assert web.push(STATUS, forms[0]).status_code == 200  # one interval later: one more
    assert web.push(STATUS, forms[1]).status_code == 429
    web.rt.metrics.flush()
    assert web.rt.metrics.read()["pushes_rate_limited"] == {("", '{"callback":"status"}'): 4.0}


def test_an_inbound_text_longer_than_the_longest_sms_is_refused_whole(web):
    form = {"id": "8", "sender": A, "recipient": "+33700000001", "delivery_date": "20260309113910"}
    longest = web.push(INBOUND, {**form, "text": "é" * MAX_TEXT})
    assert longest.json == {"ok": True, "new": True}
    assert web.rt.inbox.get(8)["text"] == "é" * MAX_TEXT
    too_long = web.push(INBOUND, {**form, "id": "9", "text": "a" * (MAX_TEXT + 1)})
    assert too_long.status_code == 400
    assert error_shape(too_long) == {"error": "invalid", "field": "text", "limit": MAX_TEXT,
                                     "message": f"is longer than {MAX_TEXT} characters, the longest SMS"}
    assert web.rt.inbox.get(9) is None and web.rt.inbox.count() == 1


# --- on a real redis-server: the bytes, and the limiter's own clock ---------------------------


@contextmanager
def real_web(redis_url: str, rate: str) -> Iterator[tuple[Runtime, Callable[..., Any]]]:
    """The app on a real Redis; yields its Runtime and a ``push(path, form)``."""
    rt = Runtime(Settings.from_env({"REDIS_URL": redis_url, "MOBYT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
                                    "MOBYT_PUSH_RATE": rate}))
    client = falcon.testing.TestClient(create_app(rt))
    try:
        yield rt, lambda path, form: client.simulate_post(path, body=urlencode(form), headers=FORM)
    finally:
        rt.close()


def memory(rt: Runtime, order_id: str) -> int:
    """MEMORY USAGE of the order's keys (record, recipients, history), in bytes."""
    return sum(rt.redis.memory_usage(key) or 0 for key in rt.store.keys.order_keys(order_id))


def test_a_flood_of_pushes_leaves_the_orders_keys_within_a_constant_of_their_size(redis_url):
    with real_web(redis_url, "0") as (rt, push):
        accepted(rt.store)
        before = memory(rt, "FLOOD1")
        flood(push, range(300))
        settled = memory(rt, "FLOOD1")  # A's history is full by now
        flood(push, range(300, 3000))
        after = memory(rt, "FLOOD1")
        # what may grow: each recipient's newest transitions (A: 20, B: 1), ~150 B each
        assert after - before <= (HISTORY_PER_RECIPIENT + 1) * 200, (before, settled, after)
        assert after <= settled * 1.05, (settled, after)
        assert rt.redis.hlen(rt.store.keys.recipients("FLOOD1")) == 2


def test_the_push_limit_holds_on_a_real_redis_keyed_by_a_hash_of_the_token(redis_url):
    with real_web(redis_url, "0.001") as (rt, push):  # one push, then one per 1000 s
        accepted(rt.store, "RATE2", (A,))
        form = {"order_id": "RATE2", "recipient": A, "status": "WAITING"}
        first, second = push(STATUS, form), push(STATUS, form)
        assert (first.status_code, second.status_code) == (200, 429)
        assert 990 <= int(second.headers["Retry-After"]) <= 1000
        [key] = rt.redis.keys(f"{rt.settings.key_prefix}:ratelimit:push:*")
        assert key.startswith(f"{rt.settings.key_prefix}:ratelimit:push:status:") and WEBHOOK_TOKEN not in key
