"""One HTTP exchange with the provider through ``requests``, and the one place where its failures get a type.

The client above sees :class:`HttpResponse` (whatever its status: the client judges
that) or an error from :mod:`mobyt_worker.errors`, never a ``requests`` exception.

Whether a failed request may have reached the provider decides what the caller may do
next, so every error says so. ``ProviderConnectError`` only on evidence that nothing
left: the failure was raised inside the connection's ``connect()`` (DNS, TCP, the
proxy's CONNECT, the TLS handshake), which urllib3 calls before writing a byte of the
request. Anything later is ambiguous, whatever its type: an ``SSLError`` or a reset
while reading the answer happens after the provider may have received the request.

Each exchange is bounded (:class:`Limits`). ``requests``' timeouts bound each socket
operation, not the exchange: a provider sending a byte a second would hold the thread
for as long as it liked. Here every read of the answer, its status line and headers
included, waits at most for the time left before the deadline, and the body is read up
to its cap; past either the connection is closed and the answer dropped unparsed.
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Mapping, Protocol
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NameResolutionError, NewConnectionError,
                                ReadTimeoutError)

from .. import errors

HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "mobyt-worker",
           "Accept-Encoding": "identity"}  # identity: the size cap counts the bytes that arrive
#: Bytes of the body read at a time: the most read past a size cap.
CHUNK = 64 * 1024


@dataclass(frozen=True)
class HttpResponse:
    status: int
    text: str
    retry_after: float | None = None  # seconds, from a ``Retry-After`` header in seconds


@dataclass(frozen=True)
class Limits:
    """How long and how large one exchange may be."""

    connect_timeout: float
    read_timeout: float  # the longest silence between two reads
    deadline: float  # time.monotonic() by which the whole answer must have arrived
    max_bytes: int  # the largest body accepted
    max_bytes_setting: str  # the variable that sets it, for the error


class Transport(Protocol):
    def post(self, url: str, data: Mapping[str, str], limits: Limits) -> HttpResponse: ...


class NotSent(Exception):
    """A connection could not be opened: the request had not started. ``__cause__`` says why."""


class DeadlinePassed(Exception):
    """The answer was still arriving at the exchange's deadline. Like :class:`NotSent`, no
    layer between the socket and the transport catches this type: it reaches the transport
    as it is, and urllib3 closes the connection on the way."""


#: The limits of the exchange this thread is making (set by HttpTransport.post).
_LIMITS: ContextVar[Limits | None] = ContextVar("mobyt_limits", default=None)


class _BoundedReads(io.RawIOBase):
    """A response's socket, each read waiting at most for the time left before the
    deadline (and never longer than the read timeout)."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        super().__init__()
        self._sock, self._limits = sock, limits
        self._raw = sock.makefile("rb", buffering=0)  # holds a reference, as http.client's own does

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._limits.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed
        self._sock.settimeout(min(self._limits.read_timeout, left))
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:
            if time.monotonic() >= self._limits.deadline:
                raise DeadlinePassed from None
            raise

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BoundedSocket:
    """What http.client's response reads from: the socket, its reads bounded."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self._sock, self._limits = sock, limits

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_BoundedReads(self._sock, self._limits))


class _BoundedResponse(http.client.HTTPResponse):
    """http.client's response, reading through :class:`_BoundedReads` during an exchange
    of :class:`HttpTransport` (the proxy's answer to CONNECT too)."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        limits = _LIMITS.get()
        bounded = sock if limits is None else _BoundedSocket(sock, limits)
        super().__init__(bounded, *args, **kwargs)  # type: ignore[arg-type]


class _ConnectGuard:
    """Mixed into urllib3's connection classes: ``connect()`` covers TCP, the proxy's
    CONNECT and the TLS handshake, all before the first byte of the request."""

    response_class: type[http.client.HTTPResponse] = _BoundedResponse

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except Exception as exc:
            raise NotSent from exc


class _GuardedHTTPConnection(_ConnectGuard, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_ConnectGuard, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """requests' adapter, its connections (direct or through a proxy) raising :class:`NotSent`
    from ``connect()``; nothing above urllib3 catches that type, so it reaches the transport."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


@dataclass(frozen=True)
class Route:
    """How this process sends to one URL: the request without its body, and the proxy and
    CA settings the environment gives (``requests`` resolves them on every call unless
    handed them; the environment does not change under a running process)."""

    where: str  # "POST host/path": errors and logs name a request this way, never more
    template: requests.PreparedRequest
    settings: dict[str, Any]


def route_for(session: requests.Session, url: str) -> Route:
    parts = urlsplit(url)
    where = f"POST {parts.hostname}{parts.path}"
    _check_url(url, where)
    template = requests.PreparedRequest()
    try:
        template.prepare(method="POST", url=url, headers=HEADERS)
    except (requests.RequestException, ValueError):
        raise errors.ConfigError("MOBYT_BASE_URL", f"{where}: not a usable URL") from None
    settings = dict(session.merge_environment_settings(url, {}, True, None, None))  # the body streamed
    if settings["verify"] is True and os.environ.get("SSL_CERT_FILE"):
        settings["verify"] = os.environ["SSL_CERT_FILE"]  # requests reads only REQUESTS_CA_BUNDLE
    return Route(where, template, settings)


def _check_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or not url.isprintable() \
            or " " in url:
        raise errors.ConfigError("MOBYT_BASE_URL", f"{where}: not a usable URL")


def new_session(pool_size: int) -> requests.Session:
    """One pool of ``pool_size`` keep-alive connections per host; nothing retried here
    (whether a request may be repeated is the client's decision)."""
    session = requests.Session()
    adapter = GuardedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HttpTransport:
    """POSTs form bodies through one ``requests.Session`` per process, shared by its threads.

    A session made before a fork stays the parent's: a prefork child builds its own.
    Redirects are not followed (a 3xx reaches the client, which refuses it).
    """

    def __init__(self, pool_size: int = 64) -> None:
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._pid = 0
        self._session: requests.Session | None = None
        self._routes: dict[str, Route] = {}

    def post(self, url: str, data: Mapping[str, str], limits: Limits) -> HttpResponse:
        session, route = self._route(url)
        request = route.template.copy()
        request.body = urlencode(data).encode()
        request.headers["Content-Length"] = str(len(request.body))
        left = limits.deadline - time.monotonic()
        if left <= 0:
            raise errors.ProviderConnectError(f"{route.where}: the deadline passed before sending "
                                              "(MOBYT_CALL_DEADLINE)")
        timeout = (min(limits.connect_timeout, left), min(limits.read_timeout, left))
        bounded = _LIMITS.set(limits)
        answer = None
        try:
            answer = session.send(request, timeout=timeout, allow_redirects=False, **route.settings)
            body = bytearray()
            for chunk in answer.raw.stream(CHUNK, decode_content=False):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise errors.ProviderAnswerTooLarge(
                        f"{route.where}: answer larger than {limits.max_bytes} bytes ({limits.max_bytes_setting})")
        except NotSent as exc:
            raise errors.ProviderConnectError(f"{route.where}: {_why_unsent(exc.__cause__)}") from None
        except DeadlinePassed:
            raise errors.ProviderTooSlow(f"{route.where}: answer not complete by the deadline "
                                         "(MOBYT_CALL_DEADLINE)") from None
        except (requests.Timeout, ReadTimeoutError):
            raise errors.ProviderTimeout(f"{route.where}: no answer in time") from None
        except (requests.RequestException, HTTPError, OSError):  # whatever urllib3 left unwrapped: ambiguous too
            raise errors.ProviderDisconnected(f"{route.where}: connection dropped after sending") from None
        finally:
            _LIMITS.reset(bounded)
            if answer is not None:
                answer.close()  # an answer read to its end has gone back to the pool; a cut one is closed
        return HttpResponse(answer.status_code, body.decode("utf-8", errors="replace"),  # the seed says UTF-8
                            _seconds(answer.headers.get("Retry-After")))

    def _route(self, url: str) -> tuple[requests.Session, Route]:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():  # first call, or first in a forked child
                    self._session, self._routes = new_session(self._pool_size), {}
                    self._pid = os.getpid()
        session = self._session
        assert session is not None
        route = self._routes.get(url)
        if route is None:
            route = self._routes.setdefault(url, route_for(session, url))
        return session, route

    def close(self) -> None:
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
            self._pid, self._routes = 0, {}


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by a rate limiter)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _why_unsent(cause: BaseException | None) -> str:
    if isinstance(cause, NameResolutionError):
        return "host name does not resolve"
    if isinstance(cause, ConnectTimeoutError) and not isinstance(cause, NewConnectionError):
        return "connect timed out"
    if getattr(cause, "verify_code", None) is not None:  # ssl.SSLCertVerificationError
        return "TLS certificate refused"
    if isinstance(cause, OSError) and str(cause).startswith("Tunnel connection failed"):
        return "the proxy refused the tunnel"
    return "cannot connect"
