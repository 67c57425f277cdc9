"""Prometheus metrics of every process, kept in Redis, rendered by the web process at ``GET /metrics``.

Why Redis rather than prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``):
workers run on any number of hosts, and multiprocess mode only adds up processes that
share one directory on one host, so the web process would show its own host's workers
and nobody else's (workers have no HTTP port to scrape either). It also leaves the files
of dead processes behind, which autoscaling and restarts keep creating. Redis is already
shared by every process on every host: counters there add up the whole fleet, survive
worker restarts, and one scrape of any web process shows them.

Cost on the hot path: none in Redis. Each process adds to an in-memory table, and a
daemon thread writes it every :data:`FLUSH_INTERVAL` seconds with one pipelined round
trip of ``HINCRBYFLOAT`` (and once more at exit). A SIGKILLed process loses at most its
last second of counts: acceptable for metrics (the orders themselves live in the store).

Storage: the hash ``P:metrics`` (``P`` is ``MOBYT_KEY_PREFIX``), one field per series,
``name|part|labels`` with ``part`` empty for counters and ``le=X`` / ``sum`` / ``count``
for histograms (bucket counts not cumulative; rendering adds them up), ``labels`` a
sorted JSON object. It has no expiry: counters only grow, as Prometheus expects; delete
the key to reset them.

Gauges are read at scrape time from what the workers keep anyway, each with O(1) Redis
calls or calls bounded by the number of processes: the credit balance per type and nation
(``P:credits``), the orders waiting for a status poll (``P:poll:due``), the orders
``in_doubt`` (``P:doubt``), the sends queued but not yet taken (``P:intents``), the inbound
SMS stored (``P:inbox:ids``), the last successful provider call (``P:provider:last_ok``)
and, given a :class:`~mobyt_worker.fleet.Fleet`, the ``mobyt`` queue and the live
processes (heartbeats).

============================================  =========  ===================================
metric                                        type       labels
============================================  =========  ===================================
``mobyt_sends_total``                         counter    outcome: accepted, scheduled,
                                                         batched, invalid, opted_out,
                                                         refused, error
``mobyt_task_failures_total``                 counter    task, kind (the error class)
``mobyt_task_retries_total``                  counter    task, kind
``mobyt_status_polls_total``                  counter    outcome: ok or the error class
``mobyt_status_changes_total``                counter    status, source (poll, push)
``mobyt_doubt_checks_total``                  counter    outcome: accepted, absent, unclear
``mobyt_orders_in_doubt_total``               counter    -
``mobyt_resends_total``                       counter    previous (the state an operator's
                                                         resend lifted: in_doubt, ...)
``mobyt_unknown_statuses_total``              counter    status (as the provider wrote it)
``mobyt_inbox_messages_total``                counter    source (poll, push, reconcile)
``mobyt_inbound_bad_senders_total``           counter    source: inbound SMS whose sender is no
                                                         phone number (kept apart, never an
                                                         opt-out)
``mobyt_optout_orders_total``                 counter    outcome: what a STOP did to an order
                                                         scheduled before it (cancelled,
                                                         replaced, wait, too_late, nothing)
``mobyt_pushes_ignored_total``                counter    reason: missing, cancelled, expired,
                                                         failed, unknown_recipient
``mobyt_pushes_rate_limited_total``           counter    callback: status, inbound
``mobyt_provider_requests_total``             counter    function, outcome (ok, rejected,
                                                         or the error class)
``mobyt_provider_request_seconds``            histogram  function
``mobyt_intents_replayed_total``               counter    -
``mobyt_sends_republished_total``             counter    -
``mobyt_credits_available``                   gauge      type, nation (empty for abroad)
``mobyt_orders_due``                          gauge      -
``mobyt_in_doubt_orders``                     gauge      -
``mobyt_intents_pending``                     gauge      -
``mobyt_inbox_messages_stored``               gauge      -
``mobyt_provider_last_ok_age_seconds``        gauge      - (+Inf before any success)
``mobyt_queue_length``                        gauge      - (with a Fleet)
``mobyt_queue_oldest_age_seconds``            gauge      - (with a Fleet; sampled, fleet.py)
``mobyt_processes_alive``                     gauge      kind: worker, beat (with a Fleet)
============================================  =========  ===================================
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
import time
import weakref
from collections import defaultdict
from functools import lru_cache
from typing import Any, Iterable, Iterator

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .contract import POLL_INBOX, POLL_STATUS, RECONCILE_INBOX, SEND_SMS
from .store.credits import CreditsWatch
from .errors import InvalidInput, ProviderRejected, RecipientOptedOut
from .fleet import Fleet
from .store.keys import Keys
from .store.orders import in_doubt_count

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds; SENDSMS takes tens of milliseconds on a good day, a read timeout is 30 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: name -> (type, help, label names). Names are without the ``mobyt_`` prefix and ``_total``.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sends": ("counter", "SMS send tasks by outcome", ("outcome",)),
    "task_failures": ("counter", "Tasks that failed, by task and error class", ("task", "kind")),
    "task_retries": ("counter", "Task retries, by task and the error that caused them", ("task", "kind")),
    "status_polls": ("counter", "SMSSTATUS polls of tracked orders, by outcome", ("outcome",)),
    "status_changes": ("counter", "Per-recipient status changes recorded, by status and source", ("status", "source")),
    "doubt_checks": ("counter", "Reads that asked the provider about a send in doubt, by verdict", ("outcome",)),
    "orders_in_doubt": ("counter", "Orders that became in_doubt (never re-sent automatically)", ()),
    "resends": ("counter", "Sends an operator allowed again although an earlier attempt may have been billed",
                ("previous",)),
    "unknown_statuses": ("counter", "Recipient statuses the seed does not list, as written", ("status",)),
    "inbox_messages": ("counter", "Inbound SMS stored for the first time, by source", ("source",)),
    "inbound_bad_senders": ("counter", "Inbound SMS whose sender is no phone number (never an opt-out)",
                            ("source",)),
    "optout_orders": ("counter", "Orders scheduled before a STOP, by what applying it did to them", ("outcome",)),
    "pushes_ignored": ("counter", "Status pushes acknowledged (200) but not recorded, by reason", ("reason",)),
    "pushes_rate_limited": ("counter", "Pushes answered 429 past MOBYT_PUSH_RATE, by callback", ("callback",)),
    "provider_requests": ("counter", "HTTP requests to the provider, by function and outcome", ("function", "outcome")),
    "provider_request_seconds": ("histogram", "HTTP latency to the provider, by function", ("function",)),
    "intents_replayed": ("counter", "Queued sends published again by mobyt.replay_intents", ()),
    "sends_republished": ("counter", "Unfinished sends whose task the poller published again (a lost retry)", ()),
}

#: What the result of a task says about the send (``mobyt.send_sms`` only).
_SEND_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (RecipientOptedOut, "opted_out"), (InvalidInput, "invalid"), (ProviderRejected, "refused"),
)

_INBOX_SOURCES = {POLL_INBOX: "poll", RECONCILE_INBOX: "reconcile"}


def _field(name: str, part: str, labels: dict[str, str]) -> str:
    return _field_of(name, part, tuple(sorted(labels.items())))


@lru_cache(maxsize=4096)  # a few hundred distinct series; counting runs on every task
def _field_of(name: str, part: str, labels: tuple[tuple[str, str], ...]) -> str:
    return f"{name}|{part}|{json.dumps(dict(labels), separators=(',', ':'))}"


class Metrics:
    """Counts in memory, flushes to Redis in the background, renders the fleet's totals."""

    def __init__(self, client: redis.Redis, prefix: str = "mobyt", *, flush_interval: float = FLUSH_INTERVAL,
                 fleet: Fleet | None = None) -> None:
        self.redis = client
        self.prefix = prefix
        self.fleet = fleet  # the queue and heartbeat gauges; none without it
        self.key = Keys(prefix).metrics
        self.flush_interval = flush_interval
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        """Fresh state for this process (also after a fork: the parent's thread did not follow)."""
        self._lock = threading.Lock()
        self._pending: dict[str, float] = defaultdict(float)
        self._last_ok: dict[str, float] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # --- recording ------------------------------------------------------------------------

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._add({_field(name, "", self._labels(name, "counter", labels)): value})

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        labels = self._labels(name, "histogram", labels)
        le = next((b for b in BUCKETS if seconds <= b), None)
        changes = {_field(name, "sum", labels): seconds, _field(name, "count", labels): 1.0}
        if le is not None:
            changes[_field(name, f"le={le}", labels)] = 1.0
        self._add(changes)

    @staticmethod
    def _labels(name: str, kind: str, labels: dict[str, str]) -> dict[str, str]:
        declared = METRICS[name]
        if declared[0] != kind or set(labels) != set(declared[2]):
            raise ValueError(f"metric {name} is a {declared[0]} with labels {declared[2]}")
        return {k: str(v) for k, v in labels.items()}

    def _add(self, changes: dict[str, float]) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            for field, value in changes.items():
                self._pending[field] += value
            if self._thread is None:
                self._thread = threading.Thread(target=self._flush_forever, name="mobyt-metrics", daemon=True)
                self._thread.start()
                _FLUSH_AT_EXIT.add(self)

    # --- what the product counts ------------------------------------------------------------

    def provider_request(self, function: str, seconds: float, outcome: str) -> None:
        """The client's ``on_request`` hook: one HTTP exchange with the provider."""
        if outcome == "ok":
            self._last_ok[function] = time.time()
        self.inc("provider_requests", function=function, outcome=outcome)
        self.observe("provider_request_seconds", seconds, function=function)

    def status_changes(self, changes: Iterable[dict[str, Any]], source: str) -> None:
        for change in changes:
            self.inc("status_changes", status=change["status"], source=source)

    def task_succeeded(self, task: str, result: Any) -> None:
        if task == SEND_SMS and isinstance(result, dict):
            self.inc("sends", outcome=str(result.get("status") or "accepted"))
        elif task == POLL_STATUS:
            self.inc("status_polls", outcome="ok")
        elif task in _INBOX_SOURCES and isinstance(result, dict) and result.get("new"):
            self.inc("inbox_messages", result["new"], source=_INBOX_SOURCES[task])

    def task_failed(self, task: str, error: BaseException | None) -> None:
        kind = type(error).__name__ if error is not None else "unknown"
        self.inc("task_failures", task=task, kind=kind)
        if task == SEND_SMS:
            outcome = next((name for cls, name in _SEND_FAILURES if isinstance(error, cls)), "error")
            self.inc("sends", outcome=outcome)
        elif task == POLL_STATUS:
            self.inc("status_polls", outcome=kind)

    def task_retried(self, task: str, reason: Any) -> None:
        self.inc("task_retries", task=task, kind=type(reason).__name__ if isinstance(reason, BaseException) else "retry")

    # --- flushing ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write what this process counted since the last flush; returns the number of fields."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
            last_ok, self._last_ok = self._last_ok, {}
        if not pending:
            return 0
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for field, value in pending.items():
                    pipe.hincrbyfloat(self.key, field, value)
                if last_ok:  # when each provider function last answered well (readiness)
                    pipe.hset(Keys(self.prefix).provider_ok, mapping=dict(last_ok))  # type: ignore[arg-type]
                pipe.execute()
        except redis.RedisError as exc:  # keep the counts for the next flush
            log.debug("metrics flush failed: %s", type(exc).__name__)
            with self._lock:
                for field, value in pending.items():
                    self._pending[field] += value
            return 0
        return len(pending)

    def _flush_forever(self) -> None:
        while not self._wake.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # the flusher must outlive any surprise
                log.exception("metrics flush failed")

    # --- rendering (the web process) ------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text format of every process's counters plus the scrape-time gauges."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)

    def read(self) -> dict[str, dict[tuple[str, str], float]]:
        """Stored series: ``{name: {(part, labels JSON): value}}``."""
        out: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        for field, value in self.redis.hgetall(self.key).items():
            name, part, labels = (field.decode() if isinstance(field, bytes) else field).split("|", 2)
            out[name][(part, labels)] = float(value)
        return out


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        stored = self.metrics.read()
        for name, (kind, doc, label_names) in METRICS.items():
            series = stored.get(name, {})
            if kind == "counter":
                family = CounterMetricFamily(f"mobyt_{name}", doc, labels=label_names)
                for (_, labels), value in sorted(series.items()):
                    family.add_metric(_values(labels, label_names), value)
            else:
                family = _histogram(f"mobyt_{name}", doc, label_names, series)
            yield family
        yield from self._gauges()

    def _gauges(self) -> Iterator[Any]:
        client, prefix = self.metrics.redis, self.metrics.prefix
        credits = GaugeMetricFamily("mobyt_credits_available", "Credits left per message type and nation, as last "
                                    "checked (nation empty for abroad)", labels=("type", "nation"))
        for balance in CreditsWatch(client, prefix).balances():
            credits.add_metric((balance.message_type, balance.nation), balance.available)
        yield credits
        keys = Keys(prefix)
        with client.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.due)
            pipe.zcard(keys.inbox_ids)
            pipe.zcard(keys.intents)
            pipe.hvals(keys.provider_ok)
            due, stored, intents, ok_at = pipe.execute()
        last_ok = max((float(at) for at in ok_at), default=None)
        yield GaugeMetricFamily("mobyt_orders_due", "Orders whose delivery statuses are still followed", value=due)
        yield GaugeMetricFamily("mobyt_in_doubt_orders", "Orders in_doubt now: an attempt may have been billed, "
                                "nothing sends them again until an operator decides", value=in_doubt_count(client, keys))
        yield GaugeMetricFamily("mobyt_intents_pending", "Sends written by a producer and not yet taken by a worker "
                                "(replayed by mobyt.replay_intents)", value=intents)
        yield GaugeMetricFamily("mobyt_inbox_messages_stored", "Inbound SMS kept in Redis", value=stored)
        yield GaugeMetricFamily("mobyt_provider_last_ok_age_seconds", "Seconds since the provider last answered a "
                                "call well (+Inf before any)", value=math.inf if last_ok is None
                                else max(0.0, time.time() - last_ok))
        if self.metrics.fleet is not None:
            yield from _fleet_gauges(self.metrics.fleet)


def _fleet_gauges(fleet: Fleet) -> Iterator[Any]:
    yield GaugeMetricFamily("mobyt_queue_length", "Tasks waiting in the mobyt queue", value=fleet.queue_length())
    yield GaugeMetricFamily("mobyt_queue_oldest_age_seconds", "Age of the oldest task in the mobyt queue (sampled "
                            "at each reading; 0 when empty)", value=fleet.oldest_queued_age())
    alive = GaugeMetricFamily("mobyt_processes_alive", "Workers and beats whose heartbeat is fresh", labels=("kind",))
    for kind in ("worker", "beat"):
        alive.add_metric((kind,), len(fleet.heartbeats(kind)))
    yield alive


def _values(labels: str, names: tuple[str, ...]) -> list[str]:
    decoded = json.loads(labels)
    return [decoded.get(n, "") for n in names]


def _histogram(name: str, doc: str, label_names: tuple[str, ...], series: dict[tuple[str, str], float]) -> Any:
    family = HistogramMetricFamily(name, doc, labels=label_names)
    by_labels: dict[str, dict[str, float]] = defaultdict(dict)
    for (part, labels), value in series.items():
        by_labels[labels][part] = value
    for labels, parts in sorted(by_labels.items()):
        running, buckets = 0.0, []
        for bound in BUCKETS:
            running += parts.get(f"le={bound}", 0.0)
            buckets.append((str(bound), running))
        buckets.append(("+Inf", parts.get("count", 0.0)))
        family.add_metric(_values(labels, label_names), buckets, parts.get("sum", 0.0))
    return family


#: Every Metrics that counted something in this process, flushed once more at exit.
_FLUSH_AT_EXIT: weakref.WeakSet[Metrics] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for metrics in list(_FLUSH_AT_EXIT):
        try:
            metrics.flush()
        except Exception:  # Redis may be gone already
            pass
