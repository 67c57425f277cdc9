"""The demo's stage: the processes it starts, how it prints, and how it waits for events.

The simulator, the web receiver (gunicorn, the Procfile's ``web`` line), one worker
(``--pool threads``) and beat, each a child process; the story is told by
:mod:`.demo`, reading our two streams the way another service does.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import redis
import requests

from ..store.connection import connect
from ..contract import QUEUE, SEND_SMS
from ..store.orders import OrderStore
from .demo_env import (BROKER_PREFIX, DELIVERY_DELAY, LOGIN, PREFIX, SETTINGS, child_environment,
                       choose_redis, delete_prefix)
from .processes import Child, free_port, stop_all, tail, wait_until

STEP_TIMEOUT = 20.0
BIN = Path(sys.executable).parent


class StepFailed(Exception):
    """A step of the story did not happen (exit 1)."""


@dataclass
class Events:
    """Reads our two streams the way another service does: a consumer group, XREADGROUP, XACK."""

    client: redis.Redis
    group: str
    streams: tuple[str, ...] = (f"{PREFIX}:events", f"{PREFIX}:inbound")
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def create(self, start: str = "$") -> None:
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id=start, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, block_ms: int | None = 100) -> Iterator[tuple[str, dict[str, str]]]:
        """New entries of both streams, acknowledged once yielded; ``block_ms=None`` does not wait."""
        reply: Any = self.client.xreadgroup(self.group, "demo-1", {s: ">" for s in self.streams}, count=500,
                                            block=block_ms)
        for stream, entries in reply or []:
            ids = [entry_id for entry_id, _ in entries]
            for _, fields in entries:
                self.seen.append((stream, fields))
                yield stream, fields
            if ids:
                self.client.xack(stream, self.group, *ids)

    def pending(self) -> int:
        return sum(self.client.xpending(stream, self.group)["pending"] for stream in self.streams)


class Stage:
    """Starts every process, then tells what happens; :meth:`stop` undoes it all."""

    def __init__(self, out: TextIO, environ: dict[str, str]) -> None:
        self.out = out
        self.environ = environ
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="mobyt-demo-"))
        self.children: list[Child] = []
        self.private_redis: Child | None = None
        self.redis: redis.Redis | None = None
        self.producer: Any = None
        self.sim_url = self.web_url = ""
        self.handlers: list[Callable[[str, dict[str, str]], None]] = []

    @property
    def db(self) -> redis.Redis:
        assert self.redis is not None, "start() connects to Redis"
        return self.redis

    # --- output ---

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", file=self.out, flush=True)

    def title(self, text: str) -> None:
        print(f"\n{text}", file=self.out, flush=True)

    # --- set-up ---

    def start(self) -> None:
        self.title("mobyt demo: the whole story on this machine, against the built-in simulator "
                   "(no Mobyt account, nothing to configure)")
        url, self.private_redis = choose_redis(self.environ, self.workdir, self.say)
        self.redis = connect(url)
        delete_prefix(self.redis)
        sim_port, web_port, token = free_port(), free_port(), secrets.token_urlsafe(24)
        self.sim_url, self.web_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
        env = child_environment(self.environ, {**SETTINGS, "REDIS_URL": url, "MOBYT_BASE_URL": self.sim_url,
                                               "MOBYT_WEBHOOK_TOKEN": token})
        celery = [str(BIN / "celery"), "-A", "mobyt_worker.worker"]
        sim = self._spawn("simulator", [sys.executable, "-m", "mobyt_worker", "simulator", "--port", str(sim_port),
                                        "--delivery-delay", str(DELIVERY_DELAY)], env)
        web = self._spawn("web", [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{web_port}", "--workers", "1",
                                  "--threads", "4", "--access-logfile", "-", "mobyt_worker.web:wsgi_app()"], env)
        worker = self._spawn("worker", celery + ["worker", "--pool", "threads", "--concurrency", "8", "-Q", QUEUE,
                                                 "-n", "demo@%h", "--without-heartbeat", "--without-mingle",
                                                 "--without-gossip", "-l", "info"], env)
        beat = self._spawn("beat", celery + ["beat", "-l", "info", "--max-interval", "1"], env)
        wait_until(lambda: get_json(f"{self.sim_url}/_sim/health"), 15, "the simulator", sim)
        self.say(f"simulator  {self.sim_url}: a fake Mobyt (login {LOGIN}); each number's last digit picks its "
                 "fate (0-5 delivered, 6 error, 7 unknown, 8 blacklisted)")
        wait_until(lambda: get_json(f"{self.web_url}/healthz"), 20, "the web receiver", web)
        callbacks = f"{self.web_url}/callbacks/{token}"
        post_json(f"{self.sim_url}/_sim/push", {"status_url": f"{callbacks}/status", "inbound_url": f"{callbacks}/inbound"})
        self.say(f"web        {self.web_url}: gunicorn; the simulator pushes statuses and inbound SMS to "
                 "/callbacks/<token>/...")
        wait_until(lambda: "ready." in worker.output(), 30, "the worker", worker)
        self.say("worker     celery worker --pool threads --concurrency 8, queue 'mobyt'")
        wait_until(lambda: "beat: Starting" in beat.output(), 30, "beat", beat)
        self.say("beat       RedBeat: due status polls every 0.5 s, inbox every 1 s, credits every 2 s")
        self.producer = bare_client(url)
        self.events = Events(self.redis, "demo-story")
        self.events.create("$")
        self.store = OrderStore(self.redis, PREFIX)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        child = Child(name, args, self.workdir / f"{name}.log").start(env, self.workdir)
        self.children.append(child)
        return child

    def stop(self) -> None:
        stop_all(self.children)
        if self.producer is not None:
            self.producer.close()
        if self.redis is not None:
            try:
                delete_prefix(self.redis)
            except redis.RedisError:
                pass
            self.redis.close()
        if self.private_redis is not None:
            stop_all([self.private_redis])

    # --- waiting while printing what arrives ---

    def watch(self, predicate: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT) -> Any:
        """Read events (each handler prints what concerns it) until ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            self._dispatch(self.events.read())
            value = predicate()
            if value:  # what made it true was written with its events: show them before going on
                self._dispatch(self.events.read(block_ms=None))
                return value
            for child in self.children:
                if not child.alive():
                    raise StepFailed(f"{child.name} exited; its log:\n{tail(child.output())}")
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def _dispatch(self, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        for stream, fields in entries:
            for handler in self.handlers:
                handler(stream, fields)

    def send(self, **kwargs: Any) -> Any:
        return self.producer.send_task(SEND_SMS, kwargs=kwargs, queue=QUEUE)

    def stats(self) -> dict[str, Any]:
        return get_json(f"{self.sim_url}/_sim/stats")

    def final(self, order_id: str) -> Any:
        record = self.store.get_order(order_id, with_history=False)
        return record if record is not None and record.final else None


def bare_client(url: str) -> Any:
    """What another service has: Celery, the broker URL (and this deployment's key prefix)."""
    from celery import Celery

    prefixed = {"global_keyprefix": BROKER_PREFIX}
    client = Celery("demo-producer", broker=url, backend=url)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                       broker_transport_options=prefixed, result_backend_transport_options=prefixed)
    return client


def get_json(url: str) -> Any:
    try:
        answer = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def post_json(url: str, body: dict[str, Any]) -> Any:
    answer = requests.post(url, json=body, timeout=5)
    answer.raise_for_status()
    return answer.json()


