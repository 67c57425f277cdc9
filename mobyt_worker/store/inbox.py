"""Inbound SMS in Redis: each message stored once, whichever way it arrived.

A message reaches us three ways: SRNEWMESSAGES (``poll``), SRHISTORYBYID
(``reconcile``) and the provider's POST (``push``). All three go through
:meth:`InboxStore.store`, one Lua script keyed by the provider's message id: the
first arrival stores the message, appends it to the inbound stream and, if it says
STOP (:mod:`keywords`) and its sender is a phone number, records the opt-out; every later
arrival of the same id changes nothing. A new opt-out waits in ``P:optout:pending`` until
``mobyt.apply_optout`` has withdrawn the number from the orders scheduled for it; the
``on_stored`` hook (the Runtime's) publishes that task at once.

A sender that does not parse as a phone number (an alphanumeric name, garbage) is kept
apart: ``sender`` stays empty, the text it came with is in ``raw_sender`` and
``bad_sender`` is 1. It is never an opt-out key, whatever the message says.

Key schema (``P`` is ``MOBYT_KEY_PREFIX``):

===========================  ======  ====================================================
key                          type    content
===========================  ======  ====================================================
``P:inbox:msg:{id}``         hash    id, receiver, sender (as received; empty when it is
                                     no phone number), raw_sender (then: as received),
                                     bad_sender (1 then, else 0), text, received_at
                                     (ISO-8601 with offset, or empty), keyword (the
                                     provider's, else the text's first word: a push carries
                                     none), source (poll|push|reconcile: the first
                                     arrival), stored_at (ISO-8601 UTC), stop (1 for a
                                     STOP, else 0)
``P:inbox:ids``              zset    message id scored by id (listing, idempotency)
``P:inbound``                stream  one entry per message, first arrival only (below)
``P:inbox:hwm``              string  greatest message id ever stored
``P:inbox:reconciled``       string  id up to which SRHISTORYBYID confirmed the inbox
``P:optout``                 hash    numbers that sent STOP (see :mod:`optouts`)
``P:optout:pending``         zset    new opt-outs not yet applied to scheduled orders
``P:events``                 stream  also gets ``type=optout`` when a STOP adds a number
===========================  ======  ====================================================

Fields of a ``P:inbound`` entry (consume with ``XREADGROUP``): ``type`` (``inbound``),
``id``, ``receiver``, ``sender``, ``raw_sender``, ``bad_sender``, ``text``,
``received_at``, ``keyword``, ``source``, ``stored_at``, ``stop`` (``1`` if the message
is a STOP). A ``P:events`` opt-out entry: ``type=optout``, ``number`` (E.164),
``message_id``, ``at``.

Messages and the id index expire ``order_ttl`` seconds (30 days) after they were stored;
the two cursors never expire.

Why reconciliation has its own cursor: SRNEWMESSAGES is a destructive read. If a worker
dies (or its connection drops) after the provider answered, the provider has marked
those messages read and no later SRNEWMESSAGES returns them. Meanwhile other polls keep
storing newer ids, so the high-water mark moves past the lost ones. Reconciling "from
the high-water mark" would therefore never look at them again. ``P:inbox:reconciled``
only moves when SRHISTORYBYID itself returned every message above it and each was
stored, so anything a poll lost is at or above it, and the next reconciliation stores it.
The store being idempotent, polls, pushes and reconciliations may overlap freely.

There is deliberately no lock around SRNEWMESSAGES: two concurrent reads get disjoint
sets (or, at worst, one of them loses its answer, which reconciliation repairs), and a
lock held by a worker that died would delay every poll until its lease ran out.

The first reconciliation of a fresh Redis starts from id 0: it stores the provider's
whole inbox history once (source ``reconcile``), STOPs included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, cast

import redis

from . import scripts
from ..errors import InvalidInput
from .keys import Keys
from ..keywords import is_stop
from .optouts import OptOuts
from ..provider.protocol import InboundMessage
from ..sms import normalize_recipient
from .orders import now_iso

SOURCES = ("poll", "push", "reconcile")
#: Expired message ids trimmed from the head of the id index per store (amortised cleanup).
_TRIM_PER_STORE = 10
#: A sender that is no phone number is kept, cut to this many characters.
_RAW_SENDER_CHARS = 64


@dataclass(frozen=True)
class Arrival:
    """A message stored for the first time, as the ``on_stored`` hook sees it."""

    message_id: int
    source: str
    number: str | None  # the sender in E.164; None when it is no phone number
    opted_out: bool  # the message added an opt-out of ``number``


@dataclass(frozen=True)
class StoreResult:
    received: int
    new: int
    stops: int
    max_id: int

    def to_dict(self) -> dict[str, int]:
        return {"received": self.received, "new": self.new, "stops": self.stops, "max_id": self.max_id}


def first_word(text: str) -> str:
    """The keyword of a message that came without one (a push): its first word, as written."""
    words = text.split()
    return words[0] if words else ""


class InboxStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "mobyt",
        *,
        ttl: int = 30 * 24 * 3600,
        stream_maxlen: int = 100_000,
        country: str = "FR",
        replay_after: float = 120.0,
        on_stored: Callable[[Arrival], None] | None = None,
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.optouts = OptOuts(client, prefix, replay_after=replay_after)
        self.on_stored = on_stored
        self.ttl = ttl
        self.stream_maxlen = stream_maxlen
        self.country = country
        self._store = scripts.register(client, "store_inbound")
        self._advance = scripts.register(client, "advance_cursor")

    # --- writing --------------------------------------------------------------------

    def store(self, message: InboundMessage, *, source: str) -> bool:
        """Store one message atomically; True if its id was new (then ``on_stored`` sees it)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        if isinstance(message.id, bool) or not isinstance(message.id, int) or message.id <= 0:
            raise InvalidInput("id", "must be an integer > 0")
        at = now_iso()
        number = self._number(message.sender)
        stop = is_stop(message.keyword, message.text)
        fields = {
            "id": str(message.id),
            "receiver": message.receiver,
            "sender": message.sender if number else "",
            "raw_sender": "" if number else message.sender[:_RAW_SENDER_CHARS],
            "bad_sender": "0" if number else "1",
            "text": message.text,
            "received_at": message.received_at.isoformat() if message.received_at else "",
            "keyword": message.keyword or first_word(message.text),
            "source": source,
            "stored_at": at,
            "stop": "1" if stop else "0",
        }
        stop_number = number if stop and number else ""
        flat = [part for pair in fields.items() for part in pair]
        stored = self._store(
            keys=[self.keys.inbox_message(message.id), self.keys.inbox_ids, self.keys.inbound, self.keys.inbox_hwm,
                  self.optouts.key, self.keys.events, self.optouts.pending_key],
            args=[message.id, json.dumps(flat), self.ttl, self.stream_maxlen, stop_number,
                  OptOuts.entry(message.id, at), at, self.keys.inbox_message_prefix, _TRIM_PER_STORE,
                  time.time() + self.optouts.replay_after],
        )
        if stored and self.on_stored is not None:
            self.on_stored(Arrival(message.id, source, number, opted_out=stored == 2))
        return bool(stored)

    def store_all(self, messages: Iterable[InboundMessage], *, source: str) -> StoreResult:
        received = new = stops = max_id = 0
        for message in messages:
            received += 1
            max_id = max(max_id, message.id)
            if self.store(message, source=source):
                new += 1
                stops += is_stop(message.keyword, message.text)
        return StoreResult(received, new, stops, max_id)

    def reconcile(self, fetch_since: Callable[[int], list[InboundMessage]]) -> dict[str, int]:
        """Store whatever SRHISTORYBYID (``fetch_since``) returns above the reconciled
        cursor, then move the cursor to the greatest id seen. Storing comes first: a
        crash in between only means the next run reads those messages again."""
        cursor = self.reconciled()
        result = self.store_all(fetch_since(cursor), source="reconcile")
        if result.max_id > cursor:
            self._advance(keys=[self.keys.inbox_reconciled], args=[result.max_id])
        return {**result.to_dict(), "from_id": cursor, "reconciled": max(cursor, result.max_id)}

    def _number(self, sender: str) -> str | None:
        """The sender in E.164, or None when it does not parse as a phone number."""
        try:
            return normalize_recipient(sender, self.country)
        except (InvalidInput, ValueError):
            return None

    # --- reading --------------------------------------------------------------------

    def high_water_mark(self) -> int:
        return int(self.redis.get(self.keys.inbox_hwm) or 0)

    def reconciled(self) -> int:
        return int(self.redis.get(self.keys.inbox_reconciled) or 0)

    def get(self, message_id: int) -> dict[str, Any] | None:
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.inbox_message(message_id)))
        return _decode(raw) if raw else None

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """Stored messages, greatest id first; ids whose message expired are dropped."""
        ids = cast(list[str], self.redis.zrevrange(self.keys.inbox_ids, 0, max(0, limit - 1)))
        with self.redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hgetall(self.keys.inbox_message(int(message_id)))
            rows = pipe.execute()
        expired = [message_id for message_id, raw in zip(ids, rows) if not raw]
        if expired:
            self.redis.zrem(self.keys.inbox_ids, *expired)
        return [_decode(raw) for raw in rows if raw]

    def count(self) -> int:
        return self.redis.zcard(self.keys.inbox_ids)

    def stream_length(self) -> int:
        return self.redis.xlen(self.keys.inbound)


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    return {**raw, "id": int(raw["id"]), "stop": raw.get("stop") == "1", "bad_sender": raw.get("bad_sender") == "1"}

