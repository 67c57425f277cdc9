"""The public contract of the workers: the queue, the task names, their arguments and
results. Workers, beat, producers, the CLI, the demo and the HTTP API take the names from
here, and a service that enqueues by name uses the same strings (docs/reference.md, "Tasks").
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, TypedDict

#: Every task of ours is consumed from this queue.
QUEUE = "mobyt"

SEND_SMS = "mobyt.send_sms"
POLL_STATUS = "mobyt.poll_status"
CANCEL = "mobyt.cancel"
SMS_HISTORY = "mobyt.sms_history"
INBOX_HISTORY = "mobyt.inbox_history"
#: A number sent STOP: withdraw it from the orders scheduled for it (the inbox enqueues it).
APPLY_OPTOUT = "mobyt.apply_optout"
#: Beat jobs (they may also be called by name, e.g. to check credits at once).
POLL_DUE = "mobyt.poll_due"
POLL_INBOX = "mobyt.poll_inbox"
RECONCILE_INBOX = "mobyt.reconcile_inbox"
CHECK_CREDITS = "mobyt.check_credits"
REPLAY_INTENTS = "mobyt.replay_intents"
REPLAY_OPTOUTS = "mobyt.replay_optouts"

#: The provider's order id: 1 to 32 ASCII letters or digits. It truncates longer ids
#: without a word, which would make the order untrackable, so everything refuses them
#: (sms.py, the API's schema, the simulator).
ORDER_ID_PATTERN = "[A-Za-z0-9]{1,32}"
_ORDER_ID = re.compile(ORDER_ID_PATTERN)


def is_order_id(value: object) -> bool:
    return isinstance(value, str) and _ORDER_ID.fullmatch(value) is not None


class SendSmsArgs(TypedDict, total=False):
    """Keyword arguments of ``mobyt.send_sms`` (``recipients`` and ``message`` required)."""

    recipients: list[str] | str
    message: str
    message_type: str | None
    sender: str | None
    scheduled_at: str | None
    order_id: str | None
    return_credits: bool
    batch_id: str | None
    replaces: str | None  # set by mobyt.apply_optout: opted-out recipients are dropped, not refused


class SendResult(TypedDict):
    """Result of ``mobyt.send_sms``: status ``accepted``, ``scheduled``, ``cancelled`` or ``in_doubt``."""

    order_id: str
    recipients: list[str]
    credits: int
    status: str


class BatchResult(TypedDict):
    """Result of ``mobyt.send_sms`` with more recipients than MOBYT_BULK_CHUNK_SIZE."""

    order_id: str
    batch_id: str
    orders: list[str]
    recipients: int
    credits: int
    status: str


class InboxResult(TypedDict, total=False):
    """Result of ``mobyt.poll_inbox`` (``mobyt.reconcile_inbox`` adds ``from_id`` and ``reconciled``)."""

    received: int
    new: int
    stops: int
    max_id: int
    from_id: int
    reconciled: int


#: ``mobyt.poll_status`` and ``mobyt.cancel`` return the order record (store.OrderRecord as a dict).
OrderRecordDict = dict[str, Any]


def order_id_for_task(task_id: str) -> str:
    """The order id ``mobyt.send_sms`` derives when none is given: a provider-valid id
    (≤32 alphanumerics) that every redelivery of the task shares."""
    plain = task_id.replace("-", "")
    if is_order_id(plain):
        return plain
    return hashlib.sha256(task_id.encode()).hexdigest()[:32]


def chunk_order_id(batch_id: str, index: int) -> str:
    """Deterministic order id of chunk ``index`` of a bulk send."""
    return hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


def replacement_order_id(order_id: str) -> str:
    """The order id of the send that replaces ``order_id`` for its recipients still wanted
    after one of them sent STOP: every run of ``mobyt.apply_optout`` makes the same one,
    so a retry or a redelivery never sends it twice (an order is replaced at most once)."""
    return hashlib.sha256(f"{order_id}:replaced".encode()).hexdigest()[:32]
