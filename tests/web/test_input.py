"""No 500 on bad input anywhere on the ``web`` process: each class of bad input by hand,
then schemathesis over every operation of the OpenAPI document (the push receiver's too),
all in-process on fakeredis."""

from __future__ import annotations

import json
from typing import Iterator

import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, missing_required_header, negative_data_rejection, response_headers_conformance,
    response_schema_conformance, status_code_conformance, unsupported_method)

from mobyt_worker.web import api
from mobyt_worker.web.api import MAX_BODY as API_BODY
from mobyt_worker.web.webhooks import MAX_BODY as PUSH_BODY
from mobyt_worker.web.io import MAX_DEPTH

from .webapp import AUTH, INBOUND, STATUS, WEBHOOK_TOKEN, WebApp, error_shape, web_app

JSON = {**AUTH, "Content-Type": "application/json"}
SEND = b'{"recipients": ["+33612345678"], "message": "x"}'
#: What no integer parameter takes: digits str.isdigit() accepts beyond ASCII (superscript
#: two, which int() refuses; Arabic-Indic three and fullwidth one, which it reads), and the
#: forms int() or float() would read (underscores, signs, hex, exponents, decimals).
ODD_DIGITS = ["²", "٣", "１", "1²", "٣٣", "1_0", "+1", "-0", "0x1", "1e2", "1.0"]
HUGE = ["9" * 19, "9" * 400, "9" * 5000, str(2**64)]
INBOUND_FORM = {"id": "7", "text": "oui", "sender": "+33612345672", "recipient": "+33700000001",
                "delivery_date": "20260309113910"}


@pytest.fixture
def web() -> Iterator[WebApp]:
    yield from web_app(MOBYT_PUSH_RATE="0", MOBYT_API_RATE_LIMIT="0")


@pytest.mark.parametrize("name", ["after", "limit"])
@pytest.mark.parametrize("raw", ODD_DIGITS + HUGE + ["", " 1", "1 ", "%FF", "\x00"])
def test_every_integer_query_parameter_refuses_what_is_not_ascii_digits_in_range(web, name, raw):
    answer = web.client.simulate_get("/v1/inbound", params={name: raw}, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert error_shape(answer)["field"] == name


@pytest.mark.parametrize("path", ["/v1/orders/{}", "/v1/orders/{}/cancel", "/v1/batches/{}"])
@pytest.mark.parametrize("raw", ODD_DIGITS[:4] + HUGE[:2] + ["%C3%A9", "%FF", "%00"])
def test_every_path_parameter_refuses_what_is_not_an_order_id(web, path, raw):
    method = web.client.simulate_post if path.endswith("cancel") else web.client.simulate_get
    answer = method(path.format(raw), headers=AUTH)
    assert answer.status_code == 404, answer.text
    assert error_shape(answer)["error"] == "not_found"


@pytest.mark.parametrize(("field", "raw"), [("id", d) for d in ODD_DIGITS + HUGE]
                         + [("delivery_date", d * 14) for d in ("²", "٣", "１")]
                         + [("delivery_date", "٢٠٢٦٠٣٠٩١١٣٩١٠"), ("delivery_date", "9" * 5000)])
def test_every_number_of_an_inbound_push_refuses_unicode_digits_and_huge_values(web, field, raw):
    answer = web.push(INBOUND, {**INBOUND_FORM, field: raw})
    assert answer.status_code == 400, answer.text
    assert error_shape(answer)["field"] == field
    assert web.rt.inbox.count() == 0


@pytest.mark.parametrize("raw", ["٢٠٢٦٠٣٠٩١١٣٩١٠", "²" * 14, "9" * 400])
def test_a_status_push_date_of_unicode_digits_is_refused(web, raw):
    answer = web.push(STATUS, {"order_id": "O1", "recipient": "+33612345672", "status": "DLVRD",
                               "delivery_date": raw})
    assert answer.status_code == 400 and error_shape(answer)["field"] == "delivery_date"


@pytest.mark.parametrize(("body", "field"), [
    (b"[" * (API_BODY - 100), "body"),  # under the size bound: refused for its depth, before the parser recurses
    (b'{"a":' * ((API_BODY - 100) // 5), "body"),
    (b'{"message": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", "body"),
    (b'{"message": "' + b'\\"[' * 20000 + b'"}', "recipients"),  # brackets in a string: parsed
], ids=["arrays", "objects", "just-too-deep", "brackets-in-a-string"])
def test_deep_json_is_400_never_a_recursion_error(web, body, field):
    answer = web.client.simulate_post("/v1/sms", body=body, headers=JSON)
    assert answer.status_code == 400, answer.text
    assert error_shape(answer)["field"] == field


def test_json_as_deep_as_allowed_is_parsed(web):
    nested = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    answer = web.client.simulate_post("/v1/sms", body=b'{"message": ' + nested + b"}", headers=JSON)
    assert answer.status_code == 400 and error_shape(answer) == {
        "error": "invalid", "field": "message", "message": "must be str"}


@pytest.mark.parametrize(("body", "field"), [
    (b"\xff\xfe{}", "body"),  # not UTF-8
    (b'{"message": "x\xc3"}', "body"),  # truncated UTF-8 sequence
    (b'{"recipients": ["+33612345678"], "message": "x", "return_credits": 1e999}', "return_credits"),
    (b'{"recipients": ["+33612345678"], "message": "x", "order_id": ' + b"9" * 5000 + b"}", "body"),
    (b'{"recipients": ["+33612345678"], "message": NaN}', "message"),
    (b'{"\\udcff": 1}', "\udcff"),  # a lone surrogate, echoed as \\udcff in valid JSON
    (b"[]", "body"),
])
def test_malformed_json_bodies_are_400_naming_the_field(web, body, field):
    answer = web.client.simulate_post("/v1/sms", body=body, headers=JSON)
    assert answer.status_code == 400, answer.text
    assert error_shape(answer)["field"] == field


@pytest.mark.parametrize(("path", "headers", "body", "status"), [
    ("/v1/sms", {**AUTH, "Content-Type": "text/plain"}, SEND, 415),
    ("/v1/sms", AUTH, SEND, 415),
    ("/v1/sms", {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, b"message=x", 415),
    ("/v1/sms", JSON, b'{"message": "' + b"a" * API_BODY + b'"}', 413),
    ("/v1/sms", JSON, b"[" * 100_000, 413),
    (INBOUND, {"Content-Type": "application/json"}, b'{"id": 7}', 415),
    (INBOUND, {"Content-Type": "text/plain"}, b"id=7", 415),
    (INBOUND, {"Content-Type": "application/x-www-form-urlencoded"}, b"text=" + b"a" * PUSH_BODY, 413),
    (STATUS, {"Content-Type": "application/x-www-form-urlencoded"}, b"\xff\xfe=1", 400),
    (STATUS, {"Content-Type": "application/x-www-form-urlencoded"}, b"order_id=%FF", 400),
])
def test_wrong_content_types_and_oversize_bodies(web, path, headers, body, status):
    answer = web.client.simulate_post(path, body=body, headers=headers)
    assert answer.status_code == status, answer.text
    error = error_shape(answer)
    if status == 413:
        assert error["limit"] in (API_BODY, PUSH_BODY)


@pytest.mark.parametrize(("length", "status"), [("abc", 400), ("-5", 400), ("٣", 400), ("9" * 30, 413)])
def test_a_malformed_content_length_is_400(web, length, status):
    """Straight to the WSGI app: Falcon's test client refuses to send such a header."""
    environ = falcon.testing.create_environ("/v1/sms", method="POST", headers=JSON, body=SEND)
    environ["CONTENT_LENGTH"] = length
    started: list[str] = []
    body = b"".join(web.app(environ, lambda status, headers, exc_info=None: started.append(status)))
    assert started[0].startswith(str(status)), (started, body)
    assert set(json.loads(body)) >= {"error", "message"}


def test_unknown_routes_and_methods_answer_in_the_one_shape(web):
    c = web.client
    for answer, status in ((c.simulate_get("/nope"), 404), (c.simulate_delete("/v1/sms", headers=AUTH), 405),
                           (c.simulate_get(STATUS), 405), (c.simulate_post("/callbacks/x/status"), 403),
                           (c.simulate_post(f"/callbacks/{WEBHOOK_TOKEN}/other"), 404)):
        assert answer.status_code == status, answer.text
        error_shape(answer)


# --- schemathesis over the OpenAPI document -------------------------------------------------

_WEB = WebApp(MOBYT_PUSH_RATE="0", MOBYT_API_RATE_LIMIT="0")
schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", _WEB.app)
# as the CLI's -H and a schemathesis.toml [parameters] would: cases built knowing them, so a
# "missing Authorization" case stays missing rather than being made valid behind its back
schema.config.update(headers=AUTH, parameters={"path.token": WEBHOOK_TOKEN})
#: Every check but positive_data_acceptance: a number's country or a text's GSM length is no
#: JSON Schema, so a 400 for data the document allows is right.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, missing_required_header, unsupported_method]


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_or_outside_the_document(case, monkeypatch):
    """Positive and negative cases of each operation (the document's examples among them: a
    send that is enqueued, pushes that are stored); the callbacks get the real token, so
    their forms are parsed, not just refused at the door. No worker runs: a cancel of an
    order the API enqueued answers 202 after its wait, shortened here."""
    monkeypatch.setattr(api, "CANCEL_WAIT", 0.05)
    case.call_and_validate(checks=CHECKS)
