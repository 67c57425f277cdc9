"""What the ``mobyt`` command prints: aligned columns for humans, one JSON document
with ``--json`` (dates in ISO-8601), colours only on a terminal without NO_COLOR."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from collections import Counter
from datetime import date, datetime
from typing import Any, Callable, Sequence

from ..states import ACCEPTED, CANCELLED, COMPLETED, EXPIRED, FAILED, SCHEDULED, SENDING, UNSENT
from ..store.orders import OrderRecord


def plain(value: Any) -> Any:
    """Dataclasses, enums and dates as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], paint: Callable[[str], str] | None = None) -> str:
    """Aligned columns, two spaces apart; '-' for empty cells. ``paint`` colours body cells."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    body = paint or (lambda c: c)
    return "\n".join("  ".join((body(c) if i else c) + " " * (w - len(c)) for c, w in zip(row, widths)).rstrip()
                     for i, row in enumerate(cells))


def emit(args: argparse.Namespace, data: Any, human: str) -> int:
    print(json.dumps(plain(data), ensure_ascii=False, indent=2) if args.json else human)
    return 0


#: Terminal colours (SGR codes) of statuses and order states.
_GOOD, _BAD, _OPEN, _DIM = "32", "31", "33", "2"
_COLOURS = {
    **dict.fromkeys(("DLVRD", COMPLETED), _GOOD),
    **dict.fromkeys(("ERROR", "TIMEOUT", "TOOM4NUM", "TOOM4USER", "UNKNPFX", "UNKNRCPT", "BLACKLISTED", "UNKNOWN",
                     FAILED, EXPIRED), _BAD),
    **dict.fromkeys(("SCHEDULED", "SENT", "WAIT4DLVR", "WAITING", "pending", SENDING, UNSENT, SCHEDULED, ACCEPTED),
                    _OPEN),
    CANCELLED: _DIM,
}


def painter() -> Callable[[str], str] | None:
    """Colours for stdout when it is a terminal and NO_COLOR (no-color.org) is unset."""
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return None
    return lambda cell: f"\x1b[{_COLOURS[cell]}m{cell}\x1b[0m" if cell in _COLOURS else cell


def _statuses(record: OrderRecord) -> str:
    """``DLVRD 2, ERROR 1``; a recipient with no status yet counts as pending."""
    counts = Counter(r.status or "pending" for r in record.recipients.values())
    return ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))


def orders_table(records: Sequence[OrderRecord], paint: Callable[[str], str] | None) -> str:
    return table(["order_id", "state", "created_at", "type", "sender", "recipients", "statuses", "polls", "batch_id"],
                 [[r.order_id, r.state, r.created_at, r.message_type, r.sender, len(r.recipients), _statuses(r),
                   r.polls, r.batch_id] for r in records], paint)
