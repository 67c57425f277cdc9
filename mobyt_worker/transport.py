"""One HTTP exchange with the provider, and the one place where its failures get a type.

The client above sees :class:`HttpResponse` or an error from :mod:`mobyt_worker.errors`,
never a library exception. :class:`Urllib3Transport` talks to urllib3 directly, the
engine under ``requests``: requests' session, adapter and response layers cost more
CPU per call than the exchange itself (bench/pipeline_throughput.py), and the
provider's API needs none of them (no cookies, no redirects, no auth headers).

Whether a failed request may have reached the provider decides what the caller may
do next, so every error says so: ``ProviderConnectError`` only where the request
certainly never left; anything later is ambiguous.
"""

from __future__ import annotations

import os
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Protocol
from urllib.parse import unquote, urlencode, urlsplit

import certifi
import urllib3
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    DecodeError,
    EmptyPoolError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from . import errors

HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "mobyt-worker"}


@dataclass(frozen=True)
class HttpResponse:
    status: int
    text: str


class Transport(Protocol):
    def post(self, url: str, data: Mapping[str, str], timeout: tuple[float, float]) -> HttpResponse: ...


def check_status(status: int, where: str) -> None:
    """Map a non-2xx HTTP status to a typed error (5xx transient, 3xx/4xx permanent)."""
    if 200 <= status < 300:
        return
    if status >= 500:
        raise errors.ProviderServerError(f"{where}: HTTP {status}", code=f"HTTP{status}")
    why = "redirected (set MOBYT_BASE_URL to the final URL)" if 300 <= status < 400 else "refused"
    raise errors.ProviderRejected(f"{where}: HTTP {status} {why}", code=f"HTTP{status}")


class Urllib3Transport:
    """POSTs form bodies over keep-alive connections shared by all threads of a process.

    Honours ``HTTP(S)_PROXY`` / ``NO_PROXY`` and verifies TLS against ``SSL_CERT_FILE``
    when set, certifi's bundle otherwise. urllib3 never retries or follows a redirect
    (``retries=False``): whether a request may be repeated is the client's decision.
    The pools are rebuilt after a fork (prefork children must not share sockets).
    """

    def __init__(self, pool_size: int = 64) -> None:
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._managers: dict[str, urllib3.PoolManager] = {}
        self._routes: dict[str, tuple[Any, str]] = {}
        self._pid = os.getpid()

    def post(self, url: str, data: Mapping[str, str], timeout: tuple[float, float]) -> HttpResponse:
        where = _where(url)
        try:
            opener, target = self._route(url)
            answer = opener.urlopen(
                "POST", target, body=urlencode(data), headers=HEADERS, retries=False, redirect=False,
                timeout=_timeout(*timeout), preload_content=True,
            )
        except HTTPError as exc:
            raise _map_exception(exc, where) from None
        except ValueError:  # a URL urllib3 cannot even parse
            raise errors.ConfigError("MOBYT_BASE_URL", f"{where}: not a usable URL") from None
        check_status(answer.status, where)
        return HttpResponse(answer.status, answer.data.decode("utf-8", errors="replace"))  # the seed says UTF-8

    def _route(self, url: str) -> tuple[Any, str]:
        """What to call ``urlopen`` on, and with what: the host's connection pool and the
        path, or the proxy manager and the whole URL. Worked out once per URL (urllib3's
        PoolManager would parse and look it up again on every call)."""
        route = self._routes.get(url)
        if route is None or self._pid != os.getpid():
            manager = self._manager(url)
            if isinstance(manager, urllib3.ProxyManager):
                route = (manager, url)
            else:
                parts = urlsplit(url)
                route = (manager.connection_from_url(url), parts.path + (f"?{parts.query}" if parts.query else ""))
            self._routes[url] = route
        return route

    def _manager(self, url: str) -> urllib3.PoolManager:
        """The pool manager for ``url``'s scheme and host: direct, or through its proxy."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            if self._pid != os.getpid():
                self._managers, self._routes, self._pid = {}, {}, os.getpid()
            manager = self._managers.get(key)
            if manager is None:
                manager = self._managers[key] = _new_manager(parts.scheme, parts.hostname or "", self._pool_size)
            return manager

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for manager in self._managers.values():
                    manager.clear()
            self._managers, self._routes = {}, {}


@lru_cache(maxsize=16)
def _timeout(connect: float, read: float) -> urllib3.Timeout:
    return urllib3.Timeout(connect=connect, read=read)


def _new_manager(scheme: str, host: str, pool_size: int) -> urllib3.PoolManager:
    ca_certs = os.environ.get("SSL_CERT_FILE") or certifi.where()
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        user = urlsplit(proxy)
        credentials = f"{unquote(user.username or '')}:{unquote(user.password or '')}"
        auth = urllib3.make_headers(proxy_basic_auth=credentials) if user.username else None
        return urllib3.ProxyManager(proxy, maxsize=pool_size, retries=False, ca_certs=ca_certs, proxy_headers=auth)
    return urllib3.PoolManager(maxsize=pool_size, retries=False, ca_certs=ca_certs)


def _where(url: str) -> str:
    """How a request is named in errors and logs: never the query, never the body."""
    parts = urlsplit(url)
    return f"POST {parts.hostname}{parts.path}"


def _map_exception(exc: HTTPError, where: str) -> errors.MobytError:
    """Our own message, built from the host and path only (never ``str(exc)``)."""
    if isinstance(exc, ProxyError):  # urllib3 raises it only before the proxy had our request
        return errors.ProviderConnectError(f"{where}: cannot connect through the proxy")
    if isinstance(exc, (NewConnectionError, EmptyPoolError, ClosedPoolError)):  # nothing was sent
        return errors.ProviderConnectError(f"{where}: cannot connect")
    if isinstance(exc, ConnectTimeoutError):
        return errors.ProviderConnectError(f"{where}: connect timed out")
    if isinstance(exc, ReadTimeoutError):
        return errors.ProviderTimeout(f"{where}: no answer in time")
    if isinstance(exc, LocationValueError):
        return errors.ConfigError("MOBYT_BASE_URL", f"{where}: not a usable URL")
    if isinstance(exc, SSLError) and any(isinstance(c, ssl.SSLCertVerificationError)
                                         for c in (exc.__context__, exc.__cause__, *exc.args)):
        return errors.ProviderConnectError(f"{where}: TLS certificate refused")  # refused in the handshake
    if isinstance(exc, DecodeError):
        return errors.ProviderBadResponse(f"{where}: undecodable answer")
    return errors.ProviderDisconnected(f"{where}: connection dropped after sending")
