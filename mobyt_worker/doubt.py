"""Evidence about a send that may have reached the provider (SPEC §4).

A lost answer, a timeout, a 5xx or a killed worker leave an order in doubt: the provider
may have billed it. A real provider answers SMSSTATUS for an order it does not have with a
KO of its own (``KO|31|Order not found``) and the seed documents no codes, so a KO is
consistent with absence and proves nothing either way. What ends a doubt:

- *accepted*: SMSSTATUS lists rows for the order, or SMSHISTORY lists it;
- *absent*: SMSHISTORY answered OK over the order's whole :class:`Window` without listing
  it, read once every attempt has landed if it ever will, whatever SMSSTATUS said
  (SMSSTATUS rows, when there are any, always win).

Anything else (a read that fails, a window not readable yet, another worker's sweep under
way) is *unclear*: the order stays in doubt and is asked again later; it is never sent on
a guess. The history is read in sweeps that every order in doubt shares (sweeps.py).

The window, in whole seconds of the provider's clock, runs from the first attempt of the
doubt (``doubt_since``) minus MOBYT_CLOCK_MARGIN (how far the provider's clock may be from
ours) to the end of the last attempt (``ambiguous_at``: when it failed, or when its lock
ran out if no failure was recorded) plus MOBYT_DOUBT_GRACE (a request still queued at the
provider may land that late) plus the margin. A sweep at time T counts as read only the
seconds before T minus the margin, which the provider's clock has surely passed: a row
created later cannot carry them. So a window is readable from ``end + 1 + margin``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Protocol

from .delivery import ABSENT, ACCEPTED, UNCLEAR  # the verdicts the policy reads
from .errors import ProviderError, ProviderRejected, ProviderUnavailable
from .provider.protocol import RecipientStatus, repeated_local_time

if TYPE_CHECKING:
    from .provider.client import MobytClient
    from .config import Settings
    from .store.orders import OrderRecord


#: Another worker is sweeping SMSHISTORY: ask again after this long (a page usually takes
#: well under a second; its answer then serves this order too).
SWEEP_WAIT = 1.0
#: How long the provider remembers an order (SMSSTATUS for 30 days).
PROVIDER_MEMORY = timedelta(days=30)


@dataclass(frozen=True)
class Window:
    """The provider-clock seconds an order's attempts may carry in SMSHISTORY."""

    start: int
    end: int  # inclusive
    readable_at: float  # epoch from which a sweep may count every second of it as read


def window(first: float, last: float, grace: float, margin: float) -> Window:
    """The window of attempts from ``first`` to ``last`` (epochs, ours)."""
    end = math.floor(max(first, last) + grace + margin)
    return Window(math.floor(first - margin), end, end + 1 + margin)


def window_of(record: OrderRecord, settings: Settings, now: float) -> Window:
    first = record.doubt_since or record.claimed_at or _created(record, now)
    return window(first, record.ambiguous_at or first, settings.doubt_grace, settings.clock_margin)


@dataclass(frozen=True)
class Evidence:
    verdict: str  # ACCEPTED, ABSENT or UNCLEAR
    rows: list[RecipientStatus] = field(default_factory=list)
    error: ProviderError | None = None  # why it is unclear, when a read failed
    ask_after: float = 0.0  # epoch before which asking again cannot settle it
    early: bool = False  # no read of its own could have settled it yet (not readable, or another worker reading)
    why: str = ""  # why it is unclear, when no read failed


class History(Protocol):
    """Whether SMSHISTORY lists an order over a readable window (sweeps.HistorySweeps)."""

    def listed(self, order_id: str, window: Window, now: float) -> bool | None:
        """True if listed, False if a read covering ``window`` did not list it, None if not
        known yet (another worker is reading). Raises ProviderError when a read failed."""
        ...


def gather(client: MobytClient, history: History, settings: Settings, record: OrderRecord,
           now: float | None = None) -> Evidence:
    """Ask the provider what happened to ``record``'s attempts; never sends."""
    now = time.time() if now is None else now
    status_error: ProviderError | None = None
    try:
        rows = client.sms_status(record.order_id)
    except (ProviderRejected, ProviderUnavailable) as exc:  # a KO, or a failed read: neither says absent
        rows, status_error = [], exc
    if rows:
        return Evidence(ACCEPTED, rows)
    span = window_of(record, settings, now)
    if now < span.readable_at:  # a request still queued at the provider may yet land
        return Evidence(UNCLEAR, error=status_error, ask_after=span.readable_at, early=True,
                        why="no evidence yet: the grace and the clock margin are not over")
    try:
        listed = history.listed(record.order_id, span, now)
    except (ProviderRejected, ProviderUnavailable) as exc:
        return Evidence(UNCLEAR, error=exc)
    if listed is None:
        return Evidence(UNCLEAR, ask_after=now + SWEEP_WAIT, early=True, why="another worker is reading SMSHISTORY")
    return Evidence(ACCEPTED if listed else ABSENT)


def gone(client: MobytClient, record: OrderRecord, margin: float, now: float | None = None) -> bool:
    """Whether the provider no longer has ``record``, an order it accepted (a cancel whose
    REMOVE_DELAYED answer was lost). Neither the refused REMOVE_DELAYED nor an SMSSTATUS
    KO say so: a KO is what a provider answers for an order it does not have, and also for
    one it cannot show right now, and calling an order cancelled that the provider still
    holds would let it be sent while we say it was not. What does say so: SMSSTATUS lists
    no rows for it (rows, SCHEDULED or not, mean it is still there) **and** SMSHISTORY,
    over the seconds it was created in, answers OK without it. We know the provider had it
    (it answered OK), so a history without it is a history it was removed from.

    The seed does not say whether SMSHISTORY keeps removed orders. If it does, this never
    proves the order gone: the cancel is refused and the order stays ``scheduled`` and
    followed, never ``cancelled`` while the provider may still send it. One read of the
    order's own seconds: the shared sweeps (sweeps.py) may have listed it before it was
    removed, and are no evidence of what the provider holds now."""
    now = time.time() if now is None else now
    try:
        if client.sms_status(record.order_id):
            return False
    except (ProviderRejected, ProviderUnavailable):
        pass
    first = record.doubt_since or record.claimed_at or _created(record, now)
    accepted = datetime.fromisoformat(record.accepted_at).timestamp() if record.accepted_at else now
    start = datetime.fromtimestamp(math.floor(first - margin), timezone.utc)
    end = datetime.fromtimestamp(math.ceil(max(first, accepted) + margin), timezone.utc)
    if repeated_local_time(start, end, client.settings.timezone):  # no answer about it proves a thing
        return False
    try:
        for _, _, rows in client.sms_history_windows(start, end):
            if any(row.order_id == record.order_id for row in rows):
                return False
    except (ProviderRejected, ProviderUnavailable):
        return False
    return True


def _created(record: OrderRecord, now: float) -> float:
    try:
        return datetime.fromisoformat(record.created_at).timestamp()
    except ValueError:  # no trustworthy start: cover the provider's whole memory
        return now - PROVIDER_MEMORY.total_seconds()
