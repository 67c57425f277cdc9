"""One HTTP exchange with the provider, and the one place where its failures get a type.

The client above sees :class:`HttpResponse` (whatever its status: the client judges
that) or an error from :mod:`mobyt_worker.errors`, never a library exception. Every provider call is the same small thing: one form POST
to one host, answered with one short body. :class:`HttpTransport` does exactly that
with the standard library's ``http.client`` over a small pool of keep-alive
connections: ``requests``, and urllib3 under it, spent more CPU per call than the
exchange itself, and sends are CPU-bound inside a worker process
(bench/pipeline_throughput.py).

Whether a failed request may have reached the provider decides what the caller may do
next, so every error says so: ``ProviderConnectError`` only where the request certainly
never left (the connection, the proxy tunnel or the TLS handshake failed); anything
later is ambiguous.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping, Protocol
from urllib.parse import unquote, urlencode, urlsplit

import certifi

from . import errors

HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "mobyt-worker",
           "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class HttpResponse:
    status: int
    text: str
    retry_after: float | None = None  # seconds, from a ``Retry-After`` header in seconds


class Transport(Protocol):
    def post(self, url: str, data: Mapping[str, str], timeout: tuple[float, float]) -> HttpResponse: ...


@dataclass(frozen=True)
class Route:
    """How to reach one URL: the socket to open, the request's head, how to name it."""

    where: str  # "POST host/path": errors and logs name a request this way, never more
    https: bool
    address: tuple[str, int]  # the provider, or the proxy in front of it
    head: str  # request line and headers, up to the Content-Length value
    tunnel: tuple[str, int] | None = None  # the provider behind an HTTPS proxy (CONNECT)
    tunnel_headers: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[bool, tuple[str, int], tuple[str, int] | None]:
        """Routes with the same key can share connections."""
        return self.https, self.address, self.tunnel


def route_for(url: str) -> Route:
    """Direct, or through the proxy ``HTTP(S)_PROXY`` names unless ``NO_PROXY`` excludes the host."""
    parts = urlsplit(url)
    where = f"POST {parts.hostname}{parts.path}"
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or not url.isprintable() \
            or " " in url:
        raise errors.ConfigError("MOBYT_BASE_URL", f"{where}: not a usable URL")
    https = parts.scheme == "https"
    host, port = parts.hostname, port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": parts.netloc.rpartition("@")[2], **HEADERS}
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return Route(where, https, (host, port), _head(path, headers))
    via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    auth = {}
    if via.username:
        pair = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
        auth = {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()}
    address = (via.hostname or "", via.port or 80)
    if https:  # the proxy relays bytes only: TLS runs end to end with the provider
        return Route(where, True, address, _head(path, headers), tunnel=(host, port), tunnel_headers=auth)
    return Route(where, False, address, _head(url, headers | auth))  # the proxy forwards the whole URL


def _head(target: str, headers: Mapping[str, str]) -> str:
    lines = [f"POST {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\nContent-Length: "


class HttpTransport:
    """POSTs form bodies over keep-alive connections shared by all threads of a process.

    The request, always one small form, is written in one piece; ``http.client`` reads
    the answer. Idle sockets wait in a stack per route (at most ``pool_size`` each); one
    the provider closed meanwhile is noticed before use and replaced. Nothing is retried
    or redirected here: whether a request may be repeated is the client's decision. TLS
    is verified against ``SSL_CERT_FILE`` when set, certifi's bundle otherwise. The pool
    is emptied after a fork (prefork children must not share their parent's sockets).
    """

    def __init__(self, pool_size: int = 64) -> None:
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._idle: dict[tuple, list[socket.socket]] = {}
        self._tls: ssl.SSLContext | None = None
        self._pid = os.getpid()

    def post(self, url: str, data: Mapping[str, str], timeout: tuple[float, float]) -> HttpResponse:
        route = self._routes.get(url) or self._routes.setdefault(url, route_for(url))
        sock = self._checkout(route) or self._connect(route, timeout)
        body = urlencode(data).encode()
        try:
            sock.sendall(f"{route.head}{len(body)}\r\n\r\n".encode() + body)
            answer = http.client.HTTPResponse(sock, method="POST")
            answer.begin()
            text = answer.read()
        except TimeoutError:
            sock.close()
            raise errors.ProviderTimeout(f"{route.where}: no answer in time") from None
        except (OSError, http.client.HTTPException):
            sock.close()
            raise errors.ProviderDisconnected(f"{route.where}: connection dropped after sending") from None
        if answer.will_close:
            sock.close()
        else:
            self._checkin(route, sock)
        return HttpResponse(answer.status, text.decode("utf-8", errors="replace"),  # the seed says UTF-8
                            _seconds(answer.getheader("Retry-After")))

    def _connect(self, route: Route, timeout: tuple[float, float]) -> socket.socket:
        """A new connection, open and ready; a failure here means nothing was sent."""
        if route.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                *route.address, timeout=timeout[0], context=self._tls_context())
        else:
            conn = http.client.HTTPConnection(*route.address, timeout=timeout[0])
        if route.tunnel:
            conn.set_tunnel(*route.tunnel, headers=route.tunnel_headers)
        try:
            conn.connect()  # TCP, then the proxy's CONNECT and the TLS handshake when needed
        except ssl.SSLCertVerificationError:
            conn.close()
            raise errors.ProviderConnectError(f"{route.where}: TLS certificate refused") from None
        except TimeoutError:
            conn.close()
            raise errors.ProviderConnectError(f"{route.where}: connect timed out") from None
        except (OSError, http.client.HTTPException):  # refused, unresolvable, tunnel or handshake refused
            conn.close()
            raise errors.ProviderConnectError(f"{route.where}: cannot connect") from None
        sock = conn.sock
        sock.settimeout(timeout[1])  # from now on, the wait for each answer
        return sock

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
        return self._tls

    def _checkout(self, route: Route) -> socket.socket | None:
        """An idle connection still open at the other end, or None."""
        while True:
            with self._lock:
                if self._pid != os.getpid():
                    self._idle, self._pid = {}, os.getpid()  # the parent's sockets stay the parent's
                idle = self._idle.get(route.key)
                if not idle:
                    return None
                sock = idle.pop()
            if not _closed_by_peer(sock):
                return sock
            sock.close()

    def _checkin(self, route: Route, sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(route.key, [])
            if self._pid == os.getpid() and len(idle) < self._pool_size:
                idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
            if self._pid == os.getpid():
                for sock in (s for stack in idle.values() for s in stack):
                    sock.close()


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by a rate limiter)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed (or spoke out of turn)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
