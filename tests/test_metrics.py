"""Metrics: counted in memory per process, flushed to Redis, rendered by the web process at
GET /metrics; first on their own, then after real sends through a real worker and beat."""

from __future__ import annotations

import json
import math
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import fakeredis
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from mobyt_worker.config import Settings
from mobyt_worker.store.credits import CreditsWatch
from mobyt_worker.errors import InvalidInput, ProviderRejected, ProviderTimeout, RecipientOptedOut
from mobyt_worker.fleet import Fleet
from mobyt_worker.heartbeat import Heartbeat
from mobyt_worker.metrics import METRICS, Metrics
from mobyt_worker.provider.protocol import CreditRow
from mobyt_worker.runtime import Runtime
from mobyt_worker.store.orders import OrderStore
from mobyt_worker.web.app import create_app

from .producer import bare_client, call
from .support import wait_for

TOKEN = "metrics-test-token-0123456789"
DLVRD, ERROR = "+33612345670", "+33612345676"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(page: dict, name: str, **labels: str) -> float | None:
    return page.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


def test_counters_and_histograms_from_several_processes_add_up(client):
    first, second = Metrics(client, "mobyt", flush_interval=60), Metrics(client, "mobyt", flush_interval=60)
    first.task_succeeded("mobyt.send_sms", {"status": "accepted"})
    second.task_succeeded("mobyt.send_sms", {"status": "accepted"})
    second.task_failed("mobyt.send_sms", RecipientOptedOut("recipients", "opted out"))
    second.task_failed("mobyt.send_sms", ProviderRejected("no credits", "30"))
    first.task_failed("mobyt.poll_status", ProviderTimeout("slow"))
    first.task_retried("mobyt.send_sms", ProviderTimeout("slow"))
    first.task_succeeded("mobyt.poll_inbox", {"new": 3})
    for seconds in (0.004, 0.04, 0.04, 42.0):
        first.provider_request("SENDSMS", seconds, "ok")
    first.status_changes([{"status": "DLVRD"}, {"status": "ERROR"}, {"status": "DLVRD"}], "poll")
    assert first.flush() > 0 and second.flush() > 0
    assert first.flush() == 0  # nothing new

    page = samples(first.render().decode())
    assert value(page, "mobyt_sends_total", outcome="accepted") == 2
    assert value(page, "mobyt_sends_total", outcome="opted_out") == 1
    assert value(page, "mobyt_sends_total", outcome="refused") == 1
    assert value(page, "mobyt_task_failures_total", task="mobyt.send_sms", kind="ProviderRejected") == 1
    assert value(page, "mobyt_status_polls_total", outcome="ProviderTimeout") == 1
    assert value(page, "mobyt_task_retries_total", task="mobyt.send_sms", kind="ProviderTimeout") == 1
    assert value(page, "mobyt_inbox_messages_total", source="poll") == 3
    assert value(page, "mobyt_status_changes_total", status="DLVRD", source="poll") == 2
    assert value(page, "mobyt_provider_requests_total", function="SENDSMS", outcome="ok") == 4
    assert value(page, "mobyt_provider_request_seconds_bucket", function="SENDSMS", le="0.005") == 1
    assert value(page, "mobyt_provider_request_seconds_bucket", function="SENDSMS", le="0.05") == 3
    assert value(page, "mobyt_provider_request_seconds_bucket", function="SENDSMS", le="30.0") == 3
    assert value(page, "mobyt_provider_request_seconds_bucket", function="SENDSMS", le="+Inf") == 4
    assert value(page, "mobyt_provider_request_seconds_count", function="SENDSMS") == 4
    assert value(page, "mobyt_provider_request_seconds_sum", function="SENDSMS") == pytest.approx(42.084)


def test_gauges_are_read_from_what_the_workers_keep(client):
    CreditsWatch(client, "mobyt").record([CreditRow("N", "FR", 120), CreditRow("EE", "", 7)])
    client.zadd("mobyt:poll:due", {"o1": 1, "o2": 2})
    page = samples(Metrics(client, "mobyt").render().decode())
    assert value(page, "mobyt_credits_available", type="N", nation="FR") == 120
    assert value(page, "mobyt_credits_available", type="EE", nation="") == 7
    assert value(page, "mobyt_orders_due") == 2
    assert value(page, "mobyt_inbox_messages_stored") == 0


def test_alert_gauges_show_the_queue_doubt_intents_fleet_and_provider(client):
    settings = Settings(broker_key_prefix="b:", heartbeat_interval=30)
    store = OrderStore(client, "mobyt")
    for oid in ("D1", "D2"):
        _, _, token = store.claim_send(oid, {"message_type": "N"}, lock_seconds=5)
        store.release_send(oid, token)
        store.mark_in_doubt(oid, ProviderTimeout("no answer"))
    store.mark_failed("D2", ProviderRejected("absent", "0"), allowed=("in_doubt",))
    client.zadd("mobyt:intents", {"q1": 1, "q2": 2, "q3": 3})
    client.lpush("b:mobyt", json.dumps({"properties": {"delivery_tag": "t1"}}), "{}")
    Heartbeat(client, "mobyt", "worker", interval=30, queues="mobyt").beat()
    Heartbeat(client, "mobyt", "beat", interval=30, holds_lock=lambda: True).beat()
    metrics = Metrics(client, "mobyt", fleet=Fleet(client, settings))

    page = samples(metrics.render().decode())
    assert value(page, "mobyt_in_doubt_orders") == 1
    assert value(page, "mobyt_intents_pending") == 3
    assert value(page, "mobyt_queue_length") == 2
    assert value(page, "mobyt_queue_oldest_age_seconds") == 0  # first seen at this scrape
    assert value(page, "mobyt_processes_alive", kind="worker") == 1
    assert value(page, "mobyt_processes_alive", kind="beat") == 1
    assert value(page, "mobyt_provider_last_ok_age_seconds") == math.inf  # never answered well

    before = time.time()
    client.hset("mobyt:queue:oldest", "seen", before - 90)  # the same head, seen 90 s ago
    client.hset("mobyt:provider:last_ok", mapping={"SENDSMS": before - 40, "SMSSTATUS": before - 400})
    page = samples(metrics.render().decode())
    scraped = time.time() - before  # the ages are "now - recorded", now read within [before, before + scraped]
    assert 90 - 0.05 <= value(page, "mobyt_queue_oldest_age_seconds") <= 90 + scraped + 0.05  # rounded to 0.1 s
    assert 40 <= value(page, "mobyt_provider_last_ok_age_seconds") <= 40 + scraped  # the latest call of any function


def test_duplicate_risk_counters_count_in_doubt_orders_and_operator_resends(client):
    metrics = Metrics(client, "mobyt", flush_interval=60)
    metrics.inc("orders_in_doubt")
    metrics.inc("resends", previous="in_doubt")
    metrics.inc("resends", previous="in_doubt")
    metrics.flush()
    page = samples(Metrics(client, "mobyt").render().decode())  # a scrape without a Fleet: no queue gauges
    assert value(page, "mobyt_orders_in_doubt_total") == 1
    assert value(page, "mobyt_resends_total", previous="in_doubt") == 2
    assert value(page, "mobyt_queue_length") is None


def test_the_page_renders_every_declared_counter_and_histogram_and_no_other(client):
    """``metrics.METRICS`` declares the counters and histograms: each is on the page, with
    its type and help text, before anything was counted; the rest of the page is gauges."""
    metrics = Metrics(client, "mobyt", fleet=Fleet(client, Settings()))
    families = list(text_string_to_metric_families(metrics.render().decode()))
    declared = {f"mobyt_{name}": kind for name, (kind, _, _) in METRICS.items()}
    assert {f.name: f.type for f in families if f.type != "gauge"} == declared
    assert all(f.name.startswith("mobyt_") and f.documentation for f in families)


def test_a_failed_flush_keeps_the_counts_for_the_next_one(client):
    gone = fakeredis.FakeServer()
    gone.connected = False  # every command fails at once with ConnectionError: no retry wait
    metrics = Metrics(fakeredis.FakeRedis(server=gone), "mobyt", flush_interval=60)
    metrics.task_failed("mobyt.send_sms", InvalidInput("message", "empty"))
    assert metrics.flush() == 0
    metrics.redis = client
    assert metrics.flush() == 2
    assert value(samples(metrics.render().decode()), "mobyt_sends_total", outcome="invalid") == 1


def test_a_misnamed_series_is_refused(client):
    metrics = Metrics(client, "mobyt")
    with pytest.raises(KeyError):
        metrics.inc("sent")
    with pytest.raises(ValueError):
        metrics.inc("sends", status="accepted")
    with pytest.raises(ValueError):
        metrics.observe("sends", 1.0, outcome="accepted")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@pytest.fixture
def web(worker_env: dict[str, str]) -> Iterator[str]:
    """The web process's app in a wsgiref server; yields its base URL."""
    runtime = Runtime(Settings.from_env({**worker_env, "MOBYT_WEBHOOK_TOKEN": TOKEN}))
    server = make_server("127.0.0.1", 0, create_app(runtime), server_class=_ThreadingServer, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    runtime.close()


def test_after_real_sends_get_metrics_shows_sends_latency_polls_statuses_and_credits(
        redis_url, simulator, start_process, web, worker_env):
    start_process("worker")
    start_process("beat")
    simulator.configure_push(status_url=None, inbound_url=f"{web}/callbacks/{TOKEN}/inbound")
    producer = bare_client(redis_url)
    order_id = call(producer, "mobyt.send_sms", recipients=[DLVRD, ERROR], message="hello").get(timeout=20)["order_id"]
    with pytest.raises(InvalidInput):
        call(producer, "mobyt.send_sms", recipients=["+336"], message="hello").get(timeout=20)
    simulator.add_inbound("+33612345672", "Bonjour")

    def scraped() -> dict | None:
        answer = requests.get(f"{web}/metrics", timeout=5)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain; version=")
        page = samples(answer.text)
        wanted = [value(page, "mobyt_status_changes_total", status=s, source="poll") for s in ("DLVRD", "ERROR")]
        wanted += [value(page, "mobyt_credits_available", type="N", nation="FR"), inbound(page)]
        return page if all(wanted) else None

    def inbound(page: dict) -> float:
        """The message is stored once, by whichever comes first: the push or the inbox poll."""
        return sum(value(page, "mobyt_inbox_messages_total", source=s) or 0 for s in ("push", "poll", "reconcile"))

    page = wait_for(scraped, timeout=20, interval=0.3, what="statuses, credits and the inbound SMS in /metrics")
    assert value(page, "mobyt_sends_total", outcome="accepted") == 1
    assert value(page, "mobyt_sends_total", outcome="invalid") == 1
    assert value(page, "mobyt_task_failures_total", task="mobyt.send_sms", kind="InvalidInput") == 1
    assert value(page, "mobyt_provider_requests_total", function="SENDSMS", outcome="ok") == 1
    assert value(page, "mobyt_provider_request_seconds_count", function="SENDSMS") == 1
    settings = Settings.from_env(worker_env)  # an answered call cannot outlast the client's timeouts
    assert 0 < value(page, "mobyt_provider_request_seconds_sum", function="SENDSMS") <= (
        settings.connect_timeout + settings.read_timeout)
    assert value(page, "mobyt_status_changes_total", status="DLVRD", source="poll") == 1
    polls = simulator.count("SMSSTATUS")
    assert 1 <= value(page, "mobyt_status_polls_total", outcome="ok") <= polls
    assert value(page, "mobyt_credits_available", type="N", nation="FR") == simulator.credits()[("N", "FR")]
    assert inbound(page) == 1
    assert value(page, "mobyt_orders_due") == 0
    assert value(page, "mobyt_processes_alive", kind="worker") == 1
    assert value(page, "mobyt_processes_alive", kind="beat") == 1
    assert value(page, "mobyt_queue_length") == 0 and value(page, "mobyt_in_doubt_orders") == 0
    assert 0 <= value(page, "mobyt_provider_last_ok_age_seconds") < math.inf  # a call answered well
    assert order_id not in requests.get(f"{web}/metrics", timeout=5).text  # no per-order series
