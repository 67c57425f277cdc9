"""A STOP reaches the orders scheduled before it: the policy of ``mobyt.apply_optout``.

The claim of every scheduled send indexes it under each recipient (``P:scheduled:{number}``)
and refuses a number that already sent STOP, in one script: once a STOP is stored, the
orders that may still reach that number are exactly those in its index. For each:

* being sent (``sending``, or ``unsent`` after an attempt that may have reached the
  provider): wait, the send settles it;
* ``scheduled`` or ``in_doubt``: REMOVE_DELAYED, withdrawn only on evidence, as
  ``mobyt.cancel`` (OK, or a refusal after which the provider shows the order gone:
  ``doubt.gone``);
  anything else waits for the next run;
* ``unsent`` with no attempt in doubt: nothing reached the provider and no claim will ever
  send it again (the claim refuses the number): withdrawn without asking the provider;
* anything else, or its scheduled time has passed: nothing to do.

A withdrawn order whose other recipients did not opt out is replaced by a send to them at
the same time, under :func:`~mobyt_worker.contract.replacement_order_id`. Its intent is
written before the old record says ``cancelled`` with ``replaced_by``; it carries
``replaces``, so its claim drops a recipient that sent STOP meanwhile instead of refusing
the whole send. A crash at any step leaves the old order in the index (the next run
finds it) or the new one as an intent (``mobyt.replay_intents`` publishes it): the work
is finished later, and nothing reaches the number in between.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from . import doubt
from .contract import replacement_order_id
from .errors import ProviderRejected, ProviderUnavailable
from .sms import mask_number
from .states import IN_DOUBT, QUEUED, SCHEDULED, SENDING, UNSENT
from .store.orders import OrderRecord

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

#: Outcomes per order.
WAIT = "wait"  # being sent, or the provider gave no evidence yet: a later run looks again
CANCELLED = "cancelled"  # withdrawn; no other recipient wanted it
REPLACED = "replaced"  # withdrawn, and sent again to its other recipients under a new id
TOO_LATE = "too_late"  # its scheduled time passed first
NOTHING = "nothing"  # it cannot reach the number (sent, cancelled, failed, gone)

#: States in which an order may still reach the provider's scheduled queue.
_OPEN = frozenset({SENDING, UNSENT, SCHEDULED, IN_DOUBT})
#: A replacement due sooner than this is sent at once: its time would pass before its claim.
SCHEDULE_LEAD = 60.0

#: Publishes a ``mobyt.send_sms``: (task id, kwargs).
Publish = Callable[[str, dict[str, Any]], None]


def apply(rt: Runtime, number: str, publish: Publish) -> dict[str, str]:
    """Withdraw ``number`` (E.164) from every order still scheduled for it: order id -> outcome."""
    return {order_id: withdraw(rt, order_id, number, publish) for order_id in rt.store.scheduled_for(number)}


def withdraw(rt: Runtime, order_id: str, number: str, publish: Publish) -> str:
    store = rt.store
    record = store.get_order(order_id, with_history=False)
    request = _request(record)
    recipients = list(request.get("recipients") or (record.recipients if record else ()))
    if record is None or number not in recipients or record.state not in _OPEN:
        store.unindex(number, order_id)
        return NOTHING
    if _passed(record):
        store.unindex(number, order_id)
        log.warning("order %s reached its scheduled time %s before the STOP from %s withdrew it", order_id,
                    record.scheduled_at, mask_number(number))
        return TOO_LATE
    if record.state == SENDING or (record.state == UNSENT and record.doubt):
        return WAIT
    if record.state in (SCHEDULED, IN_DOUBT):
        try:
            remove_delayed(rt, record)
        except (ProviderRejected, ProviderUnavailable) as exc:
            log.warning("order %s: not withdrawn yet after a STOP (%s); asked again later", order_id, exc)
            return WAIT
    return _replace(rt, record, request, recipients, publish)


def remove_delayed(rt: Runtime, record: OrderRecord) -> None:
    """REMOVE_DELAYED, on evidence only. Returns when the provider answered OK, or refused
    and then shows the order gone (``doubt.gone``: REMOVE_DELAYED is retried on transient
    errors, so an earlier try may have been applied and its answer lost); raises the
    refusal otherwise, and a transient failure as it came."""
    try:
        rt.client.remove_delayed(record.order_id)
    except ProviderRejected as refused:
        if not doubt.gone(rt.client, record, rt.settings.clock_margin):
            raise
        log.info("order %s: REMOVE_DELAYED refused (%s) but the order is gone", record.order_id, refused.code)


def _replace(rt: Runtime, record: OrderRecord, request: dict[str, Any], recipients: list[str],
             publish: Publish) -> str:
    """The order is withdrawn: its other recipients get the same send under a new id."""
    stopped = rt.optouts.opted_out(recipients)
    others = [r for r in recipients if r not in stopped]
    new_id = None
    if others and request.get("message"):
        new_id = replacement_order_id(record.order_id)
        kwargs = {**request, "recipients": others, "order_id": new_id, "replaces": record.order_id,
                  "scheduled_at": _still_ahead(request.get("scheduled_at"))}
        task_id = f"replaces-{record.order_id}"
        if rt.intents.record(new_id, task_id, kwargs) == QUEUED:
            publish(task_id, kwargs)
    elif others:
        log.error("order %s: withdrawn after a STOP, but its record holds no request to send again to its "
                  "%d other recipient(s)", record.order_id, len(others))
    rt.store.mark_cancelled(record.order_id, recipients=recipients, replaced_by=new_id, reason="optout")
    log.info("order %s withdrawn after a STOP%s", record.order_id, f", replaced by {new_id}" if new_id else "")
    return REPLACED if new_id else CANCELLED


def _request(record: OrderRecord | None) -> dict[str, Any]:
    try:
        return dict(json.loads(record.request)) if record is not None and record.request else {}
    except ValueError:
        return {}


def _passed(record: OrderRecord) -> bool:
    if not record.scheduled_at:
        return True
    return datetime.fromisoformat(record.scheduled_at).timestamp() <= time.time()


def _still_ahead(scheduled_at: str | None) -> str | None:
    """The replacement keeps the scheduled time unless it is too close to be claimed in time."""
    if scheduled_at and datetime.fromisoformat(scheduled_at).timestamp() - time.time() > SCHEDULE_LEAD:
        return scheduled_at
    return None
