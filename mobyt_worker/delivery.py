"""The delivery policy (SPEC §4): what becomes of an order after an attempt, after
evidence, and when the poller finds it unsettled. Pure: it is given the order, the
outcome, the settings and the clock, and returns a :class:`Decision`; the tasks do the
store writes and the retries it names. No Celery, Redis or HTTP here, so every row of the
decision table (docs/reliability.md) is a unit test (tests/test_delivery.py).

The exactly-once rule it keeps: an order that may have reached the provider is sent again
only on evidence of its absence (:data:`SEND`), never past ``in_doubt``; and every
decision that does not end the order names when the poller looks at it again."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Callable, Protocol

from .states import IN_DOUBT, UNSENT

# What an attempt (SENDSMS) came to.
REJECTED = "rejected"  # a KO or a 4xx: refused, nothing billed
UNSENT_TRANSIENT = "unsent"  # surely not sent (connection refused, 408/425/429, NotReplicated)
AMBIGUOUS = "ambiguous"  # may have reached the provider (timeout, 5xx, garbage)

# What the evidence (doubt.gather) says.
ACCEPTED, ABSENT, UNCLEAR = "accepted", "absent", "unclear"

# What to do next.
ACCEPT = "accept"  # record the acceptance; the first status poll is at look_at
FAIL = "fail"  # failed, nothing billed
RETRY = "retry"  # the task runs again in ``countdown`` seconds
HAND_OVER = "hand_over"  # no retry: the order waits in the due set for the poller
SEND = "send"  # the provider never got it: end the doubt and send now
ASK = "ask"  # evidence is needed (the poller reads it now), or is asked for again at look_at
REPUBLISH = "republish"  # publish the send task again; it settles any doubt first
WAIT = "wait"  # an attempt is in flight: look again once its lock is over
REPORT = "report"  # in_doubt and nothing settled it: report the state, write nothing

#: A jitter source: a number between its two bounds (``random.uniform``, ``Random(0).uniform``).
Jitter = Callable[[float, float], float]


@dataclass(frozen=True)
class Policy:
    """The settings the policy reads (config.Settings has the same names)."""

    send_retry_max: float = 60.0
    send_retry_for: float = 3600.0
    call_deadline: float = 30.0
    doubt_grace: float = 30.0
    doubt_limit: float = 3600.0
    poll_intervals: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

    @classmethod
    def of(cls, settings: object) -> Policy:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @property
    def lock_seconds(self) -> float:
        """The send lock outlives one SENDSMS call (it ends by MOBYT_CALL_DEADLINE) and no
        more, so a SIGKILLed holder delays the redelivered task by seconds, not minutes."""
        return self.call_deadline + 5


class Order(Protocol):
    """What the policy reads of an order (store.orders.OrderRecord has it)."""

    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> str: ...
    @property
    def claimed_at(self) -> float | None: ...
    @property
    def doubt(self) -> bool: ...
    @property
    def doubt_since(self) -> float | None: ...
    @property
    def request(self) -> str | None: ...
    @property
    def polls(self) -> int: ...


@dataclass(frozen=True)
class Decision:
    """What to do next, and when the poller looks at the order if nothing settled it."""

    action: str
    look_at: float  # epoch, for the due set
    countdown: float | None = None  # seconds until the task's retry (RETRY only)
    in_doubt: bool = False  # mark the order in_doubt now (past MOBYT_DOUBT_LIMIT)


def backoff(retries: int, cap: float, jitter: Jitter, base: float = 1.0) -> float:
    """Exponential backoff with full jitter: uniform between 0 and the step (the AWS
    formula; Celery's own rounds to whole seconds, too coarse for sub-second caps)."""
    return jitter(0, min(cap, base * 2 ** retries))


def look_again_at(policy: Policy, now: float, countdown: float = 0.0) -> float:
    """When the poller should look at an order whose next attempt starts in ``countdown``
    seconds, if nothing settled it by then: that attempt's lock has run out and the grace
    for a request still queued at the provider is over."""
    return now + countdown + policy.lock_seconds + policy.doubt_grace


def in_retry_window(policy: Policy, order: Order, now: float, countdown: float = 0.0) -> bool:
    """Whether a send may be tried again ``countdown`` seconds from now: only within
    MOBYT_SEND_RETRY_FOR of its first claim (records written before ``claimed_at``
    existed count from their creation). Past it, the order stays where it is, in the due
    set, and the poller settles it on evidence (it never sends)."""
    first_claim = order.claimed_at or datetime.fromisoformat(order.created_at).timestamp()
    return now + countdown - first_claim <= policy.send_retry_for


def accepted(policy: Policy, now: float, scheduled_at: float | None = None) -> Decision:
    """The provider has the order: its first status poll is one poll interval after it is
    due to go out."""
    return Decision(ACCEPT, look_at=(scheduled_at or now) + policy.poll_intervals[0])


def after_attempt(policy: Policy, outcome: str, order: Order | None, now: float, *, retries: int,
                  jitter: Jitter, retry_after: float | None = None) -> Decision:
    """A send attempt failed (``outcome``: REJECTED, UNSENT_TRANSIENT or AMBIGUOUS).
    Refused: failed. Transient: retried with backoff (at least ``retry_after``) within the
    retry window, else handed to the poller; an ambiguous one stays in doubt, so the next
    try, or the poller, asks for evidence before anything is sent."""
    if outcome == REJECTED:
        return Decision(FAIL, look_at=now)
    countdown = max(backoff(retries, policy.send_retry_max, jitter), retry_after or 0.0)
    look_at = look_again_at(policy, now, countdown)
    if order is None or not in_retry_window(policy, order, now, countdown):
        return Decision(HAND_OVER, look_at=look_at)
    return Decision(RETRY, look_at=look_at, countdown=countdown)


def resolve(policy: Policy, order: Order, verdict: str, now: float, *, retries: int, jitter: Jitter,
            ask_after: float = 0.0, early: bool = False) -> Decision:
    """A send task found an earlier attempt that may have reached the provider, and asked
    (doubt.gather). Accepted: recorded. Absent: sent now, unless the order is in_doubt (then
    failed: never sent again automatically). Unclear: asked again after the backoff or
    ``ask_after``, whichever is later, by the task within the retry window, else by the
    poller; an in_doubt order is left as it is."""
    if verdict == ACCEPTED:
        return accepted(policy, now)
    if verdict == ABSENT:
        return Decision(FAIL if order.state == IN_DOUBT else SEND, look_at=now)
    if order.state == IN_DOUBT:
        return Decision(REPORT, look_at=now)
    countdown = max(backoff(retries, policy.send_retry_max, jitter), ask_after - now)
    unclear = still_in_doubt(policy, order, now, look_again_at(policy, now, countdown), early)
    if not in_retry_window(policy, order, now, countdown):
        return Decision(HAND_OVER, look_at=unclear.look_at, in_doubt=unclear.in_doubt)
    return Decision(RETRY, look_at=unclear.look_at, countdown=countdown, in_doubt=unclear.in_doubt)


def settle(policy: Policy, order: Order, now: float, lock_ms: int) -> Decision:
    """The poller found an unsettled send (``lock_ms``: the send lock's PTTL). An attempt
    in flight is waited for. Within the retry window, the send task is published again:
    its retry may have gone with a killed worker, and the task settles any doubt first.
    An unsent order no attempt may have reached fails (nothing billed). Anything else is
    settled on evidence (ASK, then :func:`after_evidence`). The poller never sends."""
    if lock_ms > 0 or lock_ms == -1:
        return Decision(WAIT, look_at=now + max(lock_ms, 0) / 1000 + policy.doubt_grace + 0.1)
    if order.state != IN_DOUBT and order.request and in_retry_window(policy, order, now):
        return Decision(REPUBLISH, look_at=look_again_at(policy, now))  # written before the publish
    if not order.doubt and order.state == UNSENT:
        return Decision(FAIL, look_at=now)
    return Decision(ASK, look_at=now)


def after_evidence(policy: Policy, order: Order, verdict: str, now: float, *, ask_after: float = 0.0,
                   early: bool = False) -> Decision:
    """The poller's evidence: accepted (followed by polls at once), absent (failed,
    nothing billed), or unclear: asked again at the order's next poll interval."""
    if verdict == ACCEPTED:
        return Decision(ACCEPT, look_at=now)
    if verdict == ABSENT:
        return Decision(FAIL, look_at=now)
    pause = policy.poll_intervals[min(order.polls, len(policy.poll_intervals) - 1)]
    return still_in_doubt(policy, order, now, max(now + pause, ask_after), early)


def still_in_doubt(policy: Policy, order: Order, now: float, next_check: float, early: bool) -> Decision:
    """Unclear evidence: look again at ``next_check``; past MOBYT_DOUBT_LIMIT the order is
    ``in_doubt`` and is then checked at the slowest pace. Asked before its window was
    readable, or while another worker reads SMSHISTORY for it (``early``), no read of its
    own could have settled it: not yet."""
    since = order.doubt_since or now
    if order.state == IN_DOUBT or (now - since > policy.doubt_limit and not early):
        return Decision(ASK, look_at=max(next_check, now + policy.poll_intervals[-1]), in_doubt=True)
    return Decision(ASK, look_at=next_check)
