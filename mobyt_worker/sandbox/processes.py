"""The demo's child processes, each in its own process group: started, awaited, then
stopped (SIGTERM to every group at once, SIGKILL to what is left after a grace period).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class CannotRun(Exception):
    """The demo cannot run on this machine (exit 2); the message says what is missing."""



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str], cwd: Path) -> Child:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)  # the group outlives its leader: signal it anyway
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.signal_group(signal.SIGKILL)  # whatever is left of the group, leader or not
        self.proc.wait()


def stop_all(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM every group at once, wait up to ``grace`` seconds, then SIGKILL each group."""
    for child in children:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.wait(deadline)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, child: Child | None = None) -> Any:
    """Wait for a process to come up; :class:`CannotRun` if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if child is not None and not child.alive():
            raise CannotRun(f"{child.name} exited at start; its log:\n{tail(child.output())}")
        if time.monotonic() > deadline:
            raise CannotRun(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])

