"""The delivery timeline of each recipient: a pure function of the clock.

Chosen by the LAST DIGIT of each recipient number, relative to the send time (or to the
scheduled time: a scheduled send is SCHEDULED until then), with ``d = delivery_delay``:

=====  =======================================================================
0-5    WAITING until 0.25d, WAIT4DLVR until d, then DLVRD (delivery_date = base + d)
6      WAIT4DLVR until 0.5d, then ERROR
7      UNKNRCPT at once
8      BLACKLISTED at once (so is any number that sent STOP to the inbox earlier)
9      WAIT4DLVR until ``timeout_after`` (48 h), then TIMEOUT
=====  =======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from ..provider.protocol import RecipientStatus, Status

#: Outcome by last digit (see the module docstring); anything else is delivered.
_OUTCOMES = {"6": "error", "7": "unknown", "8": "blacklisted", "9": "timeout"}

#: (start epoch, status, delivered epoch or None)
Step = tuple[float, Status, float | None]


@dataclass(eq=False, slots=True)
class Row:
    """One recipient of one send; its status is a pure function of the clock."""

    order_id: str
    number: str  # as sent
    outcome: str  # deliver | error | unknown | blacklisted | timeout
    sent_at: float
    base: float  # when the timeline starts: send time, or the scheduled time
    scheduled: bool
    pushed: int = -1  # index in the timeline of the last status POSTed
    cancelled: bool = False


def outcome(number: str, blacklisted: bool) -> str:
    return "blacklisted" if blacklisted else _OUTCOMES.get(number[-1], "deliver")


def steps(row: Row, delivery_delay: float, timeout_after: float) -> list[Step]:
    """The steps of one recipient; see the module table."""
    result: list[Step] = []
    if row.scheduled:
        result.append((row.sent_at, Status.SCHEDULED, None))
    b, d = row.base, delivery_delay
    if row.outcome == "deliver":
        result += [(b, Status.WAITING, None), (b + 0.25 * d, Status.WAIT4DLVR, None), (b + d, Status.DLVRD, b + d)]
    elif row.outcome == "error":
        result += [(b, Status.WAIT4DLVR, None), (b + 0.5 * d, Status.ERROR, None)]
    elif row.outcome == "unknown":
        result.append((b, Status.UNKNRCPT, None))
    elif row.outcome == "blacklisted":
        result.append((b, Status.BLACKLISTED, None))
    else:
        result += [(b, Status.WAIT4DLVR, None), (b + timeout_after, Status.TIMEOUT, None)]
    return result


def status_at(row: Row, timeline: list[Step], now: float, tz: ZoneInfo) -> RecipientStatus:
    current = timeline[0]
    for step in timeline[1:]:
        if step[0] > now:
            break
        current = step
    delivered = datetime.fromtimestamp(current[2], tz) if current[2] is not None else None
    return RecipientStatus(row.number, current[1], delivered)
