"""The fake provider, exercised over real HTTP on loopback exactly as a client would.

Time is an injected clock (no sleeps for the delivery timeline); the only real waits
are the slow-answer and latency checks (a client read timeout shorter than the delay
injected ends them) and the push ticker (100 ms ticks).
"""

from __future__ import annotations

import http.client
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from mobyt_worker.provider import protocol
from mobyt_worker.config import DEFAULT_PATHS
from mobyt_worker.errors import ProviderBadResponse, ProviderEmptyResponse, ProviderRejected
from mobyt_worker.provider.protocol import CreditRow, HistoryRow, InboundMessage, RecipientStatus, Status
from mobyt_worker.sandbox import ProviderSimulator, RecordedRequest, SimulatorServer

TZ = ZoneInfo("Europe/Paris")
LOGIN, PASSWORD = "demo", "Pa55-w0rd-never-seen"
START = 1_750_000_000.0  # 2025-06-15 17:06:40 Paris
D = 10.0  # delivery_delay
TIMEOUT_AFTER = 100.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fmt(epoch: float) -> str:
    return protocol.format_date(datetime.fromtimestamp(epoch, TZ), TZ)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock):
    simulator = ProviderSimulator(password=PASSWORD, delivery_delay=D, timeout_after=TIMEOUT_AFTER, clock=clock)
    yield simulator
    simulator.close()


@pytest.fixture
def server(sim: ProviderSimulator):
    with SimulatorServer(sim) as running:
        yield running


Call = Callable[..., requests.Response]


@pytest.fixture
def call(server: SimulatorServer):
    session = requests.Session()

    def call(function: str, *, method: str = "POST", path: str | None = None, auth: bool = True,
             timeout: Any = 5, **params: str) -> requests.Response:  # fmt: skip
        url = server.url + (path or DEFAULT_PATHS[function])
        if auth:
            params = {"login": LOGIN, "password": PASSWORD, **params}
        if method == "GET":
            return session.get(url, params=params, timeout=timeout)
        return session.post(url, data=params, timeout=timeout)

    yield call
    session.close()


def send(call: Call, recipient: str, message: str = "hello", **params: str) -> protocol.SendReceipt:
    params.setdefault("message_type", "N")
    params.setdefault("sender", "Acme")
    return protocol.decode_send(call("SENDSMS", recipient=recipient, message=message, **params).text)


def statuses(call: Call, order_id: str) -> list[RecipientStatus]:
    return protocol.decode_status(call("SMSSTATUS", order_id=order_id).text, TZ)


# --- SENDSMS ------------------------------------------------------------------------------


def test_seed_send_example_over_get(server: SimulatorServer, sim: ProviderSimulator) -> None:
    query = (
        f"login={LOGIN}&password={PASSWORD}&message_type=N&recipient=%2B336061234567"
        "&message=hello%20world&sender=test"
    )
    body = requests.get(f"{server.url}/Moby/SENDSMS?{query}", timeout=5).text
    receipt = protocol.decode_send(body)
    assert len(receipt.order_id) == 13 and int(receipt.order_id, 16) >= 0 and receipt.order_id.isupper()
    assert body == f"OK|{receipt.order_id}|1"
    [recorded] = sim.requests("SENDSMS")
    assert recorded.method == "GET" and recorded.params["message"] == "hello world"
    assert recorded.params["recipient"] == "+336061234567"


def test_send_counts_recipients_or_credits_and_truncates_order_id(call: Call, sim: ProviderSimulator) -> None:
    receipt = send(call, "+33612345670, +33612345671", "x" * 200, order_id="A" * 40, returnCredits="true")
    assert receipt == protocol.SendReceipt("A" * 32, 4)  # 2 parts x 2 recipients
    assert send(call, "+33612345670,+33612345671,+33612345672").count == 3
    assert [r.recipient for r in statuses(call, "A" * 32)] == ["+33612345670", "+33612345671"]
    assert sim.billed_sends() == 2 and sim.billed_sends("A" * 32) == 1


def test_generated_order_ids_are_unique(call: Call) -> None:
    ids = {send(call, "+33612345670").order_id for _ in range(30)}
    assert len(ids) == 30


def test_repeated_order_id_is_accepted_and_billed_again(call: Call, sim: ProviderSimulator) -> None:
    assert send(call, "+33612345670", order_id="dup1").order_id == "dup1"
    assert send(call, "+33612345671", order_id="dup1").order_id == "dup1"
    assert sim.billed_sends("dup1") == 2 and sim.billed_sends() == 2
    assert [r.recipient for r in statuses(call, "dup1")] == ["+33612345670", "+33612345671"]
    assert sim.credits()[("N", "FR")] == 10000 - 2


def test_utf8_message_and_l_type_without_sender(call: Call, sim: ProviderSimulator) -> None:
    body = call("SENDSMS", method="GET", message_type="L", recipient="0612345670", message="Été à Noël €").text
    assert protocol.decode_send(body).count == 1
    assert sim.requests("SENDSMS")[0].params["message"] == "Été à Noël €"
    assert sim.credits()[("L", "FR")] == 10000 - 1


@pytest.mark.parametrize(
    ("message", "parts"),
    [
        ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3), ("a" * 1000, 7),
        ("€" * 80, 1), ("€" * 81, 2), ("[]" * 40, 1), ("[]" * 40 + "a", 2), ("é" * 160, 1),  # é: GSM
        ("ç" * 70, 1), ("ç" * 71, 2), ("ç" * 134, 2), ("ç" * 135, 3),  # ç is not: UCS-2
    ],
    ids=lambda value: f"{value[0]!r}x{len(value)}" if isinstance(value, str) else str(value),
)  # fmt: skip
def test_credits_follow_gsm_parts(call: Call, sim: ProviderSimulator, message: str, parts: int) -> None:
    assert send(call, "+33612345670", message, returnCredits="true").count == parts
    assert sim.credits()[("N", "FR")] == 10000 - parts


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"message_type": ""}, "KO|20|missing parameter: message_type"),
        ({"message_type": "X"}, "KO|21|invalid parameter: message_type"),
        ({"recipient": ""}, "KO|20|missing parameter: recipient"),
        ({"recipient": " , "}, "KO|20|missing parameter: recipient"),
        ({"recipient": "+33612345670,abc"}, "KO|21|invalid parameter: recipient"),
        ({"message": ""}, "KO|20|missing parameter: message"),
        ({"message": "a" * 1001}, "KO|21|invalid parameter: message"),
        ({"message": "€" * 501}, "KO|21|invalid parameter: message"),
        ({"sender": ""}, "KO|20|missing parameter: sender"),
        ({"sender": "TwelveLetter"}, "KO|21|invalid parameter: sender"),
        ({"sender": "Acme!"}, "KO|21|invalid parameter: sender"),
        ({"scheduled_delivery_time": "2025"}, "KO|21|invalid parameter: scheduled_delivery_time"),
        ({"scheduled_delivery_time": "20251399000000"}, "KO|21|invalid parameter: scheduled_delivery_time"),
        ({"order_id": "abc-def"}, "KO|21|invalid parameter: order_id"),
    ],
)
def test_send_refuses_bad_parameters(call: Call, sim: ProviderSimulator, override: dict, expected: str) -> None:
    params = {"message_type": "N", "recipient": "+33612345670", "message": "hi", "sender": "Acme", **override}
    body = call("SENDSMS", **params).text
    assert body.startswith(expected)
    with pytest.raises(ProviderRejected):
        protocol.decode_send(body)
    assert sim.billed_sends() == 0 and sim.credits()[("N", "FR")] == 10000


def test_phone_number_sender_is_accepted(call: Call) -> None:
    assert send(call, "+33612345670", sender="+33612345678").count == 1


# --- authentication and routing -----------------------------------------------------------


@pytest.mark.parametrize("function", sorted(DEFAULT_PATHS))
@pytest.mark.parametrize("credentials", [{"login": LOGIN, "password": "wrong"}, {"password": PASSWORD}, {}])
def test_every_function_checks_credentials_first(call: Call, function: str, credentials: dict) -> None:
    body = call(function, auth=False, **credentials).text
    assert body == "KO|10|authentication failed"
    with pytest.raises(ProviderRejected) as refused:
        protocol.check_body(body)
    assert refused.value.code == "10"


@pytest.mark.parametrize("function", sorted(DEFAULT_PATHS))
@pytest.mark.parametrize("prefix", ["Moby", "Mobyt", "OESRs"])
def test_every_function_answers_under_every_prefix(call: Call, function: str, prefix: str) -> None:
    answer = call(function, path=f"/{prefix}/{function}")
    assert answer.status_code == 200 and answer.text[:2] in ("OK", "KO")
    assert not answer.text.startswith("KO|10")


@pytest.mark.parametrize("path", ["/Moby/NOPE", "/SENDSMS", "/", "/Other/CREDITS", "/_sim/nope"])
def test_unknown_paths_are_404(call: Call, path: str) -> None:
    assert call("CREDITS", path=path).status_code == 404


@pytest.mark.parametrize(
    ("function", "params", "expected"),
    [
        ("SMSSTATUS", {}, "KO|20|missing parameter: order_id"),
        ("SMSSTATUS", {"order_id": "nope"}, "KO|40|unknown order_id"),
        ("REMOVE_DELAYED", {}, "KO|20|missing parameter: order_id"),
        ("REMOVE_DELAYED", {"order_id": "nope"}, "KO|40|unknown order_id"),
        ("SMSHISTORY", {"to": "20250101000000"}, "KO|20|missing parameter: from"),
        ("SMSHISTORY", {"from": "20250101000000", "to": "tomorrow"}, "KO|21|invalid parameter: to"),
        ("SRHISTORY", {"date_from": "20250101000000"}, "KO|20|missing parameter: date_to"),
        ("SRHISTORY", {"date_from": "2025010100000", "date_to": "20250101000000"}, "KO|21|invalid parameter: date_from"),
        ("SRHISTORYBYID", {}, "KO|20|missing parameter: id"),
        ("SRHISTORYBYID", {"id": "-1"}, "KO|21|invalid parameter: id"),
    ],
)
def test_query_functions_refuse_bad_parameters(call: Call, function: str, params: dict, expected: str) -> None:
    assert call(function, **params).text.startswith(expected)


# --- delivery timeline -------------------------------------------------------------------

NUMBERS = ["+33600000000", "+33600000005", "+33600000006", "+33600000007", "+33600000008", "+33600000009"]
W, W4, DL = Status.WAITING, Status.WAIT4DLVR, Status.DLVRD


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0.0, [W, W, W4, Status.UNKNRCPT, Status.BLACKLISTED, W4]),
        (0.25 * D - 0.01, [W, W, W4, Status.UNKNRCPT, Status.BLACKLISTED, W4]),
        (0.25 * D, [W4, W4, W4, Status.UNKNRCPT, Status.BLACKLISTED, W4]),
        (0.5 * D, [W4, W4, Status.ERROR, Status.UNKNRCPT, Status.BLACKLISTED, W4]),
        (D, [DL, DL, Status.ERROR, Status.UNKNRCPT, Status.BLACKLISTED, W4]),
        (TIMEOUT_AFTER, [DL, DL, Status.ERROR, Status.UNKNRCPT, Status.BLACKLISTED, Status.TIMEOUT]),
    ],
)
def test_timeline_by_last_digit(call: Call, clock: FakeClock, offset: float, expected: list[Status]) -> None:
    order_id = send(call, ",".join(NUMBERS)).order_id
    clock.advance(offset)
    rows = statuses(call, order_id)
    assert [r.recipient for r in rows] == NUMBERS
    assert [r.status for r in rows] == expected
    delivered = datetime.fromtimestamp(START + D, TZ)
    assert [r.delivered_at for r in rows] == [delivered if s is DL else None for s in expected]


def test_status_body_has_the_seed_shape(call: Call, clock: FakeClock) -> None:
    order_id = send(call, "+336061234560,+336106543216,+341234567").order_id
    clock.advance(D)
    body = call("SMSSTATUS", order_id=order_id).text
    assert body == f"OK;%2B336061234560|DLVRD|{fmt(START + D)};%2B336106543216|ERROR|;%2B341234567|UNKNRCPT|;"


def test_status_is_forgotten_after_30_days(call: Call, clock: FakeClock) -> None:
    order_id = send(call, "+33612345670").order_id
    clock.advance(29 * 86400)
    assert statuses(call, order_id)[0].status is DL
    clock.advance(2 * 86400)
    assert call("SMSSTATUS", order_id=order_id).text == "KO|40|unknown order_id"


def test_stop_in_the_inbox_blacklists_the_sender(call: Call, sim: ProviderSimulator) -> None:
    sim.add_inbound("+33612345670", "Stop merci")
    order_id = send(call, "0612345670,0033612345670,+33612345671").order_id
    assert [r.status for r in statuses(call, order_id)] == [Status.BLACKLISTED, Status.BLACKLISTED, W]


# --- scheduled sends and REMOVE_DELAYED ------------------------------------------------------


def test_scheduled_send_can_be_removed_and_is_refunded(call: Call, sim: ProviderSimulator, clock: FakeClock) -> None:
    order_id = send(call, "+33600000000,+33600000007", scheduled_delivery_time=fmt(START + 3600)).order_id
    assert sim.credits()[("N", "FR")] == 10000 - 2
    clock.advance(3599)
    assert [r.status for r in statuses(call, order_id)] == [Status.SCHEDULED, Status.SCHEDULED]
    body = call("REMOVE_DELAYED", order_id=order_id).text
    assert body == "OK;"
    protocol.decode_ok(body)
    assert sim.credits()[("N", "FR")] == 10000
    assert call("SMSSTATUS", order_id=order_id).text == "KO|40|unknown order_id"
    assert call("REMOVE_DELAYED", order_id=order_id).text == "KO|40|unknown order_id"
    assert sim.billed_sends(order_id) == 1  # it was accepted; the refund restores the credits
    assert call("SMSHISTORY", **{"from": fmt(START - 1), "to": fmt(START + 1)}).text == "OK;"  # it holds it no more


def test_scheduled_send_starts_at_its_time_and_is_then_not_cancellable(call: Call, clock: FakeClock) -> None:
    order_id = send(call, "+33600000000,+33600000007", scheduled_delivery_time=fmt(START + 60)).order_id
    clock.advance(60)
    assert [r.status for r in statuses(call, order_id)] == [W, Status.UNKNRCPT]
    clock.advance(D)
    [delivered, _] = statuses(call, order_id)
    assert delivered.status is DL and delivered.delivered_at == datetime.fromtimestamp(START + 60 + D, TZ)
    assert call("REMOVE_DELAYED", order_id=order_id).text.startswith("KO|41|order not cancellable")


def test_immediate_and_past_scheduled_sends_are_not_cancellable(call: Call) -> None:
    immediate = send(call, "+33600000000").order_id
    past = send(call, "+33600000000", scheduled_delivery_time=fmt(START - 60)).order_id
    assert statuses(call, past)[0].status is W
    for order_id in (immediate, past):
        with pytest.raises(ProviderRejected) as refused:
            protocol.decode_ok(call("REMOVE_DELAYED", order_id=order_id).text)
        assert refused.value.code == "41"


# --- SMSHISTORY and CREDITS ----------------------------------------------------------------


def test_history_lists_sends_created_in_range(call: Call, clock: FakeClock) -> None:
    first = send(call, "+33600000000,+33600000001").order_id
    clock.advance(60)
    second = send(call, "+33600000002", message_type="L", scheduled_delivery_time=fmt(START + 3600)).order_id
    clock.advance(60)
    send(call, "+33600000003")
    rows = protocol.decode_history(call("SMSHISTORY", **{"from": fmt(START), "to": fmt(START + 60)}).text, TZ)
    assert rows == [
        HistoryRow(first, datetime.fromtimestamp(START, TZ), "N", "Acme", 2, None),
        HistoryRow(second, datetime.fromtimestamp(START + 60, TZ), "L", "", 1, datetime.fromtimestamp(START + 3600, TZ)),
    ]
    every = call("SMSHISTORY", **{"from": fmt(START - 1), "to": fmt(START + 120)}).text
    assert len(protocol.decode_history(every, TZ)) == 3
    assert call("SMSHISTORY", **{"from": fmt(START + 121), "to": fmt(START + 999)}).text == "OK;"


def test_credits_seed_shape_and_buckets(call: Call, sim: ProviderSimulator) -> None:
    assert call("CREDITS").text == "OK;N|FR|10000;L|FR|10000;EE||1000"
    receipt = send(call, "0612345670,0033612345671,+4915112345670", message_type="L", returnCredits="true")
    assert receipt.count == 3
    assert protocol.decode_credits(call("CREDITS").text) == [
        CreditRow("N", "FR", 10000), CreditRow("L", "FR", 9998), CreditRow("EE", "", 999),
    ]  # fmt: skip


def test_insufficient_credits_is_ko_30_and_debits_nothing(clock: FakeClock) -> None:
    sim = ProviderSimulator(password=PASSWORD, credits={("N", "FR"): 3}, clock=clock)
    with SimulatorServer(sim) as server:
        post = lambda **p: requests.post(  # noqa: E731
            server.url + "/Moby/SENDSMS",
            data={"login": LOGIN, "password": PASSWORD, "message_type": "N", "sender": "Acme", **p},
            timeout=5,
        ).text
        assert post(recipient="+33600000000,+33600000001", message="x" * 161) == "KO|30|insufficient credits"
        assert post(recipient="+4915112345670", message="x") == "KO|30|insufficient credits"  # no EE bucket
        assert sim.credits() == {("N", "FR"): 3} and sim.billed_sends() == 0
        assert post(recipient="+33600000000,+33600000001,+33600000002", message="x").startswith("OK|")
        assert sim.credits() == {("N", "FR"): 0}
    sim.close()


# --- inbox -------------------------------------------------------------------------------

TRICKY = "Prix|total; 100% + 5€ “été” & co"


def test_inbox_rows_have_the_seed_shape(call: Call, sim: ProviderSimulator) -> None:
    sim.add_inbound("+336107654321", "hello world", receiver="+336061234567", keyword="",
                    received_at=datetime(2009, 3, 9, 11, 39, 10, tzinfo=TZ))  # fmt: skip
    assert call("SRHISTORYBYID", id="0").text == "OK;1|%2B336061234567|%2B336107654321|hello+world|20090309113910|;"


def test_srnewmessages_is_a_destructive_read(call: Call, sim: ProviderSimulator) -> None:
    assert [sim.add_inbound(f"+3361234567{i}", f"{TRICKY} {i}") for i in range(3)] == [1, 2, 3]
    first = protocol.decode_inbox(call("SRNEWMESSAGES").text, TZ)
    assert first == [
        InboundMessage(i + 1, "+33700000001", f"+3361234567{i}", f"{TRICKY} {i}", datetime.fromtimestamp(START, TZ),
                       "Prix|total;")
        for i in range(3)
    ]  # fmt: skip
    assert call("SRNEWMESSAGES").text == "OK;"
    sim.add_inbound("+33612345679", "later")
    assert [m.id for m in protocol.decode_inbox(call("SRNEWMESSAGES").text, TZ)] == [4]
    by_id = lambda n: [m.id for m in protocol.decode_inbox(call("SRHISTORYBYID", id=str(n)).text, TZ)]  # noqa: E731
    assert by_id(0) == [1, 2, 3, 4] and by_id(2) == [3, 4] and by_id(4) == []


def test_lost_srnewmessages_answer_is_gone_but_srhistorybyid_recovers_it(call: Call, sim: ProviderSimulator) -> None:
    sim.add_inbound("+33612345670", "one")
    sim.add_inbound("+33612345671", "two")
    sim.inject_fault("SRNEWMESSAGES", "lost_answer")
    with pytest.raises(requests.ConnectionError):
        call("SRNEWMESSAGES")
    assert call("SRNEWMESSAGES").text == "OK;"
    assert [m.text for m in protocol.decode_inbox(call("SRHISTORYBYID", id="0").text, TZ)] == ["one", "two"]


def test_srhistory_selects_by_reception_date(call: Call, sim: ProviderSimulator) -> None:
    for day in (3, 1, 2):
        sim.add_inbound("+33612345670", f"day {day}", received_at=datetime(2025, 1, day, 12, tzinfo=TZ))
    sim.add_inbound("+33612345670", "naive is provider-local", received_at=datetime(2025, 1, 2, 13))
    body = call("SRHISTORY", date_from="20250102000000", date_to="20250103120000").text
    assert [(m.id, m.text) for m in protocol.decode_inbox(body, TZ)] == [
        (1, "day 3"), (3, "day 2"), (4, "naive is provider-local"),
    ]  # fmt: skip


def test_keyword_is_the_first_word_as_written_unless_given(call: Call, sim: ProviderSimulator) -> None:
    sim.add_inbound("+33612345670", "  promo Noël")
    sim.add_inbound("+33612345670", "whatever", keyword="SHARED")
    sim.add_inbound("+33612345670", "")
    assert [m.keyword for m in protocol.decode_inbox(call("SRNEWMESSAGES").text, TZ)] == ["promo", "SHARED", ""]


# --- faults ------------------------------------------------------------------------------


def _attempt_send(call: Call, order_id: str, timeout: Any = 5) -> requests.Response:
    return call("SENDSMS", message_type="N", recipient="+33612345670", message="hi", sender="Acme",
                order_id=order_id, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("kind", ["http500", "html", "garbage", "empty", "ko", "drop"])
def test_unprocessed_faults(call: Call, sim: ProviderSimulator, kind: str) -> None:
    sim.inject_fault("SENDSMS", kind, count=2, code="55", message="maintenance")
    for _ in range(2):
        if kind == "drop":
            with pytest.raises(requests.ConnectionError):
                _attempt_send(call, "F1")
            continue
        answer = _attempt_send(call, "F1")
        if kind == "http500":
            assert answer.status_code == 500 and "<html" in answer.text
        else:
            assert answer.status_code == 200
        expected = {"http500": ProviderBadResponse, "html": ProviderBadResponse, "garbage": ProviderBadResponse,
                    "empty": ProviderEmptyResponse, "ko": ProviderRejected}[kind]  # fmt: skip
        with pytest.raises(expected) as failure:
            protocol.decode_send(answer.content.decode("utf-8", "replace"))
        if kind == "ko":
            assert (failure.value.code, failure.value.message) == ("55", "maintenance")
        if kind == "empty":
            assert answer.content == b"" and answer.headers["Content-Length"] == "0"
    assert sim.billed_sends() == 0 and sim.count("SENDSMS") == 2
    assert call("SMSSTATUS", order_id="F1").text == "KO|40|unknown order_id"
    assert protocol.decode_send(_attempt_send(call, "F1").text).order_id == "F1"  # faults used up
    assert sim.billed_sends("F1") == 1


def test_lost_answer_is_billed_but_never_answered(call: Call, sim: ProviderSimulator) -> None:
    sim.inject_fault("SENDSMS", "lost_answer")
    with pytest.raises(requests.ConnectionError):
        _attempt_send(call, "LOST1")
    assert sim.billed_sends("LOST1") == 1
    assert [r.status for r in statuses(call, "LOST1")] == [W]


def test_history_lists_what_was_committed_and_says_which_request_got_a_fault(call: Call, sim: ProviderSimulator) -> None:
    """An outage's two halves: refused before committing (5xx) and committed with the answer
    lost. SMSHISTORY lists only the second; the recorded requests say which fault each got."""
    sim.inject_fault("SENDSMS", "http500")
    sim.inject_fault("SENDSMS", "lost_answer")
    assert _attempt_send(call, "REFUSED1").status_code == 500
    with pytest.raises(requests.ConnectionError):
        _attempt_send(call, "LOST2")
    _attempt_send(call, "FINE1")
    rows = protocol.decode_history(call("SMSHISTORY", **{"from": fmt(START - 1), "to": fmt(START + 1)}).text, TZ)
    assert [r.order_id for r in rows] == ["LOST2", "FINE1"] and sim.stats()["history_rows"] == 2
    assert [(r.params["order_id"], r.fault) for r in sim.requests("SENDSMS")] == [
        ("REFUSED1", "http500"), ("LOST2", "lost_answer"), ("FINE1", "")]


def test_faults_not_yet_used_can_be_cleared_over_http(call: Call, sim: ProviderSimulator, server) -> None:
    sim.inject_fault("SENDSMS", "http500", count=100)
    assert _attempt_send(call, "OUT1").status_code == 500
    assert requests.post(server.url + "/_sim/faults/clear", json={}, timeout=5).json() == {"ok": True}
    assert protocol.decode_send(_attempt_send(call, "OUT1").text).order_id == "OUT1"


def test_slow_answer_times_out_after_the_send_was_billed(call: Call, sim: ProviderSimulator) -> None:
    sim.inject_fault("SENDSMS", "slow", delay=0.5)
    with pytest.raises(requests.ReadTimeout):  # the answer comes 0.5 s late: only a timeout ends the wait first
        _attempt_send(call, "SLOW1", timeout=(2, 0.15))
    assert sim.billed_sends("SLOW1") == 1
    assert [r.status for r in statuses(call, "SLOW1")] == [W]


def test_a_trickled_answer_comes_whole_in_the_end_after_the_send_was_billed(call: Call, sim: ProviderSimulator) -> None:
    sim.inject_fault("SENDSMS", "trickle", delay=0.001)
    answer = _attempt_send(call, "TRICKLE1")
    assert protocol.decode_send(answer.text).order_id == "TRICKLE1"
    assert sim.billed_sends("TRICKLE1") == 1 and sim.abandoned("SENDSMS") == 0


def test_an_oversize_answer_is_the_answer_then_blanks_all_announced(call: Call, server: SimulatorServer,
                                                                    sim: ProviderSimulator) -> None:
    fault = {"function": "SENDSMS", "kind": "oversize", "size": 100_000}
    assert requests.post(server.url + "/_sim/fault", json=fault, timeout=5).ok
    answer = _attempt_send(call, "HUGE1")
    assert int(answer.headers["Content-Length"]) == len(answer.content) and answer.content.endswith(b" " * 100_000)
    assert protocol.decode_send(answer.text).order_id == "HUGE1"  # blanks aside, a receipt
    assert sim.billed_sends("HUGE1") == 1


def test_ko_fault_has_a_default_code(call: Call, sim: ProviderSimulator) -> None:
    sim.inject_fault("credits", "ko")
    assert call("CREDITS").text == "KO|50|service temporarily unavailable"
    assert call("CREDITS").text.startswith("OK;")


@pytest.mark.parametrize(("function", "kind", "count"), [("SENDSMS", "boom", 1), ("NOPE", "drop", 1), ("CREDITS", "ko", 0)])
def test_inject_fault_validates(sim: ProviderSimulator, function: str, kind: str, count: int) -> None:
    with pytest.raises(ValueError):
        sim.inject_fault(function, kind, count)


def test_latency_delays_provider_answers_only(call: Call, server: SimulatorServer, sim: ProviderSimulator) -> None:
    sim.set_latency(30)
    with pytest.raises(requests.ReadTimeout):  # the answer is 30 s away: a 0.5 s wait ends first
        call("CREDITS", timeout=(2, 0.5))
    assert sim.count("CREDITS") == 1  # received at once; only its answer waits
    assert requests.get(server.url + "/_sim/health", timeout=5).json() == {"status": "ok"}  # control does not wait


# --- push callbacks ------------------------------------------------------------------------


def push_barrier(call: Call, receiver: Receiver) -> None:
    """Two orders pushed at once, one tick after the other: when the second has arrived, every
    push an earlier tick queued has arrived too (one delivery thread, in queue order)."""
    for number in ("+33611111117", "+33622222227"):  # last digit 7: UNKNRCPT at once
        send(call, number)
        wait_for(lambda n=number: receiver.statuses(n) == ["UNKNRCPT"])


class Receiver:
    """A tiny HTTP endpoint that records the form POSTs it receives."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.posts.append((self.path, dict(parse_qsl(body, keep_blank_values=True))))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def statuses(self, recipient: str) -> list[str]:
        return [form["status"] for path, form in list(self.posts) if form.get("recipient") == recipient]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


def test_push_posts_every_status_change_and_inbound(call: Call, sim: ProviderSimulator, clock: FakeClock,
                                                    receiver: Receiver) -> None:  # fmt: skip
    already = send(call, "+33600000008", order_id="EARLY").order_id  # sent before push was configured
    sim.configure_push(status_url=receiver.url + "/status?token=t0k", inbound_url=receiver.url + "/inbound?token=t0k")
    send(call, "+33600000000,+33600000007", order_id="PUSH1")
    wait_for(lambda: receiver.statuses("+33600000007") == ["UNKNRCPT"] and receiver.statuses("+33600000000") == ["WAITING"])
    assert receiver.statuses("+33600000008") == ["BLACKLISTED"] and already == "EARLY"
    clock.advance(D)  # jumps over WAIT4DLVR: it is still pushed, in order
    wait_for(lambda: receiver.statuses("+33600000000") == ["WAITING", "WAIT4DLVR", "DLVRD"])
    final = [form for path, form in receiver.posts if form.get("status") == "DLVRD"]
    assert final == [{"order_id": "PUSH1", "recipient": "+33600000000", "status": "DLVRD",
                      "delivery_date": fmt(START + D)}]  # fmt: skip
    assert all(path == "/status?token=t0k" for path, _ in receiver.posts)
    message_id = sim.add_inbound("+33612345670", "Bonjour à tous")
    wait_for(lambda: any(path.startswith("/inbound") for path, _ in receiver.posts))
    [inbound] = [form for path, form in receiver.posts if path == "/inbound?token=t0k"]
    assert inbound == {"id": str(message_id), "text": "Bonjour à tous", "sender": "+33612345670",
                       "recipient": "+33700000001", "delivery_date": fmt(START + D)}  # fmt: skip
    push_barrier(call, receiver)
    assert len(receiver.posts) == 6 + 2  # nothing pushed twice (and the barrier's two)


def test_scheduled_then_removed_orders_stop_pushing(call: Call, sim: ProviderSimulator, clock: FakeClock,
                                                    receiver: Receiver) -> None:  # fmt: skip
    sim.configure_push(status_url=receiver.url + "/status")
    order_id = send(call, "+33600000000", scheduled_delivery_time=fmt(START + 60)).order_id
    wait_for(lambda: receiver.statuses("+33600000000") == ["SCHEDULED"])
    assert call("REMOVE_DELAYED", order_id=order_id).text == "OK;"
    clock.advance(60 + D)
    push_barrier(call, receiver)
    assert receiver.statuses("+33600000000") == ["SCHEDULED"]


def test_failed_push_is_logged_without_the_secret(sim: ProviderSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mobyt_worker.sandbox")
    unused = Receiver()
    url = unused.url
    unused.close()  # nothing listens there any more
    sim.configure_push(inbound_url=url + "/callbacks/PATH-TOKEN/inbound?token=SECRET-TOKEN")
    sim.add_inbound("+33612345670", "hello")
    wait_for(lambda: "push to" in caplog.text)
    assert "SECRET-TOKEN" not in caplog.text and "PATH-TOKEN" not in caplog.text
    assert url in caplog.text


# --- control endpoints, secrecy, HTTP behaviour ----------------------------------------------


def test_control_endpoints(call: Call, server: SimulatorServer, sim: ProviderSimulator) -> None:
    base = server.url + "/_sim"
    assert requests.get(base + "/health", timeout=5).json() == {"status": "ok"}
    assert requests.post(base + "/inbound", json={"sender": "+33612345670", "text": "hi there"}, timeout=5).json() == {"id": 1}
    assert protocol.decode_inbox(call("SRNEWMESSAGES").text, TZ)[0].keyword == "hi"
    fault = {"function": "SENDSMS", "kind": "ko", "count": 1, "delay": 0, "code": "77", "message": "nope"}
    assert requests.post(base + "/fault", json=fault, timeout=5).status_code == 200
    assert _attempt_send(call, "C1").text == "KO|77|nope"
    assert protocol.decode_send(_attempt_send(call, "C1").text).order_id == "C1"
    recorded = requests.get(base + "/requests", params={"function": "SENDSMS"}, timeout=5).json()
    assert [r["function"] for r in recorded] == ["SENDSMS", "SENDSMS"]
    assert recorded[0]["method"] == "POST" and "password" not in recorded[0]["params"]
    assert recorded[0]["params"]["order_id"] == "C1" and recorded[0]["at"] == sim.requests("SENDSMS")[0].at
    stats = requests.get(base + "/stats", timeout=5).json()
    assert stats["counts"] == {"SRNEWMESSAGES": 1, "SENDSMS": 2} and stats["billed"] == 1
    assert stats["credits"] == {"N|FR": 9999, "L|FR": 10000, "EE|": 1000}
    assert requests.post(base + "/latency", json={"seconds": 30}, timeout=5).ok
    with pytest.raises(requests.ReadTimeout):  # answers now come 30 s late
        call("CREDITS", timeout=(2, 0.5))
    assert requests.post(base + "/push", json={"status_url": None, "inbound_url": None}, timeout=5).ok
    assert requests.post(base + "/reset", timeout=5).ok
    assert sim.requests() == [] and sim.billed_sends() == 0 and sim.credits()[("N", "FR")] == 10000
    assert call("CREDITS", timeout=(2, 5)).text.startswith("OK;")  # reset restored the constructed latency (none)
    assert requests.post(base + "/inbound", data="not json", timeout=5).status_code == 400
    assert requests.post(base + "/inbound", json={"text": "no sender"}, timeout=5).status_code == 400
    assert requests.post(base + "/fault", json={"function": "SENDSMS", "kind": "boom"}, timeout=5).status_code == 400
    assert requests.get(base + "/inbound", timeout=5).status_code == 404


def test_reset_forgets_everything(call: Call, sim: ProviderSimulator) -> None:
    send(call, "+33612345670", order_id="R1")
    sim.add_inbound("+33612345670", "STOP")
    sim.inject_fault("CREDITS", "drop")
    sim.set_latency(0.05)
    sim.reset()
    assert call("CREDITS").text == "OK;N|FR|10000;L|FR|10000;EE||1000"
    assert call("SMSSTATUS", order_id="R1").text == "KO|40|unknown order_id"
    assert call("SRHISTORYBYID", id="0").text == "OK;"
    assert sim.add_inbound("+33612345679", "again") == 1
    assert statuses(call, send(call, "+33612345670").order_id)[0].status is W  # blacklist forgotten
    assert sim.count("SENDSMS") == 1 and sim.billed_sends("R1") == 0


def test_password_is_never_recorded_or_logged(call: Call, sim: ProviderSimulator, server: SimulatorServer,
                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="mobyt_worker.sandbox")
    call("CREDITS", method="GET")
    call("CREDITS", method="POST")
    call("CREDITS", auth=False, login=LOGIN, password=PASSWORD + "x")
    requests.get(f"{server.url}/Moby/NOPE?password={PASSWORD}", timeout=5)
    recorded = sim.requests()
    assert len(recorded) == 3 and all(isinstance(r, RecordedRequest) for r in recorded)
    assert all("password" not in r.params and r.params["login"] == LOGIN for r in recorded)
    assert [r.method for r in recorded] == ["GET", "POST", "POST"]
    assert "/Moby/CREDITS" in caplog.text
    assert PASSWORD not in caplog.text
    assert PASSWORD not in json.dumps(requests.get(server.url + "/_sim/requests", timeout=5).json())


def test_keep_alive_with_exact_content_length(server: SimulatorServer) -> None:
    host, port = urlsplit(server.url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(3):
        connection.request("GET", f"/Moby/CREDITS?login={LOGIN}&password={PASSWORD}")
        answer = connection.getresponse()
        body = answer.read()
        assert answer.version == 11 and not answer.will_close
        assert int(answer.getheader("Content-Length")) == len(body) and body.startswith(b"OK;")
    connection.close()


def test_more_than_100_concurrent_connections(server: SimulatorServer, sim: ProviderSimulator) -> None:
    barrier = threading.Barrier(120)

    def client(_: int) -> list[str]:
        with requests.Session() as session:
            barrier.wait(timeout=10)
            return [
                session.post(server.url + "/Moby/CREDITS", data={"login": LOGIN, "password": PASSWORD}, timeout=10).text
                for _ in range(3)
            ]

    with ThreadPoolExecutor(max_workers=120) as pool:
        answers = [body for bodies in pool.map(client, range(120)) for body in bodies]
    assert len(answers) == 360 and all(body.startswith("OK;") for body in answers)
    assert sim.count("CREDITS") == 360


def test_stop_closes_idle_keep_alive_connections(clock: FakeClock) -> None:
    sim = ProviderSimulator(password=PASSWORD, clock=clock)
    server = SimulatorServer(sim).start()
    session = requests.Session()
    assert session.get(server.url + "/_sim/health", timeout=5).ok
    server.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(server.url + "/_sim/health", timeout=2)
    session.close()
    sim.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_credentials_and_stops_on_signal(sig: signal.Signals) -> None:
    code = "from mobyt_worker.sandbox import serve; serve('127.0.0.1', 0, password='demo-pw', latency=0.0)"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        banner = "".join(proc.stdout.readline() for _ in range(4))
        assert f"MOBYT_BASE_URL={url}" in banner and "MOBYT_LOGIN=demo" in banner and "MOBYT_PASSWORD=demo-pw" in banner
        answer = requests.get(f"{url}/Moby/CREDITS", params={"login": "demo", "password": "demo-pw"}, timeout=5)
        assert answer.text.startswith("OK;N|FR|10000")
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cleared_faults_are_never_served(call: Call, sim: ProviderSimulator) -> None:
    sim.inject_fault("SENDSMS", "http500", count=5)
    assert _attempt_send(call, "C1").status_code == 500
    sim.clear_faults()
    assert _attempt_send(call, "C2").status_code == 200
    assert sim.billed_sends() == 1
