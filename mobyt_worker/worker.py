"""The app that ``celery -A mobyt_worker.worker worker`` and ``beat`` load (see the
Procfile), built from the environment once, at import; and the signal handlers of those
processes: structured logs, metrics, heartbeats, beat's first round. The app's settings
and beat schedule are in celeryapp.py, the tasks in tasks.py.
"""

from __future__ import annotations

import atexit
from typing import Callable

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

from . import contract, logs
from .config import Settings
from .contract import QUEUE, order_id_for_task
from .heartbeat import Heartbeat
from .runtime import MobytTask, Runtime, create_worker_app

app = create_worker_app(Settings.from_env())


# --- structured logs (see logs.py): task and order ids on every line, numbers masked ---------


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: object, **_: object) -> None:
    s = app.settings
    logs.configure(logger, s.log_format, secrets=s.secrets())  # type: ignore[arg-type]


@task_prerun.connect
def _bind_log_context(task_id: str, task: object, kwargs: dict | None = None, **_: object) -> None:
    name = getattr(task, "name", None)
    order_id = (kwargs or {}).get("order_id")
    if not order_id and name == contract.SEND_SMS:
        order_id = order_id_for_task(task_id)  # the id send_sms derives from the task id
    logs.bind(task=name, task_id=task_id, order_id=order_id if isinstance(order_id, str) else None)


@task_postrun.connect
def _clear_log_context(**_: object) -> None:
    logs.clear()


# --- metrics (see metrics.py): task outcomes counted in memory, flushed to Redis ------------


def _runtime_of(sender: object) -> Runtime:
    """The runtime of the task that sent the signal (the app's per-process one for all)."""
    return sender.runtime if isinstance(sender, MobytTask) else app.runtime


@task_success.connect
def _count_success(sender: object = None, result: object = None, **_: object) -> None:
    _runtime_of(sender).metrics.task_succeeded(getattr(sender, "name", ""), result)


@task_failure.connect
def _count_failure(sender: object = None, exception: BaseException | None = None, **_: object) -> None:
    _runtime_of(sender).metrics.task_failed(getattr(sender, "name", ""), exception)


@task_retry.connect
def _count_retry(sender: object = None, reason: object = None, **_: object) -> None:
    _runtime_of(sender).metrics.task_retried(getattr(sender, "name", ""), reason)


# --- fleet health (see heartbeat.py) and beat's first round --------------------------------

_heartbeats: list[Heartbeat] = []


def _heartbeat(kind: str, queues: str = "", holds_lock: Callable[[], bool] | None = None) -> Heartbeat:
    rt = app.runtime
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
def _beat_heartbeat(sender: object = None, **_: object) -> None:
    """A beat's heartbeat says whether it holds the lock (a fresh deployment's first
    round of jobs is the scheduler's: redbeat.py)."""
    scheduler = getattr(sender, "scheduler", None)
    atexit.register(_heartbeat("beat", holds_lock=lambda: getattr(scheduler, "lock", None) is not None).stop)
