"""What the fake provider accepts, refuses and bills: rules that hold no state.

KO codes (``KO|<code>|<message>``); an unknown path is an HTTP 404:

====  ==========================================================================
10    authentication failed (wrong or missing ``login``/``password``)
20    missing parameter: <name>
21    invalid parameter: <name> (<reason>)
30    insufficient credits (nothing is debited)
40    unknown order_id (never sent, removed by REMOVE_DELAYED, or older than 30 days)
41    order not cancellable (not a scheduled send, or its time has come)
50    default code of an injected ``ko`` fault ("service temporarily unavailable")
====  ==========================================================================

Credits: cost = parts x recipients. Parts follow GSM 03.38: <= 160 units is 1 part,
else ceil(units / 153), ``^ { } \\ [ ~ ] | €`` counting 2 units. A message with any
character outside GSM 03.38 is counted as UCS-2 (<= 70 is 1 part, else ceil(n / 67)).
More than 1000 units is refused (KO 21). The bucket is (message_type, account country)
for local numbers and numbers of the account's country (``+33``/``0033`` for FR),
``("EE", "")`` for any other country.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from ..provider import protocol
from ..contract import is_order_id
from ..sms import GSM_ALPHABET, GSM_EXTENDED, PART_UNITS, SINGLE_SMS_UNITS

KO_AUTH, KO_MISSING, KO_INVALID = "10", "20", "21"
KO_CREDITS, KO_UNKNOWN_ORDER, KO_NOT_CANCELLABLE, KO_INJECTED = "30", "40", "41", "50"

#: Calling codes used to tell national numbers from foreign ones (EE bucket).
CALLING_CODES = {
    "FR": "33", "BE": "32", "CH": "41", "DE": "49", "ES": "34", "GB": "44",
    "IT": "39", "LU": "352", "MC": "377", "NL": "31", "PT": "351",
}  # fmt: skip

_NUMBER = re.compile(r"\+?[0-9]{4,20}")
_SENDER = re.compile(r"[A-Za-z0-9]{1,11}|\+?[0-9]{3,16}")
_DATE = re.compile(r"[0-9]{14}")


class Refused(Exception):
    """Becomes ``KO|code|message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def missing(name: str) -> Refused:
    return Refused(KO_MISSING, f"missing parameter: {name}")


def invalid(name: str, reason: str) -> Refused:
    return Refused(KO_INVALID, f"invalid parameter: {name} ({reason})")


def required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise missing(name)
    return value


def measure(message: str) -> tuple[int, int]:
    """Units and parts billed for one recipient (GSM 03.38, else UCS-2; see the docstring)."""
    if all(c in GSM_ALPHABET for c in message):
        units = len(message) + sum(1 for c in message if c in GSM_EXTENDED)
        single, multi = SINGLE_SMS_UNITS, PART_UNITS
    else:
        units = len(message.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return units, (1 if units <= single else math.ceil(units / multi))


def normalize(number: str, calling_code: str | None) -> str:
    """International form when possible, so '0612...' and '+33612...' match."""
    if number.startswith("+"):
        return number
    if number.startswith("00"):
        return "+" + number[2:]
    if calling_code:
        return "+" + calling_code + (number[1:] if number.startswith("0") else number)
    return "local:" + number


def bucket(message_type: str, normalized: str, country: str, calling_code: str | None) -> tuple[str, str]:
    """The credit bucket one recipient is billed from."""
    national = normalized.startswith("local:") or (
        calling_code is not None and normalized.startswith("+" + calling_code)
    )
    return (message_type, country) if national else ("EE", "")


def parse_date(raw: str, name: str, tz: ZoneInfo) -> float:
    if not _DATE.fullmatch(raw):
        raise invalid(name, "expected yyyymmddhhmmss")
    try:
        return datetime.strptime(raw, protocol.DATE_FORMAT).replace(tzinfo=tz).timestamp()
    except ValueError:
        raise invalid(name, "not a valid date") from None


@dataclass(frozen=True)
class SendParams:
    """A SENDSMS request that passed every check needing no state."""

    message_type: str
    numbers: list[str]  # as sent
    parts: int  # billed per recipient
    sender: str  # empty for SMS Direct (L)
    at: float | None  # scheduled_delivery_time
    order_id: str  # empty: the provider picks one


def parse_send(p: dict[str, str], tz: ZoneInfo) -> SendParams:
    """SENDSMS parameters, checked in the provider's order (the first failure is the KO)."""
    message_type = required(p, "message_type")
    if message_type not in ("N", "L"):
        raise invalid("message_type", "must be N or L")
    numbers = [n.strip() for n in required(p, "recipient").split(",") if n.strip()]
    if not numbers:
        raise missing("recipient")
    if not all(_NUMBER.fullmatch(n) for n in numbers):
        raise invalid("recipient", "not a phone number")
    message = p.get("message", "")
    if not message.strip():
        raise missing("message")
    units, parts = measure(message)
    if units > 1000:
        raise invalid("message", "longer than 1000 characters")
    sender = p.get("sender", "").strip()
    if message_type == "N" and not sender:
        raise missing("sender")
    if message_type == "N" and not _SENDER.fullmatch(sender):
        raise invalid("sender", "up to 11 alphanumerics or a phone number")
    if message_type == "L":
        sender = ""  # SMS Direct has a fixed sender: history leaves it empty
    raw_schedule = p.get("scheduled_delivery_time", "").strip()
    scheduled_at = parse_date(raw_schedule, "scheduled_delivery_time", tz) if raw_schedule else None
    order_id = p.get("order_id", "").strip()[:32]  # the excess is ignored, like the provider
    if order_id and not is_order_id(order_id):
        raise invalid("order_id", "up to 32 alphanumerics")
    return SendParams(message_type, numbers, parts, sender, scheduled_at, order_id)
