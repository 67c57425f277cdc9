"""The HTTP API over real HTTP: the Falcon app in a threaded server, real Redis, real
worker and beat subprocesses, the simulator as provider."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from wsgiref.simple_server import make_server

import pytest
import redis
import requests

from mobyt_worker.config import Settings
from mobyt_worker.runtime import Runtime
from mobyt_worker.sms import build_send_request
from mobyt_worker.web.app import create_app

from ..support import wait_for
from .test_webhooks import _QuietHandler, _ThreadingWSGIServer

TOKEN, OTHER = "api-" + uuid.uuid4().hex, "api2-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NUMBER = "+33612345671"  # simulator: last digit 1 is delivered


def serve(rt: Runtime) -> Any:
    server = make_server("127.0.0.1", 0, create_app(rt), server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    return server


@contextmanager
def served(env: dict[str, str]) -> Iterator[tuple[str, Runtime]]:
    """The API on its own runtime, for settings other than the ``api`` fixture's."""
    rt = Runtime(Settings.from_env(env))
    server = serve(rt)
    try:
        yield server.url, rt
    finally:
        server.shutdown()
        server.server_close()
        rt.close()


@pytest.fixture
def api_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "MOBYT_API_TOKEN": f"{TOKEN},{OTHER}", "MOBYT_API_RATE_LIMIT": "1000",
            "MOBYT_HEARTBEAT_INTERVAL": "1"}


@pytest.fixture
def api_rt(api_env: dict[str, str]) -> Iterator[Runtime]:
    rt = Runtime(Settings.from_env(api_env))
    yield rt
    rt.close()


@pytest.fixture
def api(api_rt: Runtime) -> Iterator[str]:
    server = serve(api_rt)
    yield server.url
    server.shutdown()
    server.server_close()


def queued(rt: Runtime) -> list[dict[str, Any]]:
    """The kwargs of every message waiting in the workers' queue."""
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[1] for m in rt.redis.lrange("mobyt", 0, -1)]


def send(api: str, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    return requests.post(f"{api}/v1/sms", json=body, headers={**AUTH, **(headers or {})}, timeout=10, **kw)


def test_send_end_to_end_request_worker_simulator_completed(api, api_rt, start_process, simulator):
    start_process("worker")
    start_process("beat")
    answer = send(api, {"recipients": [NUMBER], "message": "Code 1234"})
    assert answer.status_code == 202, answer.text
    order_id = answer.json()["order_id"]
    assert answer.json()["links"]["order"] == f"/v1/orders/{order_id}"

    def completed() -> dict[str, Any] | None:
        got = requests.get(f"{api}/v1/orders/{order_id}", headers=AUTH, timeout=5).json()
        return got if got.get("state") == "completed" else None

    record = wait_for(completed, timeout=40, what="order completed")
    assert record["recipients"][NUMBER]["status"] == "DLVRD"
    assert [r.params["order_id"] for r in simulator.requests("SENDSMS")] == [order_id]


def get(api: str, path: str, token: str = TOKEN, **params: Any) -> requests.Response:
    return requests.get(f"{api}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_scheduled_order_read_then_cancelled_once_credits_back(api, api_rt, start_process, simulator):
    """A send scheduled an hour ahead: read back (only with a valid token), cancelled at the
    provider once, its credits returned; a second cancel answers the same without a request."""
    start_process("worker")
    before = simulator.stats()["credits"]
    when = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    answer = send(api, {"recipients": [NUMBER], "message": "later", "scheduled_at": when})
    assert answer.status_code == 202, answer.text
    order_id = answer.json()["order_id"]
    wait_for(lambda: get(api, f"/v1/orders/{order_id}").json().get("state") == "scheduled", timeout=15,
             what="order scheduled")
    assert simulator.billed_sends(order_id) == 1 and simulator.stats()["credits"] != before

    denied = get(api, f"/v1/orders/{order_id}", token=TOKEN + "x")
    assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
    assert order_id not in denied.text and NUMBER not in denied.text
    read = get(api, f"/v1/orders/{order_id}")
    assert read.status_code == 200
    assert read.json() == api_rt.store.get_order(order_id).to_dict()
    assert read.json()["state"] == "scheduled" and list(read.json()["recipients"]) == [NUMBER]
    assert datetime.fromisoformat(read.json()["scheduled_at"]) == datetime.fromisoformat(when)
    refused = requests.post(f"{api}/v1/orders/{order_id}/cancel", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert refused.status_code == 401 and simulator.count("REMOVE_DELAYED") == 0

    for _ in range(2):
        cancelled = requests.post(f"{api}/v1/orders/{order_id}/cancel", headers=AUTH, timeout=20)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["order_id"] == order_id and cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["cancelled"] is True
        assert simulator.count("REMOVE_DELAYED") == 1
    assert [r.params["order_id"] for r in simulator.requests("REMOVE_DELAYED")] == [order_id]
    assert api_rt.store.get_order(order_id).state == "cancelled"
    assert simulator.stats()["credits"] == before
    assert simulator.billed_sends(order_id) == 1


def test_bulk_send_read_back_as_one_batch_of_orders_billed_once(api_env, start_process, simulator):
    start_process("worker", env={"MOBYT_BULK_CHUNK_SIZE": "1"})
    start_process("beat")
    numbers = [NUMBER[:-1] + d for d in "147"]  # delivered, per the simulator's last digit
    with served({**api_env, "MOBYT_BULK_CHUNK_SIZE": "1"}) as (url, rt):
        answer = send(url, {"recipients": numbers, "message": "bulk"})
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["order_id"]
        assert answer.json()["links"]["batch"] == f"/v1/batches/{batch_id}"

        def all_final() -> dict[str, Any] | None:
            got = get(url, f"/v1/batches/{batch_id}")
            body = got.json() if got.status_code == 200 else {}
            done = len(body.get("orders", [])) == 3 and all(o["final"] for o in body["orders"])
            return body if done else None

        batch = wait_for(all_final, timeout=40, what="batch of 3 final orders")
        assert batch["batch_id"] == batch_id
        orders = batch["orders"]
        assert [o["order_id"] for o in orders] == rt.store.batch_orders(batch_id)
        assert {o["batch_id"] for o in orders} == {batch_id}
        assert sorted(n for o in orders for n in o["recipients"]) == sorted(numbers)
        assert all(len(o["recipients"]) == 1 for o in orders)
    assert sorted(r.params["order_id"] for r in simulator.requests("SENDSMS")) == sorted(o["order_id"] for o in orders)
    assert all(simulator.billed_sends(o["order_id"]) == 1 for o in orders)
    assert simulator.billed_sends(batch_id) == 0


def test_inbound_read_oldest_first_then_nothing_after_the_cursor(api, api_rt, start_process, simulator):
    texts = ["first", "second", "third"]
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    ids = [simulator.add_inbound(f"+3361111111{i}", text, received_at=start + timedelta(seconds=i))
           for i, text in enumerate(texts)]
    start_process("worker")
    start_process("beat")
    page = wait_for(lambda: len((b := get(api, "/v1/inbound", after=0).json())["messages"]) == 3 and b,
                    timeout=15, what="3 inbound messages through the API")
    assert [m["id"] for m in page["messages"]] == ids == sorted(ids)
    assert [m["text"] for m in page["messages"]] == texts
    assert [m["sender"] for m in page["messages"]] == [f"+3361111111{i}" for i in range(3)]
    assert page["next_after"] == ids[-1]
    assert page["messages"][0] == api_rt.inbox.get(ids[0])
    assert simulator.count("SRNEWMESSAGES") >= 1
    rest = get(api, "/v1/inbound", after=page["next_after"])
    assert rest.status_code == 200 and rest.json() == {"messages": [], "next_after": ids[-1]}
    tail = get(api, "/v1/inbound", after=ids[0], limit=1).json()
    assert [m["text"] for m in tail["messages"]] == ["second"] and tail["next_after"] == ids[1]


def test_credits_read_back_equal_the_providers_balances(api, api_rt, start_process, simulator):
    start_process("worker")
    start_process("beat")
    wait_for(lambda: get(api, "/v1/credits").json()["checked_at"], timeout=15, what="a credits check")
    answer = get(api, "/v1/credits")
    assert answer.status_code == 200
    balances = {f"{b['message_type']}|{b['nation']}": b["available"] for b in answer.json()["balances"]}
    assert balances == simulator.stats()["credits"]
    assert answer.json()["checked_at"] == api_rt.credits.history(1)[0]["at"]
    assert simulator.count("CREDITS") >= 1
    assert get(api, "/v1/credits", token=OTHER + "x").status_code == 401


def test_bad_token_bad_field_and_nothing_enqueued(api, api_rt):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        answer = requests.post(f"{api}/v1/sms", json={"recipients": [NUMBER], "message": "x"}, headers=headers,
                               timeout=5)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        assert TOKEN not in answer.text
    cases = [
        ({"recipients": ["12"], "message": "x"}, "recipients"),
        ({"recipients": [NUMBER]}, "message"),
        ({"recipients": [NUMBER], "message": "x", "sender": "A" * 30}, "sender"),
        ({"recipients": [NUMBER], "message": "x", "message_type": "Z"}, "message_type"),
        ({"recipients": [NUMBER], "message": "x", "order_id": "bad id!"}, "order_id"),
        ({"recipients": [NUMBER], "message": "x", "scheduled_at": "tomorrow"}, "scheduled_at"),
        ({"recipients": [NUMBER], "message": "x", "return_credits": "yes"}, "return_credits"),
        ({"recipients": [NUMBER], "message": "x", "colour": "red"}, "colour"),
        ({"recipients": [7], "message": "x"}, "recipients"),
        ([NUMBER], "body"),
    ]
    for body, field in cases:
        answer = send(api, body)
        assert answer.status_code == 400 and answer.json()["field"] == field, (body, answer.text)
        assert set(answer.json()) <= {"error", "message", "field"}
    api_rt.optouts.add("+33612345672")
    answer = send(api, {"recipients": ["+33612345672"], "message": "x"})
    assert answer.status_code == 400 and answer.json()["error"] == "opted_out"
    assert send(api, None, data=b"x=1", headers={"Content-Type": "text/plain"}).status_code == 415
    too_big = send(api, {"recipients": [NUMBER], "message": "a" * 70_000})
    assert too_big.status_code == 413 and too_big.json()["limit"] == 64 * 1024
    assert send(api, {"recipients": [NUMBER], "message": "x"}, headers={"Idempotency-Key": "é"}).status_code == 400
    assert queued(api_rt) == []


def test_idempotent_repeat_returns_the_same_order_and_enqueues_once(api, api_rt):
    body = {"recipients": [NUMBER], "message": "hello"}
    first = send(api, body, {"Idempotency-Key": "k-1"})
    again = send(api, body, {"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["order_id"] == again.json()["order_id"]
    conflict = send(api, {**body, "message": "other"}, {"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409 and conflict.json()["field"] == "Idempotency-Key"
    other_token = send(api, body, {"Idempotency-Key": "k-1", "Authorization": f"Bearer {OTHER}"})
    assert other_token.json()["order_id"] != first.json()["order_id"]
    explicit = [send(api, {**body, "order_id": "MYORDER1"}) for _ in range(2)]
    assert {a.json()["order_id"] for a in explicit} == {"MYORDER1"}
    ids = [kw["order_id"] for kw in queued(api_rt)]
    assert sorted(ids) == sorted([first.json()["order_id"], other_token.json()["order_id"], "MYORDER1"])
    assert requests.get(f"{api}/v1/orders/MYORDER1", headers=AUTH, timeout=5).json()["state"] in ("queued", "sending")


def test_reads_and_their_errors(api, api_rt):
    assert requests.get(f"{api}/v1/orders/NOSUCH", headers=AUTH, timeout=5).status_code == 404
    assert requests.get(f"{api}/v1/orders/bad%20id", headers=AUTH, timeout=5).json()["error"] == "not_found"
    assert requests.get(f"{api}/v1/batches/NOSUCH", headers=AUTH, timeout=5).status_code == 404
    assert requests.post(f"{api}/v1/orders/NOSUCH/cancel", headers=AUTH, timeout=5).status_code == 404
    credits = requests.get(f"{api}/v1/credits", headers=AUTH, timeout=5)
    assert credits.status_code == 200 and credits.json() == {"checked_at": None, "balances": []}
    assert requests.get(f"{api}/v1/credits", timeout=5).status_code == 401
    inbound = requests.get(f"{api}/v1/inbound", params={"after": "x"}, headers=AUTH, timeout=5)
    assert inbound.status_code == 400 and inbound.json()["field"] == "after"
    assert requests.get(f"{api}/v1/inbound", headers=AUTH, timeout=5).json() == {"messages": [], "next_after": 0}


def test_rate_limit_per_token_answers_429_with_retry_after(api_env):
    with served({**api_env, "MOBYT_API_RATE_LIMIT": "3"}) as (url, _):
        codes = [requests.get(f"{url}/v1/credits", headers=AUTH, timeout=5) for _ in range(4)]
        assert [c.status_code for c in codes[:3]] == [200, 200, 200] or codes[0].status_code == 429
        limited = next(c for c in codes if c.status_code == 429)
        assert limited.json()["error"] == "rate_limited" and 1 <= int(limited.headers["Retry-After"]) <= 60
        other = requests.get(f"{url}/v1/credits", headers={"Authorization": f"Bearer {OTHER}"}, timeout=5)
        assert other.status_code == 200


def test_raw_queue_message_from_a_bare_redis_client_is_sent(api_rt, start_process, redis_url):
    """The message of docs/reference.md ("The queue without Celery"), pushed with redis-py
    alone (no Celery): the order completes."""
    start_process("worker")
    start_process("beat")
    order_id, task_id = uuid.uuid4().hex, str(uuid.uuid4())
    kwargs = {"recipients": [NUMBER], "message": "from PHP", "order_id": order_id}
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "mobyt.send_sms", "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "mobyt"}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }
    redis.Redis.from_url(redis_url).lpush("mobyt", json.dumps(message))
    wait_for(lambda: (api_rt.store.get_order(order_id) or None) and api_rt.store.get_order(order_id).state
             == "completed", timeout=40, what="raw-queue order completed")


def test_readiness_names_the_stopped_worker_and_beat_stores_balance_at_start(api, api_rt, start_process, simulator):
    beat = start_process("beat", env={"MOBYT_CREDITS_INTERVAL": "3600", "MOBYT_HEARTBEAT_INTERVAL": "1"})
    worker = start_process("worker", env={"MOBYT_HEARTBEAT_INTERVAL": "1"})
    # the beat's first round: RedBeat alone would store the new entry as run now and wait 3600 s
    wait_for(lambda: api_rt.credits.balances(), timeout=10, what="balance stored")
    assert api_rt.credits.history(1) and simulator.count("CREDITS") == 1
    ready = wait_for(lambda: (r := requests.get(f"{api}/readyz", timeout=5)).status_code == 200 and r,
                     timeout=20, what="ready")
    assert ready.json()["workers"] and ready.json()["beats"][0]["holds_lock"] is True
    worker.stop()
    down = requests.get(f"{api}/readyz", timeout=5)
    assert down.status_code == 503 and down.json()["failed"] == ["workers"]
    health = subprocess.run([str(Path(sys.executable).with_name("mobyt")), "health", "--json"],
                            env={**api_rt_env(api_rt)}, capture_output=True, text=True, timeout=30)
    assert health.returncode == 1 and json.loads(health.stdout)["failed"] == ["workers"]
    start_process("worker", name="w2", env={"MOBYT_HEARTBEAT_INTERVAL": "1"})
    wait_for(lambda: requests.get(f"{api}/readyz", timeout=5).status_code == 200, timeout=20, what="ready again")
    assert beat


def api_rt_env(rt: Runtime) -> dict[str, str]:
    return {"REDIS_URL": rt.settings.redis_url, "MOBYT_HEARTBEAT_INTERVAL": "1", "PATH": "/usr/bin:/bin"}


def test_every_request_queued_by_the_api_passed_validation(api, api_rt):
    """After a mix of good and bad requests, each queued send validates as the worker will."""
    send(api, {"recipients": [NUMBER], "message": "ok"})
    send(api, {"recipients": ["nope"], "message": "bad"})
    s = api_rt.settings
    for kw in queued(api_rt):
        build_send_request(recipients=kw["recipients"], message=kw["message"], message_type=kw["message_type"],
                           sender=kw["sender"], order_id=kw["order_id"], tz=s.timezone,
                           now=__import__("datetime").datetime.now(s.timezone))
    assert len(queued(api_rt)) == 1


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(api_env, tmp_path, start_process):
    """The OpenAPI document against the live API and push receiver, a bounded number of
    examples; the callbacks' path gets the webhook token (a schemathesis.toml parameter).
    A worker answers the cancels of the orders its sends created."""
    start_process("worker")
    hook = "push-" + uuid.uuid4().hex
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.token" = "{hook}"\n', encoding="utf-8")
    st = str(Path(sys.executable).with_name("schemathesis"))
    env = {**api_env, "MOBYT_WEBHOOK_TOKEN": hook, "MOBYT_PUSH_RATE": "0"}
    with served(env) as (url, api_rt):
        run = subprocess.run([st, "--config-file", str(config), "run", f"{url}/v1/openapi.json",
                              "-H", f"Authorization: Bearer {TOKEN}",
                              "--max-examples", "25", "--checks", "all", "--no-color", "--seed", "1",
                              # a number's country or a text's GSM length is not JSON Schema: 400 is right
                              "--exclude-checks", "positive_data_acceptance"],
                             capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-6000:]
        assert "No issues found" in run.stdout or "passed" in run.stdout.lower()
        assert api_rt.inbox.count() >= 1  # the push receiver was tested past its token
        s = api_rt.settings
        for kw in queued(api_rt):  # every send it got enqueued validates as the worker will
            build_send_request(recipients=kw["recipients"], message=kw["message"], message_type=kw["message_type"],
                               sender=kw["sender"], order_id=kw["order_id"], scheduled_at=kw["scheduled_at"],
                               return_credits=kw["return_credits"], tz=s.timezone,
                               now=__import__("datetime").datetime.now(s.timezone))
