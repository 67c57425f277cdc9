"""The fake provider's callbacks: status changes and inbound SMS POSTed to a URL.

A ticker thread (every 100 ms, only once push is configured) finds the statuses that
came due; one delivery thread with one keep-alive session POSTs them, and the inbound
SMS, in the order they were queued. A URL's path and query may carry a secret: logs
show neither.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PUSH_TICK = 0.1


class Pusher:
    """The two push threads, started lazily once and stopped by :meth:`close`."""

    def __init__(self) -> None:
        self._outbox: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def post(self, url: str, form: dict[str, str]) -> None:
        """Queue one form POST; the delivery thread sends it after those queued before."""
        self._outbox.put((url, form))

    def prepare(self, tick: Callable[[], None]) -> list[threading.Thread]:
        """The threads to start (none if already running or closed); the caller starts them
        once it released the lock it holds."""
        if self._threads or self._stop.is_set():
            return []
        self._threads = [
            threading.Thread(target=self._tick_forever, args=(tick,), name="mobyt-sim-ticker", daemon=True),
            threading.Thread(target=self._deliver_forever, name="mobyt-sim-push", daemon=True),
        ]
        return self._threads

    def drain(self) -> None:
        """Forget every POST not delivered yet."""
        while True:
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                break

    def close(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def _tick_forever(self, tick: Callable[[], None]) -> None:
        while not self._stop.wait(PUSH_TICK):
            try:
                tick()
            except Exception:  # the ticker must survive anything
                log.exception("simulator push ticker failed")

    def _deliver_forever(self) -> None:
        """One thread, one keep-alive session: callbacks arrive in the order they were queued."""
        import requests

        session = requests.Session()
        while True:
            item = self._outbox.get()
            if item is None or self._stop.is_set():
                break
            url, form = item
            where = urlsplit(url)._replace(path="/…", query="", fragment="").geturl()  # path and query may carry a secret
            try:
                answer = session.post(url, data=form, timeout=5)
                if answer.status_code >= 300:
                    log.warning("push to %s answered HTTP %s", where, answer.status_code)
            except requests.RequestException as exc:  # its text would contain the URL
                log.warning("push to %s failed: %s", where, type(exc).__name__)
        session.close()
