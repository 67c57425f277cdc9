"""``mobyt demo``: the whole product on one machine, in well under a minute, with no account.

It starts, each as a subprocess in its own process group:

- the built-in simulator (``mobyt simulator``), a fake Mobyt on a free port, pushing
  statuses and inbound SMS to the web receiver;
- the web receiver (gunicorn serving ``mobyt_worker.web:wsgi_app()``, the
  Procfile's ``web`` line);
- one worker (``celery -A mobyt_worker.worker worker --pool threads``) and beat;

then tells the story as it happens: a send enqueued by name, its per-recipient statuses
arriving, a scheduled send cancelled, a bulk send split into chunks, an inbound SMS and a
STOP honoured, the credit balance, and the events read the way another service reads them
(``XREADGROUP`` with a consumer group). Every child is stopped at the end, also after an
error, Ctrl-C or SIGTERM: each process group gets SIGTERM, then SIGKILL.

Redis, in this order:

1. the local Redis (``REDIS_URL``, else ``redis://localhost:6379``) if it answers, on
   database 15 (never the database named in ``REDIS_URL``), with every key under
   ``mobytdemo:`` (ours through ``MOBYT_KEY_PREFIX``, Celery's through
   ``MOBYT_BROKER_KEY_PREFIX``). The demo deletes those keys before and after, and
   touches nothing else;
2. otherwise a private ``redis-server`` on a free port, in a temporary directory, stopped
   and removed at the end, when the binary is installed;
3. otherwise it says what is missing and exits 2, having started nothing.

The children get an environment built here: the calling shell's ``MOBYT_*`` and
``REDIS_URL`` are not passed on, and they run in a temporary directory, so no ``.env``
is read and production credentials are never used. Short poll intervals and ticks make
the story take seconds.

Exit codes: 0 every step happened; 1 a step did not happen (the children's log tails are
printed); 2 the demo cannot run here (no Redis, a process did not start); 130 interrupted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from ..credits import CreditsWatch
from ..store import OrderStore

PREFIX = "mobytdemo"
BROKER_PREFIX = f"{PREFIX}:celery:"
DEMO_DB = 15
QUEUE = "mobyt"
LOGIN, PASSWORD = "demo", "demo-password"  # the simulator's demo account (simulator.DEMO_LOGIN)
DELIVERY_DELAY = 1.5
CHUNK_SIZE = 3
STEP_TIMEOUT = 20.0
BIN = Path(sys.executable).parent

#: Numbers whose last digit picks their fate in the simulator (see simulator.py).
DELIVERED, FAILED, REPLIES, STOPS = "+33612345670", "+33612345676", "+33612345672", "+33612345673"
BULK = [f"+3361000000{i}" for i in range(7)]

#: Settings of the children: fast ticks so the story takes seconds.
SETTINGS = {
    "MOBYT_KEY_PREFIX": PREFIX,
    "MOBYT_BROKER_KEY_PREFIX": BROKER_PREFIX,
    "MOBYT_LOGIN": LOGIN,
    "MOBYT_PASSWORD": PASSWORD,
    "MOBYT_DEFAULT_SENDER": "DEMO",
    "MOBYT_POLL_TICK": "0.5",
    "MOBYT_POLL_INTERVALS": "0.5,1,2",
    "MOBYT_INBOX_INTERVAL": "1",
    "MOBYT_RECONCILE_INTERVAL": "5",
    "MOBYT_CREDITS_INTERVAL": "2",
    "MOBYT_BULK_CHUNK_SIZE": str(CHUNK_SIZE),
    "MOBYT_WORKER_CONCURRENCY": "8",
    "MOBYT_CONNECT_TIMEOUT": "2",
    "MOBYT_READ_TIMEOUT": "5",
    "MOBYT_SEND_RETRY_MAX": "2",
    "MOBYT_VISIBILITY_TIMEOUT": "60",
    "PYTHONUNBUFFERED": "1",
}


class CannotRun(Exception):
    """The demo cannot run on this machine (exit 2); the message says what is missing."""


class StepFailed(Exception):
    """A step of the story did not happen (exit 1)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- child processes ----------------------------------------------------------------------


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str], cwd: Path) -> Child:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)  # the group outlives its leader: signal it anyway
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.signal_group(signal.SIGKILL)  # whatever is left of the group, leader or not
        self.proc.wait()


def stop_all(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM every group at once, wait up to ``grace`` seconds, then SIGKILL each group."""
    for child in children:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.wait(deadline)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, child: Child | None = None) -> Any:
    """Wait for a process to come up; :class:`CannotRun` if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if child is not None and not child.alive():
            raise CannotRun(f"{child.name} exited at start; its log:\n{_tail(child.output())}")
        if time.monotonic() > deadline:
            raise CannotRun(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# --- Redis ----------------------------------------------------------------------------


def demo_url(url: str, db: int = DEMO_DB) -> str | None:
    """``url`` on database ``db``; None for URLs the demo does not use (unix, sentinel)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return None
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def choose_redis(environ: dict[str, str], workdir: Path, say: Callable[[str], None]) -> tuple[str, Child | None]:
    """The Redis URL to use and the private server started for it, if any (module docstring)."""
    given = environ.get("REDIS_URL") or "redis://localhost:6379"
    url, shown = demo_url(given), _without_password(given)
    if url and reachable(url):
        say(f"redis      {_without_password(url)}: the local Redis, database {DEMO_DB}; "
            f"demo keys under {PREFIX}: are removed at the end")
        return url, None
    binary = shutil.which("redis-server")
    why = f"no Redis answers at {shown}" if url else f"REDIS_URL {shown} is not a redis:// URL the demo can use"
    if not binary:
        raise CannotRun(f"{why}, and no redis-server binary is on PATH. Install Redis "
                        "(e.g. `apt-get install redis-server` or `brew install redis`) or start one "
                        "and set REDIS_URL=redis://HOST:PORT.")
    port = free_port()
    data = workdir / "redis"
    data.mkdir()
    server = Child("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(data), "--protected-mode", "no"], workdir / "redis.log")
    say(f"redis      {why}: starting a private redis-server on port {port} (removed at the end)")
    server.start(dict(os.environ), workdir)
    url = f"redis://127.0.0.1:{port}/{DEMO_DB}"
    wait_until(lambda: reachable(url), 10, "the private redis-server", server)
    return url, server


def delete_prefix(client: redis.Redis, prefix: str = PREFIX) -> int:
    """Delete every key under ``prefix:`` (and nothing else); returns how many."""
    removed = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def child_environment(environ: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The calling environment without MOBYT_* and REDIS_URL, plus ``extra``."""
    env = {k: v for k, v in environ.items() if not k.startswith("MOBYT_") and k != "REDIS_URL"}
    env.update(extra)
    return env


# --- the story --------------------------------------------------------------------------


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


class Story:
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
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        delete_prefix(self.redis)
        sim_port, web_port, token = free_port(), free_port(), secrets.token_urlsafe(16)
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
        wait_until(lambda: _get(f"{self.sim_url}/_sim/health"), 15, "the simulator", sim)
        self.say(f"simulator  {self.sim_url}: a fake Mobyt (login {LOGIN}); each number's last digit picks its "
                 "fate (0-5 delivered, 6 error, 7 unknown, 8 blacklisted)")
        wait_until(lambda: _get(f"{self.web_url}/healthz"), 20, "the web receiver", web)
        callbacks = f"{self.web_url}/callbacks/{token}"
        _post(f"{self.sim_url}/_sim/push", {"status_url": f"{callbacks}/status", "inbound_url": f"{callbacks}/inbound"})
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
                    raise StepFailed(f"{child.name} exited; its log:\n{_tail(child.output())}")
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def _dispatch(self, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        for stream, fields in entries:
            for handler in self.handlers:
                handler(stream, fields)

    def send(self, **kwargs: Any) -> Any:
        return self.producer.send_task("mobyt.send_sms", kwargs=kwargs, queue=QUEUE)

    def stats(self) -> dict[str, Any]:
        return _get(f"{self.sim_url}/_sim/stats")

    def final(self, order_id: str) -> Any:
        record = self.store.get_order(order_id, with_history=False)
        return record if record is not None and record.final else None

    # --- the steps ---

    def step_send(self) -> None:
        self.title("1. A send, enqueued by name (Celery + the broker URL, none of our code)")
        recipients = [DELIVERED, FAILED]
        self.say(f"send_task('mobyt.send_sms', kwargs={{'recipients': {recipients}, "
                 "'message': 'Your code is 4821', 'sender': 'DEMO'}, queue='mobyt')")
        reply = self.send(recipients=recipients, message="Your code is 4821", sender="DEMO").get(timeout=STEP_TIMEOUT)
        order_id = reply["order_id"]
        if reply["status"] != "accepted":
            raise StepFailed(f"send answered {reply}")
        self.say(f"accepted: order_id {order_id}, {len(reply['recipients'])} recipients, {reply['credits']} credits")
        self.handlers = [self._print_statuses(order_id)]
        record = self.watch(lambda: self.final(order_id), f"order {order_id} to reach final statuses")
        got = {r: s.status for r, s in record.recipients.items()}
        if got != {DELIVERED: "DLVRD", FAILED: "ERROR"}:
            raise StepFailed(f"unexpected final statuses {got}")
        self.say(f"order {record.state}: {DELIVERED} DLVRD at {record.recipients[DELIVERED].delivered_at}, "
                 f"{FAILED} ERROR; {record.polls} SMSSTATUS polls; billed sends at the provider: "
                 f"{self.stats()['billed']}")

    def _print_statuses(self, order_id: str) -> Callable[[str, dict[str, str]], None]:
        def show(stream: str, e: dict[str, str]) -> None:
            if e.get("order_id") != order_id:
                return
            if e["type"] == "status":
                self.say(f"  {e['recipient']}  {e['previous'] or '(new)':>9} -> {e['status']:<9} (by {e['source']})")
            elif e["type"] == "order":
                self.say(f"  order {e['state']}")
        return show

    def step_cancel(self) -> None:
        self.title("2. A scheduled send, cancelled")
        at = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(microsecond=0)
        self.handlers = []
        reply = self.send(recipients=[DELIVERED], message="See you tomorrow", scheduled_at=at.isoformat()
                          ).get(timeout=STEP_TIMEOUT)
        if reply["status"] != "scheduled":
            raise StepFailed(f"scheduled send answered {reply}")
        order_id = reply["order_id"]
        self.say(f"scheduled for {at.isoformat()}: order_id {order_id}")
        self.say(f"send_task('mobyt.cancel', kwargs={{'order_id': '{order_id}'}})")
        record = self.producer.send_task("mobyt.cancel", kwargs={"order_id": order_id}, queue=QUEUE
                                         ).get(timeout=STEP_TIMEOUT)
        removed = self.stats()["counts"].get("REMOVE_DELAYED", 0)
        if record["state"] != "cancelled" or not record["cancelled"] or removed != 1:
            raise StepFailed(f"cancel gave state {record['state']!r}, REMOVE_DELAYED calls: {removed}")
        due = self.db.zscore(f"{PREFIX}:poll:due", order_id)
        self.say(f"cancelled: REMOVE_DELAYED sent once, state {record['state']}, "
                 f"polling {'stopped' if due is None else 'STILL SCHEDULED'}")
        if due is not None:
            raise StepFailed("the cancelled order is still due for polling")

    def step_bulk(self) -> None:
        self.title(f"3. A bulk send of {len(BULK)} recipients, split into chunks of {CHUNK_SIZE} "
                   "(MOBYT_BULK_CHUNK_SIZE)")
        before = self.stats()["counts"].get("SENDSMS", 0)
        reply = self.send(recipients=BULK, message="Flash sale today only").get(timeout=STEP_TIMEOUT)
        if reply.get("status") != "batched":
            raise StepFailed(f"bulk send answered {reply}")
        orders = reply["orders"]
        self.say(f"batch {reply['batch_id']}: {len(orders)} orders, one per chunk: {', '.join(orders)}")
        completed: dict[str, Any] = {}

        def all_done() -> bool:
            for index, oid in enumerate(orders):
                if oid not in completed and (record := self.final(oid)) is not None:
                    completed[oid] = record
                    counts = Counter(s.status for s in record.recipients.values())
                    self.say(f"  chunk {index + 1}/{len(orders)}  order {oid}  {len(record.recipients)} recipient(s)  "
                             f"{record.state}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            return len(completed) == len(orders)

        self.watch(all_done, f"the {len(orders)} chunk orders to complete")
        sizes = sorted(len(r.recipients) for r in completed.values())
        sent = self.stats()["counts"].get("SENDSMS", 0) - before
        batch = self.store.batch_orders(reply["batch_id"])
        if sizes != [1, CHUNK_SIZE, CHUNK_SIZE] or sent != len(orders) or batch != orders:
            raise StepFailed(f"chunks of {sizes}, {sent} SENDSMS calls, batch lists {batch}")
        self.say(f"{sent} SENDSMS calls, one per chunk; the batch is queryable as a whole "
                 f"(OrderStore.batch_orders('{reply['batch_id']}'))")

    def step_inbound(self) -> None:
        self.title("4. An inbound SMS, then a STOP, honoured")
        text = "Bonjour, je serai la a 15h"
        received: dict[str, dict[str, str]] = {}

        def inbound(stream: str, e: dict[str, str]) -> None:
            if e.get("type") == "inbound":
                received[e["id"]] = e
                self.say(f"  inbound #{e['id']} from {e['sender']}: {e['text']!r} (stored once, via {e['source']})")
            elif e.get("type") == "optout":
                received["optout"] = e
                self.say(f"  opt-out recorded for {e['number']} (message #{e['message_id']})")

        self.handlers = [inbound]
        self.say(f"a customer {REPLIES} texts {text!r} (simulator: POST /_sim/inbound)")
        _post(f"{self.sim_url}/_sim/inbound", {"sender": REPLIES, "text": text})
        self.watch(lambda: any(e.get("text") == text for e in received.values()), "the inbound SMS")
        self.say(f"{STOPS} texts 'STOP'")
        _post(f"{self.sim_url}/_sim/inbound", {"sender": STOPS, "text": "STOP"})
        self.watch(lambda: "optout" in received, "the opt-out")
        before = self.stats()["counts"].get("SENDSMS", 0)
        self.say(f"send_task('mobyt.send_sms', kwargs={{'recipients': ['{STOPS}'], ...}})")
        try:
            self.send(recipients=[STOPS], message="Last chance!").get(timeout=STEP_TIMEOUT)
        except Exception as exc:  # the task's error, rebuilt by Celery from the result backend
            refusal = f"{type(exc).__name__}: {exc}"
        else:
            raise StepFailed(f"a send to {STOPS} was accepted after STOP")
        after = self.stats()["counts"].get("SENDSMS", 0)
        if after != before or "opted out" not in refusal:
            raise StepFailed(f"refusal {refusal!r}; SENDSMS calls {before} -> {after}")
        self.say(f"refused before any HTTP call: {refusal}; SENDSMS calls at the provider unchanged ({after})")

    def step_credits(self) -> None:
        self.title("5. The credit balance")
        self.handlers = []
        self.say("send_task('mobyt.check_credits') (beat also runs it every 2 s)")
        self.producer.send_task("mobyt.check_credits", queue=QUEUE).get(timeout=STEP_TIMEOUT)
        balances = CreditsWatch(self.db, PREFIX).balances()
        provider = self.stats()["credits"]
        if not balances or any(provider.get(b.field) != b.available for b in balances):
            raise StepFailed(f"stored balances {balances} differ from the provider's {provider}")
        for b in balances:
            self.say(f"  {b.message_type} {b.nation or '(abroad)':<8} {b.available:>6} credits  (stored at {b.at})")
        self.say(f"this demo spent {10000 - provider['N|FR']} SMS Top credits")

    def step_events(self) -> None:
        self.title("6. The events, as another service reads them (a consumer group of its own)")
        self.handlers = []
        crm = Events(self.db, "crm")
        crm.create("0")
        self.say(f"XGROUP CREATE {PREFIX}:events crm 0; XREADGROUP GROUP crm demo-1 STREAMS {PREFIX}:events "
                 f"{PREFIX}:inbound > ; XACK ...")
        for _ in range(2):  # then catch up both groups, for entries written meanwhile
            while list(crm.read(block_ms=200)):
                pass
            self.watch(lambda: True, "the story's own reader")
        kinds = Counter(f"{f['type']} {f.get('status') or f.get('state') or ''}".strip() for _, f in crm.seen)
        for kind, n in sorted(kinds.items()):
            self.say(f"  {n:>3} x {kind}")
        pending = crm.pending() + self.events.pending()
        if not crm.seen or len(crm.seen) != len(self.events.seen) or pending:
            raise StepFailed(f"crm read {len(crm.seen)}, the story read {len(self.events.seen)}, {pending} pending")
        self.say(f"each group gets every entry: crm read {len(crm.seen)}, the story's group "
                 f"{len(self.events.seen)}; all acknowledged, 0 pending")

    def run(self) -> None:
        self.start()
        for step in (self.step_send, self.step_cancel, self.step_bulk, self.step_inbound, self.step_credits,
                     self.step_events):
            step()


def bare_client(url: str) -> Any:
    """What another service has: Celery, the broker URL (and this deployment's key prefix)."""
    from celery import Celery

    prefixed = {"global_keyprefix": BROKER_PREFIX}
    client = Celery("demo-producer", broker=url, backend=url)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                       broker_transport_options=prefixed, result_backend_transport_options=prefixed)
    return client


def _get(url: str) -> Any:
    try:
        answer = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def _post(url: str, body: dict[str, Any]) -> Any:
    answer = requests.post(url, json=body, timeout=5)
    answer.raise_for_status()
    return answer.json()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(out: TextIO = sys.stdout, environ: dict[str, str] | None = None) -> int:
    """Tell the story; returns the exit code (module docstring)."""
    story = Story(out, dict(os.environ if environ is None else environ))
    previous = signal.signal(signal.SIGTERM, _terminate)
    code = 0
    try:
        story.run()
    except CannotRun as exc:
        print(f"mobyt demo cannot run here: {exc}", file=sys.stderr, flush=True)
        code = 2
    except StepFailed as exc:
        print(f"\nmobyt demo FAILED: {exc}", file=sys.stderr, flush=True)
        for child in story.children:
            print(f"--- {child.name} log (last lines) ---\n{_tail(child.output())}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr, flush=True)
        code = 130
    finally:
        try:
            story.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
    if code == 0:
        story.title(f"done in {time.monotonic() - story.started:.1f}s: every process stopped, "
                    f"the demo's keys removed from Redis")
    if code in (0, 130) or not story.children:
        shutil.rmtree(story.workdir, ignore_errors=True)
    else:
        print(f"logs kept in {story.workdir}", file=sys.stderr)
    return code
