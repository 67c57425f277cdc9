"""Broker settings shared by the workers and the producers: Redis, or RabbitMQ.

With ``amqp://`` the ``mobyt`` queue is a quorum queue (replicated, survives a node
loss) and every publish waits for the broker's confirm, so a producer that returned has
its message on disk. Quorum queues refuse a global QoS, which Celery detects
(``worker_detect_quorum_queues``); countdowns (retries) then use RabbitMQ's native
delayed delivery, which Celery sets up on its own for quorum queues.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from .contract import QUEUE


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://"))


def options(url: str) -> dict[str, Any]:
    """Celery settings for a producer or worker speaking to ``url``."""
    if not is_amqp(url):
        return {}
    return {
        "task_queues": [Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"}, durable=True)],
        "broker_transport_options": {"confirm_publish": True},
        "worker_detect_quorum_queues": True,
        "task_create_missing_queues": False,
    }
