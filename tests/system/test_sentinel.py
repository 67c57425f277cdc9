"""Redis behind Sentinel: workers, results, beat and the store all follow the master the
sentinels name (REDIS_URL=sentinel://...)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from mobyt_worker.store.connection import connect, parse_sentinel_url
from mobyt_worker.store.orders import OrderStore

from ..support import RedisServer, free_port, wait_for

NUMBER = "+33612345670"
TOKEN = "sentinel-token-0123456789abcdef"


def test_parse_sentinel_url():
    assert parse_sentinel_url("sentinel://:pw@h1:26379;sentinel://h2:26380/3") == (
        [("h1", 26379), ("h2", 26380)], 3, None, "pw")
    assert parse_sentinel_url("sentinel://ops:p%40w@h1:26379;sentinel://ops:p%40w@h2:26379/0") == (
        [("h1", 26379), ("h2", 26379)], 0, "ops", "p@w")
    with pytest.raises(ValueError):
        parse_sentinel_url("redis://h1:6379")
    with pytest.raises(ValueError) as info:  # a malformed part is named, never shown: it may hold the password
        parse_sentinel_url("sentinel://:pw-9q@h1:26379;redis://:pw-9q@h2:26379/0")
    assert str(info.value) == "part 2 of 2 is not a sentinel://host:port URL"


@pytest.fixture
def sentinel_url():
    master = RedisServer().start()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mobyt-sentinel-"))
    conf = workdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor mobytmaster 127.0.0.1 {master.port} 1\n")
    proc = subprocess.Popen([master.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    probe = redis.Redis(port=port)
    wait_for(lambda: _master_known(probe), timeout=15, what="sentinel to know the master")
    yield f"sentinel://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    master.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)


def _master_known(client: redis.Redis) -> bool:
    try:
        return bool(client.sentinel_get_master_addr_by_name("mobytmaster"))
    except redis.RedisError:
        return False


def test_send_through_sentinel_reaches_final_status(sentinel_url, simulator, start_process):
    env = {"REDIS_URL": sentinel_url, "MOBYT_REDIS_SENTINEL_MASTER": "mobytmaster"}
    start_process("worker", env=env)
    start_process("beat", env=env)
    from celery import Celery

    producer = Celery("p", broker=sentinel_url, backend=sentinel_url)
    producer.conf.update(broker_transport_options={"master_name": "mobytmaster"},
                         result_backend_transport_options={"master_name": "mobytmaster"},
                         task_serializer="json", accept_content=["json"])
    reply = producer.send_task("mobyt.send_sms", queue="mobyt", kwargs={
        "recipients": [NUMBER], "message": "via sentinel", "sender": "ACME"}).get(timeout=30)
    store = OrderStore(connect(sentinel_url, sentinel_master="mobytmaster"), "mobyt")
    record = wait_for(lambda: (r := store.get_order(reply["order_id"])) and r.final and r, timeout=30,
                      what="final status via sentinel")
    assert record.recipients[NUMBER].status == "DLVRD"
    assert simulator.billed_sends(reply["order_id"]) == 1


def test_web_process_starts_and_serves_through_sentinel(sentinel_url, worker_env):
    """REDIS_URL=sentinel://... for the web app as for the workers: readiness reads Redis."""
    from falcon import testing

    from mobyt_worker.config import Settings
    from mobyt_worker.runtime import Runtime
    from mobyt_worker.web.app import create_app

    env = {**worker_env, "REDIS_URL": sentinel_url, "MOBYT_REDIS_SENTINEL_MASTER": "mobytmaster",
           "MOBYT_API_TOKEN": TOKEN}
    rt = Runtime(Settings.from_env(env))
    client = testing.TestClient(create_app(rt))
    assert client.simulate_get("/healthz").json == {"status": "ok", "redis": True}
    answer = client.simulate_post("/v1/sms", json={"recipients": [NUMBER], "message": "hi"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 202, answer.text
    assert rt.redis.exists(f"mobyt:api:order:{answer.json['order_id']}")
    rt.close()


# --- MOBYT_REDIS_WAIT_REPLICAS: a write no replica has is never acted on -----------------------


def test_wait_replicas_setting_is_validated():
    from mobyt_worker.config import Settings
    from mobyt_worker.errors import ConfigError

    assert Settings.from_env({}).redis_wait_replicas == 0
    with pytest.raises(ConfigError, match="MOBYT_REDIS_WAIT_REPLICAS"):
        Settings.from_env({"MOBYT_REDIS_WAIT_REPLICAS": "-1"})
    with pytest.raises(ConfigError, match="MOBYT_REDIS_WAIT_TIMEOUT"):
        Settings.from_env({"MOBYT_REDIS_WAIT_TIMEOUT": "0"})


def test_an_intent_no_replica_acknowledged_is_refused(redis_url):
    from mobyt_worker.errors import NotReplicated
    from mobyt_worker.store.intents import Intents
    from mobyt_worker.store.replicas import Replicas

    client = connect(redis_url)
    kwargs = {"recipients": [NUMBER], "message": "hi", "order_id": "NOREPLICA1"}
    with pytest.raises(NotReplicated) as refused:
        Intents(client, "mobyt", ttl=60, replay_after=60, replicas=Replicas(client, 1, 0.05)).record(
            "NOREPLICA1", "send-NOREPLICA1", kwargs)
    assert (refused.value.acknowledged, refused.value.wanted) == (0, 1)
    assert Intents(client, "mobyt", ttl=60, replay_after=60).record("NOREPLICA2", "send-NOREPLICA2", kwargs) == "queued"


def test_a_claim_no_replica_acknowledged_is_never_sent(redis_url, simulator, start_process):
    """A Redis without replicas and MOBYT_REDIS_WAIT_REPLICAS=1: every attempt ends unsent
    (retried with backoff) and the provider sees no SENDSMS."""
    from celery import Celery

    start_process("worker", env={"MOBYT_REDIS_WAIT_REPLICAS": "1", "MOBYT_REDIS_WAIT_TIMEOUT": "0.1"})
    producer = Celery("p", broker=redis_url, backend=redis_url)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    producer.send_task("mobyt.send_sms", queue="mobyt", kwargs={
        "recipients": [NUMBER], "message": "unreplicated", "sender": "ACME", "order_id": "NOREPLICA3"})
    store = OrderStore(connect(redis_url), "mobyt")
    record = wait_for(lambda: (r := store.get_order("NOREPLICA3")) and r.attempts >= 2 and r.state == "unsent" and r,
                      timeout=30, what="two attempts ended unsent")
    assert "replicas acknowledged" in (record.error or "")
    assert simulator.count("SENDSMS") == 0
