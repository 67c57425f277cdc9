"""What every endpoint of the ``web`` process shares: one error shape and bounded bodies.

Every error answer, whoever raises it (our code, Falcon's router, a Redis outage), is
``{"error": CODE, "message": TEXT}`` plus ``"field"`` when one input is at fault and a
few named extras (``limit``, ``expected``), served as JSON.

Bad input is never a 500: a body past its bound is 413 before it is read whole, a wrong
content type 415, and a body that is not UTF-8, not JSON, or nested deeper than
:data:`MAX_DEPTH` (Python's parser recurses: a thousand ``[`` exhaust its stack, a 500)
is 400 naming ``body``. An answer that echoes a lone surrogate (``"\\udcff"`` is valid JSON) is
served with ``\\u`` escapes rather than failing to encode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from http import HTTPStatus
from typing import Any, Iterable

import falcon
import redis

log = logging.getLogger(__name__)

#: The ``error`` code of each status Falcon or we may answer with.
CODES = {
    400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limited",
    500: "internal", 503: "unavailable",
}

#: The JSON Schema of that shape (served in the OpenAPI document).
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
        "limit": {"type": "integer"}, "expected": {"type": "string"},
    },
}


#: Deepest nesting of arrays and objects a JSON body may have; ours need 2.
MAX_DEPTH = 32
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class Problem(falcon.HTTPError):
    """An error answer in the one shape; raise it from any responder."""

    def __init__(self, status: int, message: str, *, field: str | None = None, error: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(falcon.code_to_http_status(status), title=message, headers=headers)
        self.body = {"error": error or CODES.get(status, "error"), "message": message,
                     **({"field": field} if field else {}), **extra}


def invalid(field: str, message: str) -> Problem:
    return Problem(400, message, field=field)


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    body = getattr(exc, "body", None)
    if body is None:  # raised by Falcon itself (unknown route, wrong method, ...)
        code = exc.status_code
        body = {"error": CODES.get(code, "error"), "message": exc.description or HTTPStatus(code).phrase}
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encode(body)


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a client's own JSON
        return json.dumps(body).encode("ascii")


def token_id(token: bytes, scope: str) -> str:
    """What Redis keys (and derived order ids) use instead of a token itself."""
    return hashlib.sha256(scope.encode("ascii") + b":" + token).hexdigest()[:16]


def redis_unavailable(req: falcon.Request, resp: falcon.Response, exc: redis.RedisError, params: Any) -> None:
    log.warning("%s %s not served, Redis unavailable: %s", req.method, req.path.split("/callbacks/")[0] or "/",
                type(exc).__name__)
    raise Problem(503, "Redis is unavailable; try again")


def internal(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.error("%s failed: %s", req.method, type(exc).__name__, exc_info=exc)
    raise Problem(500, "internal error")


def answer(resp: falcon.Response, body: Any, status: int = 200) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encode(body)


def read_body(req: falcon.Request, limit: int, media_types: Iterable[str]) -> bytes:
    """The raw body, at most ``limit`` bytes, of one of ``media_types`` ("" = none given)."""
    kind = (req.content_type or "").split(";")[0].strip().lower()
    allowed = tuple(media_types)
    if kind not in allowed:
        raise Problem(415, f"the body must be {allowed[-1]}", expected=allowed[-1])
    too_large = Problem(413, f"the body exceeds {limit} bytes", limit=limit)
    if req.content_length is not None and req.content_length > limit:
        raise too_large
    if req.content_length is not None:
        body = req.bounded_stream.read(limit + 1)
    elif "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        body = req.stream.read(limit + 1)  # gunicorn decodes the chunks for us
    else:
        body = b""
    if len(body) > limit:
        raise too_large
    return body


def read_json(req: falcon.Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, at most ``limit`` bytes and :data:`MAX_DEPTH` levels deep."""
    body = read_body(req, limit, ("application/json",))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("body", "is not valid UTF-8 JSON") from None
    if too_deep(text):
        raise invalid("body", f"nests arrays and objects deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text)
    except ValueError:
        raise invalid("body", "is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    return data


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the arrays and objects of JSON ``text`` nest deeper than ``limit``, found
    without parsing it and in linear time: escapes, then strings, cut out; brackets counted."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    if len(brackets) <= limit:
        return False
    depth = 0
    for char in brackets:
        depth += 1 if char in "[{" else -1
        if depth > limit:
            return True
    return False
