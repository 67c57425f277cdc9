"""The order store: the order record, atomic Lua transitions (``lua/``), the poll due-set,
the events stream. Key names come from keys.py.

Orders in ``in_doubt`` are indexed in ``P:doubt`` by every transition into or out of that
state, scored by when the record expires, so counting them (an alert) is O(1). A scheduled
order is indexed under each recipient in ``P:scheduled:{number}`` by its claim (the claim
refuses a number that sent STOP, in the same script), scored by its scheduled time, and
leaves it when cancelled or when that time has passed: what a STOP must withdraw is one
read, never a scan of the orders. Every order in doubt, whatever its state, is in
``P:doubt:open`` from its claim until evidence (or an operator) ends the doubt, scored by
``ambiguous_at``: the SMSHISTORY sweeps read the windows of all of them at once (sweeps.py).

Multi-key changes run as Lua scripts so that they are atomic and cost one round trip:
two workers applying the same status see one change and emit one event. Tracking keys
expire ``order_ttl`` seconds (30 days, like the provider's memory) after their last change.
Every change of an order's state, here or in a script, is an event of states.py's table,
refused (nothing written, no event) from a state the table does not move it from.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence, cast

import redis

from . import scripts
from ..errors import OrderNotFound, OrderNotResendable, scrub
from .keys import Keys
from ..provider.protocol import RecipientStatus
from ..states import IN_DOUBT, SENDING, STATES, TRANSITIONS, UNSENT, UNSETTLED, Event, OrderState, sources

#: What :meth:`OrderStore.apply_statuses` answers for a push naming only recipients the order does not have.
UNKNOWN_RECIPIENT = "unknown_recipient"
#: History entries kept per recipient, its newest: a provider that pushes a status back and
#: forth (WAITING, UNKNOWN, WAITING...) cannot grow the record without bound.
HISTORY_PER_RECIPIENT = 20


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RecipientState:
    status: str
    delivered_at: str | None
    changed_at: str | None
    final: bool


@dataclass(frozen=True)
class OrderRecord:
    """What anyone may ask about an order. Never holds credentials."""

    order_id: str
    state: OrderState
    message_type: str
    sender: str | None
    created_at: str
    scheduled_at: str | None
    accepted_at: str | None
    recipients: dict[str, RecipientState]
    polls: int
    final: bool
    cancelled: bool
    credits: int | None
    parts: int | None
    batch_id: str | None
    task_id: str | None
    attempts: int
    recipient_count: int = 0  # how many the order was sent to: known before the provider accepted it
    doubt: bool = False  # an attempt may have reached the provider: only evidence ends it
    doubt_since: float | None = None  # epoch the doubt began
    ambiguous_at: float | None = None  # epoch the last attempt may have been in flight until (lock end, or its failure)
    claimed_at: float | None = None  # epoch a worker first took the send: its retries are timed from it
    request: str | None = None  # JSON of the send's kwargs (for an operator's resend)
    replaces: str | None = None  # the order this one was made from when a recipient sent STOP
    replaced_by: str | None = None  # that new order, on the cancelled one
    error_code: str | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flatten(mapping: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for key, value in mapping.items():
        if value is not None:
            out += [key, str(int(value)) if isinstance(value, bool) else str(value)]
    return out


class OrderStore:
    """Order tracking in Redis: send claims, acceptance, statuses, due polls, events."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "mobyt",
        *,
        ttl: int = 30 * 24 * 3600,
        stream_maxlen: int = 100_000,
        poll_intervals: Sequence[float] = (15, 30, 60, 120, 300, 600, 1800, 3600),
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.ttl = ttl
        self.stream_maxlen = stream_maxlen
        self.poll_intervals = list(poll_intervals)
        self._claim_send = scripts.register(client, "claim_send")
        self._accept = scripts.register(client, "accept")
        self._apply = scripts.register(client, "apply_statuses")
        self._claim_due = scripts.register(client, "claim_due")
        self._release = scripts.register(client, "release_lock")
        self._drop_intent = scripts.register(client, "drop_intent")

    # --- sending -------------------------------------------------------------------

    def claim_send(self, order_id: str, meta: dict[str, Any], *, lock_seconds: float, due_at: float | None = None,
                   recipients: Sequence[str] = (), token: str = "",
                   scheduled_epoch: float | None = None) -> tuple[str, str, str]:
        """Return (verdict, state, token); see ``lua/claim_send.lua``. ``meta`` is stored on
        creation. Refuses (``optout``) if one of ``recipients`` sent STOP, in the same round
        trip; a scheduled send is indexed under each of them. ``due_at`` (default: when the
        lock expires): when the poller settles the order if nothing records this attempt's
        outcome first."""
        token = token or f"{random.getrandbits(128):032x}"  # unique per attempt; no system call, unlike uuid4
        now = time.time()
        due_at = now + lock_seconds if due_at is None else due_at
        fields = {"order_id": order_id, "created_at": now_iso(now), "polls": 0, "final": 0, "cancelled": 0,
                  "scheduled_epoch": scheduled_epoch, **meta}
        ahead = scheduled_epoch if scheduled_epoch is not None and scheduled_epoch > now else None
        index = [self.keys.scheduled(number) for number in recipients] if ahead is not None else []
        verdict, state = self._claim_send(
            keys=[self.keys.order(order_id), self.keys.send_lock(order_id), self.keys.orders, self.keys.due,
                  self.keys.intents, self.keys.doubt_open, self.keys.optout, *index],
            args=[token, int(lock_seconds * 1000), now, self.ttl_for(scheduled_epoch), json.dumps(_flatten(fields)),
                  order_id, due_at, "" if ahead is None else ahead, *recipients],
        )
        return verdict, state, token

    def scheduled_for(self, number: str, *, now: float | None = None) -> list[str]:
        """Orders indexed for ``number`` whose scheduled time is still ahead (those past it
        are dropped from the index here)."""
        key, now = self.keys.scheduled(number), time.time() if now is None else now
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrange(key, 0, -1)
            return cast(list[str], pipe.execute()[1])

    def unindex(self, number: str, order_id: str) -> None:
        """``order_id`` can no longer reach ``number``: out of its scheduled index."""
        self.redis.zrem(self.keys.scheduled(number), order_id)

    def ttl_for(self, scheduled_epoch: float | None) -> int:
        """An order scheduled further ahead than the TTL is kept until its time plus the TTL."""
        ahead = (scheduled_epoch or 0) - time.time()
        return self.ttl + max(0, int(ahead) + 1)

    def release_send(self, order_id: str, token: str) -> None:
        self._release(keys=[self.keys.send_lock(order_id)], args=[token])

    def mark_accepted(
        self,
        order_id: str,
        *,
        scheduled: bool,
        recipients: Iterable[str],
        first_poll_at: float,
        fields: dict[str, Any] | None = None,
        release_token: str | None = None,
    ) -> str:
        """Record acceptance once; returns the state the order is now in. With
        ``release_token``, the send lock it holds is released in the same call."""
        event = Event.SCHEDULE if scheduled else Event.ACCEPT
        at = now_iso()
        extra = {"accepted_at": at, **(fields or {})}
        scheduled_at = first_poll_at - self.poll_intervals[0] if scheduled else None
        return self._accept(
            keys=[self.keys.order(order_id), self.keys.recipients(order_id), self.keys.due, self.keys.events,
                  self.keys.send_lock(order_id), self.keys.in_doubt, self.keys.doubt_open],
            args=[order_id, event, json.dumps(_flatten(extra)), json.dumps(list(recipients)), first_poll_at,
                  self.ttl_for(scheduled_at), self.stream_maxlen, at, release_token or ""],
        )

    def mark_unsent(self, order_id: str, error: Exception, token: str) -> None:
        """Attempt ``token`` surely did not reach the provider (and, since it was allowed to
        send, no earlier one did): the doubt its claim raised ends; a later attempt may send."""
        self._set_if_state(order_id, Event.UNSENT, error, doubt=0, when={"attempt_token": token})

    def end_doubt(self, order_id: str, token: str) -> bool:
        """Clean evidence that no attempt reached the provider; ``token`` holds the send lock."""
        return self._set_if_state(order_id, Event.ABSENT, None, doubt=0, lock=(self.keys.send_lock(order_id), token))

    def note_ambiguous(self, order_id: str, error: Exception, next_check: float) -> None:
        """The attempt may have reached the provider: it stays in doubt, settled later on evidence."""
        now = time.time()
        with self.redis.pipeline() as pipe:
            fields: dict[str, Any] = {"ambiguous_at": now, **_error_fields(error)}
            pipe.hset(self.keys.order(order_id), mapping=cast(Mapping[Any, Any], fields))
            pipe.zadd(self.keys.due, {order_id: next_check})
            pipe.zadd(self.keys.doubt_open, {order_id: now})
            pipe.execute()

    def mark_failed(self, order_id: str, error: Exception, *, allowed: Iterable[str] = (SENDING, UNSENT)) -> bool:
        """Terminal, nothing billed: the provider refused the send, it was never valid, or
        clean evidence shows it never reached the provider. Only from ``allowed`` states
        (some of those the table lets ``fail`` leave)."""
        return self._set_if_state(order_id, Event.FAIL, error, only=allowed, final=1, doubt=0,
                                  drop=(self.keys.due, self.keys.intents),
                                  emit={"error_code": getattr(error, "code", "")})

    def mark_in_doubt(self, order_id: str, error: Exception | None) -> bool:
        """Still in doubt past MOBYT_DOUBT_LIMIT: never sent again automatically; True on the change."""
        return self._set_if_state(order_id, Event.DOUBT, error, when={"doubt": "1"},
                                  index=(self.keys.in_doubt, time.time() + self.ttl))

    def allow_resend(self, order_id: str) -> OrderRecord:
        """An operator accepts a possible duplicate: the doubt is lifted by decision, not
        evidence, so the next send task sends. Tracked (``resends``, an event)."""
        record = self.require_order(order_id)
        if record.state not in UNSETTLED or self.redis.exists(self.keys.send_lock(order_id)):
            raise OrderNotResendable(order_id, f"it is {record.state}" + (", an attempt is in flight"
                                                                         if record.state in UNSETTLED else ""))
        if not self._set_if_state(order_id, Event.RESEND, None, doubt=0, emit={"previous": record.state}):
            raise OrderNotResendable(order_id, "it changed meanwhile")
        self.redis.hincrby(self.keys.order(order_id), "resends", 1)
        return self.require_order(order_id)

    def defer(self, order_id: str, at: float) -> None:
        """Next look at the order by the due-set poller."""
        self.redis.zadd(self.keys.due, {order_id: at})

    def forget_due(self, order_id: str) -> None:
        self.redis.zrem(self.keys.due, order_id)

    def note_error(self, order_id: str, error: Exception) -> None:
        """Keep the last transient error on the record for operators."""
        self.redis.hset(self.keys.order(order_id), mapping=cast(Mapping[Any, Any], _error_fields(error)))

    def _set_if_state(self, order_id: str, event: Event, error: Exception | None, *,
                      only: Iterable[str] | None = None, when: dict[str, str] | None = None,
                      lock: tuple[str, str] | None = None, drop: Sequence[str] = (),
                      index: tuple[str, float] | None = None, emit: dict[str, Any] | None = None,
                      **more: Any) -> bool:
        """Move the order by ``event`` if its state is one the table moves it from (of those,
        only those in ``only``), the fields in ``when`` match and ``lock`` holds its token:
        one optimistic transaction, with the event's ``type=order`` entry (plus ``emit``), if
        it has one. True if it moved. ``index`` (a zset, a score) gets the order; leaving
        ``in_doubt`` drops it from ``P:doubt``, and ending the doubt (``doubt=0``, or a final
        state) from ``P:doubt:open``."""
        move, allowed = TRANSITIONS[event], sources(event, only)
        state = cast(OrderState, move.target)  # (no Python writer removes a record)
        if IN_DOUBT in allowed and state != IN_DOUBT:
            drop = (*drop, self.keys.in_doubt)
        if more.get("doubt") == 0 or more.get("final") == 1:
            drop = (*drop, self.keys.doubt_open)
        key = self.keys.order(order_id)
        changed = False

        def update(pipe: redis.client.Pipeline) -> None:
            nonlocal changed
            changed = pipe.hget(key, "state") in allowed and all(pipe.hget(key, k) == v for k, v in (when or {}).items())
            if changed and lock is not None:
                changed = pipe.get(lock[0]) == lock[1]
            if changed:
                pipe.multi()
                fields = {"state": state, **(_error_fields(error) if error is not None else {}), **more}
                pipe.hset(key, mapping=cast(Mapping[Any, Any], fields))
                self._refresh_ttl(pipe, order_id)
                for zset in drop:
                    pipe.zrem(zset, order_id)
                if index is not None:
                    pipe.zadd(index[0], {order_id: index[1]})
                if move.emits is not None:
                    entry = {"type": "order", "order_id": order_id, "state": move.emits, **(emit or {}),
                             "at": now_iso()}
                    pipe.xadd(self.keys.events, {k: "" if v is None else v for k, v in entry.items()},
                              maxlen=self.stream_maxlen, approximate=True)

        self.redis.transaction(update, *([key, lock[0]] if lock else [key]))
        return changed

    # --- statuses --------------------------------------------------------------------

    def apply_statuses(
        self, order_id: str, rows: Sequence[RecipientStatus], *, source: str, now: float | None = None
    ) -> list[dict[str, str]] | str:
        """Apply provider statuses; return the changes made (empty if none), or the state
        when statuses can neither complete the order nor have (``missing``, ``queued``,
        ``cancelled``...): then nothing is written; or :data:`UNKNOWN_RECIPIENT` when every
        row of a push names a recipient the order does not have (nothing is written: a push
        cannot add recipients once the order has its own). Each recipient's history keeps
        its newest :data:`HISTORY_PER_RECIPIENT` entries."""
        now = time.time() if now is None else now
        payload = [  # the script maps the provider's spelling of each number onto ours
            [r.recipient, r.label, r.delivered_at.isoformat() if r.delivered_at else "",
             1 if r.status.is_final else 0]
            for r in rows
        ]
        result = self._apply(
            keys=[self.keys.order(order_id), self.keys.recipients(order_id), self.keys.history(order_id),
                  self.keys.due, self.keys.events, self.keys.in_doubt, self.keys.doubt_open],
            args=[order_id, json.dumps(payload), source, now_iso(now), now, self.ttl, self.stream_maxlen,
                  json.dumps(self.poll_intervals), HISTORY_PER_RECIPIENT],
        )
        if result and (result[0] in ("missing", UNKNOWN_RECIPIENT) or result[0] in STATES):
            return result[0]
        return [json.loads(change) for change in result]

    def reschedule_poll(self, order_id: str, delay: float) -> None:
        self.redis.zadd(self.keys.due, {order_id: time.time() + delay})

    def claim_due(self, *, limit: int, lease: float, now: float | None = None) -> list[str]:
        """Due order ids (at most ``limit``), leased for ``lease`` seconds. O(log N + limit)."""
        return self._claim_due(keys=[self.keys.due], args=[time.time() if now is None else now, limit, lease])

    def expire_order(self, order_id: str) -> bool:
        """The provider forgets statuses after 30 days: stop following the order. True on the change."""
        return self._set_if_state(order_id, Event.EXPIRE, None, final=1, drop=(self.keys.due,))

    def _refresh_ttl(self, pipe: redis.client.Pipeline, order_id: str) -> None:
        """Tracking keys live ``ttl`` seconds after the order's last change, whatever it was."""
        for key in self.keys.order_keys(order_id):
            pipe.expire(key, self.ttl)

    def mark_cancelled(self, order_id: str, *, recipients: Iterable[str] = (), replaced_by: str | None = None,
                       reason: str = "") -> bool:
        """The provider no longer holds the order: out of the due set and of ``recipients``'
        scheduled indexes. ``replaced_by``: the order made for the recipients still wanted.
        True on the change."""
        fields: dict[str, Any] = {"cancelled": 1, "final": 1, "cancelled_at": now_iso()}
        if replaced_by:
            fields["replaced_by"] = replaced_by
        return self._set_if_state(
            order_id, Event.CANCEL, None, drop=(self.keys.due, *(self.keys.scheduled(n) for n in recipients)),
            emit={"reason": reason, "replaced_by": replaced_by or ""} if reason else None, **fields)

    # --- batches -----------------------------------------------------------------------

    def record_batch(self, batch_id: str, order_ids: Sequence[str]) -> None:
        """The chunks of a bulk send; the bulk request's own intent, if a producer wrote
        one, is dropped: the batch is read from ``P:batch:{id}`` and never replayed."""
        key = self.keys.batch(batch_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={str(i): oid for i, oid in enumerate(order_ids)})
            pipe.expire(key, self.ttl)
            pipe.execute()
        self._drop_intent(keys=[self.keys.order(batch_id), self.keys.intents], args=[batch_id])

    def batch_orders(self, batch_id: str) -> list[str]:
        chunks = cast(dict[str, str], self.redis.hgetall(self.keys.batch(batch_id)))
        return [chunks[k] for k in sorted(chunks, key=int)]

    # --- reading -------------------------------------------------------------------------

    def get_order(self, order_id: str, *, with_history: bool = True) -> OrderRecord | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.order(order_id))
            pipe.hgetall(self.keys.recipients(order_id))
            if with_history:
                pipe.lrange(self.keys.history(order_id), 0, -1)
            raw, rcpt, *history = pipe.execute()
        if not raw:
            return None
        return _record(raw, rcpt, history[0] if history else [])

    def require_order(self, order_id: str, *, with_history: bool = False) -> OrderRecord:
        """The record, or :class:`OrderNotFound` (never tracked, or expired)."""
        record = self.get_order(order_id, with_history=with_history)
        if record is None:
            raise OrderNotFound(order_id)
        return record

    def recent_orders(self, *, limit: int = 50, states: Iterable[str] | None = None) -> list[OrderRecord]:
        """Newest first, optionally only in ``states``. Drops index entries past the TTL."""
        self.redis.zremrangebyscore(self.keys.orders, "-inf", time.time() - self.ttl)
        wanted = set(states or ())
        found: list[OrderRecord] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit:
            ids = cast(list[str], self.redis.zrevrange(self.keys.orders, start, start + page - 1))
            if not ids:
                break
            for oid in ids:
                rec = self.get_order(oid, with_history=False)
                if rec and (not wanted or rec.state in wanted):
                    found.append(rec)
                    if len(found) >= limit:
                        break
            start += page
        return found

    def open_doubts(self, ended_before: float, limit: int) -> list[OrderRecord]:
        """Orders in doubt (``P:doubt:open``) whose last attempt ended before ``ended_before``,
        oldest first, at most ``limit``. Entries whose record expired or is no longer in
        doubt are dropped here. The index only tells a sweep what else to read while it
        reads: an order's own check always reads its own window, so a missing entry costs
        a read, never a verdict."""
        ids = cast(list[str], self.redis.zrangebyscore(self.keys.doubt_open, "-inf", ended_before, start=0, num=limit))
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for oid in ids:
                pipe.hgetall(self.keys.order(oid))
            raws = pipe.execute()
        records, stale = [], []
        for oid, raw in zip(ids, raws):
            if raw and raw.get("doubt") == "1" and raw.get("state") in UNSETTLED:
                records.append(_record(raw, {}, []))
            else:
                stale.append(oid)
        if stale:
            self.redis.zrem(self.keys.doubt_open, *stale)
        return records

    def due_count(self) -> int:
        return self.redis.zcard(self.keys.due)

    def in_doubt_count(self) -> int:
        """Orders ``in_doubt`` now: O(1), past the entries whose record expired (dropped here)."""
        return in_doubt_count(self.redis, self.keys)


def in_doubt_count(client: redis.Redis, keys: Keys) -> int:
    """``P:doubt``'s size once the entries of records that expired are dropped; for readers
    that build no store (metrics, fleet)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(keys.in_doubt, "-inf", time.time())
        pipe.zcard(keys.in_doubt)
        return int(pipe.execute()[1])


def _error_fields(error: Exception) -> dict[str, str]:
    return {"error_code": str(getattr(error, "code", "") or "")[:40],
            "error": scrub(f"{type(error).__name__}: {error}", ())}


def _record(raw: dict[str, str], rcpt: dict[str, str], history: list[str]) -> OrderRecord:
    def opt(name: str) -> str | None:
        return raw.get(name) or None

    def opt_int(name: str) -> int | None:
        return int(raw[name]) if raw.get(name) not in (None, "") else None

    def opt_float(name: str) -> float | None:
        return float(raw[name]) if raw.get(name) not in (None, "") else None

    recipients = {}
    for number, value in rcpt.items():
        data = json.loads(value)
        recipients[number] = RecipientState(
            status=data.get("status") or "", delivered_at=data.get("delivered_at") or None,
            changed_at=data.get("changed_at") or None, final=data.get("final") == 1,
        )
    return OrderRecord(
        order_id=raw["order_id"], state=OrderState(raw["state"]), message_type=raw.get("message_type", ""),
        sender=opt("sender"), created_at=raw.get("created_at", ""), scheduled_at=opt("scheduled_at"),
        accepted_at=opt("accepted_at"), recipients=recipients, polls=int(raw.get("polls") or 0),
        final=raw.get("final") == "1", cancelled=raw.get("cancelled") == "1", credits=opt_int("credits"),
        parts=opt_int("parts"), batch_id=opt("batch_id"), task_id=opt("task_id"),
        attempts=int(raw.get("attempts") or 0), recipient_count=int(raw.get("recipient_count") or 0),
        doubt=raw.get("doubt") == "1",
        doubt_since=opt_float("doubt_since"), ambiguous_at=opt_float("ambiguous_at"),
        claimed_at=opt_float("claimed_at"), request=opt("request"),
        replaces=opt("replaces"), replaced_by=opt("replaced_by"),
        error_code=opt("error_code"), error=opt("error"),
        history=[json.loads(h) for h in history],
    )
