"""Enqueue sends from any Python service, by task name, without the worker's code.

Celery, the broker URL and the tracking Redis are needed; nothing here reads the worker's
settings or credentials. The ``order_id`` is fixed here, before the task is enqueued, so the
caller knows it at once and every retry or redelivery of the task refers to the same order.
The request is validated, then written to Redis as the order's intent (``state=queued``,
see intents.py) before it is published: a message the broker loses is published again by
the workers' beat job, so an accepted send is never lost::

    from mobyt_worker.producer import connect, send_sms

    producer = connect("redis://redis.internal:6379/0")   # or amqp://..., redis_url="redis://..."
    sent = send_sms(producer, ["+33612345678"], "Your code is 1234", sender="ACME")
    sent.order_id        # ask `mobyt order <id>` or read mobyt:order:<id> in Redis
    sent.result.get()    # optional: {"order_id", "recipients", "credits", "status"}

The same call with Celery alone (no intent: a message lost by the broker is lost)::

    producer.send_task("mobyt.send_sms", queue="mobyt",
                       kwargs={"recipients": ["+33612345678"], "message": "hi", "sender": "ACME"})
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Any, Sequence
from zoneinfo import ZoneInfo

import redis
from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from . import broker, sms
from .celeryapp import PublishingApp
from .store.connection import connect as connect_redis
from .contract import QUEUE, SEND_SMS, SendSmsArgs
from .store.intents import Intents

log = logging.getLogger(__name__)

#: Defaults of the workers' MOBYT_ORDER_TTL and MOBYT_REPLAY_AFTER.
ORDER_TTL = 30 * 24 * 3600
REPLAY_AFTER = 120.0


@dataclass(frozen=True)
class Enqueued:
    order_id: str
    result: AsyncResult


class Producer:
    """What enqueues sends: a Celery app to publish them, and the store their intents are
    written to first (the workers' Redis)."""

    def __init__(self, app: Celery, intents: Intents) -> None:
        self.app = app
        self.intents = intents

    def send_task(self, name: str, **options: Any) -> AsyncResult:
        """Any task by name (an app from :func:`connect` sends every name to the workers' queue)."""
        return self.app.send_task(name, **options)

    def enqueue(self, request: sms.SendRequest) -> Enqueued:
        """A send validated with the workers' own settings (the HTTP API, the CLI): its
        task kwargs are exactly the request."""
        order_id = request.order_id or new_order_id()
        return self.publish(order_id, {**request.task_kwargs(), "order_id": order_id})

    def publish(self, order_id: str, kwargs: SendSmsArgs) -> Enqueued:
        """Write the intent, then publish ``mobyt.send_sms`` as task ``send-ORDER_ID``."""
        task_id = f"send-{order_id}"
        self.intents.record(order_id, task_id, kwargs)
        try:
            result = self.app.send_task(SEND_SMS, kwargs=kwargs, queue=QUEUE, task_id=task_id)
        except (OperationalError, redis.RedisError, OSError) as exc:
            # The intent is written: the workers' replay job publishes this very task (same id)
            # within MOBYT_REPLAY_AFTER. Raising would invite a retry under a new order id,
            # which would be a second send.
            log.warning("order %s: recorded, but publishing failed (%s); the replay job will publish it",
                        order_id, type(exc).__name__)
            result = self.app.AsyncResult(task_id)
        return Enqueued(order_id=order_id, result=result)


def connect(broker_url: str, *, backend_url: str | None = None, redis_url: str | None = None,
            key_prefix: str = "mobyt", order_ttl: int = ORDER_TTL, replay_after: float = REPLAY_AFTER,
            broker_key_prefix: str | None = None) -> Producer:
    """A producer speaking JSON to the workers' broker. ``redis_url`` is the workers'
    REDIS_URL (default: the broker's URL when it is Redis), where intents go.

    Every task name goes to the workers' queue, so ``producer.send_task("mobyt.check_credits")``
    needs no ``queue=``. ``broker_key_prefix`` (default: ``MOBYT_BROKER_KEY_PREFIX``) must
    match the workers', or messages land under keys no worker reads.
    """
    redis_url = redis_url or backend_url or (None if broker.is_amqp(broker_url) else broker_url)
    if not redis_url:
        raise ValueError("redis_url: the workers' REDIS_URL is required with an amqp:// broker")
    intents = Intents(connect_redis(redis_url), key_prefix, ttl=order_ttl, replay_after=replay_after)
    backend_url = backend_url or redis_url
    app = PublishingApp("mobyt-producer", broker=broker_url, backend=backend_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_default_queue=QUEUE, **broker.options(broker_url), **broker.backend_options(backend_url))
    prefix = os.environ.get("MOBYT_BROKER_KEY_PREFIX", "") if broker_key_prefix is None else broker_key_prefix
    if prefix:
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": prefix}
        app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    return Producer(app, intents)


@cache
def _intents_at(url: str) -> Intents:
    """The intents of an app built without connect(): its Redis broker holds the store."""
    if broker.is_amqp(url) or not url:
        raise ValueError("redis_url: build the app with producer.connect(..., redis_url=REDIS_URL)")
    return Intents(connect_redis(url), "mobyt", ttl=ORDER_TTL, replay_after=REPLAY_AFTER)


def new_order_id() -> str:
    """32 hex characters: within the provider's 32 alphanumerics, unique per send."""
    return uuid.uuid4().hex


def send_sms(
    app: Producer | Celery,
    recipients: Sequence[str] | str,
    message: str,
    *,
    sender: str | None = None,
    message_type: str | None = None,
    scheduled_at: datetime | str | None = None,
    order_id: str | None = None,
    return_credits: bool = False,
    country: str = "FR",
) -> Enqueued:
    """Validate, write the intent, enqueue ``mobyt.send_sms``; the workers send it exactly
    once. ``country`` reads national numbers (set it to the workers' MOBYT_COUNTRY). The
    task gets the arguments as given: the workers fill in their own defaults."""
    order_id = order_id or new_order_id()
    given = recipients if isinstance(recipients, str) else list(recipients)  # the task splits commas
    if isinstance(scheduled_at, datetime):
        scheduled_at = scheduled_at.isoformat()
    # Bad input fails here, naming the field, before anything is written or queued. The
    # workers validate again with their own defaults (sender, message type, time zone).
    if message_type is not None:
        sms.validate_message_type(message_type)
    sms.build_send_request(  # 'L' needs no sender: the workers may fill in their default
        recipients=given, message=message,
        message_type="L" if sender is None else message_type or "L", sender=sender,
        scheduled_at=scheduled_at, order_id=order_id, return_credits=return_credits, country=country,
        tz=ZoneInfo("Europe/Paris"), now=datetime.now(timezone.utc),
    )
    producer = app if isinstance(app, Producer) else Producer(app, _intents_at(str(app.conf.broker_url or "")))
    return producer.publish(order_id, SendSmsArgs(
        recipients=given, message=message, sender=sender, message_type=message_type, scheduled_at=scheduled_at,
        order_id=order_id, return_credits=return_credits,
    ))
