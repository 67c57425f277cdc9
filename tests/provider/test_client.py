"""MobytClient against the simulator over real HTTP: every function, every fault, retries."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker import errors
from mobyt_worker.provider.client import MobytClient
from mobyt_worker.config import Secret, Settings
from mobyt_worker.provider.protocol import CreditRow, InboundMessage, Status
from mobyt_worker.sandbox import ProviderSimulator, SimulatorServer
from mobyt_worker.sms import build_send_request
from mobyt_worker.provider.transport import HttpResponse, HttpTransport, Limits

from ..support import relay, wait_for

PARIS = ZoneInfo("Europe/Paris")
LOGIN = "acme"
PASSWORD = "s3cr3t-P@ss;|word"
NUMBERS = ["+33612345671", "+33698765432"]  # last digits 1, 2: delivered (simulator rule)


def make_settings(url: str, password: str = PASSWORD, **overrides) -> Settings:
    values = dict(connect_timeout=1.0, read_timeout=2.0)
    values.update(overrides)
    return Settings(login=LOGIN, password=Secret(password), base_url=url, **values)


def make_client(url: str, password: str = PASSWORD, **overrides) -> MobytClient:
    return MobytClient(make_settings(url, password, **overrides), backoff_max=0.05)


def send_request(order_id: str | None = "ORDER1", scheduled_at: datetime | None = None, **kw):
    now = datetime.now(PARIS)
    values = dict(
        recipients=NUMBERS, message="Hello | world; 100% +ok", message_type="N", sender="ACME",
        scheduled_at=scheduled_at, order_id=order_id, tz=PARIS, now=now,
    )
    values.update(kw)
    return build_send_request(**values)


@pytest.fixture
def sim():
    simulator = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.0)
    yield simulator
    simulator.close()


@pytest.fixture
def server(sim):
    server = SimulatorServer(sim).start()
    yield server
    server.stop()


@pytest.fixture
def client(server):
    with make_client(server.url) as client:
        yield client


@pytest.fixture
def bad_client(server):
    with make_client(server.url, password="wrong") as client:
        yield client


def around_now() -> tuple[datetime, datetime]:
    now = datetime.now(PARIS)
    return now - timedelta(hours=1), now + timedelta(hours=1)


# --- the eight functions ---------------------------------------------------------------


def test_send_sms(client, sim):
    receipt = client.send_sms(send_request("ORDER1"))
    assert receipt.order_id == "ORDER1"
    assert receipt.count == 2
    assert sim.count("SENDSMS") == 1
    assert sim.billed_sends("ORDER1") == 1


def test_send_sms_returning_credits(client, sim):
    long_text = "x" * 200  # 2 parts to 2 recipients
    receipt = client.send_sms(send_request("ORDER2", message=long_text, return_credits=True))
    assert receipt.order_id == "ORDER2"
    assert receipt.count == 4


def test_sms_status_after_send(client):
    client.send_sms(send_request("ORDER3"))
    rows = client.sms_status("ORDER3")
    assert sorted(r.recipient for r in rows) == sorted(NUMBERS)
    assert [r.status for r in rows] == [Status.DLVRD] * 2  # delivery_delay=0: delivered at once
    assert all(r.delivered_at is not None and r.delivered_at.tzinfo is not None for r in rows)


def test_scheduled_send_then_cancel(client, sim):
    later = datetime.now(PARIS) + timedelta(days=1)
    client.send_sms(send_request("LATER1", scheduled_at=later))
    assert {r.status for r in client.sms_status("LATER1")} == {Status.SCHEDULED}
    client.remove_delayed("LATER1")
    assert sim.count("REMOVE_DELAYED") == 1
    with pytest.raises(errors.ProviderRejected) as info:  # the provider forgot the order
        client.sms_status("LATER1")
    assert info.value.code == "40"


def test_sms_history(client):
    client.send_sms(send_request("HIST1"))
    rows = client.sms_history(*around_now())
    (row,) = [r for r in rows if r.order_id == "HIST1"]
    assert row.message_type == "N"
    assert row.sender == "ACME"
    assert row.recipients == 2
    assert row.created_at is not None and row.created_at.tzinfo is not None


def test_sms_history_over_days_asks_one_window_at_a_time_and_returns_each_order_once():
    """Orders 3 days apart, one exactly on a window boundary: each comes back once, from
    one SMSHISTORY request per day, with progress after each."""
    start = datetime(2026, 3, 2, 0, 0, tzinfo=PARIS)
    now = [start.timestamp()]
    sim = ProviderSimulator(login=LOGIN, password=PASSWORD, clock=lambda: now[0])
    server = SimulatorServer(sim).start()
    try:
        with make_client(server.url) as client:
            sent = {"DAY0": 3600, "EDGE": 86400, "EDGE2": 86400.5, "DAY2": 2 * 86400 + 60, "LATE": 4 * 86400}
            for order_id, offset in sent.items():
                now[0] = start.timestamp() + offset
                client.send_sms(send_request(order_id))
            steps = list(client.sms_history_windows(start, start + timedelta(days=3), timedelta(days=1)))
    finally:
        server.stop()
        sim.close()
    assert [(done, total) for done, total, _ in steps] == [(1, 3), (2, 3), (3, 3)]
    got = [row.order_id for _, _, rows in steps for row in rows]
    assert sorted(got) == ["DAY0", "DAY2", "EDGE", "EDGE2"]  # LATE is after the period
    assert len(sim.requests("SMSHISTORY")) == 3
    # EDGE and EDGE2 fall in the second that ends day 1 and starts day 2: asked twice, kept once
    assert [len(rows) for _, _, rows in steps] == [3, 0, 1]


def test_sms_history_windows_refuse_bad_bounds_before_any_request(client, sim):
    now = datetime.now(PARIS)
    with pytest.raises(errors.InvalidInput) as info:
        list(client.sms_history_windows(now, now - timedelta(days=1)))
    assert info.value.field == "date_to"
    with pytest.raises(errors.InvalidInput) as info:
        list(client.sms_history_windows(now - timedelta(days=1), now, timedelta(0)))
    assert info.value.field == "window"
    assert sim.requests("SMSHISTORY") == []


def test_credits(client, sim):
    client.send_sms(send_request("PAID1"))  # 2 recipients in France, 1 part: 2 credits of N|FR
    rows = client.credits()
    assert all(isinstance(r, CreditRow) for r in rows)
    assert {(r.message_type, r.nation): r.available for r in rows} == sim.credits()
    assert sim.credits()[("N", "FR")] == 10000 - 2


def test_inbox_functions(client, sim):
    sim.add_inbound("+33611111111", "Bonjour | ça va; 100% 😀")
    new = client.new_messages()
    assert [(m.sender, m.text) for m in new] == [("+33611111111", "Bonjour | ça va; 100% 😀")]
    assert isinstance(new[0], InboundMessage) and new[0].received_at.tzinfo is not None
    assert client.new_messages() == []  # destructive read
    assert client.inbox_since(0) == new
    assert client.inbox_since(new[0].id) == []
    assert client.inbox_history(*around_now()) == new


# --- refusals ---------------------------------------------------------------------------

CALLS = {
    "SENDSMS": lambda c: c.send_sms(send_request("KO1")),
    "SMSSTATUS": lambda c: c.sms_status("KO1"),
    "REMOVE_DELAYED": lambda c: c.remove_delayed("KO1"),
    "SMSHISTORY": lambda c: c.sms_history(*around_now()),
    "CREDITS": lambda c: c.credits(),
    "SRNEWMESSAGES": lambda c: c.new_messages(),
    "SRHISTORY": lambda c: c.inbox_history(*around_now()),
    "SRHISTORYBYID": lambda c: c.inbox_since(0),
}


@pytest.mark.parametrize("function", sorted(CALLS))
def test_wrong_password_is_rejected_once(function, bad_client, sim):
    with pytest.raises(errors.ProviderRejected) as info:
        CALLS[function](bad_client)
    assert info.value.code
    assert info.value.message
    assert sim.count(function) == 1  # a KO is never retried
    assert sim.billed_sends() == 0


def test_bad_input_is_refused_before_any_request(client, sim):
    with pytest.raises(errors.InvalidInput) as info:
        client.sms_status("not a valid id!")
    assert info.value.field == "order_id"
    with pytest.raises(errors.InvalidInput) as info:
        client.inbox_since(-1)
    assert info.value.field == "id"
    with pytest.raises(errors.InvalidInput) as info:
        client.sms_history(datetime(2024, 1, 1), datetime(2024, 1, 2))  # naive
    assert info.value.field == "date_from"
    assert sum(sim.count(f) for f in CALLS) == 0


def test_missing_credentials_are_refused_before_any_request(server, sim):
    with MobytClient(Settings(login=LOGIN, base_url=server.url)) as client:
        with pytest.raises(errors.ConfigError) as info:
            client.credits()
    assert info.value.variable == "MOBYT_PASSWORD"
    assert sim.count("CREDITS") == 0


# --- faults -----------------------------------------------------------------------------

FAULTS = [
    ("drop", errors.ProviderDisconnected),
    ("http500", errors.ProviderServerError),
    ("html", errors.ProviderBadResponse),
    ("garbage", errors.ProviderBadResponse),
    ("empty", errors.ProviderEmptyResponse),
    ("ko", errors.ProviderRejected),
]


@pytest.mark.parametrize("kind, expected", FAULTS)
def test_fault_kinds_become_typed_errors(kind, expected, client, sim):
    sim.inject_fault("SENDSMS", kind)
    with pytest.raises(errors.ProviderError) as info:
        client.send_sms(send_request("FAULT1"))
    assert type(info.value) is expected  # the exact class: a parent or a sibling is a wrong verdict
    # every fault but a KO may hide a billed send: ambiguous, resolved by SMSSTATUS, never resent
    assert info.value.ambiguous is (kind != "ko")
    assert info.value.retryable is (kind != "ko")
    assert info.value.code == {"http500": "HTTP500", "ko": "50"}.get(kind, "")
    assert sim.count("SENDSMS") == 1  # SENDSMS is never retried


def test_slow_answer_is_a_timeout(server, sim):
    sim.inject_fault("CREDITS", "slow", count=1, delay=1.0)
    with MobytClient(make_settings(server.url, read_timeout=0.3), read_attempts=1) as client:
        with pytest.raises(errors.ProviderTimeout) as info:
            client.credits()
    assert info.value.ambiguous and info.value.retryable


# --- bounded answers: a deadline for the whole call, a cap on the answer's size ------------


def test_a_send_whose_answer_trickles_past_the_deadline_is_cut_and_stays_ambiguous(server, sim):
    """One byte every 50 ms, status line and headers included (some 7 s for the whole
    answer); the call's deadline is 0.5 s and no single read waits for the 2 s read timeout."""
    sim.inject_fault("SENDSMS", "trickle", delay=0.05)
    with MobytClient(make_settings(server.url, call_deadline=0.5)) as client:
        with pytest.raises(errors.ProviderError) as info:
            client.send_sms(send_request("TRICKLE1"))
        assert type(info.value) is errors.ProviderTooSlow
        assert info.value.ambiguous and info.value.retryable  # it was billed: resolve, never resend
        wait_for(lambda: sim.abandoned("SENDSMS") == 1, timeout=10, what="the provider sees the connection closed")
        assert sim.billed_sends("TRICKLE1") == 1 and sim.count("SENDSMS") == 1
        assert sorted(r.recipient for r in client.sms_status("TRICKLE1")) == sorted(NUMBERS)


def test_a_read_trickling_past_the_deadline_is_not_tried_again_after_it(server, sim):
    sim.inject_fault("CREDITS", "trickle", count=4, delay=0.05)
    with MobytClient(make_settings(server.url, call_deadline=0.5), backoff_max=0.01) as client:
        with pytest.raises(errors.ProviderTooSlow) as info:
            client.credits()
    assert "MOBYT_CALL_DEADLINE" in str(info.value)
    wait_for(lambda: sim.abandoned("CREDITS") == 1, timeout=10, what="the provider sees the connection closed")
    assert sim.count("CREDITS") == 1  # retries are inside the deadline: none was left


@pytest.mark.parametrize("trickled", ["head", "body"])
def test_an_answer_trickled_in_its_head_or_its_body_is_cut_while_that_part_arrives(trickled):
    """One byte every 50 ms of the status line and headers, or of the body (10 s either
    way), the other part at once: each read waits only for the time left before the
    deadline, so the client closes the connection while the trickled part is arriving."""
    parts = {"head": b"HTTP/1.1 200 OK\r\nX-Filler: " + b"f" * 160 + b"\r\nContent-Length: 200\r\n\r\n",
             "body": b"OK;N|FR|10;" + b" " * 189}
    listener = socket.create_server(("127.0.0.1", 0))
    cut_in: list[str] = []

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        part = "head"
        try:
            for part, data in parts.items():
                step = 1 if part == trickled else len(data)
                for i in range(0, len(data), step):
                    conn.sendall(data[i:i + step])
                    time.sleep(0.05 if part == trickled else 0)
        except OSError:  # reset or broken pipe: the client closed the connection
            cut_in.append(part)
        conn.close()

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    with MobytClient(make_settings(f"http://127.0.0.1:{port}", call_deadline=0.5), read_attempts=1) as client:
        with pytest.raises(errors.ProviderTooSlow):
            client.credits()
    server.join(20)
    listener.close()
    assert cut_in == [trickled]


def test_an_oversize_send_answer_is_cut_unread_and_stays_ambiguous(server, sim):
    sim.inject_fault("SENDSMS", "oversize")  # the receipt, then 64 MiB of blanks: it would parse
    with MobytClient(make_settings(server.url, max_answer_bytes=4096)) as client:
        with pytest.raises(errors.ProviderError) as info:
            client.send_sms(send_request("HUGE1"))
        assert type(info.value) is errors.ProviderAnswerTooLarge
        assert info.value.ambiguous and info.value.retryable
        assert "4096 bytes (MOBYT_MAX_ANSWER_BYTES)" in str(info.value)
        wait_for(lambda: sim.abandoned("SENDSMS") == 1, timeout=10, what="the provider sees the connection closed")
        assert sim.billed_sends("HUGE1") == 1 and sim.count("SENDSMS") == 1
        assert client.credits()  # the pool is usable: the cut connection was replaced


def test_history_and_inbox_pages_have_their_own_larger_cap(server, sim):
    """An inbox page of 6 KiB, over the 4 KiB answer cap, is read whole under the page cap; past the
    page cap it is cut; a CREDITS answer over 4 KiB is cut."""
    for i in range(60):  # some 100 bytes a row on the wire
        sim.add_inbound(f"+3361111{i:04d}", f"message {i} " + "x" * 40)
    settings = make_settings(server.url, max_answer_bytes=4096, max_page_bytes=16384)
    with MobytClient(settings, read_attempts=1) as client:
        assert len(client.inbox_since(0)) == 60
        for i in range(200):
            sim.add_inbound(f"+3362222{i:04d}", f"message {i} " + "x" * 40)
        with pytest.raises(errors.ProviderAnswerTooLarge) as info:
            client.inbox_since(0)
        assert "MOBYT_MAX_PAGE_BYTES" in str(info.value)
        sim.inject_fault("CREDITS", "oversize", size=4096)
        with pytest.raises(errors.ProviderAnswerTooLarge) as info:
            client.credits()
        assert "MOBYT_MAX_ANSWER_BYTES" in str(info.value)


def test_lost_answer_is_ambiguous_and_was_billed(client, sim):
    sim.inject_fault("SENDSMS", "lost_answer")
    with pytest.raises(errors.ProviderDisconnected) as info:
        client.send_sms(send_request("LOST1"))
    assert info.value.ambiguous
    assert sim.billed_sends("LOST1") == 1  # the provider did send it: resolve through SMSSTATUS
    assert sim.count("SENDSMS") == 1
    assert sorted(r.recipient for r in client.sms_status("LOST1")) == sorted(NUMBERS)


def test_closed_port_is_a_connect_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with MobytClient(make_settings(f"http://127.0.0.1:{port}"), read_attempts=1) as client:
        with pytest.raises(errors.ProviderConnectError) as info:
            client.credits()
    assert not info.value.ambiguous


# --- retry classification ------------------------------------------------------------


def test_read_is_retried_through_server_errors(client, sim):
    sim.inject_fault("CREDITS", "http500", count=2)
    assert client.credits()
    assert sim.count("CREDITS") == 3


def test_read_gives_up_after_read_attempts(server, sim):
    sim.inject_fault("SMSSTATUS", "http500", count=10)
    with MobytClient(make_settings(server.url), read_attempts=3, backoff_max=0.01) as client:
        with pytest.raises(errors.ProviderServerError):
            client.sms_status("ORDER1")
    assert sim.count("SMSSTATUS") == 3


def test_ko_is_not_retried(client, sim):
    sim.inject_fault("CREDITS", "ko")
    with pytest.raises(errors.ProviderRejected):
        client.credits()
    assert sim.count("CREDITS") == 1


def test_sendsms_is_not_retried_on_server_error(client, sim):
    sim.inject_fault("SENDSMS", "http500")
    with pytest.raises(errors.ProviderServerError):
        client.send_sms(send_request("ONCE1"))
    assert sim.count("SENDSMS") == 1


def test_new_messages_is_not_retried_after_a_drop(client, sim):
    sim.add_inbound("+33611111111", "hello")
    sim.inject_fault("SRNEWMESSAGES", "drop")
    with pytest.raises(errors.ProviderDisconnected):
        client.new_messages()
    assert sim.count("SRNEWMESSAGES") == 1


class FlakyTransport:
    """Fails to connect a few times, then answers: the request never left."""

    def __init__(self, failures: int, body: str = "OK;") -> None:
        self.failures, self.body, self.calls = failures, body, 0

    def post(self, url, data, timeout):
        self.calls += 1
        if self.calls <= self.failures:
            raise errors.ProviderConnectError("cannot connect")
        return HttpResponse(200, self.body)


def test_new_messages_is_retried_when_nothing_was_sent():
    transport = FlakyTransport(failures=2)
    client = MobytClient(make_settings("http://mobyt.invalid"), transport, backoff_max=0.01)
    assert client.new_messages() == []
    assert transport.calls == 3


def test_on_request_hook_reports_every_attempt(server, sim):
    seen = []
    sim.inject_fault("CREDITS", "http500")
    with MobytClient(make_settings(server.url), backoff_max=0.01, on_request=lambda *a: seen.append(a)) as client:
        client.credits()
        with pytest.raises(errors.ProviderRejected):
            MobytClient(make_settings(server.url, "wrong"), on_request=lambda *a: seen.append(a)).credits()
    assert [(f, o) for f, _, o in seen] == [
        ("CREDITS", "ProviderServerError"), ("CREDITS", "ok"), ("CREDITS", "rejected")]
    assert all(seconds >= 0 for _, seconds, _ in seen)


def test_transport_answers_with_non_2xx_are_mapped_by_the_client():
    class Teapot:
        def post(self, url, data, timeout):
            return HttpResponse(418, "KO|1|nope")

    with pytest.raises(errors.ProviderRejected) as info:
        MobytClient(make_settings("http://mobyt.invalid"), Teapot()).credits()
    assert info.value.code == "HTTP418"


# --- secrets ------------------------------------------------------------------------------


def test_password_never_leaks(server, sim, caplog):
    caplog.set_level(logging.DEBUG)
    leaked = []
    settings = make_settings(server.url)
    with MobytClient(settings, backoff_max=0.01) as client:
        client.send_sms(send_request("LEAK1"))
        client.sms_status("LEAK1")
        for kind in ("drop", "http500", "html", "garbage", "empty", "ko", "lost_answer"):
            sim.inject_fault("SENDSMS", kind)
            try:
                client.send_sms(send_request("LEAK2"))
            except errors.MobytError as exc:
                leaked += [str(exc), repr(exc), repr(exc.args)]
        sim.inject_fault("CREDITS", "http500", count=4)  # every attempt fails
        try:
            client.credits()
        except errors.MobytError as exc:
            leaked += [str(exc), repr(exc)]
        leaked += [repr(client), str(client), repr(settings), str(settings)]
    with MobytClient(make_settings(server.url, read_timeout=0.2), read_attempts=1) as client:
        sim.inject_fault("CREDITS", "slow", delay=1.0)
        with pytest.raises(errors.ProviderTimeout) as info:
            client.credits()
        leaked += [str(info.value), repr(info.value)]
    leaked += [r.getMessage() for r in caplog.records]
    assert any("SENDSMS" in r.getMessage() for r in caplog.records)  # the DEBUG lines are there
    assert leaked
    for text in leaked:
        assert PASSWORD not in text
        assert "s3cr3t" not in text


def limits(seconds: float = 5.0) -> Limits:
    """One exchange's limits, as the client sets them, for calling the transport directly."""
    return Limits(1.0, 2.0, time.monotonic() + seconds, 1 << 20, "MOBYT_MAX_ANSWER_BYTES")


def provider_pool(transport: HttpTransport, url: str):
    """The one urllib3 pool the transport's session holds (for ``url``'s host)."""
    pools = transport._session.get_adapter(url).poolmanager.pools
    (key,) = pools.keys()
    return pools[key]


def test_transport_reuses_connections_but_not_across_a_fork(server, sim, monkeypatch):
    transport = HttpTransport(pool_size=2)
    url, data = f"{server.url}/Mobyt/CREDITS", {"login": LOGIN, "password": PASSWORD}
    assert transport.post(url, data, limits()).text.startswith("OK")
    transport.post(url, data, limits())
    parent = provider_pool(transport, url)
    assert (parent.num_connections, parent.num_requests) == (1, 2)  # kept alive and reused
    monkeypatch.setattr("os.getpid", lambda: -1)  # as seen from a forked child
    transport.post(url, data, limits())
    child = provider_pool(transport, url)
    assert child is not parent and (child.num_connections, child.num_requests) == (1, 1)
    assert parent.num_requests == 2  # the parent's connection was not used by the child
    transport.close()


def test_a_connection_the_provider_closed_while_idle_is_replaced(server, sim):
    transport = HttpTransport()
    url, data = f"{server.url}/Mobyt/CREDITS", {"login": LOGIN, "password": PASSWORD}
    transport.post(url, data, limits())
    pool = provider_pool(transport, url)
    idle = next(conn for conn in pool.pool.queue if conn is not None)
    stale = idle.sock
    stale.shutdown(socket.SHUT_RD)  # reads EOF from now on, as after the server's FIN
    assert transport.post(url, data, limits()).status == 200
    assert sim.count("CREDITS") == 2
    assert idle.sock is not None and idle.sock is not stale  # noticed before use, reconnected
    transport.close()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http:///x", "http://127.0.0.1:99999/x",
                                 "http://127.0.0.1/a b", "http://127.0.0.1/a\r\nX-Injected: 1"])
def test_an_unusable_url_is_a_config_error_before_any_connection(url):
    with pytest.raises(errors.ConfigError) as info:
        HttpTransport().post(url, {"login": LOGIN}, limits())
    assert info.value.variable == "MOBYT_BASE_URL"


def test_requests_go_through_the_proxy_the_environment_names(server, sim, monkeypatch):
    """The provider's host does not resolve here: only the proxy (the simulator, which
    reads the absolute URL it is given) can answer."""
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with MobytClient(make_settings("http://mobyt.invalid"), read_attempts=1) as client:
        assert client.credits()
    assert sim.count("CREDITS") == 1
    monkeypatch.setenv("NO_PROXY", "mobyt.invalid")
    with MobytClient(make_settings("http://mobyt.invalid"), read_attempts=1) as client:
        with pytest.raises(errors.ProviderConnectError):
            client.credits()  # bypassing the proxy, the name does not resolve
    assert sim.count("CREDITS") == 1


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1: (certificate, key) paths."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_port(certificate):
    """An HTTPS listener that only completes handshakes (its certificate is not trusted)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@pytest.fixture(params=["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def tls_server(request, sim, certificate, monkeypatch):
    """The simulator over HTTPS, its certificate trusted through requests' own variable,
    or SSL_CERT_FILE when that is unset."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = SimulatorServer(sim)
    server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", *CA_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(request.param, str(certificate[0]))
    yield server.start(), server.url.replace("http://", "https://")
    server.stop()


class ConnectProxy:
    """A bare HTTPS proxy: answers CONNECT, then relays bytes both ways (it sees no plaintext)."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n") -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            self.requests.append(head)
            if not self.answer.startswith(b"HTTP/1.1 200"):
                client.sendall(self.answer)
                client.close()
                continue
            host, port = head.split()[1].decode().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(self.answer)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=relay, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def test_https_with_a_trusted_certificate(tls_server, sim):
    _, url = tls_server
    with MobytClient(make_settings(url)) as client:
        client.send_sms(send_request("TLS1"))
        assert sorted(r.recipient for r in client.sms_status("TLS1")) == sorted(NUMBERS)
    assert sim.billed_sends("TLS1") == 1


def test_https_goes_through_a_connect_tunnel_with_proxy_credentials(tls_server, sim, monkeypatch):
    _, url = tls_server
    proxy = ConnectProxy()
    monkeypatch.setenv("HTTPS_PROXY", f"http://ops:p%40ss@127.0.0.1:{proxy.port}")
    try:
        with MobytClient(make_settings(url)) as client:
            client.send_sms(send_request("TUNNEL1"))
            client.credits()  # over the same tunnel: the connection is kept alive
    finally:
        proxy.close()
    assert sim.billed_sends("TUNNEL1") == 1
    assert len(proxy.requests) == 1
    head = proxy.requests[0].decode()
    assert head.startswith(f"CONNECT {urlsplit(url).netloc} ")
    assert "Proxy-Authorization: Basic " + base64.b64encode(b"ops:p@ss").decode() in head


def test_untrusted_certificate_is_a_connect_error(tls_port):
    """The handshake failed: nothing was sent, so even a send may be retried safely."""
    with MobytClient(make_settings(f"https://127.0.0.1:{tls_port}"), read_attempts=1) as client:
        with pytest.raises(errors.ProviderConnectError) as info:
            client.credits()
    assert not info.value.ambiguous and "certificate" in info.value.message


def test_a_proxy_refusing_the_tunnel_is_a_connect_error(tls_server, sim, monkeypatch):
    """The CONNECT failed, so the provider never saw the request: even a send may be retried."""
    _, url = tls_server
    proxy = ConnectProxy(answer=b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    monkeypatch.setenv("HTTPS_PROXY", f"http://ops:wrong@127.0.0.1:{proxy.port}")
    try:
        with MobytClient(make_settings(url)) as client:
            with pytest.raises(errors.ProviderConnectError) as info:
                client.send_sms(send_request("TUNNEL2"))
    finally:
        proxy.close()
    assert not info.value.ambiguous and "proxy" in info.value.message and "wrong" not in str(info.value)
    assert len(proxy.requests) == 1 and sim.count("SENDSMS") == 0


def test_an_answer_lost_after_the_tls_handshake_is_ambiguous(tls_server, sim):
    """A failure in the TLS layer after the request left is not a handshake failure."""
    _, url = tls_server
    sim.inject_fault("SENDSMS", "lost_answer")
    with MobytClient(make_settings(url)) as client:
        with pytest.raises(errors.ProviderDisconnected) as info:
            client.send_sms(send_request("TLSLOST"))
    assert info.value.ambiguous
    assert sim.billed_sends("TLSLOST") == 1


def test_an_unresolvable_host_is_a_connect_error(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with MobytClient(make_settings("http://mobyt.invalid"), read_attempts=1) as client:
        with pytest.raises(errors.ProviderConnectError) as info:
            client.send_sms(send_request("DNS1"))
    assert not info.value.ambiguous and "resolve" in info.value.message


def test_a_redirect_is_not_followed():
    """A 3xx reaches the client, which refuses it; the request is not repeated elsewhere."""
    listener = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def answer() -> None:
        conn, _ = listener.accept()
        heads.append(conn.recv(65536))
        conn.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/x\r\n"
                     b"Content-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    port = listener.getsockname()[1]
    with MobytClient(make_settings(f"http://127.0.0.1:{port}")) as client:
        with pytest.raises(errors.ProviderRejected) as info:
            client.send_sms(send_request("MOVED1"))
    listener.close()
    assert info.value.code == "HTTP307" and len(heads) == 1 and heads[0].startswith(b"POST /Moby/SENDSMS ")


def test_provider_text_that_echoes_the_credentials_is_scrubbed_and_bounded(client, sim):
    sim.inject_fault("SENDSMS", "ko", code="99", message=f"bad form login={LOGIN}&password={PASSWORD} " + "x" * 400)
    with pytest.raises(errors.ProviderRejected) as caught:
        client.send_sms(send_request("ECHO1"))
    text = str(caught.value)
    assert caught.value.code == "99" and "bad form" in text
    assert PASSWORD not in text and LOGIN not in text and PASSWORD not in repr(caught.value.args)
    assert len(caught.value.message) <= 200
