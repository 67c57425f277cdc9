"""The push receiver: the provider's callbacks, routes of the ``web`` app (app.py).

Endpoints (``TOKEN`` is ``MOBYT_WEBHOOK_TOKEN``; the provider cannot send headers, so
the secret is part of the URL you give it):

``POST /callbacks/TOKEN/status``   form fields ``order_id``, ``recipient``, ``status``,
                                   ``delivery_date`` (``yyyymmddhhmmss``, only for DLVRD)
``POST /callbacks/TOKEN/inbound``  form fields ``id``, ``text``, ``sender``,
                                   ``recipient``, ``delivery_date``

Answers are small JSON documents: 200 ``{"ok": true, ...}``; errors in the one shape
of io.py: 400 ``{"error": "invalid", "field": NAME, "message": ...}`` for a missing or malformed field (or a
body that is not UTF-8: field ``body``); 403 for a wrong token (compared with
:func:`hmac.compare_digest`; the answer never echoes it); 404, 405, 415 (not
form-encoded); 413 past :data:`MAX_BODY` bytes; 429 with ``Retry-After`` past
``MOBYT_PUSH_RATE``; 503 when Redis is unavailable, so the provider may try again.

A status goes through :meth:`OrderStore.apply_statuses` with ``source="push"`` and an
inbound SMS through :meth:`InboxStore.store`: the very calls polling makes, each one
atomic Lua script, so a fact that arrives by push and by poll is recorded once.

Every push is bounded, so a flood (a faulty provider, or anyone who learnt the URL)
cannot grow Redis: a status for an order we do not track, a closed one, or a recipient
the order does not have is answered 200 ``{"ok": true, "ignored": REASON}`` and stores
nothing (200, not 4xx: the provider would retry a refusal forever, and polling has the
order's real statuses anyway); each is counted in ``mobyt_pushes_ignored_total{reason}``.
A recipient's history keeps its newest :data:`~mobyt_worker.store.orders.HISTORY_PER_RECIPIENT`
transitions, trimmed in the script that appends. Each callback may take
``MOBYT_PUSH_RATE`` requests a second per token (GCRA in Redis, ratelimit.py: shared by
every web process; a second's worth may come at once), then 429 with ``Retry-After``
(``mobyt_pushes_rate_limited_total{callback}``): a refused status is polled, a refused
inbound SMS is read by SRNEWMESSAGES or reconciliation. An inbound text is one SMS, at
most the provider's longest concatenated message (1000 characters, SPEC §2): a longer one
is no genuine push and is refused whole (400, field ``text``, ``limit``) rather than
stored cut; reconciliation would store the provider's own copy of a real one.

The token must never reach a log: :func:`install_log_filter` masks the path segment
after ``/callbacks/`` (and the token itself anywhere), with the workers' masking of phone
numbers (:class:`logs.MaskFilter`), in every record of gunicorn's access and error loggers
and of the web modules; :func:`mobyt_worker.web.wsgi_app` installs it.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
from typing import Any, Callable, Iterable
from urllib.parse import unquote_plus

import falcon

from ..errors import InvalidInput, ProviderBadResponse
from ..store.inbox import first_word
from ..logs import MaskFilter
from ..store.keys import Keys
from ..provider.protocol import InboundMessage, RecipientStatus, Status, parse_date
from ..store.ratelimit import RateLimiter
from ..runtime import Runtime
from ..sms import validate_order_id
from .io import Problem, answer, invalid, read_body, token_id

log = logging.getLogger(__name__)

#: Largest accepted body: a 1000-character text of 3-byte characters, percent-encoded,
#: is about 9 KB; the other fields are short.
MAX_BODY = 16 * 1024
MAX_FIELDS = 20
#: Longest inbound text, in characters: the provider's longest SMS (SPEC §2).
MAX_TEXT = 1000
CALLBACKS = ("status", "inbound")
_MASK = re.compile(r"(/callbacks/)[^/\s?#\"']*")
_NUMBER = re.compile(r"\+?[0-9]{3,20}")
_STATUS = re.compile(r"[A-Z0-9]{1,20}")
_MESSAGE_ID = re.compile(r"[0-9]{1,18}")
_FORM_TYPES = ("", "application/x-www-form-urlencoded")


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every callback token (and each of ``secrets``) replaced by ``***``."""
    text = _MASK.sub(r"\1***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class MaskTokenFilter(MaskFilter):
    """The workers' log mask (secrets, phone numbers), plus any callback path's token."""

    def mask(self, text: str) -> str:
        return super().mask(mask(text))


#: Loggers that may see a request path: gunicorn's access and error logs, and ours.
MASKED_LOGGERS = ("gunicorn.access", "gunicorn.error", __name__, "mobyt_worker.web.io", "mobyt_worker.web.api")


def install_log_filter(secrets: Iterable[str]) -> MaskTokenFilter:
    token_filter = MaskTokenFilter([s for s in secrets if s])
    for name in MASKED_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, MaskTokenFilter) for f in target.filters):
            target.addFilter(token_filter)
    return token_filter


class Callbacks:
    """``POST /callbacks/{token}/{kind}``: the provider's status and inbound pushes."""

    def __init__(self, runtime: Runtime, token: str) -> None:
        self.runtime = runtime
        self._token = token.encode("utf-8")
        self.limiters = _limiters(runtime, token_id(self._token, "mobyt-push"))

    def on_post(self, req: falcon.Request, resp: falcon.Response, token: str, kind: str) -> None:
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self._token):
            raise Problem(403, "wrong callback token")
        if kind not in CALLBACKS:
            raise Problem(404, "no such callback")
        self._admit(kind)
        form = _read_form(req)
        answer(resp, self._status(form) if kind == "status" else self._inbound(form))

    def _admit(self, kind: str) -> None:
        """One slot of the callback's rate, or 429 saying when the next one is free."""
        limiter = self.limiters.get(kind)
        wait = limiter.try_acquire() if limiter else 0.0
        if wait > 0:
            self.runtime.metrics.inc("pushes_rate_limited", callback=kind)
            raise Problem(429, f"more than {self.runtime.settings.push_rate:g} {kind} pushes a second",
                          headers={"Retry-After": str(max(1, math.ceil(wait)))})

    # --- the two callbacks -------------------------------------------------------------

    def _status(self, form: dict[str, str]) -> dict[str, Any]:
        tz = self.runtime.settings.timezone
        order_id = _field(form, "order_id", validate_order_id)
        recipient = _field(form, "recipient", _number("recipient"))
        code = _field(form, "status", _status_code)
        delivered = _date(form, "delivery_date", tz, required=False)
        row = RecipientStatus(recipient, code, delivered)
        result = self.runtime.record_statuses(order_id, [row], source="push")
        if isinstance(result, str):
            log.info("status push for order %s ignored: %s", order_id, result)
            self.runtime.metrics.inc("pushes_ignored", reason=result)
            return {"ok": True, "ignored": result}
        return {"ok": True, "changes": len(result)}

    def _inbound(self, form: dict[str, str]) -> dict[str, Any]:
        tz = self.runtime.settings.timezone
        message_id = _field(form, "id", _message_id)
        text = _field(form, "text", str)
        if len(text) > MAX_TEXT:
            raise Problem(400, f"is longer than {MAX_TEXT} characters, the longest SMS", field="text", limit=MAX_TEXT)
        sender = _field(form, "sender", _number("sender"))
        receiver = _field(form, "recipient", _number("recipient"))
        received_at = _date(form, "delivery_date", tz, required=True)
        message = InboundMessage(message_id, receiver, sender, text, received_at, first_word(text))
        new = self.runtime.inbox.store(message, source="push")
        if new:
            self.runtime.metrics.inc("inbox_messages", source="push")
        return {"ok": True, "new": new}


def _limiters(runtime: Runtime, tid: str) -> dict[str, RateLimiter]:
    """One GCRA limiter per callback at ``MOBYT_PUSH_RATE`` (a second's worth may come at
    once: the provider pushes a bulk send's statuses together); none when it is 0."""
    rate, keys = runtime.settings.push_rate, Keys(runtime.settings.key_prefix)
    if not rate:
        return {}
    return {kind: RateLimiter(runtime.redis, keys.push_rate(kind, tid), rate, burst=max(1.0, rate))
            for kind in CALLBACKS}


def add_routes(app: falcon.App, runtime: Runtime) -> None:
    """The callback routes, when ``MOBYT_WEBHOOK_TOKEN`` is set."""
    token = runtime.settings.webhook_token
    if token:
        app.add_route("/callbacks/{token}/{kind}", Callbacks(runtime, token.reveal()))


# --- parsing and validation ---------------------------------------------------------------


def _read_form(req: falcon.Request) -> dict[str, str]:
    """The form body, size-bounded, each name and value percent-decoded as UTF-8."""
    body = read_body(req, MAX_BODY, _FORM_TYPES)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("body", "is not UTF-8") from None
    form: dict[str, str] = {}
    parts = [p for p in text.split("&") if p]
    if len(parts) > MAX_FIELDS:
        raise invalid("body", f"has more than {MAX_FIELDS} fields")
    for part in parts:
        raw_name, _, raw_value = part.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
        except UnicodeDecodeError:
            raise invalid("body", "a field name is not UTF-8") from None
        try:
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise invalid(name, "is not UTF-8") from None
        if name in form:
            raise invalid(name, "is given more than once")
        form[name] = value
    return form


def _field(form: dict[str, str], name: str, convert: Callable[[str], Any]) -> Any:
    if name not in form:
        raise invalid(name, "is required")
    try:
        return convert(form[name])
    except InvalidInput as exc:
        raise invalid(name, exc.message) from None
    except ValueError as exc:
        raise invalid(name, str(exc)) from None


def _number(name: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        value = raw.strip()
        if not _NUMBER.fullmatch(value):
            raise InvalidInput(name, "must be a phone number (digits, optionally after +)")
        return value

    return convert


def _status_code(raw: str) -> Status:
    value = raw.strip()
    if not _STATUS.fullmatch(value):
        raise InvalidInput("status", "must be a status code such as DLVRD")
    try:
        return Status(value)
    except ValueError:  # a status we do not know yet: recorded as UNKNOWN, like polling does
        log.warning("status push with an unknown status %r recorded as UNKNOWN", value)
        return Status.UNKNOWN


def _message_id(raw: str) -> int:
    value = raw.strip()
    if not _MESSAGE_ID.fullmatch(value) or int(value) == 0:
        raise InvalidInput("id", "must be a whole number greater than 0")
    return int(value)


def _date(form: dict[str, str], name: str, tz: Any, *, required: bool) -> Any:
    raw = form.get(name, "").strip()
    if not raw:
        if required:
            raise invalid(name, "is required (yyyymmddhhmmss)")
        return None
    try:
        return parse_date(raw, tz)
    except ProviderBadResponse:
        raise invalid(name, "must be a date yyyymmddhhmmss") from None
