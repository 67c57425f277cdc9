"""The Celery app of the workers and beat: Redis broker and result backend, configured so
that nothing is lost, and the beat schedule. worker.py builds it from the environment.

No setting shows a password: Celery censors the broker and backend URLs and any setting
or option named like a password (``celery inspect conf``, ``report``), so RedBeat's URL is
given without its credentials, which go in its options.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from celery import Celery

from . import broker, contract, kombu_fix
from .config import Settings
from .store.connection import parse_sentinel_url, resilient_options, split_credentials
from .contract import QUEUE
from .store.keys import Keys


class PublishingApp(Celery):
    """A Celery app that subscribes to a task's result when it is awaited, not when the
    task is sent: what every app of ours that enqueues is (workers, web, CLI, producers)."""

    def _get_backend(self) -> Any:
        """Celery's Redis result backend subscribes to a task's result as the task is sent,
        whether or not anyone waits for it: a round trip per send, and with the result
        store's pubsub gone, a RuntimeError after the intent is written. ``AsyncResult.get``
        subscribes when it is called, then reads the stored result: that is enough."""
        backend = super()._get_backend()
        backend.on_task_call = lambda producer, task_id: None
        return backend


class MobytApp(PublishingApp):
    """The workers' Celery app, carrying the Settings it was built from."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("mobyt", include=["mobyt_worker.tasks"])
        self.settings = settings


AppT = TypeVar("AppT", bound=MobytApp)


def create_app(settings: Settings) -> MobytApp:
    """The app of any process that enqueues to the workers with their settings (web, CLI)."""
    return configure(MobytApp(settings))


def configure(app: AppT) -> AppT:
    """Configure ``app`` from the settings it carries, for the workers and beat and for
    every process that enqueues to them."""
    kombu_fix.apply()  # a channel closed while Redis restarts must not stop the worker
    settings = app.settings
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
        # A cold shutdown (SIGQUIT, or SIGTERM under Celery's REMAP_SIGTERM=SIGQUIT)
        # stops taking messages, gives running tasks this grace, then hands every
        # unacked message back to the queue at once instead of after the visibility
        # timeout. Only when tasks are running: an idle worker exits at once.
        worker_soft_shutdown_timeout=settings.shutdown_grace,
        worker_enable_soft_shutdown_on_idle=False,
        broker_pool_limit=max(10, settings.worker_concurrency),
        result_expires=timedelta(days=1),
        # Enforced by prefork/gevent pools; on the threads pool each provider call ends by
        # MOBYT_CALL_DEADLINE (client.py).
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 15),
        worker_concurrency=settings.worker_concurrency,
        worker_pool="threads",
        task_track_started=False,
        enable_utc=True,
        timezone="UTC",
        # RedBeat, with ticks that survive a Redis outage or failover (redbeat.py).
        beat_scheduler="mobyt_worker.redbeat:ResilientRedBeatScheduler",
        **_redbeat_connection(settings),
        redbeat_key_prefix=Keys(settings.key_prefix).beat_prefix,
        redbeat_lock_key=Keys(settings.key_prefix).beat_lock,
        # RedBeat: only the beat holding the lock in Redis ticks; the others wait for it.
        # The lock lives 5 x this interval unless extended (a beat extends it at every
        # tick), so a beat killed without releasing it is replaced within ~25 s.
        beat_max_loop_interval=5,
        beat_schedule={
            "poll-due-orders": _every(contract.POLL_DUE, settings.poll_tick, expires=max(settings.poll_tick * 2, 10)),
            "poll-inbox": _every(contract.POLL_INBOX, settings.inbox_interval),
            "reconcile-inbox": _every(contract.RECONCILE_INBOX, settings.reconcile_interval),
            "check-credits": _every(contract.CHECK_CREDITS, settings.credits_interval),
            "replay-intents": _every(contract.REPLAY_INTENTS, max(1.0, min(30.0, settings.replay_after / 4))),
            "replay-optouts": _every(contract.REPLAY_OPTOUTS, max(1.0, min(30.0, settings.replay_after / 4))),
        },
    )
    # RabbitMQ: its own transport options; rediss://: certificates verified
    app.conf.update(broker.options(app.conf.broker_url), **broker.backend_options(settings.redis_url))
    if settings.broker_key_prefix:
        # Celery's own keys (queue, unacked, results) under a prefix too, for a Redis DB
        # shared with others (the demo does this). Producers must set the same prefix.
        for options in (app.conf.broker_transport_options, app.conf.result_backend_transport_options):
            options["global_keyprefix"] = settings.broker_key_prefix
    if settings.redis_url.startswith("sentinel://"):
        _follow_sentinel(app, settings)
    return app


def _follow_sentinel(app: MobytApp, settings: Settings) -> None:
    """Broker and results ask the sentinels for the current master (RedBeat: _redbeat_connection)."""
    master = settings.sentinel_master
    app.conf.broker_transport_options["master_name"] = master
    app.conf.result_backend_transport_options["master_name"] = master


def _redbeat_connection(settings: Settings) -> dict[str, Any]:
    """RedBeat's URL without credentials (Celery censors the broker's and the backend's, not
    this one), and its options with them (censored by their names); with ``sentinel://``,
    the sentinels to ask for the master."""
    # Ride out a Redis restart or failover instead of exiting: RedBeat retries its own
    # calls, and a tick that still fails is tried again (redbeat.py).
    options: dict[str, Any] = {"retry_period": -1, **resilient_options()}
    if settings.redis_url.startswith("sentinel://"):
        target = parse_sentinel_url(settings.redis_url)
        url, username, password = "redis-sentinel://", target.username, target.password
        options.update(sentinels=target.hosts, service_name=settings.sentinel_master, db=target.db)
    else:
        url, username, password = split_credentials(settings.redis_url)
    options.update({k: v for k, v in (("username", username), ("password", password)) if v})
    return {"redbeat_redis_url": url, "redbeat_redis_options": options,
            "redbeat_redis_use_ssl": dict(broker.VERIFIED) if broker.is_tls_redis(url) else False}


def _every(task: str, seconds: float, *, expires: float | None = None) -> dict[str, object]:
    """A beat entry. A run still queued when the next one is due is dropped (``expires``)."""
    return {"task": task, "schedule": timedelta(seconds=seconds),
            "options": {"queue": QUEUE, "expires": expires if expires is not None else max(seconds, 5.0)}}
