"""SMS rules: recipients, sender, type, order id, GSM 03.38 length, schedule, credits.

Pure functions, no I/O: a send is fully checked here before any HTTP call, and every
refusal is an :class:`InvalidInput` whose ``field`` is the public argument name.

Length follows the provider's billing rule: GSM 03.38 septets, where
``^ { } \\ [ ~ ] | €`` and form feed count 2; up to 160 units is one SMS, longer
messages cost ceil(units / 153) parts, 1000 units at most. (Handsets never split an
escape pair across parts, so the real segmentation may rarely use one part more.)

``STOP %NUM%``: to offer an opt-out, end the message with the literal text
``STOP %NUM%``. It is counted as written (10 units, '%' is GSM basic); the provider
replaces ``%NUM%`` with its short number, so the delivered text may differ from the
count by a few characters.

Characters outside GSM 03.38 are never sent as UCS-2 (70/67 characters per part
would silently triple the bill). Policy ``non_gsm``:

* ``"transliterate"`` (default): after NFC, each non-GSM character is replaced from
  :data:`TRANSLITERATIONS` (’‘«»“” → ' and ", dashes → -, … → ..., odd spaces and tab
  → space, œ → oe, ç → Ç: GSM only has the capital, which many handsets show as ç;
  zero-width characters dropped), else by its compatibility form without diacritics
  when that is pure GSM (â ê î ô û ë ï á í ó ú õ ã → a e i o u e i a i o u o a,
  Ａ → A, ﬁ → fi). Anything left (emoji, CJK, Cyrillic…) is refused, listed.
* ``"reject"``: any character outside GSM (after NFC) is refused.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING

import phonenumbers

from mobyt_worker.contract import SendSmsArgs, is_order_id
from mobyt_worker.errors import InvalidInput

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

GSM_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED: frozenset[str] = frozenset("\f^{}\\[~]|€")
GSM_ALPHABET: frozenset[str] = GSM_BASIC | GSM_EXTENDED
MAX_MESSAGE_UNITS = 1000
SINGLE_SMS_UNITS = 160
PART_UNITS = 153
NON_GSM_POLICIES = ("transliterate", "reject")

_SPACES = "\t\u00a0\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
TRANSLITERATIONS: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys("’‘‚‛′´`‹›", "'"),
    **dict.fromkeys("“”„‟″«»", '"'),
    **dict.fromkeys("‐‑‒–—―−", "-"),
    **dict.fromkeys(_SPACES, " "),
    **dict.fromkeys("\u2028\u2029", "\n"),
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),
    "…": "...", "œ": "oe", "Œ": "OE", "ç": "Ç",
})

_SENDER = re.compile(r"[A-Za-z0-9]{1,11}")
_PHONE = re.compile(r"\+?[0-9]+")
_SEPARATORS = re.compile(r"[\s.\-()]")


@dataclass(frozen=True)
class MessageLength:
    """How the provider will count and bill a message."""

    units: int  # GSM septets (extended characters count 2)
    parts: int  # 1 up to 160 units, else ceil(units / 153)
    text: str  # the text actually sent (after transliteration)


def mask_number(number: str) -> str:
    """Hide the middle of a phone number so logs and errors do not leak it."""
    if not isinstance(number, str) or len(number) < 9:
        return "***"
    return f"{number[:4]}*****{number[-2:]}"  # fixed width: the length is hidden too


def normalize_recipient(number: str, country: str = "FR") -> str:
    """Return ``number`` in E.164; local numbers use the account's ``country``."""
    region = country.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown country {country!r} (expected an ISO 3166 code)")
    if not isinstance(number, str):
        raise InvalidInput("recipients", f"must be a string, not {type(number).__name__}")
    cleaned = _SEPARATORS.sub("", number)
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]  # the provider's international prefix, any country
    parsed = None
    if _PHONE.fullmatch(cleaned) and len(cleaned) <= 20:  # no letters: no vanity numbers
        try:
            parsed = phonenumbers.parse(cleaned, region)
        except phonenumbers.NumberParseException:
            pass
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        why = f"{mask_number(cleaned)!r} is not a valid phone number"
        raise InvalidInput("recipients", f"{why} (use +33…, 0033… or a local {region} number)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_recipients(
    value: str | list[str] | tuple[str, ...], country: str = "FR"
) -> list[str]:
    """Validate a list or comma string of numbers; E.164, de-duplicated, in order."""
    if isinstance(value, str):
        items: Sequence[object] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise InvalidInput("recipients", "must be a list or a comma-separated string")
    result: dict[str, None] = {}  # ordered set: duplicates would be billed twice
    for index, item in enumerate(items):
        if not isinstance(item, str):
            kind = type(item).__name__
            raise InvalidInput("recipients", f"recipients[{index}] must be a string, not {kind}")
        if not item.strip():
            continue
        try:
            result.setdefault(normalize_recipient(item, country))
        except InvalidInput as error:
            raise InvalidInput("recipients", f"recipients[{index}]: {error.message}") from None
    if not result:
        raise InvalidInput("recipients", "at least one recipient is required")
    return list(result)


def validate_sender(sender: str, country: str = "FR") -> str:
    """Accept 1..11 ASCII letters/digits (the provider's rule) or a phone number (E.164)."""
    if not isinstance(sender, str):
        raise InvalidInput("sender", f"must be a string, got {type(sender).__name__}")
    value = sender.strip()
    if _SENDER.fullmatch(value) and not value.isdigit():
        return value
    if _PHONE.fullmatch(_SEPARATORS.sub("", value)):
        try:
            return normalize_recipient(value, country)
        except InvalidInput:
            pass  # digits that are no phone number may still be a short code
    if _SENDER.fullmatch(value):
        return value
    rule = "1 to 11 letters or digits [A-Za-z0-9] (no spaces, accents, punctuation)"
    raise InvalidInput("sender", f"must be {rule} or a phone number; got {len(value)} characters")


def validate_message_type(value: str) -> str:
    """``N`` (SMS Top, custom sender) or ``L`` (SMS Direct, fixed sender)."""
    kind = value.strip().upper() if isinstance(value, str) else ""
    if kind not in ("N", "L"):
        raise InvalidInput("message_type", "must be 'N' (custom sender) or 'L' (fixed sender)")
    return kind


def validate_order_id(value: str) -> str:
    """1..32 ASCII letters/digits: the provider silently truncates longer ids,
    which would make the order untrackable, so they are refused."""
    if not is_order_id(value):
        raise InvalidInput("order_id", "must be 1 to 32 letters or digits [A-Za-z0-9]")
    return value


def _transliterate(char: str) -> str | None:
    """GSM replacement for one non-GSM character, or None when there is none."""
    if char in TRANSLITERATIONS:
        return TRANSLITERATIONS[char]
    if unicodedata.combining(char):
        return ""
    decomposed = unicodedata.normalize("NFKD", char)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    if plain and GSM_ALPHABET.issuperset(plain) and (char.isspace() or not plain.isspace()):
        return plain  # ´ or ¨ would otherwise become a bare space
    return None


def message_length(text: str, non_gsm: str = "transliterate") -> MessageLength:
    """Count ``text`` the way the provider bills it, applying the non-GSM policy."""
    if non_gsm not in NON_GSM_POLICIES:
        raise ValueError(f"unknown non_gsm policy {non_gsm!r}; expected {NON_GSM_POLICIES}")
    if not isinstance(text, str):
        raise InvalidInput("message", f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput("message", "is empty")
    if len(text) > 10 * MAX_MESSAGE_UNITS:  # cheap bound before walking a huge string
        raise InvalidInput("message", f"{len(text)} characters, the maximum is 1000")
    sent: list[str] = []
    refused: dict[str, None] = {}
    for char in unicodedata.normalize("NFC", text):
        if char in GSM_ALPHABET or non_gsm == "transliterate":
            replacement = char if char in GSM_ALPHABET else _transliterate(char)
            if replacement is not None:
                sent.append(replacement)
                continue
        refused.setdefault(char)
    if refused:
        shown = ", ".join(repr(c) for c in list(refused)[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        why = f"characters outside the GSM 03.38 alphabet: {shown}{more}"
        raise InvalidInput("message", f"{why} (non_gsm={non_gsm!r}); remove or replace them")
    result = "".join(sent)
    if not result.strip():
        raise InvalidInput("message", "is empty")
    units = len(result) + sum(c in GSM_EXTENDED for c in result)
    if units > MAX_MESSAGE_UNITS:
        limit = f"the maximum is {MAX_MESSAGE_UNITS} (^ {{ }} \\ [ ~ ] | € count 2)"
        raise InvalidInput("message", f"{units} GSM characters, {limit}")
    parts = 1 if units <= SINGLE_SMS_UNITS else math.ceil(units / PART_UNITS)
    return MessageLength(units=units, parts=parts, text=result)


def validate_scheduled_at(
    value: str | datetime | None, now: datetime, tz: ZoneInfo
) -> datetime | None:
    """Parse an offset-aware time strictly after ``now``; return it in the provider zone."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            text = value.strip()
            if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not know "Z"
                text = text[:-1] + "+00:00"
            when = datetime.fromisoformat(text)
        except ValueError:
            why = f"{value[:40]!r} is not an ISO-8601 date-time (2030-01-01T12:00:00+01:00)"
            raise InvalidInput("scheduled_at", why) from None
    elif isinstance(value, datetime):
        when = value
    else:
        raise InvalidInput("scheduled_at", "must be an ISO-8601 string with a UTC offset")
    if when.utcoffset() is None:
        raise InvalidInput("scheduled_at", "needs a UTC offset (+01:00 or Z): naive is ambiguous")
    if when <= now:
        why = f"is in the past ({when.isoformat()} is not after {now.isoformat()})"
        raise InvalidInput("scheduled_at", why)
    try:
        return when.astimezone(tz)
    except OverflowError:  # year 9999 with a negative offset
        raise InvalidInput("scheduled_at", "is too far in the future") from None


def estimate_credits(length: MessageLength, recipients: int) -> int:
    """Credits the send will cost: each part to each recipient is one SMS credit."""
    if recipients < 0:
        raise ValueError("recipients must be >= 0")
    return length.parts * recipients


@dataclass(frozen=True, repr=False)
class SendRequest:
    """A fully validated SENDSMS; only :func:`build_send_request` should make one."""

    recipients: tuple[str, ...]  # E.164
    message: str  # GSM text to send (transliterated)
    message_type: str  # N or L
    sender: str | None  # None only for L (the provider's fixed sender)
    scheduled_at: datetime | None  # aware, provider zone
    order_id: str | None
    return_credits: bool = False

    @cached_property
    def length(self) -> MessageLength:  # counted once: every send asks for it several times
        return message_length(self.message, "reject")

    @property
    def credits(self) -> int:
        return estimate_credits(self.length, len(self.recipients))

    def task_kwargs(self, batch_id: str | None = None, replaces: str | None = None) -> SendSmsArgs:
        """The ``mobyt.send_sms`` arguments that make exactly this send: what its intent and
        its order record keep, and what a replay or an operator's resend publishes."""
        kwargs = SendSmsArgs(
            recipients=list(self.recipients), message=self.message, message_type=self.message_type,
            sender=self.sender, order_id=self.order_id, return_credits=self.return_credits,
            scheduled_at=self.scheduled_at.isoformat() if self.scheduled_at else None, batch_id=batch_id,
        )
        if replaces:
            kwargs["replaces"] = replaces
        return kwargs

    def __repr__(self) -> str:  # numbers masked and text left out: reprs end up in logs
        numbers = ", ".join(mask_number(n) for n in self.recipients)
        return (
            f"SendRequest(recipients=[{numbers}], message_type={self.message_type!r}, "
            f"sender={self.sender!r}, units={self.length.units}, "
            f"scheduled_at={self.scheduled_at!r}, order_id={self.order_id!r})"
        )


def build_send_request(
    *, recipients: str | list[str] | tuple[str, ...], message: str, message_type: str,
    sender: str | None, scheduled_at: str | datetime | None = None,
    order_id: str | None = None, return_credits: bool = False, country: str = "FR",
    tz: ZoneInfo, now: datetime, non_gsm: str = "transliterate",
) -> SendRequest:
    """Validate every field in a fixed order and raise the first :class:`InvalidInput`."""
    numbers = normalize_recipients(recipients, country)
    length = message_length(message, non_gsm)
    kind = validate_message_type(message_type)
    if sender is None or (isinstance(sender, str) and not sender.strip()):
        if kind == "N":
            raise InvalidInput("sender", "is required for message_type N")
        checked_sender = None
    else:
        checked_sender = validate_sender(sender, country)
    checked_order_id = None if order_id is None else validate_order_id(order_id)
    when = validate_scheduled_at(scheduled_at, now, tz)
    if not isinstance(return_credits, bool):
        raise InvalidInput("return_credits", "must be true or false")
    request = SendRequest(tuple(numbers), length.text, kind, checked_sender, when, checked_order_id, return_credits)
    request.__dict__["length"] = length  # the cached property, already counted above
    return request
