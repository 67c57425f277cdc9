"""Enqueue sends from any Python service, by task name, without the worker's code.

Only Celery and the broker URL are needed; nothing here reads the worker's settings or
credentials. The ``order_id`` is fixed here, before the task is enqueued, so the caller
knows it at once and every retry or redelivery of the task refers to the same order::

    from mobyt_worker.producer import connect, send_sms

    app = connect("redis://redis.internal:6379/0")
    sent = send_sms(app, ["+33612345678"], "Your code is 1234", sender="ACME")
    sent.order_id        # ask `mobyt order <id>` or read mobyt:order:<id> in Redis
    sent.result.get()    # optional: {"order_id", "recipients", "credits", "status"}

The same call with Celery alone::

    app.send_task("mobyt.send_sms", queue="mobyt",
                  kwargs={"recipients": ["+33612345678"], "message": "hi", "sender": "ACME"})
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from celery import Celery
from celery.result import AsyncResult

QUEUE = "mobyt"
SEND_SMS = "mobyt.send_sms"


@dataclass(frozen=True)
class Enqueued:
    order_id: str
    result: AsyncResult


def connect(broker_url: str, *, backend_url: str | None = None, broker_key_prefix: str | None = None) -> Celery:
    """A producer-only Celery app speaking JSON to the workers' broker.

    Every task name goes to the workers' queue, so ``app.send_task("mobyt.check_credits")``
    needs no ``queue=``. ``broker_key_prefix`` (default: ``MOBYT_BROKER_KEY_PREFIX``) must
    match the workers', or messages land under keys no worker reads.
    """
    app = Celery("mobyt-producer", broker=broker_url, backend=backend_url or broker_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_default_queue=QUEUE)
    prefix = os.environ.get("MOBYT_BROKER_KEY_PREFIX", "") if broker_key_prefix is None else broker_key_prefix
    if prefix:
        app.conf.broker_transport_options = {"global_keyprefix": prefix}
        app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    return app


def new_order_id() -> str:
    """32 hex characters: within the provider's 32 alphanumerics, unique per send."""
    return uuid.uuid4().hex


def send_sms(
    app: Celery,
    recipients: Sequence[str] | str,
    message: str,
    *,
    sender: str | None = None,
    message_type: str | None = None,
    scheduled_at: datetime | str | None = None,
    order_id: str | None = None,
    return_credits: bool = False,
) -> Enqueued:
    """Enqueue ``mobyt.send_sms``; the workers validate and send it exactly once."""
    order_id = order_id or new_order_id()
    if isinstance(scheduled_at, datetime):
        scheduled_at = scheduled_at.isoformat()
    kwargs = {
        "recipients": recipients if isinstance(recipients, str) else list(recipients),  # the task splits commas
        "message": message,
        "sender": sender,
        "message_type": message_type,
        "scheduled_at": scheduled_at,
        "order_id": order_id,
        "return_credits": return_credits,
    }
    result = app.send_task(SEND_SMS, kwargs=kwargs, queue=QUEUE, task_id=f"send-{order_id}")
    return Enqueued(order_id=order_id, result=result)
