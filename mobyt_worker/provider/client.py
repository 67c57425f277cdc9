"""The Mobyt client: one method per provider function, over a replaceable transport.

The transport (:mod:`mobyt_worker.transport`) turns every failed exchange into a typed
error from :mod:`mobyt_worker.errors`, and :func:`check_status` does the same for a
non-2xx answer, so the client, the tasks and the tests see our error hierarchy only.
Credentials travel in the POST body, never in a URL, and no log line or error message
ever carries the form data.

Retries: reads are retried on :class:`ProviderUnavailable` with jittered exponential
backoff. SENDSMS is never retried here (a repeat is a second billed SMS: the caller
resolves an ambiguous send through SMSSTATUS), and SRNEWMESSAGES, a destructive read,
only when the request certainly never left (:class:`ProviderConnectError`).

Bounds: a call, its retries included, ends by ``MOBYT_CALL_DEADLINE`` (a retry whose wait
would reach it is not made, an answer still arriving at it is cut), and an answer larger
than its cap is cut unread. That is what bounds a stuck call on the threads pool, which
does not enforce Celery's time limits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from .. import errors
from . import protocol
from .protocol import CreditRow, HistoryRow, InboundMessage, RecipientStatus, SendReceipt
from ..sms import validate_order_id
from .transport import HttpTransport, Limits, Transport

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ..config import Settings
    from ..sms import SendRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

#: One SMSHISTORY request per day of a longer period (see MobytClient.sms_history_windows).
HISTORY_WINDOW = timedelta(days=1)


#: The answers that grow with the account's traffic, capped by MOBYT_MAX_PAGE_BYTES (the
#: others by MOBYT_MAX_ANSWER_BYTES).
PAGES = frozenset({"SMSHISTORY", "SRHISTORY", "SRHISTORYBYID", "SRNEWMESSAGES"})

#: HTTP statuses by which the provider says it did not process the request, yet may later.
THROTTLED = frozenset({408, 425, 429})


def check_status(status: int, where: str, retry_after: float | None = None) -> None:
    """Map a non-2xx HTTP status to a typed error as the HTTP world does: 408, 425, 429
    and 5xx transient (``Retry-After`` kept), other 3xx/4xx permanent."""
    if 200 <= status < 300:
        return
    if status in THROTTLED:
        raise errors.ProviderThrottled(f"{where}: HTTP {status}", f"HTTP{status}", retry_after)
    if status >= 500:
        raise errors.ProviderServerError(f"{where}: HTTP {status}", code=f"HTTP{status}")
    why = "redirected (set MOBYT_BASE_URL to the final URL)" if 300 <= status < 400 else "refused"
    raise errors.ProviderRejected(f"{where}: HTTP {status} {why}", code=f"HTTP{status}")


class MobytClient:
    """One method per provider function; answers decoded into :mod:`protocol` values."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport | None = None,
        *,
        read_attempts: int = 4,
        backoff_max: float = 8.0,
        on_request: Callable[[str, float, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.read_attempts, self.backoff_max = read_attempts, backoff_max
        self._owns_transport = transport is None
        self._transport: Transport = transport if transport is not None else HttpTransport(settings.pool_size)
        self._on_request = on_request
        jitter = wait_random_exponential(multiplier=0.25, max=backoff_max)  # full jitter

        def wait(state: RetryCallState) -> float:
            return max(min(_retry_after(state), backoff_max), jitter(state))

        stop = stop_after_attempt(read_attempts) | _OutOfTime()
        self._retry_reads = Retrying(
            retry=retry_if_exception_type(errors.ProviderUnavailable), wait=wait, stop=stop,
            reraise=True, before_sleep=_log_retry,
        )
        self._retry_unsent = self._retry_reads.copy(retry=retry_if_exception_type(errors.ProviderConnectError))

    def __repr__(self) -> str:
        return f"MobytClient(login={self.settings.login!r}, base_url={self.settings.base_url!r})"

    def __enter__(self) -> MobytClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the eight provider functions ------------------------------------------------

    def send_sms(self, request: SendRequest) -> SendReceipt:
        """ONE attempt: a repeated SENDSMS is a second billed SMS."""
        params = {
            "message_type": request.message_type,
            "recipient": ",".join(request.recipients),
            "message": request.message,
        }
        if request.sender is not None:
            params["sender"] = request.sender
        if request.scheduled_at is not None:
            params["scheduled_delivery_time"] = protocol.format_date(request.scheduled_at, self.settings.timezone)
        if request.order_id is not None:
            params["order_id"] = request.order_id
        if request.return_credits:
            params["returnCredits"] = "true"
        return self._call("SENDSMS", params, protocol.decode_send, None)

    def sms_status(self, order_id: str) -> list[RecipientStatus]:
        params = {"order_id": validate_order_id(order_id)}
        return self._call("SMSSTATUS", params, self._tz(protocol.decode_status), self._retry_reads)

    def remove_delayed(self, order_id: str) -> None:
        params = {"order_id": validate_order_id(order_id)}
        self._call("REMOVE_DELAYED", params, protocol.decode_ok, self._retry_reads)

    def sms_history(self, date_from: datetime, date_to: datetime) -> list[HistoryRow]:
        params = dict(zip(("from", "to"), self._dates(date_from, date_to)))
        return self._call("SMSHISTORY", params, self._tz(protocol.decode_history), self._retry_reads)

    def sms_history_windows(self, date_from: datetime, date_to: datetime,
                            window: timedelta = HISTORY_WINDOW) -> Iterator[tuple[int, int, list[HistoryRow]]]:
        """SMSHISTORY over a long period, one request per ``window``: yields (windows done,
        windows in all, that window's rows), so a caller can show progress and no single
        answer grows with the period. Adjacent windows share their boundary second (the
        seed does not say whether ``to`` is inclusive); a row the previous window already
        returned for that second is not returned twice."""
        self._dates(date_from, date_to)  # validated before any request
        if window <= timedelta(0):
            raise errors.InvalidInput("window", "must be positive")
        bounds = [date_from]
        while bounds[-1] + window < date_to:
            bounds.append(bounds[-1] + window)
        bounds.append(date_to)
        boundary: Counter[HistoryRow] = Counter()  # rows of the last window created in its final second
        for index, (start, end) in enumerate(zip(bounds, bounds[1:]), 1):
            rows = []
            for row in self.sms_history(start, end):
                if boundary[row]:
                    boundary[row] -= 1
                else:
                    rows.append(row)
            last_second = end.replace(microsecond=0)
            boundary = Counter(r for r in rows if r.created_at is not None and r.created_at >= last_second)
            yield index, len(bounds) - 1, rows

    def longest_read(self) -> float:
        """Seconds one read may take, its retries and their waits included."""
        s = self.settings
        return self.read_attempts * (s.connect_timeout + s.read_timeout + self.backoff_max)

    def credits(self) -> list[CreditRow]:
        return self._call("CREDITS", {}, protocol.decode_credits, self._retry_reads)

    def new_messages(self) -> list[InboundMessage]:
        """Destructive read: retried only if the request never left (reconcile otherwise)."""
        return self._call("SRNEWMESSAGES", {}, self._tz(protocol.decode_inbox), self._retry_unsent)

    def inbox_history(self, date_from: datetime, date_to: datetime) -> list[InboundMessage]:
        params = dict(zip(("date_from", "date_to"), self._dates(date_from, date_to)))
        return self._call("SRHISTORY", params, self._tz(protocol.decode_inbox), self._retry_reads)

    def inbox_since(self, message_id: int) -> list[InboundMessage]:
        """Inbox rows with an id greater than ``message_id`` (0 = all)."""
        if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 0:
            raise errors.InvalidInput("id", "must be an integer >= 0")
        params = {"id": str(message_id)}
        return self._call("SRHISTORYBYID", params, self._tz(protocol.decode_inbox), self._retry_reads)

    def close(self) -> None:
        """Close the transport if this client made it (an injected one belongs to the caller)."""
        if self._owns_transport:
            self._transport.close()  # type: ignore[attr-defined]

    # --- plumbing ----------------------------------------------------------------------

    def _tz(self, decode: Callable[[str, ZoneInfo], T]) -> Callable[[str], T]:
        return lambda body: decode(body, self.settings.timezone)

    def _dates(self, date_from: datetime, date_to: datetime) -> tuple[str, str]:
        for name, value in (("date_from", date_from), ("date_to", date_to)):
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise errors.InvalidInput(name, "must be a timezone-aware datetime")
        if date_to < date_from:
            raise errors.InvalidInput("date_to", "must not be before date_from")
        tz = self.settings.timezone
        return protocol.format_date(date_from, tz), protocol.format_date(date_to, tz)

    def _call(self, function: str, params: Mapping[str, str], decode: Callable[[str], T], retrying: Retrying | None) -> T:
        self.settings.require_credentials()
        data = {"login": self.settings.login, "password": self.settings.password.reveal(), **params}
        url = self.settings.url_for(function)
        deadline = time.monotonic() + self.settings.call_deadline
        if retrying is None:
            return self._attempt(function, url, data, decode, deadline=deadline)
        return retrying(self._attempt, function, url, data, decode, deadline=deadline)

    def _limits(self, function: str, deadline: float) -> Limits:
        s = self.settings
        cap, setting = ((s.max_page_bytes, "MOBYT_MAX_PAGE_BYTES") if function in PAGES
                        else (s.max_answer_bytes, "MOBYT_MAX_ANSWER_BYTES"))
        return Limits(s.connect_timeout, s.read_timeout, deadline, cap, setting)

    def _attempt(self, function: str, url: str, data: Mapping[str, str], decode: Callable[[str], T], *,
                 deadline: float) -> T:
        """One HTTP exchange, timed and reported (function, ms, outcome; never params)."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            response = self._transport.post(url, data, self._limits(function, deadline))
            check_status(response.status, f"POST {function}", response.retry_after)
            return decode(response.text)
        except errors.ProviderRejected as exc:
            outcome = "rejected"
            raise self._scrubbed(exc)
        except errors.ProviderError as exc:
            outcome = type(exc).__name__
            raise self._scrubbed(exc)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            elapsed = time.perf_counter() - start
            log.debug("mobyt %s %.0fms %s", function, elapsed * 1000, outcome)
            if self._on_request is not None:
                self._on_request(function, elapsed, outcome)


    def _scrubbed(self, exc: errors.ProviderError) -> errors.ProviderError:
        """The error with the provider's text bounded and the credentials removed, should
        the provider have echoed the form."""
        exc.message = errors.scrub(exc.message, (self.settings.login, self.settings.password.reveal()))
        exc.args = (exc.message, *exc.args[1:])
        return exc


class _OutOfTime(stop_base):
    """Stop when the wait before another attempt would end at the call's deadline or after it."""

    def __call__(self, state: RetryCallState) -> bool:
        return time.monotonic() + state.upcoming_sleep >= state.kwargs["deadline"]


def _retry_after(state: RetryCallState) -> float:
    """What a 429 ``Retry-After`` asked for (0 when it did not)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return float(getattr(exc, "retry_after", None) or 0.0)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("mobyt retry after attempt %d (%s), next in %.2fs", state.attempt_number, type(exc).__name__, wait)
