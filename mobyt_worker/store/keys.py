"""Key names: every Redis key the product writes is spelled here, under one prefix.

Key schema (``P`` is ``MOBYT_KEY_PREFIX``, default ``mobyt``):

====================================  ======  ==================================================
key                                   type    content
====================================  ======  ==================================================
``P:order:{order_id}``                hash    the order record (see :class:`OrderRecord`)
``P:order:{order_id}:rcpt``           hash    recipient -> JSON {status, delivered_at, changed_at, final}
``P:order:{order_id}:history``        list    JSON status changes, oldest first; the newest 20 per recipient
``P:order:{order_id}:lock``           string  send lock: one attempt in flight per order
``P:intents``                         zset    order_id of a ``queued`` intent, scored by when to replay it
``P:orders``                          zset    order_id scored by creation time (recent orders)
``P:poll:due``                        zset    order_id scored by when its next status poll is due
``P:doubt``                           zset    order_id of an ``in_doubt`` order, scored by when its record expires
``P:doubt:open``                      zset    order_id of every order in doubt (any state), scored by ``ambiguous_at``
``P:sweep:read``                      zset    ``start:end`` seconds of SMSHISTORY already read, scored by when read
``P:sweep:seen``                      zset    order_id those reads listed, scored by when read
``P:sweep:lock``                      string  one SMSHISTORY sweep at a time (see sweeps.py)
``P:batch:{batch_id}``                hash    chunk index -> order_id of a bulk send
``P:scheduled:{number}``              zset    order_id of an order scheduled for that (E.164) number, scored by
                                              its scheduled time; the key expires after the latest one
``P:events``                          stream  status changes and order events (docs/reference.md)
====================================  ======  ==================================================

The key table of docs/reference.md ("Redis keys") lists the others (inbox, opt-outs,
credits, metrics, beat).
"""

from __future__ import annotations


class Keys:
    """The one place key names are spelled, for every module (orders, inbox, opt-outs,
    credits, metrics, rate limit, beat). The table above and docs/reference.md's say
    what each holds."""

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
        self.optout_pending = f"{prefix}:optout:pending"
        self.credits = f"{prefix}:credits"
        self.credits_history = f"{prefix}:credits:history"
        self.metrics = f"{prefix}:metrics"
        self.send_rate = f"{prefix}:ratelimit:send"
        self.beat_prefix = f"{prefix}:beat:"  # RedBeat appends to it: P:beat:poll-due-orders, P:beat::schedule
        self.beat_lock = f"{prefix}:beat:lock"
        self.heartbeats = f"{prefix}:heartbeats"
        self.queue_oldest = f"{prefix}:queue:oldest"
        self.provider_ok = f"{prefix}:provider:last_ok"
        self.in_doubt = f"{prefix}:doubt"
        self.doubt_open = f"{prefix}:doubt:open"
        self.swept = f"{prefix}:sweep:read"
        self.swept_seen = f"{prefix}:sweep:seen"
        self.sweep_lock = f"{prefix}:sweep:lock"

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

    def scheduled(self, number: str) -> str:
        """Orders scheduled for ``number`` (E.164): what a STOP from it must withdraw."""
        return f"{self.prefix}:scheduled:{number}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def heartbeat(self, kind: str, host: str, pid: int) -> str:
        return f"{self.prefix}:heartbeat:{kind}:{host}:{pid}"

    def api_order(self, order_id: str) -> str:
        """The HTTP API's idempotency key of an enqueued order (its request's fingerprint)."""
        return f"{self.prefix}:api:order:{order_id}"

    def api_rate(self, token_id: str, window: int) -> str:
        return f"{self.prefix}:api:rate:{token_id}:{window}"

    def push_rate(self, callback: str, token_id: str) -> str:
        """The push receiver's rate limiter clock for one callback and webhook token."""
        return f"{self.prefix}:ratelimit:push:{callback}:{token_id}"

    def order_keys(self, order_id: str) -> list[str]:
        return [self.order(order_id), self.recipients(order_id), self.history(order_id)]
