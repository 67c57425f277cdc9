"""Pin a worker process to one CPU (``MOBYT_WORKER_CPU``).

A threads-pool worker runs Python on one core at a time (the GIL), yet its threads hand
the GIL to each other at every socket call, thousands of times a second. Left to the
kernel, the thread woken for each handoff often runs on another CPU: a cross-CPU wake-up,
costly on bare metal and far more so on a virtual machine. Pinned to one CPU, the same
handoffs are plain local switches; the README's performance section has the figures.

``auto`` spreads the workers of one host over its CPUs: each worker takes the first CPU
it may use whose lock file (``mobyt-worker-cpu-N.lock`` in the temporary directory) no
other process holds, and holds that ``flock`` for its whole life. The kernel drops the
lock however the process ends (SIGKILL included), so a replacement worker gets the CPU
back. With every CPU taken, the worker stays unpinned rather than doubling up on a core.
A worker already confined to one CPU (``taskset``, or Celery's restart by exec, which
keeps the mask) takes that CPU's lock, so the next worker looks elsewhere.

Containers that share a host's CPUs without a cpuset each see their own temporary
directory and would all take the same first CPU: leave pinning ``off`` there (the default).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: MOBYT_WORKER_CPU values besides a CPU number.
OFF, AUTO = "off", "auto"

#: (CPU, locked file descriptor) this process took with ``auto``; open for the process's life.
_held: tuple[int, int] | None = None


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def pin_process(choice: str) -> int | None:
    """Apply ``MOBYT_WORKER_CPU`` to this process; returns the CPU it is pinned to, if any."""
    if choice == OFF:
        return None
    cpus = allowed_cpus()
    if choice == AUTO:
        cpu = _take_free_cpu(cpus, Path(tempfile.gettempdir()))
        if cpu is None:
            log.warning("MOBYT_WORKER_CPU=auto: CPUs %s are all taken by other workers; not pinned", cpus)
            return None
    else:
        cpu = int(choice)
    _set_affinity(cpu)
    log.info("worker pinned to CPU %d (MOBYT_WORKER_CPU=%s)", cpu, choice)
    return cpu


def _take_free_cpu(cpus: list[int], lock_dir: Path) -> int | None:
    global _held
    if _held is not None:  # already took one (a second call in the same process)
        return _held[0]
    for cpu in cpus:
        try:  # read-only is enough for flock, and opens another user's file in a shared /tmp
            fd = os.open(lock_dir / f"mobyt-worker-cpu-{cpu}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:  # a file we may not open: count that CPU as taken
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held = (cpu, fd)
        return cpu
    return None


def _set_affinity(cpu: int) -> None:
    """Every thread of the process, not only the caller (``sched_setaffinity`` is per thread)."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
