"""The HTTP API: any service, in any language, sends and reads through the workers.

Served by the ``web`` app (app.py) when ``MOBYT_API_TOKEN`` is set (comma-separated for
several). Every route but the OpenAPI document needs ``Authorization: Bearer TOKEN``;
tokens are compared in constant time and never logged, stored or echoed. Each token may
make ``MOBYT_API_RATE_LIMIT`` requests a minute (fixed one-minute windows counted in
Redis under a hash of the token); past it: 429 with ``Retry-After``.

``POST /v1/sms`` validates exactly as ``mobyt.send_sms`` does (same function, same
defaults, opt-outs) before anything is enqueued, then enqueues through
:meth:`mobyt_worker.producer.Producer.enqueue`. The order id is the body's ``order_id``, else
derived from the token and the ``Idempotency-Key`` header, else new. The first request
for an order id takes ``P:api:order:ID`` (``SET NX``, holding a hash of the body); a
repeat finds it and answers the same order without enqueuing again (409 if its body
differs). Should the enqueue fail, the key is dropped and the answer is 503: a retry
enqueues the same order id, which the workers send at most once.

The routes, their answers and the error shape are in :func:`openapi.document`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import Any, cast

import falcon
from celery.exceptions import TimeoutError as ResultTimeout

from .. import contract, producer
from . import io as webio
from ..errors import InvalidInput, OrderNotCancellable, OrderNotFound, ProviderError, RecipientOptedOut
from .openapi import document
from ..store.keys import Keys
from ..runtime import Runtime
from ..sms import build_send_request, validate_order_id
from ..states import QUEUED
from .io import Problem, answer, invalid, read_json

#: A send's JSON body: a 1000-character text of escaped 6-byte characters and 500 numbers fit.
MAX_BODY = 64 * 1024
SMS_FIELDS = {"recipients": (list, str), "message": (str,), "message_type": (str,), "sender": (str,),
              "scheduled_at": (str,), "order_id": (str,), "return_credits": (bool,)}
MAX_KEY = 255
CANCEL_WAIT = 15.0
INBOUND_LIMIT = 500
_DIGITS = re.compile(r"[0-9]{1,18}")


def token_id(token: bytes) -> str:
    """What Redis keys and derived order ids use instead of the token itself."""
    return webio.token_id(token, "mobyt-api")


class TokenGate:
    """Falcon middleware: bearer token, then the per-token request rate."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tokens = [t.reveal().encode("utf-8") for t in runtime.settings.api_tokens]
        self.limit = runtime.settings.api_rate_limit
        self.keys = Keys(runtime.settings.key_prefix)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict) -> None:
        if not getattr(resource, "needs_token", False):
            return
        scheme, _, given = (req.get_header("Authorization") or "").partition(" ")
        offered = given.strip().encode("utf-8", "replace")
        matched = False
        for token in self.tokens:  # every token compared, so timing says nothing about which
            matched |= scheme.lower() == "bearer" and hmac.compare_digest(offered, token)
        if not matched:
            raise Problem(401, "a valid 'Authorization: Bearer TOKEN' header is required",
                          headers={"WWW-Authenticate": 'Bearer realm="mobyt"'})
        req.context.token_id = token_id(offered)
        if self.limit:
            self._count(req.context.token_id)

    def _count(self, tid: str) -> None:
        now = time.time()
        window = int(now // 60)
        key = self.keys.api_rate(tid, window)
        with self.runtime.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 61)
            count = pipe.execute()[0]
        if count > self.limit:
            wait = max(1, math.ceil((window + 1) * 60 - now))
            raise Problem(429, f"more than {self.limit} requests a minute for this token",
                          headers={"Retry-After": str(wait)})


def links(order_id: str, batch: bool = False) -> dict[str, str]:
    found = {"order": f"/v1/orders/{order_id}", "cancel": f"/v1/orders/{order_id}/cancel"}
    return {**found, "batch": f"/v1/batches/{order_id}"} if batch else found


class Sms:
    needs_token = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = Keys(runtime.settings.key_prefix)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, MAX_BODY)
        for name, value in body.items():
            kinds = SMS_FIELDS.get(name)
            if kinds is None:
                raise invalid(name, "is not a field of a send")
            if value is not None and not isinstance(value, kinds):
                raise invalid(name, f"must be {' or '.join('an array' if k is list else k.__name__ for k in kinds)}")
        if "message" not in body or body["message"] is None:
            raise invalid("message", "is required")
        if isinstance(body.get("recipients"), list) and not all(isinstance(n, str) for n in body["recipients"]):
            raise invalid("recipients", "must be an array of strings")
        derived = self._order_id(req)  # a malformed Idempotency-Key is 400 even beside an order_id
        order_id = body["order_id"] if body.get("order_id") is not None else derived
        s, rt = self.runtime.settings, self.runtime
        try:
            request = build_send_request(
                recipients=body.get("recipients") or [], message=body["message"],
                message_type=body.get("message_type") or s.default_message_type,
                sender=body["sender"] if body.get("sender") is not None else s.default_sender,
                scheduled_at=body.get("scheduled_at"), order_id=order_id,
                return_credits=bool(body.get("return_credits")), country=s.country, tz=s.timezone,
                now=datetime.now(timezone.utc), non_gsm=s.non_gsm)
            rt.optouts.check(request.recipients)
        except RecipientOptedOut as exc:
            raise Problem(400, exc.message, field=exc.field, error="opted_out") from None
        except InvalidInput as exc:
            raise invalid(exc.field, exc.message) from None
        bulk = len(request.recipients) > s.bulk_chunk_size
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        key = self.keys.api_order(order_id)
        if not rt.redis.set(key, fingerprint, nx=True, ex=s.order_ttl):
            if rt.redis.get(key) != fingerprint:
                raise Problem(409, "this order id was already used for a different request",
                              field="order_id" if body.get("order_id") else "Idempotency-Key")
            record = rt.store.get_order(order_id, with_history=False)
            answer(resp, {"order_id": order_id, "status": record.state if record else QUEUED,
                          "links": links(order_id, bulk)}, 202)
            return
        try:
            rt.producer.enqueue(request)
        except Exception as exc:
            rt.redis.delete(key)
            raise Problem(503, f"not enqueued ({type(exc).__name__}); retry with the same order id") from None
        answer(resp, {"order_id": order_id, "status": QUEUED, "links": links(order_id, bulk)}, 202)

    @staticmethod
    def _order_id(req: falcon.Request) -> str:
        key = req.get_header("Idempotency-Key")
        if key is None:
            return producer.new_order_id()
        if not 0 < len(key) <= MAX_KEY or not key.isprintable() or not key.isascii():
            raise invalid("Idempotency-Key", f"must be 1 to {MAX_KEY} printable ASCII characters")
        return hashlib.sha256(f"{req.context.token_id}:{key}".encode()).hexdigest()[:32]


def _order_id(raw: str) -> str:
    try:
        return validate_order_id(raw)
    except InvalidInput as exc:
        raise Problem(404, f"no such order: the id {exc.message}", field="order_id") from None


class Order:
    needs_token = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = Keys(runtime.settings.key_prefix)

    def on_get(self, req: falcon.Request, resp: falcon.Response, order_id: str) -> None:
        order_id = _order_id(order_id)
        record = self.runtime.store.get_order(order_id)
        if record is not None:
            answer(resp, record.to_dict())
        elif self.runtime.redis.exists(self.keys.api_order(order_id)):  # enqueued, not yet taken
            answer(resp, {"order_id": order_id, "state": QUEUED})
        else:
            raise Problem(404, "no such order", field="order_id")


class Cancel:
    needs_token = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response, order_id: str) -> None:
        order_id = _order_id(order_id)
        if self.runtime.store.get_order(order_id, with_history=False) is None:
            raise Problem(404, "no such order", field="order_id")
        result = self.runtime.producer.send_task(contract.CANCEL, kwargs={"order_id": order_id},
                                                 queue=contract.QUEUE)
        try:
            answer(resp, result.get(timeout=CANCEL_WAIT))
        except ResultTimeout:
            answer(resp, {"order_id": order_id, "status": "cancelling", "links": links(order_id)}, 202)
        except OrderNotFound:
            raise Problem(404, "no such order", field="order_id") from None
        except OrderNotCancellable as exc:
            raise Problem(409, str(exc), field="order_id") from None
        except ProviderError as exc:
            raise Problem(503, f"the provider did not cancel ({type(exc).__name__}); try again") from None
        finally:
            result.forget()


class Batch:
    needs_token = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response, batch_id: str) -> None:
        batch_id = _order_id(batch_id)
        ids = self.runtime.store.batch_orders(batch_id)
        if not ids:
            raise Problem(404, "no such batch", field="batch_id")
        records = [self.runtime.store.get_order(oid, with_history=False) for oid in ids]
        answer(resp, {"batch_id": batch_id, "orders": [r.to_dict() for r in records if r is not None]})


class Credits:
    needs_token = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        last = self.runtime.credits.history(1)
        answer(resp, {"checked_at": last[0]["at"] if last else None,
                      "balances": [b.to_dict() for b in self.runtime.credits.balances()]})


class Inbound:
    needs_token = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        after = _whole(req, "after", 0, 0)
        limit = _whole(req, "limit", 100, 1, INBOUND_LIMIT)
        inbox = self.runtime.inbox
        ids = cast(list[str], self.runtime.redis.zrangebyscore(
            inbox.keys.inbox_ids, f"({after}", "+inf", start=0, num=limit))
        messages = [m for m in (inbox.get(int(i)) for i in ids) if m is not None]
        answer(resp, {"messages": messages, "next_after": messages[-1]["id"] if messages else after})


def _whole(req: falcon.Request, name: str, default: int, low: int, high: int | None = None) -> int:
    """An integer query parameter of 1 to 18 ASCII digits: ``str.isdigit`` is true of ``²``,
    which ``int`` refuses (a 500 once), and of ``٣``, which ``int`` reads as 3."""
    raw = req.get_param(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or int(raw) < low or (high is not None and int(raw) > high):
        raise invalid(name, f"must be a whole number from {low}" + (f" to {high}" if high else ""))
    return int(raw)


class OpenApi:
    def __init__(self, runtime: Runtime) -> None:
        self.body = json.dumps(document(runtime.settings))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.body


def add_routes(app: falcon.App, runtime: Runtime) -> None:
    """The API routes, when ``MOBYT_API_TOKEN`` is set."""
    if not runtime.settings.api_tokens:
        return
    app.add_middleware(TokenGate(runtime))
    app.add_route("/v1/openapi.json", OpenApi(runtime))
    app.add_route("/v1/sms", Sms(runtime))
    app.add_route("/v1/orders/{order_id}", Order(runtime))
    app.add_route("/v1/orders/{order_id}/cancel", Cancel(runtime))
    app.add_route("/v1/batches/{batch_id}", Batch(runtime))
    app.add_route("/v1/credits", Credits(runtime))
    app.add_route("/v1/inbound", Inbound(runtime))
