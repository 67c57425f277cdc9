"""A faithful fake Mobyt provider: its state and its functions, independent of HTTP.

Tests, benchmarks and the demo talk to it (served by :mod:`.server`) exactly as they
talk to Mobyt: same paths, same parameters, same ``OK``/``KO`` bodies, every answer
built by the :mod:`mobyt_worker.protocol` encoders so the client and the fake share one
codec. It also does what the real provider does and a naive fake would not: a repeated
``order_id`` is accepted and billed again, SMSSTATUS answers a KO for an order it does
not have, SRNEWMESSAGES is a destructive read (even when the answer is then lost), and
faults can be injected per function, including the ambiguous ones (the request was
processed, the answer never arrived). SMSHISTORY lists what it holds: every send it
committed, its answer delivered or lost, and none it refused or failed before committing
(a 5xx fault) or that REMOVE_DELAYED removed.

What it accepts, refuses (KO codes) and bills is in :mod:`.rules`; each recipient's
statuses in :mod:`.timeline`, computed lazily from the clock when asked (SMSSTATUS) and
POSTed as they come by :mod:`.push`; the injectable faults in :mod:`.faults`.

The password is never stored, logged or echoed: recorded requests drop it.
"""

from __future__ import annotations

import bisect
import heapq
import hmac
import itertools
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

from ..provider import protocol
from ..config import DEFAULT_PATHS
from ..provider.protocol import CreditRow, HistoryRow, RecipientStatus, SendReceipt
from . import rules, timeline
from .faults import FAULT_KINDS, PROCESSED, Fault, Reply, fault_reply, processed_reply
from .inbound import Inbound
from .push import Pusher
from .rules import KO_AUTH, KO_CREDITS, KO_INJECTED, KO_NOT_CANCELLABLE, KO_UNKNOWN_ORDER, Refused
from .timeline import Row

FUNCTIONS = frozenset(DEFAULT_PATHS)

#: REMOVE_DELAYED's answer. protocol has no encode_ok; decode_ok accepts exactly this.
OK_EMPTY = "OK;"
STATUS_RETENTION = 30 * 24 * 3600.0
DEMO_LOGIN, DEMO_PASSWORD = "demo", "demo-password"


@dataclass(frozen=True)
class RecordedRequest:
    function: str
    params: dict[str, str]  # without "password"
    method: str
    at: float  # time.time() when received (real time, even with an injected clock)
    fault: str = ""  # the injected fault this request got, if any


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
    rows: list[Row] = field(default_factory=list)
    sends: list[_Send] = field(default_factory=list)
    last_sent: float = 0.0


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
        self._calling_code = rules.CALLING_CODES.get(self.country)
        default_credits = {("N", self.country): 10000, ("L", self.country): 10000, ("EE", ""): 1000}
        self._initial_credits = dict(credits if credits is not None else default_credits)
        self._initial_latency = latency
        self.delivery_delay = delivery_delay
        self.timeout_after = timeout_after
        self._clock = clock
        self._max_recorded = max_recorded
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._pusher = Pusher()
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
        self._history_rows = 0  # rows SMSHISTORY answered with, in all
        self._requests: deque[RecordedRequest] = deque(maxlen=self._max_recorded)
        self._counts: Counter[str] = Counter()
        self._abandoned: Counter[str] = Counter()
        self._faults: dict[str, deque[Fault]] = {}
        self._inbox = Inbound()
        self._blacklist: set[str] = set()
        self._status_url: str | None = None
        self._inbound_url: str | None = None
        self._due: list[tuple[float, int, Row]] = []  # push heap, only while status push is on

    # --- inspection and control ---------------------------------------------------------

    def requests(self, function: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if function is None or r.function == function]

    def count(self, function: str) -> int:
        with self._lock:
            return self._counts[function]

    def abandoned(self, function: str) -> int:
        """Answers to ``function`` the client closed the connection on before they were all sent."""
        with self._lock:
            return self._abandoned[function]

    def answer_abandoned(self, function: str) -> None:
        """Called by the HTTP layer when the client went away in the middle of an answer."""
        with self._lock:
            self._abandoned[function] += 1

    def billed_sends(self, order_id: str | None = None) -> int:
        """Accepted SENDSMS calls (a send later removed by REMOVE_DELAYED still counts)."""
        with self._lock:
            return self._billed_total if order_id is None else self._billed[order_id]

    def scheduled(self) -> dict[str, dict[str, Any]]:
        """Orders waiting for their scheduled time: order id -> {recipients, scheduled_at (epoch)}."""
        with self._lock:
            now = self._clock()
            return {
                order.order_id: {"recipients": [row.number for row in order.rows],
                                 "scheduled_at": max(send.base for send in order.sends)}
                for order in self._orders.values() if any(send.base > now for send in order.sends)
            }

    def deliveries(self, number: str | None = None) -> list[dict[str, str]]:
        """What the provider has handed to the network so far: one ``{order_id, recipient}``
        per recipient whose send time (or scheduled time) came and whose order REMOVE_DELAYED
        did not withdraw; only ``number``'s (any spelling) when given."""
        with self._lock:
            now = self._clock()
            wanted = None if number is None else rules.normalize(number.strip(), self._calling_code)
            return [
                {"order_id": row.order_id, "recipient": row.number}
                for order in self._orders.values() for row in order.rows
                if not row.cancelled and row.base <= now
                and (wanted is None or rules.normalize(row.number, self._calling_code) == wanted)
            ]

    def credits(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._credits)

    def stats(self) -> dict[str, Any]:
        """What GET /_sim/stats answers; credit keys are ``"type|nation"``."""
        with self._lock:
            return {
                "counts": dict(self._counts),
                "abandoned": dict(self._abandoned),
                "billed": self._billed_total,
                "credits": {f"{t}|{n}": v for (t, n), v in self._credits.items()},
                "orders": len(self._orders),
                "inbox": len(self._inbox),
                "history_rows": self._history_rows,
            }

    def inject_fault(
        self, function: str, kind: str, count: int = 1, *, delay: float = 0.0, code: str = "", message: str = "",
        size: int = 0,
    ) -> None:
        function = function.upper()
        if function not in FUNCTIONS:
            raise ValueError(f"unknown function {function!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count < 1 or delay < 0 or size < 0:
            raise ValueError("count must be >= 1, delay and size >= 0")
        fault = Fault(kind, delay, code or KO_INJECTED, message or "service temporarily unavailable", size)
        with self._lock:
            self._faults.setdefault(function, deque()).extend([fault] * count)

    def clear_faults(self) -> None:
        """Drop every fault not yet consumed: the provider answers normally again."""
        with self._lock:
            self._faults.clear()

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds

    def reset(self) -> None:
        """Forget orders, requests, faults, inbox, blacklist and push configuration;
        restore credits and latency: the simulator is as constructed."""
        with self._lock:
            self._clear()
        self._pusher.drain()

    def close(self) -> None:
        self._pusher.close()

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
            message = self._inbox.add(receiver, sender, text, received_at, keyword)
            if words and words[0].strip(".,;:!?").upper() == "STOP":
                self._blacklist.add(rules.normalize(sender.strip(), self._calling_code))
            url = self._inbound_url
        if url:
            self._pusher.post(url, {
                "id": str(message.id), "text": text, "sender": sender, "recipient": receiver,
                "delivery_date": protocol.format_date(received_at, self.tz),
            })  # fmt: skip
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
            started = self._pusher.prepare(self._tick) if self._status_url or self._inbound_url else []
        for thread in started:
            thread.start()

    # --- the provider functions ---------------------------------------------------------

    def handle(self, function: str, params: dict[str, str], method: str = "GET") -> Reply:
        """Answer one provider request: record it, apply a pending fault, process it."""
        if function not in FUNCTIONS:
            raise ValueError(f"unknown function {function!r}")
        kept, at = {k: v for k, v in params.items() if k != "password"}, time.time()
        with self._lock:
            self._counts[function] += 1
            pending = self._faults.get(function)
            fault = pending.popleft() if pending else None
            self._requests.append(RecordedRequest(function, kept, method, at, fault.kind if fault else ""))
            latency = self._latency
        if fault is not None and fault.kind not in PROCESSED:
            return fault_reply(fault, latency)
        try:
            self._authenticate(params)
            body = getattr(self, "_do_" + function.lower())(params)
        except Refused as refused:
            body = protocol.encode_ko(refused.code, refused.message)
        return processed_reply(fault, body.encode("utf-8"), latency)

    def _authenticate(self, params: dict[str, str]) -> None:
        login_ok = hmac.compare_digest(params.get("login", "").encode(), self.login.encode())
        password_ok = hmac.compare_digest(params.get("password", "").encode(), self._password.encode())
        if not (login_ok and password_ok and self.login):
            raise Refused(KO_AUTH, "authentication failed")

    def _do_sendsms(self, p: dict[str, str]) -> str:
        request = rules.parse_send(p, self.tz)
        message_type, numbers, sender, scheduled_at = request.message_type, request.numbers, request.sender, request.at
        normalized = [rules.normalize(n, self._calling_code) for n in numbers]
        cost: Counter[tuple[str, str]] = Counter()
        for number in normalized:
            cost[rules.bucket(message_type, number, self.country, self._calling_code)] += request.parts
        with self._lock:
            now = self._clock()
            if any(self._credits.get(bucket, 0) < needed for bucket, needed in cost.items()):
                raise Refused(KO_CREDITS, "insufficient credits")
            for bucket, needed in cost.items():
                self._credits[bucket] -= needed
            order_id = request.order_id or self._new_order_id()
            scheduled = scheduled_at is not None and scheduled_at > now
            base = scheduled_at if scheduled and scheduled_at is not None else now
            send = _Send(order_id, now, message_type, sender, len(numbers), scheduled_at, dict(cost), base)
            order = self._orders.setdefault(order_id, _Order(order_id))
            order.sends.append(send)
            order.last_sent = now
            for number, norm in zip(numbers, normalized):
                outcome = timeline.outcome(number, norm in self._blacklist)
                row = Row(order_id, number, outcome, now, base, scheduled)
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
        order_id = rules.required(p, "order_id")[:32]
        with self._lock:
            now = self._clock()
            order = self._live_order(order_id, now)
            rows = [self._status_at(row, now) for row in order.rows]
        return protocol.encode_status(rows, self.tz)

    def _do_remove_delayed(self, p: dict[str, str]) -> str:
        order_id = rules.required(p, "order_id")[:32]
        with self._lock:
            now = self._clock()
            order = self._live_order(order_id, now)
            if not all(s.scheduled_at is not None and now < s.base for s in order.sends):
                raise Refused(KO_NOT_CANCELLABLE, "order not cancellable: not scheduled or already sent")
            for send in order.sends:
                for bucket, amount in send.cost.items():
                    self._credits[bucket] = self._credits.get(bucket, 0) + amount
            for row in order.rows:
                row.cancelled = True
            for send in order.sends:  # the order is gone: SMSSTATUS answers KO 40, SMSHISTORY omits it
                index = self._history.index(send)
                del self._history[index], self._history_keys[index]
            del self._orders[order_id]
        return OK_EMPTY

    def _do_smshistory(self, p: dict[str, str]) -> str:
        start = rules.parse_date(rules.required(p, "from"), "from", self.tz)
        end = rules.parse_date(rules.required(p, "to"), "to", self.tz)
        with self._lock:
            lo = bisect.bisect_left(self._history_keys, start)
            hi = bisect.bisect_left(self._history_keys, end + 1)  # the whole "to" second
            sends = self._history[lo:hi]
            self._history_rows += len(sends)
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
        with self._lock:
            rows = self._inbox.take_new()
        return protocol.encode_inbox(rows, self.tz)

    def _do_srhistory(self, p: dict[str, str]) -> str:
        start = rules.parse_date(rules.required(p, "date_from"), "date_from", self.tz)
        end = rules.parse_date(rules.required(p, "date_to"), "date_to", self.tz)
        with self._lock:
            rows = self._inbox.between(start, end)
        return protocol.encode_inbox(rows, self.tz)

    def _do_srhistorybyid(self, p: dict[str, str]) -> str:
        raw = rules.required(p, "id")
        if not raw.isdigit():
            raise rules.invalid("id", "must be an integer >= 0")
        with self._lock:
            rows = self._inbox.after(int(raw))
        return protocol.encode_inbox(rows, self.tz)

    # --- helpers ------------------------------------------------------------------------

    def _live_order(self, order_id: str, now: float) -> _Order:
        order = self._orders.get(order_id)
        if order is None or now - order.last_sent > STATUS_RETENTION:
            raise Refused(KO_UNKNOWN_ORDER, "unknown order_id")
        return order

    def _new_order_id(self) -> str:
        while True:  # 13 hex characters, like the seed's "1F11FEADCB6A4"
            order_id = secrets.token_hex(7)[:13].upper()
            if order_id not in self._orders:
                return order_id

    def _datetime(self, epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, self.tz)

    def _timeline(self, row: Row) -> list[timeline.Step]:
        return timeline.steps(row, self.delivery_delay, self.timeout_after)

    def _status_at(self, row: Row, now: float) -> RecipientStatus:
        return timeline.status_at(row, self._timeline(row), now, self.tz)

    # --- push ---------------------------------------------------------------------------

    def _schedule_push(self, row: Row) -> None:
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
            self._pusher.post(url, payload)  # type: ignore[arg-type]
