"""The fake provider over real HTTP on loopback, with JSON control routes under ``/_sim/``.

Every function answers under ``/<prefix>/<FUNCTION>`` for each prefix in
:data:`PREFIXES` (under any base path); any other path is an HTTP 404. The control
routes (requests seen, stats, orders still scheduled, deliveries so far, inbound SMS,
faults, reset, push, latency) let a test drive a simulator running as a separate
process; they answer loopback clients only.
The HTTP access log carries only the method, the path (no query string) and the status.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import socket
import socketserver
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, urlsplit

from .provider import DEMO_PASSWORD, FUNCTIONS, ProviderSimulator

log = logging.getLogger(__name__)

#: Every function answers under each of these prefixes: the seed itself mixes them.
PREFIXES = frozenset({"Moby", "Mobyt", "OESRs"})

def _route(path: str) -> str | None:
    """``/<prefix>/<FUNCTION>`` (under any base path) -> FUNCTION, else None."""
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 2 and segments[-2] in PREFIXES and segments[-1].upper() in FUNCTIONS:
        return segments[-1].upper()
    return None


def _inbound(sim: ProviderSimulator, data: dict[str, Any], query: dict[str, list[str]]) -> Any:
    receiver, keyword = data.get("receiver"), data.get("keyword")
    if receiver is None:
        message_id = sim.add_inbound(str(data["sender"]), str(data["text"]), keyword=_opt_str(keyword))
    else:
        message_id = sim.add_inbound(str(data["sender"]), str(data["text"]), receiver=str(receiver),
                                     keyword=_opt_str(keyword))
    return {"id": message_id}


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _fault(sim: ProviderSimulator, data: dict[str, Any], query: dict[str, list[str]]) -> Any:
    sim.inject_fault(
        str(data["function"]), str(data["kind"]), int(data.get("count", 1)), delay=float(data.get("delay", 0.0)),
        code=str(data.get("code", "")), message=str(data.get("message", "")), size=int(data.get("size", 0)),
    )  # fmt: skip


#: (method, path) -> endpoint(simulator, JSON body, query) returning the JSON answer (None: {"ok": true}).
_CONTROL: dict[tuple[str, str], Callable[[ProviderSimulator, dict[str, Any], dict[str, list[str]]], Any]] = {
    ("GET", "/_sim/health"): lambda sim, data, query: {"status": "ok"},
    ("GET", "/_sim/requests"): lambda sim, data, query: [
        asdict(r) for r in sim.requests(query.get("function", [None])[0])
    ],
    ("GET", "/_sim/stats"): lambda sim, data, query: sim.stats(),
    ("GET", "/_sim/scheduled"): lambda sim, data, query: sim.scheduled(),
    ("GET", "/_sim/deliveries"): lambda sim, data, query: sim.deliveries(query.get("number", [None])[0]),
    ("POST", "/_sim/inbound"): _inbound,
    ("POST", "/_sim/fault"): _fault,
    ("POST", "/_sim/faults/clear"): lambda sim, data, query: sim.clear_faults(),
    ("POST", "/_sim/reset"): lambda sim, data, query: sim.reset(),
    ("POST", "/_sim/push"): lambda sim, data, query: sim.configure_push(data.get("status_url"), data.get("inbound_url")),
    ("POST", "/_sim/latency"): lambda sim, data, query: sim.set_latency(float(data["seconds"])),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls
    server_version = "MobytSimulator/1.0"
    timeout = 120  # idle keep-alive connections are closed after this
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return
        if url.path.startswith("/_sim/"):
            self._control(url.path.rstrip("/"), url.query, body)
            return
        function = _route(url.path)
        if function is None:
            self._send(404, b"not found\n")
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if self.command == "POST" and body:
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        reply = self.server.simulator.handle(function, params, self.command)
        if reply.delay > 0:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        if reply.trickle:
            self.close_connection = True
            self.wfile = _Trickle(self.wfile, reply.trickle)  # type: ignore[assignment]
        if not self._send(reply.status, reply.body, reply.content_type, reply.headers, reply.pad):
            self.server.simulator.answer_abandoned(function)

    do_POST = do_GET

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(411, b"Content-Length required\n")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 10_000_000:
            self.close_connection = True
            self._send(400, b"bad Content-Length\n")
            return None
        return self.rfile.read(length) if length else b""

    def _control(self, path: str, query: str, body: bytes) -> None:
        """The /_sim/ JSON endpoints, for a simulator running as a separate process."""
        if not ipaddress.ip_address(self.client_address[0].split("%")[0]).is_loopback:
            self._json(403, {"error": "control endpoints are loopback only"})
            return
        endpoint = _CONTROL.get((self.command, path))
        if endpoint is None:
            self._json(404, {"error": f"no control endpoint {self.command} {path}"})
            return
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            result = endpoint(self.server.simulator, data, parse_qs(query))
        except KeyError as exc:
            self._json(400, {"error": f"missing field {exc.args[0]}"})
        except (TypeError, ValueError) as exc:
            self._json(400, {"error": str(exc)})
        else:
            self._json(200, {"ok": True} if result is None else result)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: tuple[tuple[str, str], ...] = (), pad: int = 0) -> bool:
        """Answer; False when the client went away before the answer was all sent."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body) + pad))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            blanks = b" " * 65536
            for start in range(0, pad, len(blanks)):
                self.wfile.write(blanks[:pad - start])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. a read timeout)
            self.close_connection = True
            return False
        return True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)  # never the query

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator http: %s", format)  # args may hold the request line (password)


class _Trickle:
    """A handler's output, written one byte every ``every`` seconds."""

    def __init__(self, out: Any, every: float) -> None:
        self._out, self._every = out, every

    def write(self, data: bytes) -> int:
        for i in range(len(data)):
            self._out.write(data[i:i + 1])
            self._out.flush()
            time.sleep(self._every)
        return len(data)

    def __getattr__(self, name: str) -> Any:  # flush, close, closed: the output's own
        return getattr(self._out, name)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # 100+ clients connecting at once must not be refused
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: ProviderSimulator) -> None:
        self.simulator = simulator
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn(): a DNS lookup
        host, self.server_port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, (bytes, bytearray)) else str(host)

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Unblock keep-alive handler threads so stop() leaves nothing serving."""
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("simulator connection error from %s", client_address, exc_info=True)


class SimulatorServer:
    """Serves a :class:`ProviderSimulator` in a daemon thread; bound at construction."""

    def __init__(self, simulator: ProviderSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self._httpd = _HTTPServer((host, port), simulator)
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="mobyt-sim-http", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections (the simulator
        itself stays usable; close it separately)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        self._httpd.close_connections()

    @property
    def url(self) -> str:
        address, port = self._httpd.server_address[:2]
        host = str(address.decode() if isinstance(address, (bytes, bytearray)) else address)
        host = "127.0.0.1" if host == "0.0.0.0" else host
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(host: str, port: int, **simulator_options: Any) -> None:
    """Run a simulator until SIGINT/SIGTERM (what ``mobyt simulator --port N`` calls)."""
    simulator = ProviderSimulator(**simulator_options)
    server = SimulatorServer(simulator, host, port).start()
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"Mobyt simulator listening on {server.url}", flush=True)
    print(
        "Demo credentials (simulator only):\n"
        f"  MOBYT_BASE_URL={server.url}\n"
        f"  MOBYT_LOGIN={simulator.login}\n"
        f"  MOBYT_PASSWORD={simulator_options.get('password', DEMO_PASSWORD)}",
        flush=True,
    )
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        simulator.close()
        print("Mobyt simulator stopped", flush=True)
