"""Evidence about a send that may have reached the provider.

A lost answer, a timeout, a 5xx or a killed worker leave an order in doubt: the provider
may have billed it. The seed documents no KO codes, so a KO or a failed read never proves
that an order does not exist. The only answers that end a doubt:

- *accepted*: SMSSTATUS lists rows for the order (or SMSHISTORY lists it);
- *absent*: SMSSTATUS answers cleanly without rows for it (or with a KO whose code
  ``MOBYT_ORDER_UNKNOWN_CODES`` declares to mean "unknown order"), **and**, asked at least
  ``MOBYT_DOUBT_GRACE`` seconds after the last attempt that may have reached the provider,
  SMSHISTORY answers cleanly over a window covering every attempt without the order.

Anything else (a transient failure, a KO, garbage, the grace not yet over) is *unclear*:
the order stays in doubt and is asked again later; it is never sent on a guess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from .errors import ProviderError, ProviderRejected, ProviderUnavailable
from .provider.protocol import RecipientStatus

if TYPE_CHECKING:
    from .provider.client import MobytClient
    from .config import Settings
    from .store.orders import OrderRecord

ACCEPTED, ABSENT, UNCLEAR = "accepted", "absent", "unclear"

#: SMSHISTORY is asked from this long before the order was created to this long after
#: the last attempt: the provider's clock and ours need not agree to the second.
CLOCK_MARGIN = timedelta(minutes=2)


@dataclass(frozen=True)
class Evidence:
    verdict: str  # ACCEPTED, ABSENT or UNCLEAR
    rows: list[RecipientStatus] = field(default_factory=list)
    error: ProviderError | None = None  # why it is unclear, when a read failed
    ask_after: float = 0.0  # epoch before which asking again cannot settle it (the grace)


def gather(client: MobytClient, settings: Settings, record: OrderRecord, now: float | None = None) -> Evidence:
    """Ask the provider what happened to ``record``'s attempts; never sends."""
    now = time.time() if now is None else now
    order_id = record.order_id
    try:
        rows = client.sms_status(order_id)
    except ProviderRejected as exc:
        if exc.code not in settings.order_unknown_codes:
            return Evidence(UNCLEAR, error=exc)
        rows = []
    except ProviderUnavailable as exc:
        return Evidence(UNCLEAR, error=exc)
    if rows:
        return Evidence(ACCEPTED, rows)
    last = record.ambiguous_at or record.doubt_since or now
    if now < last + settings.doubt_grace:  # a request still queued at the provider may yet land
        return Evidence(UNCLEAR, ask_after=last + settings.doubt_grace)
    start = _created(record, now) - CLOCK_MARGIN
    end = datetime.fromtimestamp(now, timezone.utc) + CLOCK_MARGIN
    try:
        for _, _, history in client.sms_history_windows(start, end):
            if any(row.order_id == order_id for row in history):
                return Evidence(ACCEPTED)
    except (ProviderRejected, ProviderUnavailable) as exc:
        return Evidence(UNCLEAR, error=exc)
    return Evidence(ABSENT)


def _created(record: OrderRecord, now: float) -> datetime:
    try:
        return datetime.fromisoformat(record.created_at)
    except ValueError:  # no trustworthy start: cover the provider's whole memory
        return datetime.fromtimestamp(now, timezone.utc) - timedelta(days=30)
