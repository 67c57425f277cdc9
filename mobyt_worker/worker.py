"""The Celery app: Redis broker and result backend, configured so that nothing is lost.

Run with ``celery -A mobyt_worker.worker worker`` (see the Procfile). Settings come
from the environment once, at import.
"""

from __future__ import annotations

import atexit
from datetime import timedelta
from typing import Callable

from celery import Celery
import redbeat.schedulers  # noqa: F401 - its lock handler must run before ours (beat_init)
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_ready,
    worker_shutdown,
)

from . import broker, kombu_fix, logs
from .config import Settings
from .heartbeat import Heartbeat
from .producer import attach_intents
from .runtime import Runtime
from .connection import REDIS_RETRY, parse_sentinel_url
from .keys import Keys

#: All our tasks go to this queue; producers must name it (the helper in producer.py does).
QUEUE = broker.QUEUE


def create_app(settings: Settings) -> Celery:
    kombu_fix.apply()  # a channel closed while Redis restarts must not stop the worker
    app = Celery("mobyt", include=["mobyt_worker.tasks"])
    vt = settings.visibility_timeout
    app.conf.update(
        broker_url=settings.broker_url or settings.redis_url,
        result_backend=settings.redis_url,
        # JSON only: tasks are called by name from other languages/services; no pickle.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        # Ack after the task ran, and requeue if the worker died mid-task: a SIGKILLed
        # send is redelivered. Safe because every task is idempotent (order records).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per thread in advance: with acks_late, prefetched messages wait
        # unacked in this process; keeping few of them bounds what a crash delays.
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # A message unacked this long is handed to another worker. It must exceed the
            # longest task plus any countdown we use (retries cap at send_retry_max, and
            # polls are driven by the due-set in Redis, never by long ETAs).
            "visibility_timeout": vt,
            # Look for such messages every vt/10 s (kombu's default is every ~100 s).
            "unacked_restore_interval": max(1, min(10, vt // 10)),
            "unacked_restore_throttle": 1,
            "health_check_interval": 15,
        },
        result_backend_transport_options={"retry_policy": {"timeout": 10.0}},
        redis_backend_health_check_interval=15,
        redis_retry_on_timeout=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # On a lost broker connection, running tasks finish (a thread cannot be stopped
        # mid-request); their ack is lost, so they come back after the visibility timeout
        # and, being idempotent, find their work done.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # SIGTERM (mapped to Celery's cold shutdown by REMAP_SIGTERM=SIGQUIT, see the
        # Procfile) stops taking messages, gives running tasks this grace, then hands
        # every unacked message back to the queue at once instead of after the
        # visibility timeout. Only when tasks are running: an idle worker exits at once.
        worker_soft_shutdown_timeout=settings.shutdown_grace,
        worker_enable_soft_shutdown_on_idle=False,
        broker_pool_limit=max(10, settings.worker_concurrency),
        result_expires=timedelta(days=1),
        # Enforced by prefork/gevent pools; the threads pool relies on HTTP timeouts.
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 15),
        worker_concurrency=settings.worker_concurrency,
        worker_pool="threads",
        task_track_started=False,
        enable_utc=True,
        timezone="UTC",
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=Keys(settings.key_prefix).beat_prefix,
        redbeat_lock_key=Keys(settings.key_prefix).beat_lock,
        # Ride out a Redis restart or failover instead of exiting: RedBeat retries its own
        # calls, and redis-py retries the lock extension it makes at every tick.
        redbeat_redis_options={"retry_period": -1, **REDIS_RETRY},
        # RedBeat: only the beat holding the lock in Redis ticks; the others wait for it.
        # The lock lives 5 x this interval unless extended (a beat extends it at every
        # tick), so a beat killed without releasing it is replaced within ~25 s.
        beat_max_loop_interval=5,
        beat_schedule={
            "poll-due-orders": _every("mobyt.poll_due", settings.poll_tick, expires=max(settings.poll_tick * 2, 10)),
            "poll-inbox": _every("mobyt.poll_inbox", settings.inbox_interval),
            "reconcile-inbox": _every("mobyt.reconcile_inbox", settings.reconcile_interval),
            "check-credits": _every("mobyt.check_credits", settings.credits_interval),
            "replay-intents": _every("mobyt.replay_intents", max(1.0, min(30.0, settings.replay_after / 4))),
        },
    )
    if settings.broker_url and broker.is_amqp(settings.broker_url):
        app.conf.update(broker.options(settings.broker_url))  # RabbitMQ: its own transport options
    if settings.broker_key_prefix:
        # Celery's own keys (queue, unacked, results) under a prefix too, for a Redis DB
        # shared with others (the demo does this). Producers must set the same prefix.
        for options in (app.conf.broker_transport_options, app.conf.result_backend_transport_options):
            options["global_keyprefix"] = settings.broker_key_prefix
    if settings.redis_url.startswith("sentinel://"):
        _follow_sentinel(app, settings)
    app.runtime = Runtime(settings, producer=app)  # type: ignore[attr-defined]
    attach_intents(app, app.runtime.intents)  # type: ignore[attr-defined]
    return app


def _follow_sentinel(app: Celery, settings: Settings) -> None:
    """Broker, results and RedBeat all ask the sentinels for the current master."""
    hosts, db, password = parse_sentinel_url(settings.redis_url)
    master = settings.sentinel_master
    app.conf.broker_transport_options["master_name"] = master
    app.conf.result_backend_transport_options["master_name"] = master
    app.conf.redbeat_redis_url = "redis-sentinel://"
    app.conf.redbeat_redis_options.update(
        {"sentinels": hosts, "service_name": master, "db": db, "password": password, "socket_timeout": 10})


def _every(task: str, seconds: float, *, expires: float | None = None) -> dict[str, object]:
    """A beat entry. A run still queued when the next one is due is dropped (``expires``)."""
    return {"task": task, "schedule": timedelta(seconds=seconds),
            "options": {"queue": QUEUE, "expires": expires if expires is not None else max(seconds, 5.0)}}


app = create_app(Settings.from_env())


# --- structured logs (see logs.py): task and order ids on every line, numbers masked ---------


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: object, **_: object) -> None:
    s = app.runtime.settings  # type: ignore[attr-defined]
    logs.configure(logger, s.log_format, secrets=(s.password.reveal(), s.webhook_token.reveal()))  # type: ignore[arg-type]


@task_prerun.connect
def _bind_log_context(task_id: str, task: object, kwargs: dict | None = None, **_: object) -> None:
    name = getattr(task, "name", None)
    order_id = (kwargs or {}).get("order_id")
    if not order_id and name == "mobyt.send_sms":
        from .tasks import order_id_for_task  # the id send_sms derives from the task id

        order_id = order_id_for_task(task_id)
    logs.bind(task=name, task_id=task_id, order_id=order_id if isinstance(order_id, str) else None)


@task_postrun.connect
def _clear_log_context(**_: object) -> None:
    logs.clear()


# --- metrics (see metrics.py): task outcomes counted in memory, flushed to Redis ------------


@task_success.connect
def _count_success(sender: object = None, result: object = None, **_: object) -> None:
    app.runtime.metrics.task_succeeded(getattr(sender, "name", ""), result)  # type: ignore[attr-defined]


@task_failure.connect
def _count_failure(sender: object = None, exception: BaseException | None = None, **_: object) -> None:
    app.runtime.metrics.task_failed(getattr(sender, "name", ""), exception)  # type: ignore[attr-defined]


@task_retry.connect
def _count_retry(sender: object = None, reason: object = None, **_: object) -> None:
    app.runtime.metrics.task_retried(getattr(sender, "name", ""), reason)  # type: ignore[attr-defined]


# --- fleet health (see heartbeat.py) and beat's first round --------------------------------

_heartbeats: list[Heartbeat] = []


def _heartbeat(kind: str, queues: str = "", holds_lock: Callable[[], bool] | None = None) -> Heartbeat:
    rt = app.runtime  # type: ignore[attr-defined]
    beat = Heartbeat(rt.redis, rt.settings.key_prefix, kind, interval=rt.settings.heartbeat_interval,
                     queues=queues, holds_lock=holds_lock)
    _heartbeats.append(beat.start())
    return beat


@worker_ready.connect
def _worker_heartbeat(sender: object = None, **_: object) -> None:
    queues = ",".join(sorted(q.name for q in getattr(sender, "task_consumer").queues)) if sender else QUEUE
    _heartbeat("worker", queues=queues)


@task_postrun.connect
def _count_task(**_: object) -> None:
    for beat in _heartbeats:
        beat.task_done()


@worker_shutdown.connect
def _heartbeat_stop(**_: object) -> None:
    while _heartbeats:
        _heartbeats.pop().stop()


@beat_init.connect
def _first_round(sender: object = None, **_: object) -> None:
    """Right after RedBeat's handler took the lock: check credits and poll the inbox at
    once, so a fresh deployment shows its balance within seconds, not one interval."""
    scheduler = getattr(sender, "scheduler", None)
    atexit.register(_heartbeat("beat", holds_lock=lambda: getattr(scheduler, "lock", None) is not None).stop)
    if getattr(scheduler, "lock", None) is None:
        return
    s = app.runtime.settings  # type: ignore[attr-defined]
    for name, every in (("mobyt.check_credits", s.credits_interval), ("mobyt.poll_inbox", s.inbox_interval)):
        app.send_task(name, queue=QUEUE, expires=max(every, 5.0))
