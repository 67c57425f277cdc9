"""What every bench script starts and measures: a private redis-server, the simulator in
its own process, real ``celery worker`` processes, and the figures they leave behind.

The bench process itself only enqueues and reads Redis, so it never competes for the
workers' GIL; everything it starts is stopped on exit (``Stack`` is a context manager).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mobyt_worker.contract import QUEUE  # noqa: E402
from tests.support import RedisServer, free_port, wait_for  # noqa: E402  (the tests' own harness)

BIN = Path(sys.executable).parent
LOGIN, PASSWORD = "demo", "demo-password"  # the simulator's demo account


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"machine: {os.cpu_count()} cpu ({cpu}), {mem_gb:.0f} GB, {platform.system()} {platform.release()}\n"
            f"python {platform.python_version()}, celery {version('celery')}, kombu {version('kombu')}, "
            f"redis-py {version('redis')} (hiredis {version('hiredis')}), redis-server {redis_version}")


class Simulator:
    """``python -m mobyt_worker simulator`` (the product's own command) in its own process."""

    def __init__(self, *, latency: float = 0.0, delivery_delay: float = 2.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "mobyt_worker", "simulator", "--port", str(self.port),
                "--latency", str(latency), "--delivery-delay", str(delivery_delay)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(self._healthy, timeout=20, what="simulator")

    def _healthy(self) -> bool:
        try:
            return self.control("GET", "/_sim/health")["status"] == "ok"
        except OSError:
            return False

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def reset(self, latency: float = 0.0) -> None:
        """Credits, counters and recorded requests back to the start; then the latency."""
        self.control("POST", "/_sim/reset")
        self.control("POST", "/_sim/latency", {"seconds": latency})

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "/_sim/stats")

    def request_times(self, function: str) -> list[float]:
        return sorted(r["at"] for r in self.control("GET", f"/_sim/requests?function={function}"))

    def stop(self) -> None:
        _terminate(self.proc)


class Worker:
    """The Procfile's ``worker`` line (threads pool), loading ``app`` (default: bench.benchapp,
    which is mobyt_worker.worker plus the bench's tasks), after ``prefix`` (e.g. ``taskset -c 0``)."""

    def __init__(self, env: dict[str, str], *, concurrency: int = 64, name: str = "bench",
                 app: str = "bench.benchapp", loglevel: str = "warning", prefix: Sequence[str] = ()) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"mobyt-bench-{name}-", suffix=".log")[1])
        args = [*prefix, str(BIN / "celery"), "-A", app, "worker", "--pool", "threads", "--concurrency", str(concurrency),
                "-Q", QUEUE, "-n", f"{name}@%h", "-l", loglevel]
        full_env = {**os.environ, **env, "MOBYT_WORKER_CONCURRENCY": str(concurrency),
                    "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        _terminate(self.proc)
        self.log.unlink(missing_ok=True)


class Beat(Worker):
    def __init__(self, env: dict[str, str], *, name: str = "beat") -> None:  # noqa: D107 (same plumbing)
        self.log = Path(tempfile.mkstemp(prefix=f"mobyt-bench-{name}-", suffix=".log")[1])
        args = [str(BIN / "celery"), "-A", "mobyt_worker.worker", "beat", "-l", "warning", "--max-interval", "1"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Stack(ExitStack):
    """Starts what a bench needs and stops all of it on exit, even after an error."""

    def redis(self) -> RedisServer:
        server = RedisServer().start()
        self.callback(server.cleanup)
        return server

    def simulator(self, **options: Any) -> Simulator:
        sim = Simulator(**options)
        self.callback(sim.stop)
        return sim

    def worker(self, env: dict[str, str], **options: Any) -> Worker:
        worker = Worker(env, **options)
        self.callback(worker.stop)
        return worker

    def beat(self, env: dict[str, str]) -> Beat:
        beat = Beat(env)
        self.callback(beat.stop)
        return beat


def worker_env(redis_url: str, sim: Simulator, **more: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "MOBYT_LOGIN": LOGIN, "MOBYT_PASSWORD": PASSWORD,
            "MOBYT_BASE_URL": sim.url, "MOBYT_DEFAULT_SENDER": "BENCH", **more}


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def wait_drained(client: redis.Redis, worker: Worker, timeout: float) -> None:
    """Until the queue is empty and nothing is unacked (acks_late: acked once the result is stored)."""
    def drained() -> bool:
        if not worker.alive():
            raise RuntimeError(f"worker exited:\n{worker.output()[-3000:]}")
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(QUEUE)
            pipe.hlen("unacked")
            queued, unacked = pipe.execute()
        return queued == 0 and unacked == 0

    wait_for(drained, timeout=timeout, interval=0.1, what="the queue to drain")


def completion_times(client: redis.Redis, task_ids: Sequence[str]) -> list[float]:
    """``date_done`` of each task's stored result, sorted; raises if any task did not succeed."""
    done: list[float] = []
    for start in range(0, len(task_ids), 1000):
        keys = [f"celery-task-meta-{tid}" for tid in task_ids[start:start + 1000]]
        for tid, raw in zip(task_ids[start:start + 1000], client.mget(keys)):
            if raw is None:
                raise RuntimeError(f"task {tid} left no result")
            meta = json.loads(raw)
            if meta["status"] != "SUCCESS":
                raise RuntimeError(f"task {tid} ended {meta['status']}: {meta['result']}")
            done.append(datetime.fromisoformat(meta["date_done"]).timestamp())
    return sorted(done)


def steady_rate(times: Sequence[float], low: float = 0.1, high: float = 0.9) -> float:
    """Completions per second between the ``low`` and ``high`` quantiles (no start-up, no tail)."""
    i, j = int(len(times) * low), int(len(times) * high) - 1
    return (j - i) / (times[j] - times[i])
