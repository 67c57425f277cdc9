"""The Mobyt wire format: decode answers into small typed values, and encode them.

Answers are plain text. ``KO|code|message`` is a refusal. Tables use ``|`` between
columns and ``;`` between rows; fields carrying numbers or text are URL-encoded
(``%2B336...``, ``hello+world``) and are decoded only *after* splitting, so a ``|``
or ``;`` inside a text (sent as ``%7C`` / ``%3B``) never breaks a row. Dates are
``yyyymmddhhmmss`` in the provider's local time and become aware datetimes.

The encoders are the exact inverse of the decoders; the simulator speaks through
them, and the property tests round-trip through both.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote_plus, unquote_plus
from zoneinfo import ZoneInfo

from ..errors import ProviderBadResponse, ProviderEmptyResponse, ProviderRejected

DATE_FORMAT = "%Y%m%d%H%M%S"


class Status(str, enum.Enum):
    """Per-recipient delivery status as Mobyt reports it."""

    SCHEDULED = "SCHEDULED"
    SENT = "SENT"
    DLVRD = "DLVRD"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    TOOM4NUM = "TOOM4NUM"
    TOOM4USER = "TOOM4USER"
    UNKNPFX = "UNKNPFX"
    UNKNRCPT = "UNKNRCPT"
    WAIT4DLVR = "WAIT4DLVR"
    WAITING = "WAITING"
    UNKNOWN = "UNKNOWN"
    BLACKLISTED = "BLACKLISTED"

    @property
    def is_final(self) -> bool:
        """No later status will come. SENT is final only where no receipt is expected."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        Status.DLVRD,
        Status.ERROR,
        Status.TIMEOUT,
        Status.TOOM4NUM,
        Status.TOOM4USER,
        Status.UNKNPFX,
        Status.UNKNRCPT,
        Status.BLACKLISTED,
    }
)


@dataclass(frozen=True)
class SendReceipt:
    """``OK|order_id|n``: n is the number of recipients, or credits used with returnCredits."""

    order_id: str
    count: int


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str
    status: Status
    delivered_at: datetime | None
    written: str = ""  # the provider's own word when the seed does not list it (status is UNKNOWN then)

    @property
    def label(self) -> str:
        """The status as the provider wrote it: a status the seed does not list is kept, not final."""
        return self.written or self.status.value


@dataclass(frozen=True)
class HistoryRow:
    """One SMSHISTORY row; the provider leaves order_id, sender and scheduled empty at times."""

    order_id: str
    created_at: datetime | None
    message_type: str
    sender: str
    recipients: int
    scheduled_at: datetime | None


@dataclass(frozen=True)
class CreditRow:
    """Available credits of one type (N, L, or EE for abroad) in one nation ('' for EE)."""

    message_type: str
    nation: str
    available: int


@dataclass(frozen=True)
class InboundMessage:
    id: int
    receiver: str
    sender: str
    text: str
    received_at: datetime | None
    keyword: str


# --- dates ---------------------------------------------------------------------------


def format_date(value: datetime, tz: ZoneInfo) -> str:
    """An aware datetime as the provider's local ``yyyymmddhhmmss``."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: the provider zone cannot be inferred")
    return value.astimezone(tz).strftime(DATE_FORMAT)


def repeated_local_time(first: datetime, last: datetime, tz: ZoneInfo) -> bool:
    """Whether ``first`` .. ``last`` touch local times that occur twice (the autumn clock
    change): the provider's dates carry no offset, so an answer about them may be about
    the other occurrence."""
    ends = [value.astimezone(tz) for value in (first, last)]
    twice = any(t.replace(fold=1 - t.fold).utcoffset() != t.utcoffset() for t in ends)
    zero = timedelta(0)
    return twice or (ends[1].utcoffset() or zero) < (ends[0].utcoffset() or zero)


def parse_date(raw: str, tz: ZoneInfo) -> datetime | None:
    """``yyyymmddhhmmss`` in the provider's zone; empty means absent."""
    raw = raw.strip()
    if not raw:
        return None
    if len(raw) != 14 or not raw.isdigit():
        raise ProviderBadResponse(f"malformed date {raw[:40]!r}")
    try:
        return datetime.strptime(raw, DATE_FORMAT).replace(tzinfo=tz)
    except ValueError:
        raise ProviderBadResponse(f"malformed date {raw!r}") from None


# --- decoding ------------------------------------------------------------------------


def check_body(body: str) -> str:
    """Raise for a KO, an empty or a non-protocol body; return the body stripped."""
    text = body.strip()
    if not text:
        raise ProviderEmptyResponse("empty answer")
    if text.startswith("KO"):
        parts = text.split("|", 2)
        if len(parts) >= 2 and parts[0] == "KO":
            code = parts[1].strip()
            message = parts[2].strip() if len(parts) > 2 else ""
            raise ProviderRejected(message or "refused", code)
    if not text.startswith("OK"):
        raise ProviderBadResponse(f"not a Mobyt answer: {_preview(text)}")
    return text


def _rows(body: str) -> list[list[str]]:
    """Split an ``OK;row;row;`` table into columns, leaving fields still encoded."""
    text = check_body(body)
    if text != "OK" and not text.startswith("OK;"):
        raise ProviderBadResponse(f"expected a table: {_preview(text)}")
    return [row.split("|") for row in text[3:].split(";") if row.strip()]


def _int(raw: str, what: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ProviderBadResponse(f"{what} is not a number: {raw[:40]!r}") from None


def _columns(row: list[str], minimum: int, maximum: int, what: str) -> list[str]:
    if not minimum <= len(row) <= maximum:
        raise ProviderBadResponse(f"{what} row has {len(row)} columns: {_preview('|'.join(row))}")
    return row + [""] * (maximum - len(row))


def decode_send(body: str) -> SendReceipt:
    text = check_body(body)
    parts = text.split("|")
    if len(parts) != 3 or parts[0] != "OK" or not parts[1].strip():
        raise ProviderBadResponse(f"unexpected SENDSMS answer: {_preview(text)}")
    return SendReceipt(order_id=parts[1].strip(), count=_int(parts[2], "SENDSMS count"))


def decode_status(body: str, tz: ZoneInfo) -> list[RecipientStatus]:
    result = []
    for row in _rows(body):
        recipient, status, delivered = _columns(row, 2, 3, "SMSSTATUS")
        status = status.strip()
        if not re.fullmatch(r"[A-Z0-9]+", status):  # empty or mangled: the answer was cut
            raise ProviderBadResponse(f"SMSSTATUS row without a status: {_preview('|'.join(row))}")
        try:
            state, written = Status(status), ""
        except ValueError:  # a status added by the provider after this code was written
            state, written = Status.UNKNOWN, status
        result.append(RecipientStatus(unquote_plus(recipient), state, parse_date(delivered, tz), written))
    return result


def decode_ok(body: str) -> None:
    """REMOVE_DELAYED answers ``OK;`` (accept ``OK`` too)."""
    text = check_body(body)
    if text not in ("OK", "OK;"):
        raise ProviderBadResponse(f"unexpected answer: {_preview(text)}")


def decode_history(body: str, tz: ZoneInfo) -> list[HistoryRow]:
    result = []
    for row in _rows(body):
        order_id, created, kind, sender, count, scheduled = _columns(row, 5, 6, "SMSHISTORY")
        result.append(
            HistoryRow(
                order_id=order_id.strip(),
                created_at=parse_date(created, tz),
                message_type=kind.strip(),
                sender=unquote_plus(sender),
                recipients=_int(count, "SMSHISTORY recipients") if count.strip() else 0,
                scheduled_at=parse_date(scheduled, tz),
            )
        )
    return result


def decode_credits(body: str) -> list[CreditRow]:
    result = []
    for row in _rows(body):
        kind, nation, available = _columns(row, 3, 3, "CREDITS")
        result.append(CreditRow(kind.strip(), nation.strip(), _int(available, "CREDITS available")))
    return result


def decode_inbox(body: str, tz: ZoneInfo) -> list[InboundMessage]:
    result = []
    for row in _rows(body):
        msg_id, receiver, sender, text, date, keyword = _columns(row, 5, 6, "inbox")
        result.append(
            InboundMessage(
                id=_int(msg_id, "message id"),
                receiver=unquote_plus(receiver),
                sender=unquote_plus(sender),
                text=unquote_plus(text),
                received_at=parse_date(date, tz),
                keyword=unquote_plus(keyword),
            )
        )
    return result


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat[:80] + ("…" if len(flat) > 80 else ""))


# --- encoding (the simulator's side, and the round-trip tests) -------------------------


def _enc(value: str) -> str:
    return quote_plus(value, safe="")


def _date(value: datetime | None, tz: ZoneInfo) -> str:
    return format_date(value, tz) if value is not None else ""


def encode_ko(code: str, message: str) -> str:
    return f"KO|{code}|{message}"


def encode_send(receipt: SendReceipt) -> str:
    return f"OK|{receipt.order_id}|{receipt.count}"


def encode_status(rows: list[RecipientStatus], tz: ZoneInfo) -> str:
    return "OK;" + "".join(
        f"{_enc(r.recipient)}|{r.label}|{_date(r.delivered_at, tz)};" for r in rows
    )


def encode_history(rows: list[HistoryRow], tz: ZoneInfo) -> str:
    return "OK;" + ";".join(
        f"{r.order_id}|{_date(r.created_at, tz)}|{r.message_type}|{_enc(r.sender)}|"
        f"{r.recipients}|{_date(r.scheduled_at, tz)}"
        for r in rows
    )


def encode_credits(rows: list[CreditRow]) -> str:
    return "OK;" + ";".join(f"{r.message_type}|{r.nation}|{r.available}" for r in rows)


def encode_inbox(rows: list[InboundMessage], tz: ZoneInfo) -> str:
    return "OK;" + "".join(
        f"{m.id}|{_enc(m.receiver)}|{_enc(m.sender)}|{_enc(m.text)}|"
        f"{_date(m.received_at, tz)}|{_enc(m.keyword)};"
        for m in rows
    )
