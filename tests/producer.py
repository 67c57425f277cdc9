"""Enqueue our tasks the way another service does: Celery and the broker URL, by name."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.result import AsyncResult


def bare_client(redis_url: str) -> Celery:
    client = Celery("producer", broker=redis_url, backend=redis_url)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return client


def call(client: Celery, name: str, **kwargs: Any) -> AsyncResult:
    return client.send_task(name, kwargs=kwargs, queue="mobyt")


def run(client: Celery, name: str, timeout: float = 20.0, **kwargs: Any) -> Any:
    """Enqueue ``name`` and wait for its result (raises the task's error)."""
    return call(client, name, **kwargs).get(timeout=timeout)
