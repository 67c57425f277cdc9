"""Let kombu's Redis channel put its unacked messages back after its connection closed.

When Redis goes away under load, Celery closes the broker connection, which sets the
transport's ``client`` to None, then closes the channel; the channel restores the
messages it still holds (``restore_unacked_once``), needs a new pool, and reads the host
from that ``client``: ``AttributeError: 'NoneType' object has no attribute 'hostname'``
(kombu#582), an unrecoverable error that stops the worker. The channel's connection
parameters are fixed when it opens, so the patch keeps them and uses them then.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

_SAVED = "_mobyt_connparams"


def apply() -> None:
    """Idempotent: patch ``kombu.transport.redis.Channel`` once per process."""
    channel = kombu_redis.Channel
    if getattr(channel, _SAVED, None) is not None:
        return
    original_init, original_connparams = channel.__init__, channel._connparams

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.__dict__[_SAVED] = {flag: original_connparams(self, asynchronous=flag) for flag in (False, True)}

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        saved = self.__dict__.get(_SAVED)
        if self.connection.client is None and saved:  # closed connection: the channel's own parameters
            return dict(saved[asynchronous])
        return original_connparams(self, asynchronous=asynchronous)

    channel.__init__ = __init__  # type: ignore[method-assign]
    channel._connparams = _connparams  # type: ignore[method-assign]
    setattr(channel, _SAVED, {})
