"""A faithful fake Mobyt provider, served over real HTTP on loopback.

Tests, benchmarks and the demo talk to it exactly as they talk to Mobyt: same paths,
same parameters, same ``OK``/``KO`` bodies, every answer built by the
:mod:`mobyt_worker.protocol` encoders so the client and the fake share one codec.
It also does what the real provider does and a naive fake would not: a repeated
``order_id`` is accepted and billed again, SRNEWMESSAGES is a destructive read (even
when the answer is then lost), and faults can be injected per function, including
the ambiguous ones (the request was processed, the answer never arrived).

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

Delivery timeline, chosen by the LAST DIGIT of each recipient number, relative to the
send time (or to the scheduled time: a scheduled send is SCHEDULED until then), with
``d = delivery_delay``:

=====  =======================================================================
0-5    WAITING until 0.25d, WAIT4DLVR until d, then DLVRD (delivery_date = base + d)
6      WAIT4DLVR until 0.5d, then ERROR
7      UNKNRCPT at once
8      BLACKLISTED at once (so is any number that sent STOP to the inbox earlier)
9      WAIT4DLVR until ``timeout_after`` (48 h), then TIMEOUT
=====  =======================================================================

Statuses are computed lazily from the clock when asked (SMSSTATUS), and by a ticker
thread (every 100 ms, only while push is configured) that POSTs each status a
recipient takes, in order, including the first one, to the status callback URL.

Credits: cost = parts x recipients. Parts follow GSM 03.38: <= 160 units is 1 part,
else ceil(units / 153), ``^ { } \\ [ ~ ] | €`` counting 2 units. A message with any
character outside GSM 03.38 is counted as UCS-2 (<= 70 is 1 part, else ceil(n / 67)).
More than 1000 units is refused (KO 21). The bucket is (message_type, account country)
for local numbers and numbers of the account's country (``+33``/``0033`` for FR),
``("EE", "")`` for any other country.

The password is never stored, logged or echoed: recorded requests drop it, and the
HTTP access log carries only the method, the path (no query string) and the status.
"""

from __future__ import annotations

import bisect
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import queue
import re
import secrets
import signal
import socket
import socketserver
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from .. import protocol
from ..config import DEFAULT_PATHS
from ..protocol import CreditRow, HistoryRow, InboundMessage, RecipientStatus, SendReceipt, Status
from ..sms import GSM_ALPHABET, GSM_EXTENDED, PART_UNITS, SINGLE_SMS_UNITS

log = logging.getLogger(__name__)

FUNCTIONS = frozenset(DEFAULT_PATHS)
#: Every function answers under each of these prefixes: the seed itself mixes them.
PREFIXES = frozenset({"Moby", "Mobyt", "OESRs"})
FAULT_KINDS = frozenset({"http500", "http503", "http408", "http429", "html", "garbage", "empty", "drop", "ko", "slow",
                         "lost_answer"})

KO_AUTH, KO_MISSING, KO_INVALID = "10", "20", "21"
KO_CREDITS, KO_UNKNOWN_ORDER, KO_NOT_CANCELLABLE, KO_INJECTED = "30", "40", "41", "50"

#: REMOVE_DELAYED's answer. protocol has no encode_ok; decode_ok accepts exactly this.
OK_EMPTY = "OK;"
STATUS_RETENTION = 30 * 24 * 3600.0
PUSH_TICK = 0.1
DEMO_LOGIN, DEMO_PASSWORD = "demo", "demo-password"

#: Calling codes used to tell national numbers from foreign ones (EE bucket).
CALLING_CODES = {
    "FR": "33", "BE": "32", "CH": "41", "DE": "49", "ES": "34", "GB": "44",
    "IT": "39", "LU": "352", "MC": "377", "NL": "31", "PT": "351",
}  # fmt: skip

_NUMBER = re.compile(r"\+?[0-9]{4,20}")
_SENDER = re.compile(r"[A-Za-z0-9]{1,11}|\+?[0-9]{3,16}")
_ORDER_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_DATE = re.compile(r"[0-9]{14}")
#: Outcome by last digit (see the module docstring); anything else is delivered.
_OUTCOMES = {"6": "error", "7": "unknown", "8": "blacklisted", "9": "timeout"}

_HTML_500 = b"<html><head><title>500 Internal Server Error</title></head><body><h1>Oops</h1></body></html>"
_HTML_PAGE = b"<!DOCTYPE html><html><head><title>Maintenance</title></head><body><p>En maintenance</p></body></html>"


@dataclass(frozen=True)
class RecordedRequest:
    function: str
    params: dict[str, str]  # without "password"
    method: str
    at: float  # time.time() when received (real time, even with an injected clock)


@dataclass(frozen=True)
class Reply:
    """What the HTTP layer must do for one provider request."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    delay: float = 0.0  # seconds to wait before answering (latency, plus a "slow" fault)
    drop: bool = False  # close the connection without any answer
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Fault:
    kind: str
    delay: float
    code: str
    message: str


class _Refused(Exception):
    """Becomes ``KO|code|message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _missing(name: str) -> _Refused:
    return _Refused(KO_MISSING, f"missing parameter: {name}")


def _invalid(name: str, reason: str) -> _Refused:
    return _Refused(KO_INVALID, f"invalid parameter: {name} ({reason})")


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise _missing(name)
    return value


@dataclass(eq=False, slots=True)
class _Row:
    """One recipient of one send; its status is a pure function of the clock."""

    order_id: str
    number: str  # as sent
    outcome: str  # deliver | error | unknown | blacklisted | timeout
    sent_at: float
    base: float  # when the timeline starts: send time, or the scheduled time
    scheduled: bool
    pushed: int = -1  # index in the timeline of the last status POSTed
    cancelled: bool = False


@dataclass(eq=False, slots=True)
class _Send:
    """One accepted SENDSMS call: a history row and what it cost."""

    order_id: str
    created: float
    message_type: str
    sender: str
    recipients: int
    scheduled_at: float | None
    cost: dict[tuple[str, str], int]
    base: float


@dataclass(eq=False, slots=True)
class _Order:
    order_id: str
    rows: list[_Row] = field(default_factory=list)
    sends: list[_Send] = field(default_factory=list)
    last_sent: float = 0.0


def _measure(message: str) -> tuple[int, int]:
    """Units and parts billed for one recipient (GSM 03.38, else UCS-2; see the docstring)."""
    if all(c in GSM_ALPHABET for c in message):
        units = len(message) + sum(1 for c in message if c in GSM_EXTENDED)
        single, multi = SINGLE_SMS_UNITS, PART_UNITS
    else:
        units = len(message.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return units, (1 if units <= single else math.ceil(units / multi))


class ProviderSimulator:
    """The provider's state and behaviour, independent of HTTP (one lock around state)."""

    def __init__(
        self,
        *,
        login: str = DEMO_LOGIN,
        password: str = DEMO_PASSWORD,
        timezone: str = "Europe/Paris",
        country: str = "FR",
        credits: dict[tuple[str, str], int] | None = None,
        latency: float = 0.0,
        delivery_delay: float = 1.0,
        timeout_after: float = 48 * 3600.0,
        clock: Callable[[], float] = time.time,
        max_recorded: int = 100_000,
    ) -> None:
        self.login = login
        self._password = password
        self.tz = ZoneInfo(timezone)
        self.country = country.upper()
        self._calling_code = CALLING_CODES.get(self.country)
        default_credits = {("N", self.country): 10000, ("L", self.country): 10000, ("EE", ""): 1000}
        self._initial_credits = dict(credits if credits is not None else default_credits)
        self._initial_latency = latency
        self.delivery_delay = delivery_delay
        self.timeout_after = timeout_after
        self._clock = clock
        self._max_recorded = max_recorded
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._outbox: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clear()

    def _clear(self) -> None:
        """Back to the constructed state (caller holds the lock, or is __init__)."""
        self._latency = self._initial_latency
        self._credits = dict(self._initial_credits)
        self._orders: dict[str, _Order] = {}
        self._history: list[_Send] = []  # sorted by created, bisected by _history_keys
        self._history_keys: list[float] = []
        self._billed: Counter[str] = Counter()
        self._billed_total = 0
        self._requests: deque[RecordedRequest] = deque(maxlen=self._max_recorded)
        self._counts: Counter[str] = Counter()
        self._faults: dict[str, deque[_Fault]] = {}
        self._inbox: list[InboundMessage] = []  # id n is at index n - 1
        self._inbox_keys: list[tuple[float, int]] = []  # (received epoch, id), sorted
        self._inbox_cursor = 0
        self._blacklist: set[str] = set()
        self._status_url: str | None = None
        self._inbound_url: str | None = None
        self._due: list[tuple[float, int, _Row]] = []  # push heap, only while status push is on

    # --- inspection and control ---------------------------------------------------------

    def requests(self, function: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if function is None or r.function == function]

    def count(self, function: str) -> int:
        with self._lock:
            return self._counts[function]

    def billed_sends(self, order_id: str | None = None) -> int:
        """Accepted SENDSMS calls (a send later removed by REMOVE_DELAYED still counts)."""
        with self._lock:
            return self._billed_total if order_id is None else self._billed[order_id]

    def credits(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._credits)

    def stats(self) -> dict[str, Any]:
        """What GET /_sim/stats answers; credit keys are ``"type|nation"``."""
        with self._lock:
            return {
                "counts": dict(self._counts),
                "billed": self._billed_total,
                "credits": {f"{t}|{n}": v for (t, n), v in self._credits.items()},
                "orders": len(self._orders),
                "inbox": len(self._inbox),
            }

    def inject_fault(
        self, function: str, kind: str, count: int = 1, *, delay: float = 0.0, code: str = "", message: str = ""
    ) -> None:
        function = function.upper()
        if function not in FUNCTIONS:
            raise ValueError(f"unknown function {function!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count < 1 or delay < 0:
            raise ValueError("count must be >= 1 and delay >= 0")
        fault = _Fault(kind, delay, code or KO_INJECTED, message or "service temporarily unavailable")
        with self._lock:
            self._faults.setdefault(function, deque()).extend([fault] * count)

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds

    def reset(self) -> None:
        """Forget orders, requests, faults, inbox, blacklist and push configuration;
        restore credits and latency: the simulator is as constructed."""
        with self._lock:
            self._clear()
        while True:
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                break

    def close(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def add_inbound(
        self,
        sender: str,
        text: str,
        *,
        receiver: str = "+33700000001",
        keyword: str | None = None,
        received_at: datetime | None = None,
    ) -> int:
        """Store a new inbound SMS; a first word STOP blacklists the sender for later sends."""
        words = text.split()
        if keyword is None:
            keyword = words[0] if words else ""
        with self._lock:
            if received_at is None:
                received_at = datetime.fromtimestamp(self._clock(), self.tz)
            elif received_at.tzinfo is None:
                received_at = received_at.replace(tzinfo=self.tz)
            message = InboundMessage(len(self._inbox) + 1, receiver, sender, text, received_at, keyword)
            self._inbox.append(message)
            bisect.insort(self._inbox_keys, (received_at.timestamp(), message.id))
            if words and words[0].strip(".,;:!?").upper() == "STOP":
                self._blacklist.add(self._normalize(sender.strip()))
            url = self._inbound_url
        if url:
            self._outbox.put((url, {
                "id": str(message.id), "text": text, "sender": sender, "recipient": receiver,
                "delivery_date": protocol.format_date(received_at, self.tz),
            }))  # fmt: skip
        return message.id

    def configure_push(self, status_url: str | None = None, inbound_url: str | None = None) -> None:
        """POST status changes / inbound SMS to these URLs (None turns a push off).

        Rows already sent get their statuses pushed too (one scan here, none per request).
        """
        with self._lock:
            self._status_url, self._inbound_url = status_url or None, inbound_url or None
            self._due = []
            if self._status_url:
                for order in self._orders.values():
                    for row in order.rows:
                        self._schedule_push(row)
            started: list[threading.Thread] = []
            if (self._status_url or self._inbound_url) and not self._threads and not self._stop.is_set():
                started = self._threads = [
                    threading.Thread(target=self._tick_forever, name="mobyt-sim-ticker", daemon=True),
                    threading.Thread(target=self._deliver_forever, name="mobyt-sim-push", daemon=True),
                ]  # started lazily, once, and stopped by close()
        for thread in started:
            thread.start()

    # --- the provider functions ---------------------------------------------------------

    def handle(self, function: str, params: dict[str, str], method: str = "GET") -> Reply:
        """Answer one provider request: record it, apply a pending fault, process it."""
        if function not in FUNCTIONS:
            raise ValueError(f"unknown function {function!r}")
        recorded = RecordedRequest(function, {k: v for k, v in params.items() if k != "password"}, method, time.time())
        with self._lock:
            self._requests.append(recorded)
            self._counts[function] += 1
            pending = self._faults.get(function)
            fault = pending.popleft() if pending else None
            latency = self._latency
        if fault is not None and fault.kind not in ("slow", "lost_answer"):
            return self._fault_reply(fault, latency)
        try:
            self._authenticate(params)
            body = getattr(self, "_do_" + function.lower())(params)
        except _Refused as refused:
            body = protocol.encode_ko(refused.code, refused.message)
        if fault is not None and fault.kind == "lost_answer":
            return Reply(drop=True, delay=latency)
        return Reply(body=body.encode("utf-8"), delay=latency + (fault.delay if fault else 0.0))

    @staticmethod
    def _fault_reply(fault: _Fault, latency: float) -> Reply:
        """The faults that answer without processing the request."""
        if fault.kind in ("http500", "http503"):
            return Reply(int(fault.kind[4:]), _HTML_500, "text/html; charset=utf-8", latency)
        if fault.kind == "http408":
            return Reply(408, b"request timeout\n", delay=latency)
        if fault.kind == "http429":  # the fault's delay is the Retry-After it announces
            return Reply(429, b"too many requests\n", delay=latency, headers=(("Retry-After", f"{fault.delay:g}"),))
        if fault.kind == "html":
            return Reply(200, _HTML_PAGE, "text/html; charset=utf-8", latency)
        if fault.kind == "garbage":  # never starts with OK/KO, rarely valid UTF-8
            return Reply(200, b"\xff\xfe" + os.urandom(30), "application/octet-stream", latency)
        if fault.kind == "empty":
            return Reply(200, b"", delay=latency)
        if fault.kind == "ko":
            return Reply(200, protocol.encode_ko(fault.code, fault.message).encode(), delay=latency)
        return Reply(drop=True, delay=latency)  # "drop"

    def _authenticate(self, params: dict[str, str]) -> None:
        login_ok = hmac.compare_digest(params.get("login", "").encode(), self.login.encode())
        password_ok = hmac.compare_digest(params.get("password", "").encode(), self._password.encode())
        if not (login_ok and password_ok and self.login):
            raise _Refused(KO_AUTH, "authentication failed")

    def _do_sendsms(self, p: dict[str, str]) -> str:
        message_type = _required(p, "message_type")
        if message_type not in ("N", "L"):
            raise _invalid("message_type", "must be N or L")
        numbers = [n.strip() for n in _required(p, "recipient").split(",") if n.strip()]
        if not numbers:
            raise _missing("recipient")
        if not all(_NUMBER.fullmatch(n) for n in numbers):
            raise _invalid("recipient", "not a phone number")
        message = p.get("message", "")
        if not message.strip():
            raise _missing("message")
        units, parts = _measure(message)
        if units > 1000:
            raise _invalid("message", "longer than 1000 characters")
        sender = p.get("sender", "").strip()
        if message_type == "N" and not sender:
            raise _missing("sender")
        if message_type == "N" and not _SENDER.fullmatch(sender):
            raise _invalid("sender", "up to 11 alphanumerics or a phone number")
        if message_type == "L":
            sender = ""  # SMS Direct has a fixed sender: history leaves it empty
        raw_schedule = p.get("scheduled_delivery_time", "").strip()
        scheduled_at = self._parse_date(raw_schedule, "scheduled_delivery_time") if raw_schedule else None
        order_id = p.get("order_id", "").strip()[:32]  # the excess is ignored, like the provider
        if order_id and not _ORDER_ID.fullmatch(order_id):
            raise _invalid("order_id", "up to 32 alphanumerics")
        normalized = [self._normalize(n) for n in numbers]
        cost: Counter[tuple[str, str]] = Counter()
        for number in normalized:
            cost[self._bucket(message_type, number)] += parts
        with self._lock:
            now = self._clock()
            if any(self._credits.get(bucket, 0) < needed for bucket, needed in cost.items()):
                raise _Refused(KO_CREDITS, "insufficient credits")
            for bucket, needed in cost.items():
                self._credits[bucket] -= needed
            order_id = order_id or self._new_order_id()
            scheduled = scheduled_at is not None and scheduled_at > now
            base = scheduled_at if scheduled and scheduled_at is not None else now
            send = _Send(order_id, now, message_type, sender, len(numbers), scheduled_at, dict(cost), base)
            order = self._orders.setdefault(order_id, _Order(order_id))
            order.sends.append(send)
            order.last_sent = now
            for number, norm in zip(numbers, normalized):
                outcome = "blacklisted" if norm in self._blacklist else _OUTCOMES.get(number[-1], "deliver")
                row = _Row(order_id, number, outcome, now, base, scheduled)
                order.rows.append(row)
                if self._status_url:
                    self._schedule_push(row)
            index = bisect.bisect_right(self._history_keys, now)
            self._history_keys.insert(index, now)
            self._history.insert(index, send)
            self._billed[order_id] += 1
            self._billed_total += 1
        used = sum(cost.values()) if p.get("returnCredits", "").strip().lower() == "true" else len(numbers)
        return protocol.encode_send(SendReceipt(order_id, used))

    def _do_smsstatus(self, p: dict[str, str]) -> str:
        order_id = _required(p, "order_id")[:32]
        with self._lock:
            now = self._clock()
            order = self._live_order(order_id, now)
            rows = [self._status_at(row, now) for row in order.rows]
        return protocol.encode_status(rows, self.tz)

    def _do_remove_delayed(self, p: dict[str, str]) -> str:
        order_id = _required(p, "order_id")[:32]
        with self._lock:
            now = self._clock()
            order = self._live_order(order_id, now)
            if not all(s.scheduled_at is not None and now < s.base for s in order.sends):
                raise _Refused(KO_NOT_CANCELLABLE, "order not cancellable: not scheduled or already sent")
            for send in order.sends:
                for bucket, amount in send.cost.items():
                    self._credits[bucket] = self._credits.get(bucket, 0) + amount
            for row in order.rows:
                row.cancelled = True
            del self._orders[order_id]  # it now answers KO 40; its history rows stay
        return OK_EMPTY

    def _do_smshistory(self, p: dict[str, str]) -> str:
        start = self._parse_date(_required(p, "from"), "from")
        end = self._parse_date(_required(p, "to"), "to")
        with self._lock:
            lo = bisect.bisect_left(self._history_keys, start)
            hi = bisect.bisect_left(self._history_keys, end + 1)  # the whole "to" second
            sends = self._history[lo:hi]
        rows = [
            HistoryRow(
                s.order_id, self._datetime(s.created), s.message_type, s.sender, s.recipients,
                self._datetime(s.scheduled_at) if s.scheduled_at is not None else None,
            )
            for s in sends
        ]  # fmt: skip
        return protocol.encode_history(rows, self.tz)

    def _do_credits(self, p: dict[str, str]) -> str:
        with self._lock:
            rows = [CreditRow(kind, nation, available) for (kind, nation), available in self._credits.items()]
        return protocol.encode_credits(rows)

    def _do_srnewmessages(self, p: dict[str, str]) -> str:
        with self._lock:  # destructive: once answered, never again (even if the answer is lost)
            rows = self._inbox[self._inbox_cursor :]
            self._inbox_cursor = len(self._inbox)
        return protocol.encode_inbox(rows, self.tz)

    def _do_srhistory(self, p: dict[str, str]) -> str:
        start = self._parse_date(_required(p, "date_from"), "date_from")
        end = self._parse_date(_required(p, "date_to"), "date_to")
        with self._lock:
            lo = bisect.bisect_left(self._inbox_keys, (start, 0))
            hi = bisect.bisect_left(self._inbox_keys, (end + 1, 0))
            rows = sorted((self._inbox[i - 1] for _, i in self._inbox_keys[lo:hi]), key=lambda m: m.id)
        return protocol.encode_inbox(rows, self.tz)

    def _do_srhistorybyid(self, p: dict[str, str]) -> str:
        raw = _required(p, "id")
        if not raw.isdigit():
            raise _invalid("id", "must be an integer >= 0")
        with self._lock:
            rows = self._inbox[int(raw) :]  # ids are 1, 2, 3...: id > n starts at index n
        return protocol.encode_inbox(rows, self.tz)

    # --- helpers ------------------------------------------------------------------------

    def _live_order(self, order_id: str, now: float) -> _Order:
        order = self._orders.get(order_id)
        if order is None or now - order.last_sent > STATUS_RETENTION:
            raise _Refused(KO_UNKNOWN_ORDER, "unknown order_id")
        return order

    def _new_order_id(self) -> str:
        while True:  # 13 hex characters, like the seed's "1F11FEADCB6A4"
            order_id = secrets.token_hex(7)[:13].upper()
            if order_id not in self._orders:
                return order_id

    def _normalize(self, number: str) -> str:
        """International form when possible, so '0612...' and '+33612...' match."""
        if number.startswith("+"):
            return number
        if number.startswith("00"):
            return "+" + number[2:]
        if self._calling_code:
            return "+" + self._calling_code + (number[1:] if number.startswith("0") else number)
        return "local:" + number

    def _bucket(self, message_type: str, normalized: str) -> tuple[str, str]:
        national = normalized.startswith("local:") or (
            self._calling_code is not None and normalized.startswith("+" + self._calling_code)
        )
        return (message_type, self.country) if national else ("EE", "")

    def _parse_date(self, raw: str, name: str) -> float:
        if not _DATE.fullmatch(raw):
            raise _invalid(name, "expected yyyymmddhhmmss")
        try:
            return datetime.strptime(raw, protocol.DATE_FORMAT).replace(tzinfo=self.tz).timestamp()
        except ValueError:
            raise _invalid(name, "not a valid date") from None

    def _datetime(self, epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, self.tz)

    def _timeline(self, row: _Row) -> list[tuple[float, Status, float | None]]:
        """(start, status, delivered epoch) steps of one recipient; see the module table."""
        steps: list[tuple[float, Status, float | None]] = []
        if row.scheduled:
            steps.append((row.sent_at, Status.SCHEDULED, None))
        b, d = row.base, self.delivery_delay
        if row.outcome == "deliver":
            steps += [(b, Status.WAITING, None), (b + 0.25 * d, Status.WAIT4DLVR, None), (b + d, Status.DLVRD, b + d)]
        elif row.outcome == "error":
            steps += [(b, Status.WAIT4DLVR, None), (b + 0.5 * d, Status.ERROR, None)]
        elif row.outcome == "unknown":
            steps.append((b, Status.UNKNRCPT, None))
        elif row.outcome == "blacklisted":
            steps.append((b, Status.BLACKLISTED, None))
        else:
            steps += [(b, Status.WAIT4DLVR, None), (b + self.timeout_after, Status.TIMEOUT, None)]
        return steps

    def _status_at(self, row: _Row, now: float) -> RecipientStatus:
        steps = self._timeline(row)
        current = steps[0]
        for step in steps[1:]:
            if step[0] > now:
                break
            current = step
        delivered = self._datetime(current[2]) if current[2] is not None else None
        return RecipientStatus(row.number, current[1], delivered)

    # --- push ---------------------------------------------------------------------------

    def _schedule_push(self, row: _Row) -> None:
        """Queue the row's next unpushed status on the due-heap (caller holds the lock)."""
        steps = self._timeline(row)
        if not row.cancelled and row.pushed + 1 < len(steps):
            heapq.heappush(self._due, (steps[row.pushed + 1][0], next(self._seq), row))

    def _tick(self) -> None:
        """POST every status that came due since the last tick, each row in order."""
        payloads = []
        with self._lock:
            url = self._status_url
            now = self._clock()
            while url and self._due and self._due[0][0] <= now:
                _, _, row = heapq.heappop(self._due)
                if row.cancelled:
                    continue
                steps = self._timeline(row)
                while row.pushed + 1 < len(steps) and steps[row.pushed + 1][0] <= now:
                    row.pushed += 1
                    _, status, delivered = steps[row.pushed]
                    date = protocol.format_date(self._datetime(delivered), self.tz) if delivered is not None else ""
                    payloads.append(
                        {"order_id": row.order_id, "recipient": row.number, "status": status.value,
                         "delivery_date": date}
                    )  # fmt: skip
                self._schedule_push(row)
        for payload in payloads:
            self._outbox.put((url, payload))  # type: ignore[arg-type]

    def _tick_forever(self) -> None:
        while not self._stop.wait(PUSH_TICK):
            try:
                self._tick()
            except Exception:  # the ticker must survive anything
                log.exception("simulator push ticker failed")

    def _deliver_forever(self) -> None:
        """One thread, one keep-alive session: callbacks arrive in the order they were queued."""
        import requests

        session = requests.Session()
        while True:
            item = self._outbox.get()
            if item is None or self._stop.is_set():
                break
            url, form = item
            where = urlsplit(url)._replace(path="/…", query="", fragment="").geturl()  # path and query may carry a secret
            try:
                answer = session.post(url, data=form, timeout=5)
                if answer.status_code >= 300:
                    log.warning("push to %s answered HTTP %s", where, answer.status_code)
            except requests.RequestException as exc:  # its text would contain the URL
                log.warning("push to %s failed: %s", where, type(exc).__name__)
        session.close()


# --- HTTP -------------------------------------------------------------------------------


def _route(path: str) -> str | None:
    """``/<prefix>/<FUNCTION>`` (under any base path) -> FUNCTION, else None."""
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 2 and segments[-2] in PREFIXES and segments[-1].upper() in FUNCTIONS:
        return segments[-1].upper()
    return None


def _inbound(sim: ProviderSimulator, data: dict[str, Any], query: dict[str, list[str]]) -> Any:
    receiver, keyword = data.get("receiver"), data.get("keyword")
    if receiver is None:
        message_id = sim.add_inbound(str(data["sender"]), str(data["text"]), keyword=_opt_str(keyword))
    else:
        message_id = sim.add_inbound(str(data["sender"]), str(data["text"]), receiver=str(receiver),
                                     keyword=_opt_str(keyword))
    return {"id": message_id}


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _fault(sim: ProviderSimulator, data: dict[str, Any], query: dict[str, list[str]]) -> Any:
    sim.inject_fault(
        str(data["function"]), str(data["kind"]), int(data.get("count", 1)), delay=float(data.get("delay", 0.0)),
        code=str(data.get("code", "")), message=str(data.get("message", "")),
    )  # fmt: skip


#: (method, path) -> endpoint(simulator, JSON body, query) returning the JSON answer (None: {"ok": true}).
_CONTROL: dict[tuple[str, str], Callable[[ProviderSimulator, dict[str, Any], dict[str, list[str]]], Any]] = {
    ("GET", "/_sim/health"): lambda sim, data, query: {"status": "ok"},
    ("GET", "/_sim/requests"): lambda sim, data, query: [
        asdict(r) for r in sim.requests(query.get("function", [None])[0])
    ],
    ("GET", "/_sim/stats"): lambda sim, data, query: sim.stats(),
    ("POST", "/_sim/inbound"): _inbound,
    ("POST", "/_sim/fault"): _fault,
    ("POST", "/_sim/reset"): lambda sim, data, query: sim.reset(),
    ("POST", "/_sim/push"): lambda sim, data, query: sim.configure_push(data.get("status_url"), data.get("inbound_url")),
    ("POST", "/_sim/latency"): lambda sim, data, query: sim.set_latency(float(data["seconds"])),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls
    server_version = "MobytSimulator/1.0"
    timeout = 120  # idle keep-alive connections are closed after this
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return
        if url.path.startswith("/_sim/"):
            self._control(url.path.rstrip("/"), url.query, body)
            return
        function = _route(url.path)
        if function is None:
            self._send(404, b"not found\n")
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if self.command == "POST" and body:
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        reply = self.server.simulator.handle(function, params, self.command)
        if reply.delay > 0:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply.status, reply.body, reply.content_type, reply.headers)

    do_POST = do_GET

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(411, b"Content-Length required\n")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 10_000_000:
            self.close_connection = True
            self._send(400, b"bad Content-Length\n")
            return None
        return self.rfile.read(length) if length else b""

    def _control(self, path: str, query: str, body: bytes) -> None:
        """The /_sim/ JSON endpoints, for a simulator running as a separate process."""
        if not ipaddress.ip_address(self.client_address[0].split("%")[0]).is_loopback:
            self._json(403, {"error": "control endpoints are loopback only"})
            return
        endpoint = _CONTROL.get((self.command, path))
        if endpoint is None:
            self._json(404, {"error": f"no control endpoint {self.command} {path}"})
            return
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            result = endpoint(self.server.simulator, data, parse_qs(query))
        except KeyError as exc:
            self._json(400, {"error": f"missing field {exc.args[0]}"})
        except (TypeError, ValueError) as exc:
            self._json(400, {"error": str(exc)})
        else:
            self._json(200, {"ok": True} if result is None else result)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. a read timeout)
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)  # never the query

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator http: %s", format)  # args may hold the request line (password)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # 100+ clients connecting at once must not be refused
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: ProviderSimulator) -> None:
        self.simulator = simulator
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn(): a DNS lookup
        host, self.server_port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, (bytes, bytearray)) else str(host)

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Unblock keep-alive handler threads so stop() leaves nothing serving."""
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("simulator connection error from %s", client_address, exc_info=True)


class SimulatorServer:
    """Serves a :class:`ProviderSimulator` in a daemon thread; bound at construction."""

    def __init__(self, simulator: ProviderSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self._httpd = _HTTPServer((host, port), simulator)
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="mobyt-sim-http", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections (the simulator
        itself stays usable; close it separately)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        self._httpd.close_connections()

    @property
    def url(self) -> str:
        address, port = self._httpd.server_address[:2]
        host = str(address.decode() if isinstance(address, (bytes, bytearray)) else address)
        host = "127.0.0.1" if host == "0.0.0.0" else host
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(host: str, port: int, **simulator_options: Any) -> None:
    """Run a simulator until SIGINT/SIGTERM (what ``mobyt simulator --port N`` calls)."""
    simulator = ProviderSimulator(**simulator_options)
    server = SimulatorServer(simulator, host, port).start()
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"Mobyt simulator listening on {server.url}", flush=True)
    print(
        "Demo credentials (simulator only):\n"
        f"  MOBYT_BASE_URL={server.url}\n"
        f"  MOBYT_LOGIN={simulator.login}\n"
        f"  MOBYT_PASSWORD={simulator_options.get('password', DEMO_PASSWORD)}",
        flush=True,
    )
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        simulator.close()
        print("Mobyt simulator stopped", flush=True)
