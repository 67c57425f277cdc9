"""The push receiver: a plain WSGI app for the provider's callbacks (the Procfile's ``web``).

Endpoints (``TOKEN`` is ``MOBYT_WEBHOOK_TOKEN``; the provider cannot send headers, so
the secret is part of the URL you give it):

``POST /callbacks/TOKEN/status``   form fields ``order_id``, ``recipient``, ``status``,
                                   ``delivery_date`` (``yyyymmddhhmmss``, only for DLVRD)
``POST /callbacks/TOKEN/inbound``  form fields ``id``, ``text``, ``sender``,
                                   ``recipient``, ``delivery_date``
``GET /healthz``                   200 when Redis answers, else 503 (for load balancers)
``GET /metrics``                   Prometheus text format of every worker's counters (metrics.py);
                                   no token: keep it off the public side of your proxy

Answers are small JSON documents: 200 ``{"ok": true, ...}``; 400 ``{"error":
"invalid", "field": NAME, "message": ...}`` for a missing or malformed field (or a
body that is not UTF-8: field ``body``); 403 for a wrong token (compared with
:func:`hmac.compare_digest`; the answer never echoes it); 404, 405, 415 (not
form-encoded); 413 past :data:`MAX_BODY` bytes; 503 when Redis is unavailable, so
the provider may try again.

A status goes through :meth:`OrderStore.apply_statuses` with ``source="push"`` and an
inbound SMS through :meth:`InboxStore.store`: the very calls polling makes, each one
atomic Lua script, so a fact that arrives by push and by poll is recorded once. A
status for an order we do not track is acknowledged and ignored.

The token must never reach a log: :func:`install_log_filter` masks the path segment
after ``/callbacks/`` (and the token itself anywhere), with the workers' masking of phone
numbers (:class:`logs.MaskFilter`), in every record of gunicorn's access and error loggers
and of this module; :func:`wsgi_app` installs it.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import unquote_plus

import redis

from . import metrics
from .config import Settings
from .errors import ConfigError, InvalidInput, ProviderBadResponse
from .inbox import first_word
from .logs import MaskFilter
from .protocol import InboundMessage, RecipientStatus, Status, parse_date
from .runtime import Runtime
from .sms import validate_order_id

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

#: Largest accepted body: a 1000-character text of 3-byte characters, percent-encoded,
#: is about 9 KB; the other fields are short.
MAX_BODY = 16 * 1024
MAX_FIELDS = 20
_ROUTE = re.compile(r"/callbacks/([^/]*)/(status|inbound)/?")
_MASK = re.compile(r"(/callbacks/)[^/\s?#\"']*")
_NUMBER = re.compile(r"\+?[0-9]{3,20}")
_STATUS = re.compile(r"[A-Z0-9]{1,20}")
_MESSAGE_ID = re.compile(r"[0-9]{1,18}")
_FORM_TYPES = ("", "application/x-www-form-urlencoded")


class _Answer(Exception):
    """Stop handling and answer ``status`` with ``body``."""

    def __init__(self, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = list(headers)


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
MASKED_LOGGERS = ("gunicorn.access", "gunicorn.error", __name__)


def install_log_filter(token: str) -> MaskTokenFilter:
    token_filter = MaskTokenFilter([token])
    for name in MASKED_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, MaskTokenFilter) for f in target.filters):
            target.addFilter(token_filter)
    return token_filter


class WebhookApp:
    """``WebhookApp(runtime)(environ, start_response)``: a WSGI callable."""

    def __init__(self, runtime: Runtime) -> None:
        token = runtime.settings.webhook_token.reveal()
        if not token:
            raise ConfigError("MOBYT_WEBHOOK_TOKEN", "is required to receive the provider's callbacks")
        self.runtime = runtime
        self._token = token.encode("utf-8")
        self._health = redis.Redis.from_url(runtime.settings.redis_url, socket_connect_timeout=2, socket_timeout=2)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ.get("PATH_INFO") == "/metrics" and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self._metrics(environ, start_response)
        headers: list[tuple[str, str]] = []
        try:
            status, body = 200, self._dispatch(environ)
        except _Answer as answer:
            status, body, headers = answer.status, answer.body, answer.headers
        except redis.RedisError as exc:
            log.warning("callback not recorded, Redis unavailable: %s", type(exc).__name__)
            status, body = 503, {"error": "unavailable"}
        except Exception:
            log.exception("callback failed on %s", mask(environ.get("PATH_INFO", "")))
            status, body = 500, {"error": "internal"}
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        phrase = HTTPStatus(status).phrase
        start_response(f"{status} {phrase}", [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            *headers,
        ])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [payload]

    def _metrics(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        """Prometheus text format: every process's counters, from Redis (see metrics.py)."""
        try:
            status, body, kind = "200 OK", self.runtime.metrics.render(), metrics.CONTENT_TYPE
        except redis.RedisError as exc:
            log.warning("metrics unavailable, Redis: %s", type(exc).__name__)
            status, body, kind = "503 Service Unavailable", b"redis unavailable\n", "text/plain; charset=utf-8"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    # --- routing -----------------------------------------------------------------------

    def _dispatch(self, environ: WSGIEnvironment) -> dict[str, Any]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            _allow(method, "GET", "HEAD")
            return self._healthz()
        match = _ROUTE.fullmatch(path)
        if match is None:
            raise _Answer(404, {"error": "not_found"})
        token, kind = match.groups()
        try:
            raw = token.encode("latin-1")  # WSGI gives the path as latin-1 decoded bytes
        except UnicodeEncodeError:
            raw = b""
        if not hmac.compare_digest(raw, self._token):
            raise _Answer(403, {"error": "forbidden"})
        _allow(method, "POST")
        form = _read_form(environ)
        return self._status(form) if kind == "status" else self._inbound(form)

    def _healthz(self) -> dict[str, Any]:
        try:
            self._health.ping()
        except redis.RedisError:
            raise _Answer(503, {"status": "unavailable", "redis": False}) from None
        return {"status": "ok", "redis": True}

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
            return {"ok": True, "ignored": result}
        return {"ok": True, "changes": len(result)}

    def _inbound(self, form: dict[str, str]) -> dict[str, Any]:
        tz = self.runtime.settings.timezone
        message_id = _field(form, "id", _message_id)
        text = _field(form, "text", str)
        sender = _field(form, "sender", _number("sender"))
        receiver = _field(form, "recipient", _number("recipient"))
        received_at = _date(form, "delivery_date", tz, required=True)
        message = InboundMessage(message_id, receiver, sender, text, received_at, first_word(text))
        new = self.runtime.inbox.store(message, source="push")
        if new:
            self.runtime.metrics.inc("inbox_messages", source="push")
        return {"ok": True, "new": new}


# --- parsing and validation ---------------------------------------------------------------


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _Answer(405, {"error": "method_not_allowed"}, [("Allow", ", ".join(allowed))])


def _invalid(field: str, message: str) -> _Answer:
    return _Answer(400, {"error": "invalid", "field": field, "message": message})


def _read_form(environ: WSGIEnvironment) -> dict[str, str]:
    """The form body, size-bounded, each name and value percent-decoded as UTF-8."""
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type not in _FORM_TYPES:
        raise _Answer(415, {"error": "unsupported_media_type", "expected": "application/x-www-form-urlencoded"})
    too_large = _Answer(413, {"error": "too_large", "limit": MAX_BODY})
    stream = environ["wsgi.input"]
    raw_length = environ.get("CONTENT_LENGTH", "").strip()
    if raw_length:
        if not raw_length.isdigit():
            raise _invalid("Content-Length", "is not a number")
        if int(raw_length) > MAX_BODY:
            raise too_large
        body = stream.read(int(raw_length))
    elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = stream.read(MAX_BODY + 1)  # gunicorn decodes the chunks for us
        if len(body) > MAX_BODY:
            raise too_large
    else:
        body = b""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("body", "is not UTF-8") from None
    form: dict[str, str] = {}
    parts = [p for p in text.split("&") if p]
    if len(parts) > MAX_FIELDS:
        raise _invalid("body", f"has more than {MAX_FIELDS} fields")
    for part in parts:
        raw_name, _, raw_value = part.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
        except UnicodeDecodeError:
            raise _invalid("body", "a field name is not UTF-8") from None
        try:
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise _invalid(name, "is not UTF-8") from None
        if name in form:
            raise _invalid(name, "is given more than once")
        form[name] = value
    return form


def _field(form: dict[str, str], name: str, convert: Callable[[str], Any]) -> Any:
    if name not in form:
        raise _invalid(name, "is required")
    try:
        return convert(form[name])
    except InvalidInput as exc:
        raise _invalid(name, exc.message) from None
    except ValueError as exc:
        raise _invalid(name, str(exc)) from None


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
            raise _invalid(name, "is required (yyyymmddhhmmss)")
        return None
    try:
        return parse_date(raw, tz)
    except ProviderBadResponse:
        raise _invalid(name, "must be a date yyyymmddhhmmss") from None


# --- entry points -------------------------------------------------------------------------


def create_app(runtime: Runtime) -> WebhookApp:
    return WebhookApp(runtime)


def wsgi_app(settings: Settings | None = None) -> WebhookApp:
    """What gunicorn calls (``'mobyt_worker.webhooks:wsgi_app()'``): settings from the
    environment, log masking installed before the first request."""
    settings = settings or Settings.from_env()
    install_log_filter(settings.webhook_token.reveal())
    return create_app(Runtime(settings))
