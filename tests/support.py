"""Real processes for tests: a private redis-server, Celery workers and beat.

Each test session runs its own redis-server on a free port (so tests can restart it
and never touch a Redis someone else uses); workers and beat are real subprocesses
started with the same command line as the Procfile.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import redis
import redis.connection

from mobyt_worker.store.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def broker_messages(client: redis.Redis, queue: str = "mobyt") -> list[dict]:
    """Every task message the Redis broker holds: waiting in ``queue``, or delivered to a
    worker and not yet acked (kombu's ``unacked`` hash, countdowns included), each as
    ``{"task", "id", "kwargs"}``. None left for an order: nothing will run for it again."""
    raw = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    raw += [json.loads(held)[0] for held in client.hvals("unacked")]
    messages = []
    for message in raw:
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "id": message["headers"]["id"], "kwargs": kwargs})
    return messages


def wait_until_run(client: redis.Redis, held: Callable[[dict], bool], marker: Callable[[], object],
                   timeout: float = 60.0, what: str = "messages") -> None:
    """Wait until the broker holds no message ``held`` selects: every one has run and been
    acked. One a worker was taking as the broker was read (popped from the queue, not yet in
    the unacked set) is in the unacked set by the time that worker has taken a message
    published after the read: ``marker`` publishes one and waits for it, then the broker is
    read again. (One worker consumes: the one that took the popped message.)"""
    def none_held() -> bool:
        return not [m for m in broker_messages(client) if held(m)]

    wait_for(none_held, timeout=timeout, what=what)
    marker()
    wait_for(none_held, timeout=timeout, what=f"{what}, after a marker")


#: What a beat logs when it takes RedBeat's lock, and for every periodic job it dispatches.
ACQUIRED = "beat: Acquired lock"
SENDING = "Scheduler: Sending due task"


def dispatches(log: str, entry: str) -> int:
    """How many times a beat's log says it dispatched the schedule entry ``entry``."""
    return log.count(f"{SENDING} {entry} (")


def beat_runs(client: redis.Redis, prefix: str, entry: str) -> int:
    """RedBeat's own count of dispatches of ``entry``, kept in Redis with the entry, so
    shared by every beat: two beats dispatching one due run would both count it as one."""
    meta = client.hget(Keys(prefix).beat_prefix + entry, "meta")
    return int(json.loads(meta).get("total_run_count", 0)) if meta else 0


def one_run_per_dispatch(client: redis.Redis, prefix: str, simulator, jobs: dict[str, str],
                         beats: list["CeleryProcess"], killed: "CeleryProcess | None" = None) -> bool:
    """Whether, for each entry -> provider function of ``jobs``, the beats' logged dispatches,
    RedBeat's count and the provider's requests agree (read in that order, so a dispatch
    caught half-way makes them differ until it has run). A beat SIGKILLed in the middle of
    a tick (``killed``) has saved and logged the runs of that tick before publishing them:
    each of those entries may reach the provider once less, never once more."""
    short = last_tick(killed.output()) if killed is not None else set()
    for entry, function in jobs.items():
        counted = beat_runs(client, prefix, entry)
        logged = sum(dispatches(beat.output(), entry) for beat in beats)
        ran = simulator.count(function)
        if not (counted == logged and (ran == logged or (entry in short and ran == logged - 1))):
            return False
    return True


_DISPATCH = re.compile(r"^\[([0-9-]+ [0-9:]+),([0-9]{3}): [^]]*\] " + re.escape(SENDING) + r" (\S+) \(", re.M)


def last_tick(log: str) -> set[str]:
    """The entries a beat dispatched in its last tick: those logged within 0.2 s of its last dispatch."""
    found = [(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(ms) / 1000, entry)
             for stamp, ms, entry in _DISPATCH.findall(log)]
    if not found:
        return set()
    last = found[-1][0]
    return {entry for at, entry in found if last - at <= 0.2}


class RedisServerRefused(RuntimeError):
    """Raised instead of opening a socket to a Redis server (not an OSError: never retried)."""


@contextmanager
def refuse_redis_servers() -> Iterator[list[str]]:
    """Every redis-py connection (TCP, TLS, Unix socket) fails at once and is recorded.

    fakeredis connections do not open sockets, so they keep working.
    """
    attempts: list[str] = []

    def refuse(conn: redis.connection.AbstractConnection) -> None:
        where = getattr(conn, "path", "") or f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
        attempts.append(where)
        raise RedisServerRefused(f"unit tier: no Redis server may be used (connection to {where})")

    classes = (redis.connection.Connection, redis.connection.SSLConnection,
               redis.connection.UnixDomainSocketConnection)
    saved = [cls.__dict__["_connect"] for cls in classes]
    for cls in classes:
        cls._connect = refuse  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        for cls, original in zip(classes, saved):
            cls._connect = original  # type: ignore[method-assign]


class RedisServer:
    """A redis-server of our own. ``appendonly`` lets a restart keep the data; ``password``
    is its ``requirepass``; ``tls`` (a :class:`SelfSignedCert`) makes it answer TLS only,
    at ``rediss://`` URLs."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False, password: str | None = None,
                 tls: "SelfSignedCert | None" = None) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="mobyt-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--bind", "127.0.0.1", "--save", "",
                "--dir", self.dir, "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--protected-mode", "no", "--loglevel", "warning"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.cert),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, **({"ssl_ca_certs": str(self.tls.cert)} if self.tls else {}))
        wait_for(lambda: _ping(client), timeout=10, what="redis-server")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SelfSignedCert:
    """A key and a self-signed certificate for 127.0.0.1 (``openssl``), its own CA."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mobyt-tls-"))
        self.key, self.cert = self.dir / "key.pem", self.dir / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class CeleryProcess:
    """``celery -A mobyt_worker.worker worker|beat`` as a subprocess, output in a log file."""

    def __init__(self, kind: str, env: dict[str, str], *, concurrency: int = 8, name: str = "w1",
                 extra: list[str] | None = None) -> None:
        self.kind = kind
        self.env = env
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"mobyt-{kind}-{name}-", suffix=".log")[1])
        if kind == "worker":
            self.args = [CELERY, "-A", "mobyt_worker.worker", "worker", "--pool", "threads",
                         "--concurrency", str(concurrency), "-Q", "mobyt", "-n", f"{name}@%h",
                         "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info"]
        else:
            self.args = [CELERY, "-A", "mobyt_worker.worker", "beat", "-l", "info",
                         "--max-interval", "1"]
        self.args += extra or []
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "CeleryProcess":
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            marker = "ready." if self.kind == "worker" else "beat: Starting"
            wait_for(lambda: marker in self.output() or self._died(), timeout=30, what=f"{self.kind} start")
            if self._died():
                raise AssertionError(f"{self.kind} exited early:\n{self.output()[-3000:]}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no ack, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def relay(source: socket.socket, sink: socket.socket, before: Callable[[bytes], None] = lambda data: None) -> None:
    """Copy bytes from ``source`` to ``sink`` until either end closes (``before`` sees each read first)."""
    try:
        while data := source.recv(65536):
            before(data)
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()


class Gate:
    """A TCP relay to a local Redis for one process, holding its requests from the first one
    containing ``hold_at`` until :meth:`release`: that process stops at a known point between
    two of its Redis calls while the others go on. ``held`` is set once that request came."""

    def __init__(self, port: int, hold_at: bytes) -> None:
        self.hold_at = hold_at
        self.held = threading.Event()
        self._open = threading.Event()
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.release()
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=relay, args=(client, upstream, self._hold), daemon=True).start()
            threading.Thread(target=relay, args=(upstream, client), daemon=True).start()

    def _hold(self, data: bytes) -> None:
        """From the first request with ``hold_at`` on, every request waits (a client that
        times out and reconnects is held too)."""
        if self.hold_at in data:
            self.held.set()
        if self.held.is_set():
            self._open.wait()


class RabbitVhost:
    """A vhost of our own on the local RabbitMQ (deleted at cleanup), so runs never share a queue."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5672) -> None:
        self.host, self.port = host, port
        self.name = f"mobyt-test-{os.getpid()}-{int(time.time() * 1000)}"

    @staticmethod
    def available(host: str = "127.0.0.1", port: int = 5672) -> bool:
        """Whether the RabbitMQ tests can run. In CI (``make test`` starts the server) they
        always run, so a broker that is not there fails them instead of skipping them."""
        if os.environ.get("CI"):
            return True
        if not shutil.which("rabbitmqctl"):
            return False
        try:
            socket.create_connection((host, port), timeout=2).close()
            return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/{self.name}"

    def create(self) -> "RabbitVhost":
        for args in (["add_vhost", self.name], ["set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"]):
            subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
        return self

    def cleanup(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True, timeout=60)
