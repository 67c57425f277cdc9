"""Broker and result-backend settings shared by the workers and the producers: Redis,
or RabbitMQ.

A ``rediss://`` broker or backend verifies the server's certificate unless its URL's
``ssl_cert_reqs`` says otherwise: left alone, kombu would connect to a plain
``rediss://host/0`` without verifying, and Celery's backend would refuse it.

With ``amqp://`` the ``mobyt`` queue is a quorum queue (replicated, survives a node
loss) and every publish waits for the broker's confirm, so a producer that returned has
its message on disk. Quorum queues refuse a global QoS, which Celery detects
(``worker_detect_quorum_queues``); countdowns (retries) then use RabbitMQ's native
delayed delivery, which Celery sets up on its own for quorum queues.
"""

from __future__ import annotations

import ssl
from typing import Any

from kombu import Queue

from .contract import QUEUE


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://"))


#: TLS options of a ``rediss://`` connection; the URL's own ``ssl_*`` parameters win.
VERIFIED = {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def is_tls_redis(url: str) -> bool:
    return url.startswith("rediss://")


def options(url: str) -> dict[str, Any]:
    """Celery settings for a producer or worker speaking to the broker at ``url``."""
    if is_tls_redis(url):
        return {"broker_use_ssl": dict(VERIFIED)}
    if not is_amqp(url):
        return {}
    return {
        "task_queues": [Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"}, durable=True)],
        "broker_transport_options": {"confirm_publish": True},
        "worker_detect_quorum_queues": True,
        "task_create_missing_queues": False,
    }


def backend_options(url: str) -> dict[str, Any]:
    """Celery settings for a producer or worker whose result backend is ``url``."""
    return {"redis_backend_use_ssl": dict(VERIFIED)} if is_tls_redis(url) else {}
