"""The order's life: its states and the one table of the events that move it.

Every writer of an order's ``state`` asks :data:`TRANSITIONS`: the store's Python methods
through one guarded path (``OrderStore._set_if_state``), the Lua scripts through the same
table, generated into each of them as it is registered (scripts.py). An event the table
does not allow from the state an order is in changes nothing. ``None`` stands for no
record: where an order's life starts (an intent, a claim) and where an intent may end.
Pure: no Redis, no Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Mapping


class OrderState(str, Enum):
    """An order's state: the values are stored in Redis and public in events."""

    QUEUED = "queued"  # intent written by a producer before publishing; no attempt yet
    SENDING = "sending"  # claimed; an attempt may be in flight (ambiguous after a crash)
    UNSENT = "unsent"  # the last attempt surely never reached the provider
    SCHEDULED = "scheduled"  # accepted for a later time
    ACCEPTED = "accepted"  # accepted; statuses are being followed
    COMPLETED = "completed"  # every recipient has a final status
    EXPIRED = "expired"  # the provider no longer knows the order (30 days)
    FAILED = "failed"  # refused by the provider, invalid, or shown never to have reached it: never billed
    CANCELLED = "cancelled"  # withdrawn before it was sent
    IN_DOUBT = "in_doubt"  # an attempt may have reached the provider and no read settled it in time

    def __str__(self) -> str:
        return self.value


QUEUED, SENDING, UNSENT = OrderState.QUEUED, OrderState.SENDING, OrderState.UNSENT
SCHEDULED, ACCEPTED, COMPLETED = OrderState.SCHEDULED, OrderState.ACCEPTED, OrderState.COMPLETED
EXPIRED, FAILED, CANCELLED, IN_DOUBT = OrderState.EXPIRED, OrderState.FAILED, OrderState.CANCELLED, OrderState.IN_DOUBT

#: Order states, in the order an order moves through them.
STATES = tuple(OrderState)
#: Claimed and not final: the order may have reached, or has reached, the provider.
OPEN_STATES = frozenset({SENDING, UNSENT, SCHEDULED, ACCEPTED, IN_DOUBT})
#: States of an order whose send is not settled: the due-set poller resolves them.
UNSETTLED = frozenset({SENDING, UNSENT, IN_DOUBT})


class Event(str, Enum):
    """What moves an order; the name each writer gives the table (in Python and in Lua)."""

    INTENT = "intent"
    BATCHED = "batched"
    CLAIM = "claim"
    ACCEPT = "accept"
    SCHEDULE = "schedule"
    SENT = "sent"
    COMPLETE = "complete"
    UNSENT = "unsent"
    ABSENT = "absent"
    RESEND = "resend"
    FAIL = "fail"
    DOUBT = "doubt"
    EXPIRE = "expire"
    CANCEL = "cancel"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Transition:
    """One row: the event moves an order from any of ``sources`` to ``target``."""

    sources: frozenset[OrderState | None]
    target: OrderState | None
    emits: str | None  # the ``state`` of the ``type=order`` event it adds to ``P:events``
    writer: str  # the script or store method that makes the move
    why: str


def _row(sources: Iterable[OrderState | None], target: OrderState | None, emits: str | None, writer: str,
         why: str) -> Transition:
    return Transition(frozenset(sources), target, emits, writer, why)


#: The order's life, one row per event.
TRANSITIONS: Mapping[Event, Transition] = {
    Event.INTENT: _row({None, QUEUED}, QUEUED, None, "record_intent.lua",
                       "a producer writes the intent before publishing (again, while no worker took it)"),
    Event.BATCHED: _row({QUEUED}, None, None, "drop_intent.lua",
                        "a bulk request's intent, once its chunks are recorded: the record goes"),
    Event.CLAIM: _row({None, QUEUED, UNSENT}, SENDING, None, "claim_send.lua",
                      "a worker takes the send (from unsent only when no attempt is in doubt)"),
    Event.ACCEPT: _row({SENDING, UNSENT, IN_DOUBT}, ACCEPTED, "accepted", "accept.lua",
                       "the provider accepted it: its answer, or evidence of an earlier attempt"),
    Event.SCHEDULE: _row({SENDING, UNSENT, IN_DOUBT}, SCHEDULED, "scheduled", "accept.lua",
                         "the provider accepted it for a later time"),
    Event.SENT: _row({SCHEDULED}, ACCEPTED, None, "apply_statuses.lua",
                     "a status other than SCHEDULED: its time came"),
    Event.COMPLETE: _row(OPEN_STATES, COMPLETED, "completed", "apply_statuses.lua",
                         "every recipient has a final status (a poll or a push)"),
    Event.UNSENT: _row({SENDING}, UNSENT, None, "mark_unsent",
                       "the attempt surely never reached the provider: the doubt its claim raised ends"),
    Event.ABSENT: _row({SENDING, UNSENT}, UNSENT, None, "end_doubt",
                       "clean evidence that no attempt reached the provider: the doubt ends, the task sends"),
    Event.RESEND: _row(UNSETTLED, UNSENT, "resend", "allow_resend",
                       "an operator lifts the doubt by decision (a duplicate is possible)"),
    Event.FAIL: _row({QUEUED, SENDING, UNSENT, IN_DOUBT}, FAILED, "failed", "mark_failed",
                     "refused by the provider, never valid, or shown never to have reached it"),
    Event.DOUBT: _row({SENDING, UNSENT}, IN_DOUBT, "in_doubt", "mark_in_doubt",
                      "still in doubt past MOBYT_DOUBT_LIMIT: never sent again automatically"),
    Event.EXPIRE: _row({SCHEDULED, ACCEPTED}, EXPIRED, "expired", "expire_order",
                       "older than MOBYT_ORDER_TTL: the provider no longer knows it"),
    Event.CANCEL: _row({SCHEDULED, ACCEPTED, UNSENT, IN_DOUBT}, CANCELLED, "cancelled", "mark_cancelled",
                       "REMOVE_DELAYED removed it (its answer wins over an acceptance recorded meanwhile), "
                       "or a STOP came before any attempt could reach the provider"),
}

#: States no event leaves: the order's life is over (its record expires with its TTL).
FINAL_STATES = frozenset(s for s in OrderState if not any(s in t.sources for t in TRANSITIONS.values()))


def allowed(source: str | None, target: str | None) -> bool:
    """Whether some event moves an order from ``source`` to ``target`` (``None``: no record)."""
    return any(source in t.sources and t.target == target for t in TRANSITIONS.values())


def sources(event: Event, only: Iterable[str] | None = None) -> frozenset[OrderState | None]:
    """The states ``event`` moves an order from, narrowed to ``only`` if given; a state
    in ``only`` that the table does not allow is a caller's mistake (ValueError)."""
    table = TRANSITIONS[event].sources
    if only is None:
        return table
    wanted = frozenset(OrderState(s) for s in only)
    if not wanted <= table:
        raise ValueError(f"{event} never moves an order from {', '.join(sorted(wanted - table))}")
    return wanted


def is_open(state: str | None) -> bool:
    return state in OPEN_STATES


def is_unsettled(state: str | None) -> bool:
    return state in UNSETTLED


def is_final(state: str | None) -> bool:
    return state in FINAL_STATES
