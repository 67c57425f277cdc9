"""Sends per second through the whole pipeline, against a no-op task on the same broker.

One run, everything real and private: a redis-server, the simulator in its own process,
and one ``celery worker --pool threads`` process per phase (the Procfile's line):

  noop      N ``bench.noop`` tasks (the send's arguments, a result like the send's)
  pipeline  N ``mobyt.send_sms`` by name: worker -> simulator SENDSMS -> order accepted in Redis
  latency   the same with 100 ms added to every provider answer, ONE worker process

Each phase runs with the worker pinned to one CPU (``MOBYT_WORKER_CPU=auto``, the
recommended production setting) and, for comparison, left to the kernel (``off``).
Each phase pre-fills the queue, then starts the worker; the rate is taken from the
results' ``date_done`` between the 10th and 90th percentile of completions (no start-up,
no tail). Targets (issue 5): pipeline >= 60 % of noop; latency >= 400 sends/s.

    .venv/bin/python bench/pipeline_throughput.py [--sends 4000] [--concurrency 64] [--cpu auto,off]
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import time
import uuid
from typing import Any

import redis
from celery import Celery

from harness import (QUEUE, Stack, completion_times, cpu_seconds, machine, steady_rate, wait_drained, wait_for,
                     worker_env)


def enqueue(broker_url: str, task: str, n: int, tag: str, last_digit: int | None = None) -> tuple[list[str], float]:
    """N tasks by name from a bare Celery producer (no result backend: it never waits). The
    numbers end in 0-5 (delivered, in the simulator) unless ``last_digit`` is given."""
    producer = Celery("producer", broker=broker_url)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    ids = []
    start = time.perf_counter()
    with producer.connection_for_write() as conn:
        for i in range(n):
            digit = i % 6 if last_digit is None else last_digit
            kwargs: dict[str, Any] = {"recipients": [f"+336{i:07d}{digit}"], "message": f"Votre code {tag}: {i:06d}",
                                      "sender": "BENCH"}
            ids.append(producer.send_task(task, kwargs=kwargs, queue=QUEUE, task_id=str(uuid.uuid4()),
                                          connection=conn).id)
    return ids, n / (time.perf_counter() - start)


def phase(stack: Stack, url: str, env: dict[str, str], task: str, n: int, concurrency: int,
          tag: str, redis_pid: int, sim_pid: int | None = None) -> dict[str, Any]:
    """Pre-fill N tasks, start a worker, let it drain the queue; rate and CPU per task."""
    client = redis.Redis.from_url(url)
    client.flushall()
    ids, enqueue_rate = enqueue(url, task, n, tag)
    worker = stack.worker(env, concurrency=concurrency, name=tag)
    pids = {"worker": worker.pid, "redis": redis_pid, **({"simulator": sim_pid} if sim_pid else {})}
    wait_for(lambda: client.llen(QUEUE) < n, timeout=60, interval=0.01, what="the worker to start consuming")
    cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}  # the worker's start-up excluded
    left = client.llen(QUEUE) + client.hlen("unacked")
    wait_drained(client, worker, timeout=120)
    cpu = {k: (cpu_seconds(pid) - cpu0[k]) * 1000 / left for k, pid in pids.items()}
    worker.stop()
    times = completion_times(client, ids)
    client.close()
    return {"rate": steady_rate(times), "overall": n / (times[-1] - times[0]), "enqueued": enqueue_rate, "cpu_ms": cpu}


def in_flight(times: list[float], latency: float) -> float:
    """Median number of SENDSMS requests the provider holds at once (each for ``latency`` s),
    sampled at each arrival between the 10th and 90th percentile."""
    steady = times[len(times) // 10:len(times) * 9 // 10]
    return statistics.median(bisect.bisect_right(times, t) - bisect.bisect_right(times, t - latency) for t in steady)


def show(label: str, r: dict[str, Any]) -> None:
    cpu = ", ".join(f"{k} {v:.2f} ms" for k, v in r["cpu_ms"].items())
    held = f"; {r['in_flight']:.0f} in flight at the provider" if "in_flight" in r else ""
    print(f"  {label:<34} {r['rate']:6.0f} tasks/s   (first-to-last {r['overall']:.0f}/s; CPU per task: {cpu}; "
          f"enqueued at {r['enqueued']:.0f}/s{held})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=4000, help="tasks per phase (default 4000)")
    parser.add_argument("--concurrency", type=int, default=64, help="worker threads (Procfile default 64)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of the three phases; each figure is the best round (default 2)")
    parser.add_argument("--cpu", default="auto,off",
                        help="MOBYT_WORKER_CPU values to measure, comma-separated (default auto,off)")
    args = parser.parse_args()
    print(machine())
    print(f"{args.sends} tasks per phase, one worker process, --pool threads --concurrency {args.concurrency}, "
          f"best of {args.rounds} rounds")
    n, c = args.sends, args.concurrency
    phases = {"noop": ("no-op task (bench.noop)", "bench.noop", None),
              "pipeline": ("send_sms, instant provider", "mobyt.send_sms", 0.0),
              "latency": ("send_sms, 100 ms provider latency", "mobyt.send_sms", 0.1)}
    placements = args.cpu.split(",")
    best: dict[tuple[str, str], dict[str, Any]] = {}
    exactly_once = True
    with Stack() as stack:
        server = stack.redis()
        sim = stack.simulator()
        for round_ in range(1, args.rounds + 1):
            for cpu in placements:
                print(f"round {round_}, MOBYT_WORKER_CPU={cpu}:")
                env = worker_env(server.url, sim, MOBYT_WORKER_CPU=cpu)
                for tag, (label, task, latency) in phases.items():
                    sim.reset(latency=latency or 0.0)
                    result = phase(stack, server.url, env, task, n, c, tag, server.proc.pid,
                                   None if latency is None else sim.proc.pid)
                    if latency:
                        result["in_flight"] = in_flight(sim.request_times("SENDSMS"), latency)
                    show(label, result)
                    if latency is not None:
                        exactly_once &= sim.stats()["billed"] == n
                    if (cpu, tag) not in best or result["rate"] > best[cpu, tag]["rate"]:
                        best[cpu, tag] = result
    for cpu in placements:
        noop, pipeline, slow = (best[cpu, tag]["rate"] for tag in ("noop", "pipeline", "latency"))
        ratio = pipeline / noop
        print()
        print(f"MOBYT_WORKER_CPU={cpu}:")
        print(f"  pipeline / no-op = {pipeline:.0f} / {noop:.0f} sends/s = {ratio:.0%}   "
              f"(target >= 60%: {'MET' if ratio >= 0.6 else 'NOT MET'})")
        print(f"  100 ms provider latency, one worker process: {slow:.0f} sends/s   "
              f"(target >= 400/s: {'MET' if slow >= 400 else 'NOT MET'})")
    print(f"every send billed exactly once by the simulator: {'yes' if exactly_once else 'NO'}")
    return 0 if exactly_once else 1


if __name__ == "__main__":
    raise SystemExit(main())
