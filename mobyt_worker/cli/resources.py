"""What the commands need: settings, the provider client, Redis and the workers, each
reached with short timeouts so an unreachable one is a quick transient error (exit 4)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis

from .. import errors
from ..provider.client import MobytClient
from ..config import Settings
from ..store.connection import connect
from ..runtime import Runtime
from ..sms import validate_order_id

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult


def load_settings() -> Settings:
    return Settings.from_env()


def provider_client(settings: Settings | None = None) -> MobytClient:
    return MobytClient(settings or load_settings())


def parse_when(raw: str, field: str, settings: Settings) -> datetime:
    """ISO-8601 date or date-time; without an offset it is the provider's local time."""
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise errors.InvalidInput(field, f"{raw[:40]!r} is not an ISO-8601 date-time") from None
    return value if value.utcoffset() is not None else value.replace(tzinfo=settings.timezone)


def checked_order_id(raw: str, field: str = "order_id") -> str:
    try:
        return validate_order_id(raw)
    except errors.InvalidInput as exc:
        raise errors.InvalidInput(field, exc.message) from None


def order_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("order_id", metavar="ORDER_ID")


def open_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or load_settings()
    _check_redis(settings)
    return Runtime(settings)


def _check_redis(settings: Settings) -> None:
    """One ping with short timeouts and no retry, so that a Redis that does not answer
    is a transient error (exit 4) within seconds, not after the workers' long retries."""
    client = connect(settings.redis_url, sentinel_master=settings.sentinel_master, quick=True)
    if settings.redis_url.startswith("sentinel://"):
        where = f"sentinels of {settings.sentinel_master}"
    else:
        kwargs = client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    try:
        client.ping()
    except redis.RedisError as exc:
        raise redis.ConnectionError(f"Redis at {where} does not answer ({type(exc).__name__})") from None
    finally:
        client.close()


def workers_app(settings: Settings) -> Celery:
    """The Celery app the workers read, once Redis is known to answer."""
    _check_redis(settings)
    from ..celeryapp import create_app  # noqa: PLC0415 - only the commands that enqueue need Celery

    return create_app(settings)


def await_answer(pending: AsyncResult, timeout: float, unanswered: str) -> Any:
    """The task's result (its error raised as ours); ``unanswered`` says what to do if none came."""
    from celery.exceptions import TimeoutError as NoAnswer  # noqa: PLC0415

    try:
        return pending.get(timeout=timeout)
    except NoAnswer:
        raise TimeoutError(unanswered) from None
    finally:
        pending.backend.remove_pending_result(pending)  # not left to a __del__ at exit
