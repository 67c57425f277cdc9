"""Redis Sentinel failover: a master, a replica and three sentinels on loopback; workers,
beat and the web process find the master through ``REDIS_URL=sentinel://...``. The
master is failed over while sends stream in: sends after the failover are accepted and
none is billed twice; beat keeps ticking; the web process answers /healthz from the new
master."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import redis
import requests
from celery import Celery

from mobyt_worker import kombu_fix
from mobyt_worker.store.connection import connect
from mobyt_worker.store.keys import Keys
from mobyt_worker.store.orders import OrderStore

from ..support import ROOT, SENDING, RedisServer, dispatches, free_port, wait_for
from ..test_kombu_fix import channel_closed_after_its_connection, unpatched_close_fails_with

pytestmark = pytest.mark.integration  # every test here runs redis-servers and sentinels

MASTER = "mobytmaster"
NUMBER = "+33612345670"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


@dataclass
class Cluster:
    """Two redis-servers (one the master, the other its replica) and three sentinels,
    shared by the module's tests; each test starts from a healed, empty cluster."""

    servers: list[RedisServer]
    sentinel_ports: list[int]
    sentinels: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def master_port(self) -> int | None:
        for port in self.sentinel_ports:
            try:
                return int(redis.Redis(port=port).sentinel_get_master_addr_by_name(MASTER)[1])
            except (redis.RedisError, TypeError):
                continue
        return None

    @property
    def master(self) -> RedisServer:
        return next(s for s in self.servers if s.port == self.master_port())

    @property
    def replica(self) -> RedisServer:
        return next(s for s in self.servers if s.port != self.master_port())

    def replicas_known(self) -> bool:
        try:
            return all(redis.Redis(port=p).sentinel_slaves(MASTER) and
                       redis.Redis(port=p).sentinel_sentinels(MASTER).__len__() == 2 for p in self.sentinel_ports)
        except redis.RedisError:
            return False

    def healthy(self) -> bool:
        """Both servers up, the sentinels agree on the master, its replica is in sync."""
        try:
            master = self.master
            info = redis.Redis(port=self.replica.port).info("replication")
            return (master.proc is not None and info["role"] == "slave" and info["master_port"] == master.port
                    and info["master_link_status"] == "up"
                    and redis.Redis(port=master.port).info("replication")["connected_slaves"] == 1
                    and all(int(redis.Redis(port=p).sentinel_get_master_addr_by_name(MASTER)[1]) == master.port
                            for p in self.sentinel_ports))
        except (redis.RedisError, StopIteration, TypeError):
            return False

    def heal(self) -> None:
        """Restart a server killed by the last test as a replica of the current master."""
        master = self.master
        for server in self.servers:
            if server.proc is None or server.proc.poll() is not None:
                server.start()
                redis.Redis(port=server.port).replicaof("127.0.0.1", master.port)
        wait_for(self.healthy, timeout=30, interval=0.2, what="a master with its replica in sync")
        redis.Redis(port=master.port).flushall()


@pytest.fixture(scope="module")
def sentinels() -> Iterator[Cluster]:
    master = RedisServer().start()
    replica = RedisServer().start()
    redis.Redis(port=replica.port).replicaof("127.0.0.1", master.port)
    workdir = Path(tempfile.mkdtemp(prefix="mobyt-sentinels-"))
    c = Cluster([master, replica], [free_port() for _ in range(3)])
    for port in c.sentinel_ports:
        conf = workdir / f"sentinel-{port}.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 4000\n")
        c.sentinels.append(subprocess.Popen([master.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
    wait_for(c.replicas_known, timeout=30, interval=0.2, what="sentinels to see the replica and each other")
    yield c
    for proc in c.sentinels:
        proc.terminate()
        proc.wait(10)
    for server in c.servers:
        server.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cluster(sentinels: Cluster) -> Cluster:
    sentinels.heal()
    return sentinels


def fail_over(c: Cluster, how: str) -> None:
    """``kill``: the master dies (SIGKILL) and the sentinels elect the replica;
    ``command``: SENTINEL FAILOVER promotes the replica while the master still runs."""
    old, new = c.master, c.replica
    if how == "kill":
        assert old.proc is not None
        old.proc.kill()
        old.proc.wait(10)
    else:
        redis.Redis(port=c.sentinel_ports[0]).sentinel_failover(MASTER)
    wait_for(lambda: c.master_port() == new.port, timeout=30, interval=0.2, what="the failover")
    promoted = redis.Redis(port=new.port)
    wait_for(lambda: promoted.info("replication")["role"] == "master", timeout=30, what="the replica promoted")


def producer(url: str) -> Celery:
    app = Celery("p", broker=url, backend=url)
    app.conf.update(broker_transport_options={"master_name": MASTER},
                    result_backend_transport_options={"master_name": MASTER},
                    task_serializer="json", accept_content=["json"])
    return app


class SendStream:
    """Enqueues one send every 0.1 s in a thread; remembers which enqueues succeeded."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.enqueued: list[tuple[str, float]] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            oid = f"FAILOVER{i:04d}"
            try:
                self.app.send_task("mobyt.send_sms", queue="mobyt", kwargs={
                    "recipients": [NUMBER], "message": f"order {i}", "sender": "ACME", "order_id": oid})
                self.enqueued.append((oid, time.time()))
            except Exception:  # noqa: BLE001 - an enqueue refused during the switch is the producer's to retry
                self.refused += 1
            i += 1
            time.sleep(0.1)

    def __enter__(self) -> "SendStream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize("how", ["kill", "command"])
def test_workers_follow_a_failover_under_a_stream_of_sends(how, cluster, simulator, start_process):
    """``command``: the old master takes writes for seconds after the promotion, then resyncs
    from the new one and drops them; with MOBYT_REDIS_WAIT_REPLICAS=1 no send follows a claim
    that was not on the replica. (After ``kill`` no replica is left to acknowledge: off.)"""
    env = {"REDIS_URL": cluster.url, "MOBYT_REDIS_SENTINEL_MASTER": MASTER,
           "MOBYT_REDIS_WAIT_REPLICAS": "1" if how == "command" else "0"}
    start_process("worker", name="a", env=env)
    start_process("worker", name="b", env=env)
    store = OrderStore(connect(cluster.url, sentinel_master=MASTER), "mobyt")
    promoted = cluster.replica.port
    with SendStream(producer(cluster.url)) as stream:
        wait_for(lambda: simulator.billed_sends() >= 10, timeout=30, what="sends before the failover")
        fail_over(cluster, how)
        failed_over_at = time.time()
        wait_for(lambda: len([1 for _, t in stream.enqueued if t > failed_over_at + 2]) >= 20, timeout=60,
                 what="sends enqueued after the failover")
    after = [oid for oid, t in stream.enqueued if t > failed_over_at + 2]

    def accepted(oid: str) -> bool:
        try:
            return bool((r := store.get_order(oid)) and r.state in ("accepted", "completed"))
        except redis.RedisError:
            return False

    wait_for(lambda: all(accepted(oid) for oid in after), timeout=60, interval=0.5,
             what="every send enqueued after the failover accepted")
    assert [simulator.billed_sends(oid) for oid in after] == [1] * len(after)
    every = [oid for oid, _ in stream.enqueued]
    assert max(simulator.billed_sends(oid) for oid in every) == 1  # none twice, across the switch
    assert store.redis.connection_pool.get_master_address()[1] == promoted


def test_beat_keeps_ticking_after_the_master_dies(cluster, simulator, start_process):
    env = {"REDIS_URL": cluster.url, "MOBYT_REDIS_SENTINEL_MASTER": MASTER}
    start_process("worker", env=env)
    beat = start_process("beat", env=env)
    wait_for(lambda: simulator.count("CREDITS") >= 2, timeout=20, what="beat ticks before")
    fail_over(cluster, "kill")
    credits = simulator.count("CREDITS")
    wait_for(lambda: simulator.count("CREDITS") >= credits + 3, timeout=30, what="check-credits runs after")
    assert beat.proc.poll() is None


def test_a_sentinel_channel_closed_after_its_connection_puts_its_message_back(cluster):
    """The worker's connection to a master that died closes before its channel; the channel
    finds the master through the sentinels it was opened with and restores what it held."""
    kombu_fix.apply()
    channel_closed_after_its_connection(cluster.url, {"master_name": MASTER})
    assert redis.Redis(port=cluster.master.port).llen("restore-me") == 1


def test_without_the_fix_a_sentinel_channel_raises_on_that_close(cluster):
    """What stopped a worker during a failover: kombu reads the master's address (its
    parameters, then the sentinels: ``... no attribute 'alt'``) from a closed connection."""
    stderr = unpatched_close_fails_with(cluster.url, {"master_name": MASTER})
    assert "AttributeError: 'NoneType' object has no attribute" in stderr


def test_a_beat_that_lost_its_lock_ticks_only_once_it_holds_it_again(simulator, start_process, runtime):
    """The lock taken by someone else while a beat could not extend it (an expiry during an
    outage): that beat stops ticking, and resumes once the lock is free and its own again."""
    start_process("worker")
    beat = start_process("beat")
    wait_for(lambda: simulator.count("CREDITS") >= 2, timeout=20, what="beat ticks")
    lock = f"{runtime.settings.key_prefix}:beat:lock"
    runtime.redis.set(lock, "another-beat", px=60_000)
    wait_for(lambda: "lost the lock" in beat.output(), timeout=10, what="the beat sees it lost the lock")

    def sent_since_lost() -> int:
        return beat.output().split("lost the lock", 1)[1].count(SENDING)

    # RedBeat's schedule says check-credits is due, two ticks (--max-interval 1) past its
    # time: a beat still ticking would have sent it by now
    keys = Keys(runtime.settings.key_prefix)
    schedule, entry = keys.beat_prefix + ":schedule", keys.beat_prefix + "check-credits"

    def overdue() -> bool:
        seconds, micros = runtime.redis.time()
        due = runtime.redis.zscore(schedule, entry)
        return due is not None and due < seconds + micros / 1e6 - 2

    wait_for(overdue, timeout=10, what="check-credits two ticks overdue")
    assert sent_since_lost() == 0
    stopped = simulator.count("CREDITS")
    runtime.redis.delete(lock)
    wait_for(lambda: simulator.count("CREDITS") >= stopped + 2, timeout=15, what="ticks again after retaking the lock")
    assert runtime.redis.get(lock) not in (None, "another-beat") and beat.proc.poll() is None
    assert dispatches(beat.output().split("lost the lock", 1)[1], "check-credits") >= 2


@pytest.fixture
def web(cluster, worker_env) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """The Procfile's gunicorn, REDIS_URL=sentinel://..."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="mobyt-web-sentinel-", suffix=".log")[1])
    env = {**worker_env, "REDIS_URL": cluster.url, "MOBYT_REDIS_SENTINEL_MASTER": MASTER,
           "MOBYT_WEBHOOK_TOKEN": "tok-sentinel-0123456789abcdef", "PATH": str(Path(sys.executable).parent)}
    with open(log, "ab") as out:
        proc = subprocess.Popen([GUNICORN, "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
                                 "mobyt_worker.web:wsgi_app()"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    yield f"http://127.0.0.1:{port}", proc, log
    proc.terminate()
    proc.wait(10)
    log.unlink()


def healthz(url: str) -> int | None:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code
    except requests.RequestException:
        return None


def test_web_answers_healthz_from_the_new_master_after_a_failover(cluster, web):
    url, proc, log = web
    wait_for(lambda: healthz(url) == 200 or proc.poll() is not None, timeout=20, what="gunicorn up")
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    fail_over(cluster, "kill")
    wait_for(lambda: healthz(url) == 200, timeout=30, interval=0.2, what="/healthz 200 after the failover")
    assert requests.get(f"{url}/healthz", timeout=2).json()["redis"] is True
