"""Celery tasks with stable public names: validate, call the provider, record in Redis.

Exactly-once sending (SPEC §4) rests on three facts: the ``order_id`` is fixed before
the first attempt (given by the caller, or derived from the Celery task id, which a
redelivery or a retry keeps); the order record in Redis says whether an attempt may
have reached the provider; and an attempt that may have reached it is resolved by
asking the provider (doubt.py), never by sending again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import re
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any, cast

from . import contract, delivery, doubt, sms, withdraw
from .contract import QUEUE, chunk_order_id, is_order_id, order_id_for_task
from .errors import (
    InvalidInput,
    NotReplicated,
    OrderNotCancellable,
    OrderNotFound,
    ProviderRejected,
    ProviderUnavailable,
    RecipientOptedOut,
)
from .runtime import MobytTask, Runtime
from .states import CANCELLED, FAILED, IN_DOUBT, OPEN_STATES, QUEUED, SCHEDULED, SENDING, UNSENT, UNSETTLED, OrderState
from .store.orders import OrderRecord
from .worker import app

log = logging.getLogger(__name__)

#: Longest wait for a rate-limit slot inside a task; a later slot is waited for in the queue.
RATE_WAIT_IN_TASK = 3.0


def _policy(rt: Runtime) -> delivery.Policy:
    return delivery.Policy.of(rt.settings)


# --- send --------------------------------------------------------------------------------


#: Expected outcomes: logged by the worker as one line, without a traceback.
EXPECTED = (InvalidInput, ProviderRejected, OrderNotFound, OrderNotCancellable)


@app.task(base=MobytTask, bind=True, name=contract.SEND_SMS, max_retries=None, throws=EXPECTED)
def send_sms(
    self: MobytTask,
    recipients: list[str] | str,
    message: str,
    message_type: str | None = None,
    sender: str | None = None,
    scheduled_at: str | None = None,
    order_id: str | None = None,
    return_credits: bool = False,
    batch_id: str | None = None,
    replaces: str | None = None,
) -> dict[str, Any]:
    rt = self.runtime
    s = rt.settings
    order_id = order_id or order_id_for_task(self.request.id)  # fixed before the first attempt, kept by every retry
    try:
        if replaces is not None:
            replaces = _field("replaces", sms.validate_order_id, replaces)
        request = sms.build_send_request(
            recipients=recipients, message=message,
            message_type=message_type or s.default_message_type,
            sender=sender if sender is not None else s.default_sender,
            scheduled_at=scheduled_at, order_id=order_id,
            return_credits=return_credits, country=s.country, tz=s.timezone, now=datetime.now(timezone.utc),
            non_gsm=s.non_gsm,
        )
        if len(request.recipients) > s.bulk_chunk_size:
            rt.optouts.check(request.recipients)  # STOP is honoured before any HTTP call
            return _split_bulk(self, request, batch_id=order_id)
        return _send_once(self, request, order_id, batch_id, replaces)  # its claim honours STOP
    except InvalidInput as exc:  # (and RecipientOptedOut): a replayed intent could never be valid either
        if is_order_id(order_id):
            rt.store.mark_failed(order_id, exc, allowed=(QUEUED,))
        raise


def _field(name: str, check: Any, value: Any) -> Any:
    """``check(value)``, its InvalidInput naming ``name``."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise InvalidInput(name, exc.message) from None


def _split_bulk(task: MobytTask, request: sms.SendRequest, batch_id: str) -> dict[str, Any]:
    """One order per chunk, all tied to ``batch_id``; chunk ids are deterministic, so a
    redelivered bulk task enqueues the same chunks and each is still sent once."""
    rt = task.runtime
    size = rt.settings.bulk_chunk_size
    chunks = [request.recipients[i:i + size] for i in range(0, len(request.recipients), size)]
    order_ids = [chunk_order_id(batch_id, i) for i in range(len(chunks))]
    sends = [
        (oid, f"{batch_id}-{oid}", replace(request, recipients=tuple(chunk), order_id=oid).task_kwargs(batch_id))
        for oid, chunk in zip(order_ids, chunks)
    ]
    # Each chunk is an intent before its message exists, as a producer's send is: a chunk
    # message the broker loses is replayed. Only then does the batch stop being an intent.
    for oid, task_id, kwargs in sends:
        rt.intents.record(oid, task_id, kwargs)
    rt.store.record_batch(batch_id, order_ids)
    for _, task_id, kwargs in sends:
        send_sms.apply_async(kwargs=kwargs, task_id=task_id, queue=QUEUE)
    return {"order_id": batch_id, "batch_id": batch_id, "orders": order_ids,
            "recipients": len(request.recipients), "credits": request.credits, "status": "batched"}


def _send_once(task: MobytTask, request: sms.SendRequest, order_id: str, batch_id: str | None,
               replaces: str | None = None) -> dict[str, Any]:
    rt = task.runtime
    store, s = rt.store, rt.settings
    if replaces:
        request = _without_opted_out(rt, request)
    if rt.send_limiter is not None:  # wait for a slot before taking the lock, not while holding it
        rt.optouts.check(request.recipients)  # (and spend no slot on a send STOP refuses)
        wait = rt.send_limiter.reserve(max_wait=min(RATE_WAIT_IN_TASK, s.task_time_limit))
        if wait > 0:  # the slot is further away than a task may sleep: queue again for it
            log.info("order %s: send rate limit, no slot in time: queued again in %.2fs", order_id, wait)
            raise task.retry(countdown=wait, max_retries=None)
    claim = functools.partial(_claim, task, order_id, batch_id, replaces)
    verdict, state, token, request = claim(request)
    if verdict == "busy":
        raise task.retry(countdown=delivery.backoff(task.request.retries, s.send_retry_max, random.uniform),
                         max_retries=None)
    if verdict == "done":
        return _send_result(rt, order_id, request, state)
    try:
        if verdict == "resolve":
            settled = _resolve_for_send(task, request, order_id, state, token)
            if settled is not None:
                return settled
            verdict, state, token, request = claim(request, token=token)  # absent: send
            if verdict != "send":
                return _send_result(rt, order_id, request, state)
        _require_replicated(task, order_id, token)
        result = _attempt(task, request, order_id, token)
        token = ""  # the acceptance released the lock in the same round trip
        return result
    finally:
        if token:
            store.release_send(order_id, token)


def _claim(task: MobytTask, order_id: str, batch_id: str | None, replaces: str | None, request: sms.SendRequest,
           token: str = "") -> tuple[str, str, str, sms.SendRequest]:
    """Claim the send (store.claim_send): (verdict, state, token, the request claimed). STOP is
    honoured before any HTTP call: the claim checks the opt-outs in its round trip, and
    refuses the order with RecipientOptedOut naming the (masked) numbers; a replacement
    (``replaces``) drops them instead and claims what is left."""
    rt = task.runtime
    for _ in range(len(request.recipients) + 1):  # again only if an opt-out changed meanwhile
        meta = {
            "message_type": request.message_type, "sender": request.sender, "batch_id": batch_id,
            "scheduled_at": request.scheduled_at.isoformat() if request.scheduled_at else None,
            "parts": request.length.parts, "credits": request.credits, "task_id": task.request.id,
            "recipient_count": len(request.recipients), "replaces": replaces,
            "request": json.dumps(request.task_kwargs(batch_id, replaces)),
        }
        policy = _policy(rt)
        verdict, state, token = rt.store.claim_send(
            order_id, meta, lock_seconds=policy.lock_seconds, due_at=delivery.look_again_at(policy, time.time()),
            recipients=request.recipients,
            token=token, scheduled_epoch=request.scheduled_at.timestamp() if request.scheduled_at else None)
        if verdict != "optout":
            return verdict, state, token, request
        if replaces:
            request = _without_opted_out(rt, request)
        else:
            rt.optouts.check(request.recipients)  # returns only if the opt-out was cleared meanwhile
    raise RecipientOptedOut("recipients", "opt-outs kept changing while the send was claimed")


def _without_opted_out(rt: Runtime, request: sms.SendRequest) -> sms.SendRequest:
    """The request without the recipients that sent STOP; RecipientOptedOut if none is left."""
    stopped = rt.optouts.opted_out(request.recipients)
    if len(stopped) == len(request.recipients):
        rt.optouts.check(request.recipients)
    if not stopped:
        return request
    return dataclasses.replace(request, recipients=tuple(r for r in request.recipients if r not in stopped))


def _require_replicated(task: MobytTask, order_id: str, token: str) -> None:
    """With MOBYT_REDIS_WAIT_REPLICAS, the claim must be on the replicas before the HTTP
    call: a claim a failover loses would let another worker send the order again. Too few
    acknowledgements end the attempt as surely unsent, retried with backoff."""
    rt = task.runtime
    store = rt.store
    try:
        rt.replicas.require(store.keys.order(order_id), "attempt_token", token)
    except NotReplicated as exc:
        decision = _after_failure(task, order_id, delivery.UNSENT_TRANSIENT)
        store.mark_unsent(order_id, exc, token)
        store.defer(order_id, decision.look_at)
        if decision.action != delivery.RETRY:
            raise exc
        log.warning("order %s: not sent, the claim is not on the replicas (%s); retry %d", order_id, exc,
                    task.request.retries + 1)
        raise task.retry(exc=exc, countdown=decision.countdown)


def _after_failure(task: MobytTask, order_id: str, outcome: str, retry_after: float | None = None) -> delivery.Decision:
    rt = task.runtime
    return delivery.after_attempt(_policy(rt), outcome, rt.store.get_order(order_id, with_history=False), time.time(),
                                  retries=task.request.retries, jitter=random.uniform, retry_after=retry_after)


def _resolve_for_send(task: MobytTask, request: sms.SendRequest, order_id: str, state: str,
                      token: str) -> dict[str, Any] | None:
    """An earlier attempt may have reached the provider: settle it on evidence. Returns the
    task's result, or None when SMSHISTORY shows the provider never got the order (the
    caller then sends); raises a retry while the evidence is unclear."""
    rt = task.runtime
    store = rt.store
    record = store.require_order(order_id)
    evidence = doubt.gather(rt.client, rt.sweeps, rt.settings, record)
    rt.metrics.inc("doubt_checks", outcome=evidence.verdict)
    as_claimed = replace(record, state=cast(OrderState, state))
    decision = delivery.resolve(_policy(rt), as_claimed, evidence.verdict, time.time(), retries=task.request.retries,
                                jitter=random.uniform, ask_after=evidence.ask_after, early=evidence.early)
    if decision.action == delivery.ACCEPT:
        log.info("order %s: an earlier attempt was accepted by the provider; not sent again", order_id)
        state = _record_acceptance(rt, request, order_id, credits=None)
        if evidence.rows:
            rt.record_statuses(order_id, evidence.rows, source="poll")
        return _send_result(rt, order_id, request, state)
    if decision.action == delivery.FAIL:  # in_doubt: never sent again automatically, even on evidence
        store.mark_failed(order_id, _absent_error(), allowed=(IN_DOUBT,))
        return _send_result(rt, order_id, request, FAILED)
    if decision.action == delivery.SEND:
        log.info("order %s: SMSHISTORY shows no earlier attempt; sending", order_id)
        return None if store.end_doubt(order_id, token) else _send_result(rt, order_id, request, record.state)
    if decision.action == delivery.REPORT:
        return _send_result(rt, order_id, request, IN_DOUBT)
    _still_in_doubt(rt, record, evidence, decision)
    if decision.action == delivery.HAND_OVER:  # past the retry window: the due-set poller keeps asking
        return _send_result(rt, order_id, request, store.require_order(order_id).state)
    log.warning("order %s: still in doubt (%s), asking again in %.1fs", order_id,
                evidence.error or evidence.why, decision.countdown)
    raise task.retry(countdown=decision.countdown)


def _absent_error() -> ProviderRejected:
    return ProviderRejected("the provider shows no such order after every attempt: nothing was billed")


def _still_in_doubt(rt: Runtime, record: OrderRecord, evidence: doubt.Evidence, decision: delivery.Decision) -> None:
    """Unclear evidence: look again at the decision's time; ``in_doubt`` past the doubt
    limit (an event, a WARNING, a metric)."""
    store = rt.store
    error = evidence.error or ProviderUnavailable(evidence.why or "no evidence yet")
    if decision.in_doubt and store.mark_in_doubt(record.order_id, error):
        rt.metrics.inc("orders_in_doubt")
        log.warning("order %s is in_doubt: an attempt may have reached the provider and no read settled it "
                    "in %.0fs; it will not be sent again automatically (mobyt resend --help)",
                    record.order_id, time.time() - (record.doubt_since or time.time()))
    store.note_error(record.order_id, error)
    store.defer(record.order_id, decision.look_at)


def _attempt(task: MobytTask, request: sms.SendRequest, order_id: str, lock_token: str) -> dict[str, Any]:
    rt = task.runtime
    store, s = rt.store, rt.settings
    try:
        receipt = rt.client.send_sms(request)
    except ProviderRejected as exc:  # a KO or a 4xx: the provider refused it, nothing billed
        store.mark_failed(order_id, exc)
        log.warning("order %s refused by the provider: %s", order_id, exc)
        raise
    except ProviderUnavailable as exc:
        outcome = delivery.AMBIGUOUS if exc.ambiguous else delivery.UNSENT_TRANSIENT
        decision = _after_failure(task, order_id, outcome, getattr(exc, "retry_after", None))
        if exc.ambiguous:  # stays in doubt: the next try, or the poller, asks for evidence first
            store.note_ambiguous(order_id, exc, decision.look_at)
        else:
            store.mark_unsent(order_id, exc, lock_token)
            store.defer(order_id, decision.look_at)
        if decision.action != delivery.RETRY:  # the poller settles it
            log.warning("order %s: transient failure (%s), no retry after %.0fs of trying", order_id,
                        type(exc).__name__, s.send_retry_for)
            raise exc
        log.warning("order %s: transient failure (%s), retry %d", order_id, type(exc).__name__,
                    task.request.retries + 1)
        raise task.retry(exc=exc, countdown=decision.countdown)
    credits = receipt.count if request.return_credits else None
    state = _record_acceptance(rt, request, order_id, credits=credits, lock_token=lock_token)
    return _send_result(rt, order_id, request, state, credits=credits)


def _record_acceptance(rt: Runtime, request: sms.SendRequest, order_id: str, credits: int | None, lock_token: str = "") -> str:
    scheduled = request.scheduled_at.timestamp() if request.scheduled_at else None
    first_poll = delivery.accepted(_policy(rt), time.time(), scheduled).look_at
    fields = {"credits": credits} if credits is not None else None
    return rt.store.mark_accepted(order_id, scheduled=request.scheduled_at is not None,
                                  recipients=request.recipients, first_poll_at=first_poll, fields=fields,
                                  release_token=lock_token or None)


def _send_result(rt: Runtime, order_id: str, request: sms.SendRequest, state: str, credits: int | None = None) -> dict[str, Any]:
    """The task's result; a redelivered task reports what the first run achieved."""
    if state == FAILED:
        record = rt.store.require_order(order_id)
        raise ProviderRejected(f"order {order_id} was refused earlier: {record.error or ''}", record.error_code or "")
    statuses: dict[str, str] = {SCHEDULED: "scheduled", CANCELLED: "cancelled", IN_DOUBT: IN_DOUBT,
                                SENDING: IN_DOUBT, UNSENT: IN_DOUBT}
    status = statuses.get(state, "accepted")
    return {"order_id": order_id, "recipients": list(request.recipients),
            "credits": credits if credits is not None else request.credits, "status": status}


# --- status ----------------------------------------------------------------------------


@app.task(base=MobytTask, bind=True, name=contract.POLL_DUE)
def poll_due(self: MobytTask) -> dict[str, int]:
    """Beat tick: claim the orders whose poll is due and enqueue one poll each."""
    rt = self.runtime
    s = rt.settings
    lease = max(60.0, 2 * s.call_deadline)
    ids = rt.store.claim_due(limit=s.poll_batch, lease=lease)
    for oid in ids:
        poll_status.apply_async(kwargs={"order_id": oid}, queue=QUEUE, expires=lease)
    return {"enqueued": len(ids)}


@app.task(base=MobytTask, bind=True, name=contract.POLL_STATUS, throws=EXPECTED)
def poll_status(self: MobytTask, order_id: str) -> dict[str, Any]:
    """One status check of one order; returns the order record."""
    rt = self.runtime
    store = rt.store
    record = store.get_order(order_id, with_history=False)
    if record is None:  # expired or deleted: nothing to follow, and nothing to claim again
        store.forget_due(order_id)
        log.info("order %s: due for a poll but its record is gone; dropped from the due set", order_id)
        return {"order_id": order_id, "state": "missing"}
    if record.state in UNSETTLED:
        _settle_unfinished_send(rt, record)
    elif record.state in OPEN_STATES:
        created = datetime.fromisoformat(record.created_at).timestamp()
        if record.scheduled_at:
            created = max(created, datetime.fromisoformat(record.scheduled_at).timestamp())
        if time.time() - created > rt.settings.order_ttl:
            store.expire_order(order_id)
        else:
            try:
                rows = rt.client.sms_status(order_id)
            except (ProviderUnavailable, ProviderRejected) as exc:
                store.note_error(order_id, exc)
                store.reschedule_poll(order_id, rt.settings.poll_intervals[min(record.polls, len(rt.settings.poll_intervals) - 1)])
                raise
            rt.record_statuses(order_id, rows, source="poll")
    return store.require_order(order_id).to_dict()


def _settle_unfinished_send(rt: Runtime, record: OrderRecord) -> None:
    """A send no task is finishing. Within MOBYT_SEND_RETRY_FOR of its first claim, its
    send task is published again: its retry may have gone with a killed worker, and the
    task settles any doubt on evidence before it sends. After that: accepted on evidence
    that the provider has it, failed (nothing billed) on evidence that it does not or that
    no attempt ever reached it, and otherwise still in doubt, asked again later. The poller
    itself never sends."""
    store, order_id, policy = rt.store, record.order_id, _policy(rt)
    decision = delivery.settle(policy, record, time.time(), lock_ms=rt.redis.pttl(store.keys.send_lock(order_id)))
    if decision.action == delivery.WAIT:  # an attempt is in flight: look after it
        store.defer(order_id, decision.look_at)
        return
    if decision.action == delivery.REPUBLISH:
        store.defer(order_id, decision.look_at)  # before publishing: a failed publish is looked at again
        send_sms.apply_async(kwargs=json.loads(cast(str, record.request)), task_id=record.task_id or f"send-{order_id}",
                             queue=QUEUE)
        rt.metrics.inc("sends_republished")
        log.warning("order %s: %s and no task is sending it; its send task is published again", order_id,
                    record.state)
        return
    if decision.action == delivery.FAIL:  # unsent, and no attempt may have reached the provider
        store.mark_failed(order_id, ProviderRejected("the send could not be completed; nothing was billed"))
        return
    evidence = doubt.gather(rt.client, rt.sweeps, rt.settings, record)
    rt.metrics.inc("doubt_checks", outcome=evidence.verdict)
    decision = delivery.after_evidence(policy, record, evidence.verdict, time.time(), ask_after=evidence.ask_after,
                                       early=evidence.early)
    if decision.action == delivery.ACCEPT:
        recipients = [r.recipient for r in evidence.rows] or _stored_recipients(record)
        store.mark_accepted(order_id, scheduled=False, recipients=recipients, first_poll_at=decision.look_at)
        if evidence.rows:
            rt.record_statuses(order_id, evidence.rows, source="poll")
        log.info("order %s: settled as accepted (was %s, %d attempts)", order_id, record.state, record.attempts)
    elif decision.action == delivery.FAIL:
        store.mark_failed(order_id, _absent_error(), allowed=UNSETTLED)
    else:
        rt.redis.hincrby(store.keys.order(order_id), "polls", 1)
        _still_in_doubt(rt, record, evidence, decision)


def _stored_recipients(record: OrderRecord) -> list[str]:
    try:
        return list(json.loads(record.request or "{}").get("recipients") or [])
    except ValueError:
        return []


# --- cancel and history ---------------------------------------------------------------------


@app.task(base=MobytTask, bind=True, name=contract.CANCEL, throws=EXPECTED)
def cancel(self: MobytTask, order_id: str) -> dict[str, Any]:
    """REMOVE_DELAYED for a scheduled order; refuses anything else with a clear error."""
    rt = self.runtime
    order_id = sms.validate_order_id(order_id)
    record = rt.store.require_order(order_id)
    if record.state == CANCELLED:
        return record.to_dict()
    if record.state != SCHEDULED:
        raise OrderNotCancellable(order_id, f"it is {record.state}, not scheduled")
    if record.scheduled_at and datetime.fromisoformat(record.scheduled_at) <= datetime.now(timezone.utc):
        raise OrderNotCancellable(order_id, f"its scheduled time {record.scheduled_at} has passed")
    withdraw.remove_delayed(rt, record)  # any other answer leaves it scheduled (and followed)
    rt.store.mark_cancelled(order_id, recipients=record.recipients)
    return rt.store.require_order(order_id).to_dict()


# --- opt-outs --------------------------------------------------------------------------------


@app.task(base=MobytTask, bind=True, name=contract.APPLY_OPTOUT, max_retries=None, throws=EXPECTED)
def apply_optout(self: MobytTask, number: str) -> dict[str, Any]:
    """``number`` sent STOP: withdraw it from every order scheduled for it before the STOP
    (withdraw.py), retried while one of them is being sent or the provider gave no evidence.
    Returns ``{"number" (masked), "orders": {order_id: outcome}}``."""
    rt = self.runtime
    number = _field("number", lambda n: sms.normalize_recipient(n, rt.settings.country), number)
    if number not in rt.optouts.opted_out([number]):  # cleared meanwhile: sends to it are allowed again
        rt.optouts.applied(number)
        return {"number": sms.mask_number(number), "orders": {}}
    outcomes = withdraw.apply(rt, number, publish=_publish_send)
    for outcome in outcomes.values():
        rt.metrics.inc("optout_orders", outcome=outcome)
    if withdraw.WAIT in outcomes.values():
        countdown = delivery.backoff(self.request.retries, rt.settings.poll_intervals[-1], random.uniform)
        rt.optouts.postpone(number, time.time() + countdown + rt.settings.replay_after)  # if the retry is lost
        raise self.retry(countdown=countdown)
    rt.optouts.applied(number)
    return {"number": sms.mask_number(number), "orders": outcomes}


def _publish_send(task_id: str, kwargs: dict[str, Any]) -> None:
    send_sms.apply_async(kwargs=kwargs, task_id=task_id, queue=QUEUE)


@app.task(base=MobytTask, bind=True, name=contract.REPLAY_OPTOUTS)
def replay_optouts(self: MobytTask) -> dict[str, int]:
    """Beat tick: publish ``mobyt.apply_optout`` again for every STOP no run finished
    applying in time (a lost message, a crash, a retry that went with a killed worker)."""
    rt = self.runtime
    numbers = rt.optouts.due(limit=rt.settings.poll_batch)
    for number in numbers:
        apply_optout.apply_async(kwargs={"number": number}, queue=QUEUE)
    return {"replayed": len(numbers)}


@app.task(base=MobytTask, bind=True, name=contract.SMS_HISTORY, throws=EXPECTED)
def sms_history(self: MobytTask, date_from: str, date_to: str) -> list[dict[str, Any]]:
    """SMSHISTORY between two ISO-8601 instants (with offsets), one request per day of the
    period. Over more than a day, the task's state is PROGRESS while it runs, with
    ``{"windows_done", "windows", "orders"}`` as its info."""
    start, end = parse_period(date_from, date_to)
    rows: list[Any] = []
    for done, windows, found in self.runtime.client.sms_history_windows(start, end):
        rows += found
        if windows > 1 and done < windows and self.request.id:
            self.update_state(state="PROGRESS", meta={"windows_done": done, "windows": windows, "orders": len(rows)})
    return [_jsonable(row) for row in rows]


def parse_period(date_from: str, date_to: str) -> tuple[datetime, datetime]:
    values = []
    for name, raw in (("date_from", date_from), ("date_to", date_to)):
        try:
            value = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(name, f"{raw!r} is not an ISO-8601 date") from None
        if value.tzinfo is None:
            raise InvalidInput(name, "needs a UTC offset, e.g. 2026-01-31T00:00:00+01:00")
        values.append(value)
    if values[0] > values[1]:
        raise InvalidInput("date_from", "is after date_to")
    return values[0], values[1]


def _jsonable(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(row).items()}


# --- inbox and credits (beat jobs; see inbox.py and credits.py) ------------------------------

#: Provider failures of a periodic job: logged as one warning line, the next run tries again.
PROVIDER_FAILURES = (ProviderUnavailable, ProviderRejected)


@app.task(base=MobytTask, bind=True, name=contract.POLL_INBOX, throws=PROVIDER_FAILURES)
def poll_inbox(self: MobytTask) -> dict[str, int]:
    """SRNEWMESSAGES; each message stored once. The read is destructive: when its answer
    may have been lost, reconcile at once rather than at the next scheduled run."""
    rt = self.runtime
    try:
        messages = rt.client.new_messages()
    except PROVIDER_FAILURES as exc:
        lost = isinstance(exc, ProviderUnavailable) and exc.ambiguous
        log.warning("poll_inbox failed: %s%s", exc, "; reconciling now" if lost else "")
        if lost:
            reconcile_inbox.apply_async(queue=QUEUE, expires=max(60.0, rt.settings.reconcile_interval))
        raise
    return rt.inbox.store_all(messages, source="poll").to_dict()


@app.task(base=MobytTask, bind=True, name=contract.RECONCILE_INBOX, throws=PROVIDER_FAILURES)
def reconcile_inbox(self: MobytTask) -> dict[str, int]:
    """SRHISTORYBYID from the reconciled cursor: stores what no poll or push stored."""
    rt = self.runtime
    try:
        result = rt.inbox.reconcile(rt.client.inbox_since)
    except PROVIDER_FAILURES as exc:
        log.warning("reconcile_inbox failed: %s", exc)
        raise
    if result["new"]:
        log.info("reconcile_inbox stored %d message(s) not stored by a poll or push", result["new"])
    return result


@app.task(base=MobytTask, bind=True, name=contract.INBOX_HISTORY, throws=(InvalidInput, *PROVIDER_FAILURES))
def inbox_history(self: MobytTask, date_from: str | None = None, date_to: str | None = None,
                  since_id: int | str | None = None) -> list[dict[str, Any]]:
    """Received SMS: ``since_id`` (SRHISTORYBYID, ids greater than it; 0 = all) or the
    period ``date_from``..``date_to`` (SRHISTORY, ISO-8601 with offsets). Read only."""
    client = self.runtime.client
    if since_id is not None:
        if date_from is not None or date_to is not None:
            raise InvalidInput("since_id", "give since_id, or date_from and date_to, not both")
        rows = client.inbox_since(_message_id(since_id))
    else:
        for name, value in (("date_from", date_from), ("date_to", date_to)):
            if value is None:
                raise InvalidInput(name, "is required (or give since_id)")
        rows = client.inbox_history(*parse_period(date_from, date_to))  # type: ignore[arg-type]
    return [_jsonable(row) for row in rows]


def _message_id(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value.strip()):
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidInput("since_id", "must be an integer >= 0")


@app.task(base=MobytTask, bind=True, name=contract.CHECK_CREDITS, throws=PROVIDER_FAILURES)
def check_credits(self: MobytTask) -> dict[str, Any]:
    """CREDITS: store the balance per type and nation; alert under the threshold."""
    rt = self.runtime
    try:
        return rt.credits.refresh(rt.client)
    except PROVIDER_FAILURES as exc:
        log.warning("check_credits failed: %s", exc)
        raise


# --- intents -------------------------------------------------------------------------------


@app.task(base=MobytTask, bind=True, name=contract.REPLAY_INTENTS)
def replay_intents(self: MobytTask) -> dict[str, int]:
    """Beat tick: publish again the sends written as intents that no worker has claimed
    (a message the broker lost). Same task id and kwargs: the claim sends each once."""
    rt = self.runtime
    due = rt.intents.due(limit=rt.settings.poll_batch)
    for intent in due:
        log.warning("order %s: still queued after %.0f s, publishing task %s again",
                    intent.order_id, rt.settings.replay_after, intent.task_id)
        send_sms.apply_async(kwargs=intent.kwargs, task_id=intent.task_id, queue=QUEUE)
    if due:
        rt.metrics.inc("intents_replayed", len(due))
    return {"replayed": len(due)}
