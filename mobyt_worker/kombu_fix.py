"""Let kombu's Redis channel put its unacked messages back after its connection closed.

When Redis goes away under load, Celery closes the broker connection, which sets the
transport's ``client`` to None, then closes the channel; the channel restores the
messages it still holds (``restore_unacked_once``), needs a new pool, and reads the
broker's address from that ``client``: ``'NoneType' object has no attribute 'hostname'``
(kombu#582), or ``... 'alt'`` when the broker is found through Sentinel. Either is an
unrecoverable error that stops the worker. The kombu ``Connection`` the channel was
opened with still knows the address, so the patch keeps it and reads it from there.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kombu.transport import redis as kombu_redis

_OPENED_WITH = "_mobyt_opened_with"
_PATCHED = "_mobyt_patched"


class _AsOpened:
    """The channel as its methods saw it while open: ``connection.client`` is the kombu
    Connection it was opened with; every other attribute, read or written, is the channel's."""

    def __init__(self, channel: Any) -> None:
        transport = SimpleNamespace(client=channel.__dict__[_OPENED_WITH], default_port=channel.connection.default_port)
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "connection", transport)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._channel, name, value)


def _as_opened(channel: Any) -> Any:
    if channel.connection.client is None and channel.__dict__.get(_OPENED_WITH) is not None:
        return _AsOpened(channel)
    return channel


def apply() -> None:
    """Idempotent: patch ``kombu.transport.redis.Channel`` and its Sentinel kind once per process."""
    channel, sentinel = kombu_redis.Channel, kombu_redis.SentinelChannel
    if getattr(channel, _PATCHED, False):
        return
    original_init, original_connparams = channel.__init__, channel._connparams
    original_sentinel_pool = sentinel._sentinel_managed_pool

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.__dict__[_OPENED_WITH] = self.connection.client

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        return original_connparams(_as_opened(self), asynchronous=asynchronous)

    def _sentinel_managed_pool(self: Any, asynchronous: bool = False) -> Any:
        return original_sentinel_pool(_as_opened(self), asynchronous=asynchronous)

    channel.__init__ = __init__  # type: ignore[method-assign]
    channel._connparams = _connparams  # type: ignore[method-assign]
    sentinel._sentinel_managed_pool = _sentinel_managed_pool  # type: ignore[method-assign]
    setattr(channel, _PATCHED, True)
