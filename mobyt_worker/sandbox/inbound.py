"""The fake provider's received SMS: ids 1, 2, 3..., found by id, by date, or as new.

Not locked on its own: the provider calls it under its lock.
"""

from __future__ import annotations

import bisect
from datetime import datetime

from ..provider.protocol import InboundMessage


class Inbound:
    def __init__(self) -> None:
        self._messages: list[InboundMessage] = []  # id n is at index n - 1
        self._keys: list[tuple[float, int]] = []  # (received epoch, id), sorted
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, receiver: str, sender: str, text: str, received_at: datetime, keyword: str) -> InboundMessage:
        message = InboundMessage(len(self._messages) + 1, receiver, sender, text, received_at, keyword)
        self._messages.append(message)
        bisect.insort(self._keys, (received_at.timestamp(), message.id))
        return message

    def take_new(self) -> list[InboundMessage]:
        """SRNEWMESSAGES: destructive, once answered never again (even if the answer is lost)."""
        rows = self._messages[self._cursor :]
        self._cursor = len(self._messages)
        return rows

    def between(self, start: float, end: float) -> list[InboundMessage]:
        """Received from ``start`` to the whole ``end`` second, by id."""
        lo = bisect.bisect_left(self._keys, (start, 0))
        hi = bisect.bisect_left(self._keys, (end + 1, 0))
        return sorted((self._messages[i - 1] for _, i in self._keys[lo:hi]), key=lambda m: m.id)

    def after(self, message_id: int) -> list[InboundMessage]:
        return self._messages[message_id:]  # ids are 1, 2, 3...: id > n starts at index n
