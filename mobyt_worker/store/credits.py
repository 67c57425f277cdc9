"""Credits watch: the latest balance per (type, nation), a short history, low-balance alerts.

Keys (``P`` is ``MOBYT_KEY_PREFIX``):

=======================  ======  ======================================================
key                      type    content
=======================  ======  ======================================================
``P:credits``            hash    ``"{type}|{nation}"`` -> JSON {message_type, nation,
                                 available, lots, at} (nation is empty for EE)
``P:credits:history``    list    JSON {at, balances: {"N|FR": 9990, ...}}, newest
                                 first, at most :data:`HISTORY_LENGTH` entries
``P:events``             stream  ``type=credits_low`` entries (fields below)
=======================  ======  ======================================================

CREDITS may list the same (type, nation) on several rows (the seed's own example has
``L|ES|56;L|ES|56;L|ES|100``): we read them as separate lots of credit, so the balance is
their sum and ``lots`` keeps the rows as the provider gave them.

A balance under ``MOBYT_CREDIT_THRESHOLD`` logs a WARNING at every check. The
``credits_low`` event (fields ``type``, ``message_type``, ``nation``, ``available``,
``previous``, ``threshold``, ``at``) is emitted once per fall: when the balance goes
under the threshold (or is first seen under it), not again while it stays there. The
comparison and the write are one Lua script, so two overlapping checks emit one event.
A threshold of 0 turns alerts off.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import redis

from . import scripts
from .keys import Keys
from .orders import now_iso

if TYPE_CHECKING:
    from ..provider.client import MobytClient
    from ..provider.protocol import CreditRow

log = logging.getLogger(__name__)

HISTORY_LENGTH = 100


@dataclass(frozen=True)
class Balance:
    message_type: str
    nation: str
    available: int
    lots: tuple[int, ...]
    at: str

    @property
    def field(self) -> str:
        return balance_field(self.message_type, self.nation)

    def to_dict(self) -> dict[str, Any]:
        return {"message_type": self.message_type, "nation": self.nation, "available": self.available,
                "lots": list(self.lots), "at": self.at}


def balance_field(message_type: str, nation: str) -> str:
    return f"{message_type}|{nation}"


def balances_from_rows(rows: Iterable[CreditRow], at: str) -> list[Balance]:
    """One balance per (type, nation), summing repeated rows, in first-seen order."""
    lots: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        lots.setdefault((row.message_type, row.nation), []).append(row.available)
    return [Balance(kind, nation, sum(values), tuple(values), at) for (kind, nation), values in lots.items()]


class CreditsWatch:
    def __init__(
        self, client: redis.Redis, prefix: str = "mobyt", *, threshold: int = 0, stream_maxlen: int = 100_000,
        history_length: int = HISTORY_LENGTH,
    ) -> None:
        self.redis = client
        keys = Keys(prefix)
        self.key, self.history_key = keys.credits, keys.credits_history
        self.events_key = Keys(prefix).events
        self.threshold = threshold
        self.stream_maxlen = stream_maxlen
        self.history_length = history_length
        self._record = scripts.register(client, "record_credits")

    def record(self, rows: Iterable[CreditRow]) -> dict[str, Any]:
        """Store a CREDITS answer; return {at, balances, low, fallen}."""
        at = now_iso()
        balances = balances_from_rows(rows, at)
        entry = {"at": at, "balances": {b.field: b.available for b in balances}}
        fallen = self._record(
            keys=[self.key, self.history_key, self.events_key],
            args=[json.dumps([[b.field, json.dumps(b.to_dict()), b.available] for b in balances]),
                  json.dumps(entry), self.history_length, self.threshold, self.stream_maxlen, at],
        )
        low = [b for b in balances if b.available < self.threshold]
        for b in low:
            log.warning("mobyt credits low: %s %s has %d left (threshold %d)",
                        b.message_type, b.nation or "(abroad)", b.available, self.threshold)
        return {"at": at, "balances": [b.to_dict() for b in balances],
                "low": [b.field for b in low], "fallen": list(fallen)}

    def refresh(self, client: MobytClient) -> dict[str, Any]:
        """Ask the provider (CREDITS) and record the answer."""
        return self.record(client.credits())

    def balances(self) -> list[Balance]:
        """The stored balances, sorted by type then nation."""
        stored = [json.loads(v) for v in self.redis.hgetall(self.key).values()]
        return sorted(
            (Balance(d["message_type"], d["nation"], int(d["available"]), tuple(d.get("lots") or ()), d["at"])
             for d in stored),
            key=lambda b: (b.message_type, b.nation),
        )

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Past checks, newest first."""
        end = -1 if limit is None else max(0, limit - 1)
        return [json.loads(v) for v in self.redis.lrange(self.history_key, 0, end)]
