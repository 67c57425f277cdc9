"""Everything the product keeps in Redis. Every key is built here, under one prefix.

Key schema (``P`` is ``MOBYT_KEY_PREFIX``, default ``mobyt``):

====================================  ======  ==================================================
key                                   type    content
====================================  ======  ==================================================
``P:order:{order_id}``                hash    the order record (see :class:`OrderRecord`)
``P:order:{order_id}:rcpt``           hash    recipient -> JSON {status, delivered_at, changed_at, final}
``P:order:{order_id}:history``        list    JSON status changes, oldest first
``P:order:{order_id}:lock``           string  send lock: one attempt in flight per order
``P:orders``                          zset    order_id scored by creation time (recent orders)
``P:poll:due``                        zset    order_id scored by when its next status poll is due
``P:intents``                         zset    queued order_id scored by when to replay its task
``P:batch:{batch_id}``                hash    chunk index -> order_id of a bulk send
``P:events``                          stream  status changes and order events (see README)
====================================  ======  ==================================================

Multi-key changes run as Lua scripts so that they are atomic and cost one round trip:
two workers applying the same status see one change and emit one event. Tracking keys
expire ``order_ttl`` seconds (30 days, like the provider's memory) after their last change.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .errors import OrderNotFound
from .protocol import RecipientStatus

#: Order states, in the order an order moves through them.
SENDING = "sending"  # claimed; an attempt may be in flight (ambiguous after a crash)
UNSENT = "unsent"  # the last attempt surely never reached the provider
SCHEDULED = "scheduled"  # accepted for a later time
ACCEPTED = "accepted"  # accepted; statuses are being followed
COMPLETED = "completed"  # every recipient has a final status
EXPIRED = "expired"  # the provider no longer knows the order (30 days)
FAILED = "failed"  # refused by the provider; never sent
CANCELLED = "cancelled"  # scheduled send removed
STATES = (SENDING, UNSENT, SCHEDULED, ACCEPTED, COMPLETED, EXPIRED, FAILED, CANCELLED)
OPEN_STATES = frozenset({SENDING, UNSENT, SCHEDULED, ACCEPTED})


#: Client options that ride out a Redis restart or failover (~30 s of jittered retries).
REDIS_RETRY = {
    "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 20),
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    "health_check_interval": 15,
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
}


def connect(url: str, *, sentinel_master: str = "mymaster") -> redis.Redis:
    """A Redis client that survives restarts and failovers.

    ``sentinel://h1:26379;sentinel://h2:26379/0`` (kombu's form) asks the sentinels for
    the current master of ``sentinel_master`` and follows it across failovers.
    """
    if url.startswith("sentinel://"):
        hosts, db, password = parse_sentinel_url(url)
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": 5, "password": password})
        return sentinel.master_for(sentinel_master, db=db, password=password, decode_responses=True,
                                   **REDIS_RETRY)
    return redis.Redis.from_url(url, decode_responses=True, **REDIS_RETRY)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """``sentinel://[:pw@]h1:p1;sentinel://h2:p2/db`` -> ([(h1, p1), (h2, p2)], db, pw)."""
    hosts, db, password = [], 0, None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"not a sentinel:// URL: {part.strip()!r}")
        hosts.append((parsed.hostname, parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        password = parsed.password or password
    return hosts, db, password


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
    state: str
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
    error_code: str | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Keys:
    """The one place key names are spelled, for every module (orders, inbox, opt-outs,
    credits, metrics, rate limit, beat). The tables in this module's and inbox.py's
    docstrings say what each holds."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.orders = f"{prefix}:orders"
        self.due = f"{prefix}:poll:due"
        self.intents = f"{prefix}:intents"
        self.events = f"{prefix}:events"
        self.inbox_message_prefix = f"{prefix}:inbox:msg:"
        self.inbox_ids = f"{prefix}:inbox:ids"
        self.inbound = f"{prefix}:inbound"
        self.inbox_hwm = f"{prefix}:inbox:hwm"
        self.inbox_reconciled = f"{prefix}:inbox:reconciled"
        self.optout = f"{prefix}:optout"
        self.credits = f"{prefix}:credits"
        self.credits_history = f"{prefix}:credits:history"
        self.metrics = f"{prefix}:metrics"
        self.send_rate = f"{prefix}:ratelimit:send"
        self.beat_prefix = f"{prefix}:beat"

    def inbox_message(self, message_id: int) -> str:
        return f"{self.inbox_message_prefix}{message_id}"

    def order(self, order_id: str) -> str:
        return f"{self.prefix}:order:{order_id}"

    def recipients(self, order_id: str) -> str:
        return f"{self.prefix}:order:{order_id}:rcpt"

    def history(self, order_id: str) -> str:
        return f"{self.prefix}:order:{order_id}:history"

    def send_lock(self, order_id: str) -> str:
        return f"{self.prefix}:order:{order_id}:lock"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def order_keys(self, order_id: str) -> list[str]:
        return [self.order(order_id), self.recipients(order_id), self.history(order_id)]


# Claim the right to attempt a send. Returns {verdict, state}:
#   send     - nobody sent yet (or the last attempt surely failed): go ahead
#   resolve  - an earlier attempt may have reached the provider: ask SMSSTATUS first
#   busy     - another worker holds the lock right now
#   done     - the order is past sending (accepted, failed, ...): do nothing
#   optout   - (only with KEYS[4], the opt-out hash) a recipient in ARGV[7..] sent STOP:
#              nothing was written
# Re-running with the same token (a client-side retry after a lost reply) gives "send" again.
_CLAIM_SEND = """
local order, lock, orders, optouts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, lock_ms, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if optouts then
  for i = 7, #ARGV do
    if redis.call('HEXISTS', optouts, ARGV[i]) == 1 then return {'optout', ''} end
  end
end
local holder = redis.call('GET', lock)
if holder and holder ~= token then return {'busy', redis.call('HGET', order, 'state') or ''} end
local state = redis.call('HGET', order, 'state')
if not state or state == 'queued' then  -- queued: an intent the producer wrote
  redis.call('HSET', order, unpack(cjson.decode(ARGV[5])))
  redis.call('HSET', order, 'state', 'sending', 'attempts', 1, 'attempt_token', token)
  redis.call('EXPIRE', order, ttl)
  redis.call('ZADD', orders, now, ARGV[6])
  redis.call('SET', lock, token, 'PX', lock_ms)
  return {'send', 'sending'}
end
if state == 'unsent' then
  redis.call('HSET', order, 'state', 'sending', 'attempt_token', token)
  redis.call('HINCRBY', order, 'attempts', 1)
  redis.call('SET', lock, token, 'PX', lock_ms)
  return {'send', 'sending'}
end
if state == 'sending' then
  redis.call('SET', lock, token, 'PX', lock_ms)
  if redis.call('HGET', order, 'attempt_token') == token then return {'send', state} end
  return {'resolve', state}
end
return {'done', state}
"""

# Record the provider's acceptance once; initialise each recipient; schedule the first poll.
# Also releases the send lock if ARGV[9] (a token, or '') still holds it: one round trip.
_ACCEPT = """
local order, rcpt, due, events, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local oid, state, fields, recipients = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local first_due, ttl, maxlen, at = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
if ARGV[9] ~= '' and redis.call('GET', lock) == ARGV[9] then redis.call('DEL', lock) end
local current = redis.call('HGET', order, 'state')
if current ~= 'sending' and current ~= 'unsent' then return current or '' end
redis.call('HSET', order, 'state', state, unpack(fields))
redis.call('HDEL', order, 'error', 'error_code')
for _, r in ipairs(recipients) do
  redis.call('HSETNX', rcpt, r, cjson.encode({status='', delivered_at='', changed_at='', final=0}))
end
redis.call('EXPIRE', order, ttl)
redis.call('EXPIRE', rcpt, ttl)
redis.call('ZADD', due, first_due, oid)
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'order', 'order_id', oid, 'state', state,
  'batch_id', redis.call('HGET', order, 'batch_id') or '', 'at', at)
return state
"""

# Apply per-recipient statuses (from a poll or a push). A recipient changes at most once per
# distinct status, never leaves a final status and never moves back (a late WAITING pushed
# after WAIT4DLVR was polled), so racing polls and pushes emit one event per change.
_APPLY = """
local order, rcpt, hist, due, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local oid, rows, source, at = ARGV[1], cjson.decode(ARGV[2]), ARGV[3], ARGV[4]
local now, ttl, maxlen, intervals = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], cjson.decode(ARGV[8])
local state = redis.call('HGET', order, 'state')
if not state then return {'missing'} end
if state == 'cancelled' or state == 'expired' or state == 'failed' then return {state} end
local batch = redis.call('HGET', order, 'batch_id') or ''
local known, sent = redis.call('HKEYS', rcpt), {}
for _, k in ipairs(known) do sent[k] = true end
local function match(r)  -- the provider's spelling of a number (+33.., 0033..) onto the one we sent
  if sent[r] then return r end
  local digits = string.gsub(r, '^%++', '')
  if string.sub(digits, 1, 2) == '00' then digits = string.sub(digits, 3) end
  for _, k in ipairs(known) do
    if (string.gsub(k, '^%++', '')) == digits then return k end
  end
  return r
end
local RANK = {[''] = -1, SCHEDULED = 0, WAITING = 1, UNKNOWN = 1, SENT = 2, WAIT4DLVR = 3}
local changes = {}
for _, row in ipairs(rows) do
  local r, st, dd, fin = match(row[1]), row[2], row[3], row[4]
  local cur = redis.call('HGET', rcpt, r)
  local prev, was_final = '', 0
  if cur then local c = cjson.decode(cur); prev = c['status']; was_final = c['final'] end
  local forward = fin == 1 or (RANK[st] or 1) >= (RANK[prev] or 1)
  if prev ~= st and was_final ~= 1 and forward then
    redis.call('HSET', rcpt, r, cjson.encode({status=st, delivered_at=dd, changed_at=at, final=fin}))
    redis.call('RPUSH', hist, cjson.encode({at=at, recipient=r, status=st, previous=prev, source=source}))
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'status', 'order_id', oid,
      'recipient', r, 'status', st, 'previous', prev, 'delivered_at', dd, 'source', source,
      'batch_id', batch, 'at', at)
    table.insert(changes, cjson.encode({order_id=oid, recipient=r, status=st, previous=prev,
      delivered_at=dd, source=source, batch_id=batch, at=at}))
  end
end
local polls = tonumber(redis.call('HGET', order, 'polls') or '0')
if source == 'poll' then polls = redis.call('HINCRBY', order, 'polls', 1) end
if state == 'scheduled' then
  for _, row in ipairs(rows) do
    if row[2] ~= 'SCHEDULED' then
      state = 'accepted'
      redis.call('HSET', order, 'state', state)
      break
    end
  end
end
local final = true
for _, v in ipairs(redis.call('HVALS', rcpt)) do
  if cjson.decode(v)['final'] ~= 1 then final = false break end
end
if final and redis.call('HLEN', rcpt) > 0 then
  if state ~= 'completed' then
    redis.call('HSET', order, 'state', 'completed', 'final', 1, 'completed_at', at)
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'order', 'order_id', oid,
      'state', 'completed', 'batch_id', batch, 'at', at)
  end
  redis.call('ZREM', due, oid)
elseif source == 'poll' then
  local i = math.min(math.max(polls, 1), #intervals)
  redis.call('ZADD', due, now + intervals[i], oid)
end
for _, k in ipairs({order, rcpt, hist}) do redis.call('EXPIRE', k, ttl) end
return changes
"""

# Take up to N due orders and lease them, so a crashed poll is retried after the lease.
_CLAIM_DUE = """
local due, now, n, lease = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, n)
for _, id in ipairs(ids) do redis.call('ZADD', due, tonumber(now) + lease, id) end
return ids
"""

# Release a lock only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
        self._claim_send = client.register_script(_CLAIM_SEND)
        self._accept = client.register_script(_ACCEPT)
        self._apply = client.register_script(_APPLY)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._release = client.register_script(_RELEASE)

    # --- sending -------------------------------------------------------------------

    def claim_send(self, order_id: str, meta: dict[str, Any], *, lock_seconds: float,
                   optout_key: str | None = None, recipients: Sequence[str] = ()) -> tuple[str, str, str]:
        """Return (verdict, state, token); see ``_CLAIM_SEND``. ``meta`` is stored on creation.
        With ``optout_key``, refuses (``optout``) if one of ``recipients`` is in that hash,
        in the same round trip."""
        token = f"{random.getrandbits(128):032x}"  # unique per attempt; no system call, unlike uuid4
        now = time.time()
        fields = {"order_id": order_id, "created_at": now_iso(now), "polls": 0, "final": 0, "cancelled": 0, **meta}
        keys = [self.keys.order(order_id), self.keys.send_lock(order_id), self.keys.orders]
        verdict, state = self._claim_send(
            keys=keys + [optout_key] if optout_key else keys,
            args=[token, int(lock_seconds * 1000), now, self.ttl, json.dumps(_flatten(fields)), order_id, *recipients],
        )
        return verdict, state, token

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
        state = SCHEDULED if scheduled else ACCEPTED
        at = now_iso()
        extra = {"accepted_at": at, **(fields or {})}
        return self._accept(
            keys=[self.keys.order(order_id), self.keys.recipients(order_id), self.keys.due, self.keys.events,
                  self.keys.send_lock(order_id)],
            args=[order_id, state, json.dumps(_flatten(extra)), json.dumps(list(recipients)), first_poll_at,
                  self.ttl, self.stream_maxlen, at, release_token or ""],
        )

    def mark_unsent(self, order_id: str, error: Exception) -> None:
        """The attempt surely did not reach the provider: a later attempt may send."""
        self._set_if_state(order_id, {SENDING}, UNSENT, error)

    def mark_failed(self, order_id: str, error: Exception) -> None:
        """The provider refused the send (or it was never valid): terminal, nothing billed."""
        self._set_if_state(order_id, {SENDING, UNSENT}, FAILED, error, final=1)
        self._event({"type": "order", "order_id": order_id, "state": FAILED,
                     "error_code": getattr(error, "code", ""), "at": now_iso()})

    def note_error(self, order_id: str, error: Exception) -> None:
        """Keep the last transient error on the record for operators."""
        self.redis.hset(self.keys.order(order_id), mapping=cast(Mapping[Any, Any], _error_fields(error)))

    def _set_if_state(self, order_id: str, allowed: set[str], state: str, error: Exception, **more: Any) -> None:
        key = self.keys.order(order_id)

        def update(pipe: redis.client.Pipeline) -> None:
            if pipe.hget(key, "state") in allowed:
                pipe.multi()
                pipe.hset(key, mapping=cast(Mapping[Any, Any], {"state": state, **_error_fields(error), **more}))

        self.redis.transaction(update, key)

    # --- statuses --------------------------------------------------------------------

    def apply_statuses(
        self, order_id: str, rows: Sequence[RecipientStatus], *, source: str, now: float | None = None
    ) -> list[dict[str, str]] | str:
        """Apply provider statuses; return the changes made (empty if none), or a state
        name when the order is missing or closed (``missing``, ``cancelled``...)."""
        now = time.time() if now is None else now
        payload = [  # the script maps the provider's spelling of each number onto ours
            [r.recipient, r.status.value, r.delivered_at.isoformat() if r.delivered_at else "",
             1 if r.status.is_final else 0]
            for r in rows
        ]
        result = self._apply(
            keys=[self.keys.order(order_id), self.keys.recipients(order_id), self.keys.history(order_id),
                  self.keys.due, self.keys.events],
            args=[order_id, json.dumps(payload), source, now_iso(now), now, self.ttl, self.stream_maxlen,
                  json.dumps(self.poll_intervals)],
        )
        if result and result[0] in ("missing", CANCELLED, EXPIRED, FAILED):
            return result[0]
        return [json.loads(change) for change in result]

    def reschedule_poll(self, order_id: str, delay: float) -> None:
        self.redis.zadd(self.keys.due, {order_id: time.time() + delay})

    def claim_due(self, *, limit: int, lease: float, now: float | None = None) -> list[str]:
        """Due order ids (at most ``limit``), leased for ``lease`` seconds. O(log N + limit)."""
        return self._claim_due(keys=[self.keys.due], args=[time.time() if now is None else now, limit, lease])

    def expire_order(self, order_id: str) -> None:
        """The provider forgets statuses after 30 days: stop following the order."""
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.order(order_id), mapping={"state": EXPIRED, "final": 1})
            pipe.zrem(self.keys.due, order_id)
            pipe.execute()
        self._event({"type": "order", "order_id": order_id, "state": EXPIRED, "at": now_iso()})

    def mark_cancelled(self, order_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.order(order_id),
                      mapping={"state": CANCELLED, "cancelled": 1, "final": 1, "cancelled_at": now_iso()})
            pipe.zrem(self.keys.due, order_id)
            pipe.execute()
        self._event({"type": "order", "order_id": order_id, "state": CANCELLED, "at": now_iso()})

    # --- batches -----------------------------------------------------------------------

    def record_batch(self, batch_id: str, order_ids: Sequence[str]) -> None:
        key = self.keys.batch(batch_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={str(i): oid for i, oid in enumerate(order_ids)})
            pipe.expire(key, self.ttl)
            pipe.execute()

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

    def due_count(self) -> int:
        return self.redis.zcard(self.keys.due)

    def _event(self, fields: dict[str, Any]) -> None:
        self.redis.xadd(self.keys.events, {k: "" if v is None else v for k, v in fields.items()},
                        maxlen=self.stream_maxlen, approximate=True)


def _error_fields(error: Exception) -> dict[str, str]:
    return {"error_code": str(getattr(error, "code", "") or ""), "error": f"{type(error).__name__}: {error}"[:500]}


def _record(raw: dict[str, str], rcpt: dict[str, str], history: list[str]) -> OrderRecord:
    def opt(name: str) -> str | None:
        return raw.get(name) or None

    def opt_int(name: str) -> int | None:
        return int(raw[name]) if raw.get(name) not in (None, "") else None

    recipients = {}
    for number, value in rcpt.items():
        data = json.loads(value)
        recipients[number] = RecipientState(
            status=data.get("status") or "", delivered_at=data.get("delivered_at") or None,
            changed_at=data.get("changed_at") or None, final=data.get("final") == 1,
        )
    return OrderRecord(
        order_id=raw["order_id"], state=raw.get("state", ""), message_type=raw.get("message_type", ""),
        sender=opt("sender"), created_at=raw.get("created_at", ""), scheduled_at=opt("scheduled_at"),
        accepted_at=opt("accepted_at"), recipients=recipients, polls=int(raw.get("polls") or 0),
        final=raw.get("final") == "1", cancelled=raw.get("cancelled") == "1", credits=opt_int("credits"),
        parts=opt_int("parts"), batch_id=opt("batch_id"), task_id=opt("task_id"),
        attempts=int(raw.get("attempts") or 0), error_code=opt("error_code"), error=opt("error"),
        history=[json.loads(h) for h in history],
    )
