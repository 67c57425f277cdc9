"""The delivery policy (delivery.py), one test per row of the decision table in
docs/reliability.md: an order, an outcome or a verdict, the clock, and the decision. The
jitter is the top of its range, so every countdown is exact."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from mobyt_worker import delivery
from mobyt_worker.delivery import (ABSENT, ACCEPT, ACCEPTED, AMBIGUOUS, ASK, FAIL, HAND_OVER, REJECTED, REPORT,
                                   REPUBLISH, RETRY, SEND, UNCLEAR, UNSENT_TRANSIENT, WAIT, Decision, Policy)
from mobyt_worker.states import IN_DOUBT, SENDING, UNSENT
from mobyt_worker.store.orders import OrderRecord

NOW = 1_800_000_000.0
POLICY = Policy()  # retry for 3600 s, backoff cap 60 s, lock 35 s, grace 30 s, doubt limit 3600 s
AGAIN = POLICY.lock_seconds + POLICY.doubt_grace  # 65 s: the lock and the grace of an attempt starting now
SLOWEST = POLICY.poll_intervals[-1]


def top(low: float, high: float) -> float:
    return high


def order(state: str = SENDING, claimed: float | None = NOW - 10, created: float = NOW - 10, **fields: Any) -> OrderRecord:
    defaults: dict[str, Any] = dict(
        order_id="ORD1", state=state, message_type="N", sender=None,
        created_at=datetime.fromtimestamp(created, timezone.utc).isoformat(), scheduled_at=None, accepted_at=None,
        recipients={}, polls=0, final=False, cancelled=False, credits=None, parts=1, batch_id=None, task_id="t1",
        attempts=1, claimed_at=claimed, request='{"recipients": ["+33612345671"]}',
        doubt=state != UNSENT)
    return OrderRecord(**{**defaults, **fields})


RETRIES = 2  # backoff step 2 ** 2 = 4 s

ATTEMPTS = {  # outcome, the order, retry_after, retries -> decision
    "KO or 4xx: failed": (REJECTED, order(), None, RETRIES, Decision(FAIL, NOW)),
    "surely unsent, in the window: retried with backoff": (
        UNSENT_TRANSIENT, order(UNSENT), None, RETRIES, Decision(RETRY, NOW + 4 + AGAIN, countdown=4)),
    "surely unsent with Retry-After: retried after it": (
        UNSENT_TRANSIENT, order(UNSENT), 20.0, RETRIES, Decision(RETRY, NOW + 20 + AGAIN, countdown=20)),
    "backoff is capped at MOBYT_SEND_RETRY_MAX": (
        UNSENT_TRANSIENT, order(UNSENT), None, 10, Decision(RETRY, NOW + 60 + AGAIN, countdown=60)),
    "ambiguous, in the window: retried, asks first": (
        AMBIGUOUS, order(), None, RETRIES, Decision(RETRY, NOW + 4 + AGAIN, countdown=4)),
    "ambiguous, the retry would fall past the window: handed to the poller": (
        AMBIGUOUS, order(claimed=NOW - 3597), None, RETRIES, Decision(HAND_OVER, NOW + 4 + AGAIN)),
    "surely unsent, past the window: handed to the poller": (
        UNSENT_TRANSIENT, order(UNSENT, claimed=NOW - 4000), None, RETRIES, Decision(HAND_OVER, NOW + 4 + AGAIN)),
    "no claim time: the window counts from creation": (
        AMBIGUOUS, order(claimed=None, created=NOW - 4000), None, RETRIES, Decision(HAND_OVER, NOW + 4 + AGAIN)),
    "the record is gone: no retry": (AMBIGUOUS, None, None, RETRIES, Decision(HAND_OVER, NOW + 4 + AGAIN)),
}


@pytest.mark.parametrize("outcome, record, retry_after, retries, expected", ATTEMPTS.values(), ids=ATTEMPTS.keys())
def test_after_an_attempt(outcome, record, retry_after, retries, expected):
    assert delivery.after_attempt(POLICY, outcome, record, NOW, retries=retries, jitter=top,
                                  retry_after=retry_after) == expected


def test_acceptance_is_first_polled_one_interval_after_it_goes_out():
    assert delivery.accepted(POLICY, NOW) == Decision(ACCEPT, NOW + 15)
    assert delivery.accepted(POLICY, NOW, scheduled_at=NOW + 86400) == Decision(ACCEPT, NOW + 86400 + 15)


def test_backoff_has_full_jitter_under_the_step():
    draws = [delivery.backoff(3, 60, random.Random(seed).uniform) for seed in range(50)]
    assert all(0 <= d <= 8 for d in draws) and len(set(draws)) == 50


LIMIT = replace(POLICY, doubt_limit=100.0)

RESOLVES = {  # the order (as the claim found it), verdict, ask_after, early, policy -> decision
    "accepted: recorded, never sent again": (order(), ACCEPTED, 0.0, False, POLICY, Decision(ACCEPT, NOW + 15)),
    "absent: the doubt ends and the task sends": (order(), ABSENT, 0.0, False, POLICY, Decision(SEND, NOW)),
    "absent but in_doubt: failed, never sent": (order(IN_DOUBT), ABSENT, 0.0, False, POLICY, Decision(FAIL, NOW)),
    "unclear and in_doubt: reported as it is": (order(IN_DOUBT), UNCLEAR, 0.0, False, POLICY, Decision(REPORT, NOW)),
    "unclear: retried after the backoff": (
        order(), UNCLEAR, 0.0, False, POLICY, Decision(RETRY, NOW + 4 + AGAIN, countdown=4)),
    "unclear before the window is readable: retried once it is": (
        order(), UNCLEAR, NOW + 50, True, POLICY, Decision(RETRY, NOW + 50 + AGAIN, countdown=50)),
    "unclear, the retry would fall past the window: handed to the poller": (
        order(claimed=NOW - 3597), UNCLEAR, 0.0, False, POLICY, Decision(HAND_OVER, NOW + 4 + AGAIN)),
    "unclear past the doubt limit: in_doubt, asked at the slowest pace": (
        order(doubt_since=NOW - 101), UNCLEAR, 0.0, False, LIMIT,
        Decision(RETRY, NOW + SLOWEST, countdown=4, in_doubt=True)),
    "unclear past the limit, but no read could have settled it: not yet": (
        order(doubt_since=NOW - 101), UNCLEAR, NOW + 1, True, LIMIT, Decision(RETRY, NOW + 4 + AGAIN, countdown=4)),
}


@pytest.mark.parametrize("record, verdict, ask_after, early, policy, expected", RESOLVES.values(), ids=RESOLVES.keys())
def test_a_send_task_resolves_an_earlier_attempt(record, verdict, ask_after, early, policy, expected):
    assert delivery.resolve(policy, record, verdict, NOW, retries=RETRIES, jitter=top, ask_after=ask_after,
                            early=early) == expected


NO_LOCK = -2  # PTTL of a missing key
SETTLES = {  # the order, the send lock's PTTL -> decision
    "an attempt holds the lock: looked at after it and the grace": (
        order(), 2000, Decision(WAIT, NOW + 2 + POLICY.doubt_grace + 0.1)),
    "a lock without expiry: looked at after the grace": (order(), -1, Decision(WAIT, NOW + POLICY.doubt_grace + 0.1)),
    "sending, in the window: the send task is published again": (order(), NO_LOCK, Decision(REPUBLISH, NOW + AGAIN)),
    "unsent, in the window: the send task is published again": (
        order(UNSENT), NO_LOCK, Decision(REPUBLISH, NOW + AGAIN)),
    "in_doubt, in the window: never republished, settled on evidence": (order(IN_DOUBT), NO_LOCK, Decision(ASK, NOW)),
    "no request recorded: settled on evidence": (order(request=None), NO_LOCK, Decision(ASK, NOW)),
    "unsent past the window, no attempt reached the provider: failed": (
        order(UNSENT, claimed=NOW - 4000), NO_LOCK, Decision(FAIL, NOW)),
    "unsent past the window, in doubt: settled on evidence": (
        order(UNSENT, claimed=NOW - 4000, doubt=True), NO_LOCK, Decision(ASK, NOW)),
    "sending past the window: settled on evidence": (order(claimed=NOW - 4000), NO_LOCK, Decision(ASK, NOW)),
}


@pytest.mark.parametrize("record, lock_ms, expected", SETTLES.values(), ids=SETTLES.keys())
def test_the_poller_finds_an_unsettled_send(record, lock_ms, expected):
    assert delivery.settle(POLICY, record, NOW, lock_ms=lock_ms) == expected


EVIDENCE = {  # the order, verdict, ask_after, early, policy -> decision
    "accepted: followed by polls from now": (order(), ACCEPTED, 0.0, False, POLICY, Decision(ACCEPT, NOW)),
    "absent: failed, nothing billed": (order(), ABSENT, 0.0, False, POLICY, Decision(FAIL, NOW)),
    "unclear: asked again at the order's poll interval": (
        order(polls=2), UNCLEAR, 0.0, False, POLICY, Decision(ASK, NOW + 60)),
    "unclear, polled past the last interval: the last one": (
        order(polls=99), UNCLEAR, 0.0, False, POLICY, Decision(ASK, NOW + SLOWEST)),
    "unclear before the window is readable: asked once it is": (
        order(), UNCLEAR, NOW + 50, True, POLICY, Decision(ASK, NOW + 50)),
    "unclear past the doubt limit: in_doubt, the slowest pace": (
        order(doubt_since=NOW - 101), UNCLEAR, 0.0, False, LIMIT, Decision(ASK, NOW + SLOWEST, in_doubt=True)),
    "unclear past the limit while another worker sweeps: not yet": (
        order(doubt_since=NOW - 101), UNCLEAR, NOW + 1, True, LIMIT, Decision(ASK, NOW + 15)),
    "unclear and already in_doubt: the slowest pace": (
        order(IN_DOUBT), UNCLEAR, 0.0, False, POLICY, Decision(ASK, NOW + SLOWEST, in_doubt=True)),
}


@pytest.mark.parametrize("record, verdict, ask_after, early, policy, expected", EVIDENCE.values(), ids=EVIDENCE.keys())
def test_the_poller_settles_on_evidence(record, verdict, ask_after, early, policy, expected):
    assert delivery.after_evidence(policy, record, verdict, NOW, ask_after=ask_after, early=early) == expected


def test_only_evidence_of_absence_sends_and_every_decision_names_a_look():
    """The exactly-once rule over every combination: a send task sends again only on
    ABSENT for an order not in_doubt, the poller never sends, and every decision names
    when the order is looked at next."""
    decisions, by_poller = [], []
    for state in (SENDING, UNSENT, IN_DOUBT):
        for claimed in (NOW - 10, NOW - 4000):
            record = order(state, claimed=claimed)
            for verdict in (ACCEPTED, ABSENT, UNCLEAR):
                d = delivery.resolve(POLICY, record, verdict, NOW, retries=RETRIES, jitter=top)
                assert (d.action == SEND) == (verdict == ABSENT and state != IN_DOUBT), (state, verdict)
                decisions.append(d)
                by_poller.append(delivery.after_evidence(POLICY, record, verdict, NOW))
            for outcome in (REJECTED, UNSENT_TRANSIENT, AMBIGUOUS):
                decisions.append(delivery.after_attempt(POLICY, outcome, record, NOW, retries=RETRIES, jitter=top))
            by_poller += [delivery.settle(POLICY, record, NOW, lock_ms=ms) for ms in (NO_LOCK, -1, 500)]
    assert all(d.action != SEND for d in by_poller)
    assert all(d.look_at >= NOW for d in decisions + by_poller)
