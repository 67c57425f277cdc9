"""The push receiver over real HTTP: gunicorn (as in the Procfile) and a threaded wsgiref
server, the simulator pushing statuses and inbound SMS, real workers and Redis."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon.testing
import pytest
import requests

from mobyt_worker.config import Settings
from mobyt_worker.store.inbox import InboxStore
from mobyt_worker.runtime import Runtime
from mobyt_worker.web.app import create_app
from mobyt_worker.web.webhooks import MAX_BODY, mask

from ..producer import bare_client, run
from ..support import ROOT, free_port, wait_for

TOKEN = "tok-" + secrets.token_urlsafe(24)
DLVRD, ERROR = "+33612345671", "+33612345676"  # simulator: last digit 1 delivered, 6 error
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


@pytest.fixture
def web_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "MOBYT_WEBHOOK_TOKEN": TOKEN}


@pytest.fixture
def web_runtime(web_env: dict[str, str]) -> Iterator[Runtime]:
    rt = Runtime(Settings.from_env(web_env))
    yield rt
    rt.close()


class Recorder:
    """WSGI middleware remembering (path, status) of every request, token masked."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []

    def __call__(self, environ: dict, start_response: Any) -> Any:
        def capture(status: str, headers: list, exc_info: Any = None) -> Any:
            self.calls.append((mask(environ["PATH_INFO"]), status))
            return start_response(status, headers, exc_info)

        return self.app(environ, capture)

    def count(self, path: str) -> int:
        return sum(1 for p, status in self.calls if p == path and status.startswith("200"))


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the test server's own log: off
        pass


@pytest.fixture
def web(web_runtime: Runtime) -> Iterator[Any]:
    """The receiver in a threaded wsgiref server; ``web.url``, ``web.app`` (a Recorder)."""
    recorder = Recorder(create_app(web_runtime))
    server = make_server("127.0.0.1", 0, recorder, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    server.app = recorder  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def gunicorn(web_env: dict[str, str]) -> Iterator[Any]:
    """``gunicorn ... 'mobyt_worker.web:wsgi_app()'`` as in the Procfile, access log on."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="mobyt-web-", suffix=".log")[1])
    args = [GUNICORN, "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
            "--access-logfile", "-", "--error-logfile", "-", "--log-level", "debug",
            "mobyt_worker.web:wsgi_app()"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env={**web_env, "PATH": str(Path(sys.executable).parent)}, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)

    class Web:
        url = f"http://127.0.0.1:{port}"

        @staticmethod
        def output() -> str:
            return log.read_text(errors="replace")

    def healthy() -> bool:
        try:
            return requests.get(f"{Web.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:  # not listening yet, or still booting
            assert proc.poll() is None, Web.output()
            return False

    wait_for(healthy, timeout=20, what="gunicorn up")
    yield Web
    proc.terminate()
    proc.wait(10)
    log.unlink()


def urls(base: str, token: str = TOKEN) -> tuple[str, str]:
    return f"{base}/callbacks/{token}/status", f"{base}/callbacks/{token}/inbound"


def status_form(order_id: str = "ORDER1", **overrides: str) -> dict[str, str]:
    return {"order_id": order_id, "recipient": DLVRD, "status": "DLVRD", "delivery_date": "20260309120636",
            **overrides}


def inbound_form(**overrides: str) -> dict[str, str]:
    return {"id": "7", "text": "Bonjour | ça; 100% +1", "sender": "+33612345672", "recipient": "+33700000001",
            "delivery_date": "20260309113910", **overrides}


def records(rt: Runtime) -> list[str]:
    """Every key but the push rate limiter's clock and the metrics counters: what a push stored."""
    keys = rt.store.keys
    return [k for k in rt.redis.keys("*") if not k.startswith(f"{keys.prefix}:ratelimit:push:") and k != keys.metrics]


def status_events(rt: Runtime, order_id: str) -> list[dict[str, str]]:
    return [f for _, f in rt.redis.xrange(rt.store.keys.events) if f.get("order_id") == order_id
            and f["type"] == "status"]


def test_simulator_pushes_through_gunicorn_update_order_and_inbox_and_the_token_is_never_logged(
        gunicorn, web_runtime, simulator, start_process, redis_url, caplog):
    caplog.set_level(logging.DEBUG, logger="mobyt_worker")  # the package's records, not only warnings
    worker = start_process("worker", env={"MOBYT_WEBHOOK_TOKEN": TOKEN})  # as a deployment's shared .env does
    status_url, inbound_url = urls(gunicorn.url)
    simulator.configure_push(status_url=status_url, inbound_url=inbound_url)
    client = bare_client(redis_url)
    order_id = run(client, "mobyt.send_sms", recipients=[DLVRD, ERROR], message="Code 1234")["order_id"]

    record = wait_for(lambda: (r := web_runtime.store.get_order(order_id)) and r.final and r, timeout=15,
                      what="order final by push alone")
    assert {n: s.status for n, s in record.recipients.items()} == {DLVRD: "DLVRD", ERROR: "ERROR"}
    assert record.polls == 0 and record.state == "completed"
    assert record.recipients[DLVRD].delivered_at
    assert [(h["recipient"], h["status"]) for h in record.history if h["recipient"] == DLVRD] == [
        (DLVRD, "WAITING"), (DLVRD, "WAIT4DLVR"), (DLVRD, "DLVRD")]
    assert {h["source"] for h in record.history} == {"push"}

    message_id = simulator.add_inbound("+33612345673", "Bonjour | ça va ; 100% +€")
    stored = wait_for(lambda: web_runtime.inbox.get(message_id), timeout=10, what="inbound stored by push")
    assert stored["text"] == "Bonjour | ça va ; 100% +€" and stored["source"] == "push"
    assert stored["sender"] == "+33612345673" and stored["keyword"] == "Bonjour"

    wrong = requests.post(urls(gunicorn.url, "x" + TOKEN)[0], data=status_form(order_id), timeout=5)
    assert wrong.status_code == 403 and TOKEN not in wrong.text
    bad = requests.post(inbound_url, data=inbound_form(delivery_date="yesterday"), timeout=5)
    assert bad.status_code == 400 and bad.json()["field"] == "delivery_date"

    def chunks(total: int):  # a generator body goes out chunked, without Content-Length
        for _ in range(total // 1024):
            yield b"a" * 1024

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    chunked = requests.post(inbound_url, data=chunks(MAX_BODY + 2048), headers=form, timeout=5)
    assert chunked.status_code == 413
    small = requests.post(inbound_url, data=iter([b"id=99&text=hi&sender=%2B33612345672&",
                                                  b"recipient=%2B33700000001&delivery_date=20260309113910"]),
                          headers=form, timeout=5)
    assert small.status_code == 200 and web_runtime.inbox.get(99)["text"] == "hi"

    # the access log line of a request is written just after its answer
    wait_for(lambda: " 403 " in gunicorn.output() and " 400 " in gunicorn.output(), timeout=5,
             what="access log lines")
    output = gunicorn.output()
    assert "/callbacks/***/status" in output and "/callbacks/***/inbound" in output
    for text in (output, worker.output(), caplog.text):
        assert TOKEN not in text
        assert TOKEN[:12] not in text  # not even the wrong token built from it


def test_wrong_token_is_403_and_never_echoed(web, web_runtime):
    for token in ("", "nope", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "%C3%A9" + TOKEN[2:]):
        for url in urls(web.url, token):
            answer = requests.post(url, data=status_form(), timeout=5)
            assert answer.status_code == 403, token
            assert answer.json()["error"] == "forbidden" and TOKEN not in answer.text
    assert records(web_runtime) == []  # nothing recorded


@pytest.mark.parametrize(
    ("endpoint", "form", "field"),
    [
        ("status", {k: v for k, v in status_form().items() if k != "order_id"}, "order_id"),
        ("status", status_form(order_id="bad id!"), "order_id"),
        ("status", status_form(order_id="A" * 33), "order_id"),
        ("status", status_form(recipient="not-a-number"), "recipient"),
        ("status", status_form(status=""), "status"),
        ("status", status_form(status="dlvrd; DROP"), "status"),
        ("status", status_form(delivery_date="2026-03-09"), "delivery_date"),
        ("status", status_form(delivery_date="20261345000000"), "delivery_date"),
        ("inbound", {k: v for k, v in inbound_form().items() if k != "id"}, "id"),
        ("inbound", inbound_form(id="0"), "id"),
        ("inbound", inbound_form(id="12a"), "id"),
        ("inbound", {k: v for k, v in inbound_form().items() if k != "text"}, "text"),
        ("inbound", inbound_form(sender=""), "sender"),
        ("inbound", inbound_form(recipient="+33 7 00"), "recipient"),
        ("inbound", inbound_form(delivery_date=""), "delivery_date"),
    ],
)
def test_malformed_fields_get_400_naming_the_field(web, web_runtime, endpoint, form, field):
    url = urls(web.url)[0 if endpoint == "status" else 1]
    answer = requests.post(url, data=form, timeout=5)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid" and answer.json()["field"] == field
    assert records(web_runtime) == []


def test_malformed_bodies_and_requests(web, web_runtime):
    status_url, inbound_url = urls(web.url)
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def post(url: str, body: bytes, headers: dict[str, str] = form) -> requests.Response:
        return requests.post(url, data=body, headers=headers, timeout=5)

    assert post(inbound_url, b"id=7&text=%FF%FE&sender=%2B33612345672").json()["field"] == "text"
    assert post(inbound_url, b"\xff\xfeid=7").json()["field"] == "body"
    answer = post(status_url, b"order_id=A&order_id=B&recipient=%2B33612345671&status=DLVRD")
    assert answer.status_code == 400 and answer.json()["field"] == "order_id"
    assert post(status_url, b"&".join(b"f%d=1" % i for i in range(50))).json()["field"] == "body"

    too_big = post(inbound_url, b"id=7&text=" + b"a" * MAX_BODY)
    assert too_big.status_code == 413 and too_big.json()["limit"] == MAX_BODY
    assert post(inbound_url, b'{"id": 7}', {"Content-Type": "application/json"}).status_code == 415
    assert requests.get(status_url, timeout=5).status_code == 405
    assert "POST" in requests.get(status_url, timeout=5).headers["Allow"]
    assert requests.post(f"{web.url}/callbacks/{TOKEN}/other", data={}, timeout=5).status_code == 404
    assert requests.post(f"{web.url}/", data={}, timeout=5).status_code == 404
    assert records(web_runtime) == []


def test_status_for_an_unknown_order_is_acknowledged_and_ignored(web, web_runtime):
    answer = requests.post(urls(web.url)[0], data=status_form("NOSUCHORDER"), timeout=5)
    assert answer.status_code == 200 and answer.json() == {"ok": True, "ignored": "missing"}
    assert records(web_runtime) == []


def test_healthz_reports_redis(web, web_env):
    assert requests.get(f"{web.url}/healthz", timeout=5).json() == {"status": "ok", "redis": True}
    assert requests.head(f"{web.url}/healthz", timeout=5).status_code == 200
    dead = Runtime(Settings.from_env({**web_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}))
    answer = falcon.testing.TestClient(create_app(dead)).simulate_get("/healthz")
    assert answer.status_code == 503 and answer.json == {"status": "unavailable", "redis": False}


def test_a_status_pushed_and_polled_is_recorded_once(web, web_runtime, simulator, start_process, redis_url):
    start_process("worker")
    client = bare_client(redis_url)
    status_url, _ = urls(web.url)
    status_path = mask(status_url.removeprefix(web.url))

    # push first, then a poll sees the same final status: nothing new is recorded
    simulator.configure_push(status_url=status_url)
    first = run(client, "mobyt.send_sms", recipients=[DLVRD], message="Un")["order_id"]
    wait_for(lambda: web_runtime.store.get_order(first).final, timeout=10, what="final by push")
    wait_for(lambda: web.app.count(status_path) == 3, timeout=5, what="3 pushes answered")
    before = (web_runtime.store.get_order(first).history, status_events(web_runtime, first))
    assert [h["status"] for h in before[0]] == ["WAITING", "WAIT4DLVR", "DLVRD"]
    rows = web_runtime.client.sms_status(first)  # what mobyt.poll_status asks and applies
    assert [(r.recipient, r.status.value) for r in rows] == [(DLVRD, "DLVRD")]
    assert web_runtime.store.apply_statuses(first, rows, source="poll") == []
    assert (web_runtime.store.get_order(first).history, status_events(web_runtime, first)) == before

    # poll first, then the provider pushes the whole timeline: the final status stays once
    simulator.configure_push(status_url=None)
    second = run(client, "mobyt.send_sms", recipients=[DLVRD], message="Deux")["order_id"]
    wait_for(lambda: run(client, "mobyt.poll_status", order_id=second)["final"], timeout=10, what="final by poll")
    after_poll = (web_runtime.store.get_order(second).history, status_events(web_runtime, second))
    assert [h["source"] for h in after_poll[0]][-1] == "poll" and after_poll[0][-1]["status"] == "DLVRD"
    pushes = web.app.count(status_path)
    simulator.configure_push(status_url=status_url)  # replays every status of rows already sent
    wait_for(lambda: web.app.count(status_path) == pushes + 3, timeout=5, what="the replayed pushes answered")
    assert (web_runtime.store.get_order(second).history, status_events(web_runtime, second)) == after_poll


def test_an_inbound_sms_pushed_and_polled_is_stored_once(web, web_runtime, simulator, start_process, redis_url):
    start_process("worker")
    client = bare_client(redis_url)
    inbox: InboxStore = web_runtime.inbox
    _, inbound_url = urls(web.url)

    simulator.configure_push(inbound_url=inbound_url)  # push first, then poll and reconcile
    pushed = simulator.add_inbound("+33612345672", "Oui | d'accord; 100%")
    wait_for(lambda: inbox.get(pushed), timeout=10, what="pushed message stored")
    assert run(client, "mobyt.poll_inbox")["new"] == 0
    assert run(client, "mobyt.reconcile_inbox")["new"] == 0
    assert inbox.stream_length() == 1 and inbox.get(pushed)["source"] == "push"

    simulator.configure_push(inbound_url=None)  # poll first, then the same message pushed
    polled = simulator.add_inbound("0612345673", "STOP")
    assert run(client, "mobyt.poll_inbox")["new"] == 1
    answer = requests.post(inbound_url, data={"id": str(polled), "text": "STOP", "sender": "0612345673",
                                              "recipient": "+33700000001", "delivery_date": "20260309113910"},
                           timeout=5)
    assert answer.status_code == 200 and answer.json() == {"ok": True, "new": False}
    assert inbox.stream_length() == 2 and inbox.count() == 2
    assert inbox.get(polled)["source"] == "poll"
    assert list(web_runtime.optouts.all()) == ["+33612345673"]
    optout_events = [f for _, f in web_runtime.redis.xrange(web_runtime.store.keys.events) if f["type"] == "optout"]
    assert len(optout_events) == 1
