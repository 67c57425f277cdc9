"""The OpenAPI 3.1 document of the HTTP API (api.py), served at ``GET /v1/openapi.json``.

The request schema states the same limits the validation enforces where JSON Schema can
(types, order id pattern, message types); what it cannot state (a number's country, a
text's GSM length) is answered 400 naming the field, which the document also lists.
With ``MOBYT_WEBHOOK_TOKEN`` set it also describes the push receiver (webhooks.py), its
token a path parameter (never its value), so one schema-driven test covers every route.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..config import Settings
from ..contract import ORDER_ID_PATTERN
from .webhooks import MAX_BODY as PUSH_BODY, MAX_TEXT
from .io import ERROR_SCHEMA

ORDER_ID = {"type": "string", "pattern": f"^{ORDER_ID_PATTERN}$"}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"description": description,
                             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        found["headers"] = headers
    return found


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_COMMON = {
    "401": _error("missing or wrong token", {"WWW-Authenticate": {"schema": {"type": "string"}}}),
    "429": _error("request rate of this token exceeded", {"Retry-After": {"schema": {"type": "string"}}}),
    "503": _error("Redis or the broker is unavailable; try again"),
}

_NUMBER = {"type": "string", "pattern": "^\\+?[0-9]{3,20}$"}
_DATE = {"type": "string", "pattern": "^[0-9]{14}$", "description": "yyyymmddhhmmss, the provider's zone"}
_NO_DATE = {**_DATE, "pattern": "^([0-9]{14})?$", "description": "yyyymmddhhmmss, for DLVRD; empty otherwise"}
_FORM = "application/x-www-form-urlencoded"
_PUSHED = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
_ORDER_PATH = [{"name": "order_id", "in": "path", "required": True, "schema": ORDER_ID}]
_OBJECT = {"type": "object"}


def document(settings: Settings) -> dict[str, Any]:
    send_request = {
        "type": "object",
        "additionalProperties": False,
        "required": ["recipients", "message"],
        "properties": {
            "recipients": {"oneOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1},
                                     {"type": "string", "description": "one number or several, comma-separated"}]},
            "message": {"type": "string"},
            "message_type": {"type": ["string", "null"], "enum": ["N", "L", None],
                             "description": f"default {settings.default_message_type}"},
            "sender": _NULLABLE_STRING,
            "scheduled_at": {**_NULLABLE_STRING, "description": "ISO-8601; naive times are the provider's zone"},
            "order_id": {"oneOf": [ORDER_ID, {"type": "null"}]},
            "return_credits": {"type": ["boolean", "null"]},
        },
    }
    accepted = {"type": "object", "required": ["order_id", "status", "links"],
                "properties": {"order_id": ORDER_ID, "status": {"type": "string"}, "links": _OBJECT}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mobyt-worker HTTP API", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA, "SendRequest": send_request},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/sms": {"post": {
                "summary": "Validate, then enqueue one send (mobyt.send_sms)",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SendRequest"},
                    "example": {"recipients": ["+33612345678"], "message": "Your code is 1234", "sender": "ACME"}}}},
                "responses": {
                    "202": _ok("enqueued (or the same order, for a repeated request)", accepted),
                    "400": _error("a field is invalid (named in field), or a recipient opted out"),
                    "409": _error("the order id or Idempotency-Key was used for another request"),
                    "413": _error("body too large"), "415": _error("the body is not application/json"),
                    **_COMMON,
                },
            }},
            "/v1/orders/{order_id}": {"get": {
                "summary": "The order's record, as `mobyt order` shows it",
                "parameters": _ORDER_PATH,
                "responses": {"200": _ok("the order", {"type": "object", "required": ["order_id", "state"]}),
                              "404": _error("no such order"), **_COMMON},
            }},
            "/v1/orders/{order_id}/cancel": {"post": {
                "summary": "Cancel a scheduled order (mobyt.cancel)",
                "parameters": _ORDER_PATH,
                "responses": {"200": _ok("cancelled: the order's record", _OBJECT),
                              "202": _ok("the cancel is still running", accepted),
                              "404": _error("no such order"), "409": _error("the order is not cancellable"),
                              **_COMMON},
            }},
            "/v1/batches/{batch_id}": {"get": {
                "summary": "A bulk send's orders",
                "parameters": [{"name": "batch_id", "in": "path", "required": True, "schema": ORDER_ID}],
                "responses": {"200": _ok("the batch", {"type": "object", "required": ["batch_id", "orders"]}),
                              "404": _error("no such batch"), **_COMMON},
            }},
            "/v1/credits": {"get": {
                "summary": "Balances from the last credits check",
                "responses": {"200": _ok("balances", {"type": "object", "required": ["checked_at", "balances"]}),
                              **_COMMON},
            }},
            "/v1/inbound": {"get": {
                "summary": "Inbound SMS with an id greater than `after`, oldest first",
                "parameters": [
                    {"name": "after", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                ],
                "responses": {"200": _ok("messages", {"type": "object", "required": ["messages", "next_after"]}),
                              "400": _error("after or limit is not a whole number in range"), **_COMMON},
            }},
            "/v1/openapi.json": {"get": {
                "summary": "This document", "security": [],
                "responses": {"200": _ok("the OpenAPI document", _OBJECT)},
            }},
            **(_callbacks() if settings.webhook_token else {}),
        },
    }


def _callbacks() -> dict[str, Any]:
    """The provider's two pushes: form-encoded, the secret in the path (no header)."""
    token = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "MOBYT_WEBHOOK_TOKEN"}]
    status = {"type": "object", "required": ["order_id", "recipient", "status"], "properties": {
        "order_id": ORDER_ID, "recipient": _NUMBER, "status": {"type": "string", "pattern": "^[A-Z0-9]{1,20}$"},
        "delivery_date": _NO_DATE}}
    inbound = {"type": "object", "required": ["id", "text", "sender", "recipient", "delivery_date"], "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
        "text": {"type": "string", "maxLength": MAX_TEXT},
        "sender": _NUMBER, "recipient": _NUMBER, "delivery_date": _DATE}}
    answers = {
        "403": _error("wrong token"), "404": _error("no such callback"),
        "413": _error(f"body over {PUSH_BODY // 1024} KiB"),
        "415": _error("the body is not form-encoded"),
        "429": _error("more than MOBYT_PUSH_RATE pushes a second", {"Retry-After": {"schema": {"type": "string"}}}),
        "503": _COMMON["503"],
    }

    def push(summary: str, form: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
        return {"post": {
            "summary": summary, "security": [], "parameters": token,
            "requestBody": {"required": True, "content": {_FORM: {"schema": form, "example": example}}},
            "responses": {"200": _ok("recorded, or acknowledged and ignored", _PUSHED),
                          "400": _error(f"a field is invalid (named in field; a text over {MAX_TEXT} characters)"),
                          **answers},
        }}

    return {
        "/callbacks/{token}/status": push("A recipient's status (the provider's push)", status, {
            "order_id": "ORDER1", "recipient": "+33612345678", "status": "DLVRD", "delivery_date": "20260309120636"}),
        "/callbacks/{token}/inbound": push("An inbound SMS (the provider's push)", inbound, {
            "id": 7, "text": "Oui", "sender": "+33612345672", "recipient": "+33700000001",
            "delivery_date": "20260309113910"}),
    }
