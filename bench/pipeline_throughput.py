"""Sends per second through the whole pipeline, against what a user would write instead.

One run, everything real and private: a redis-server, the simulator in its own process,
and one ``celery worker --pool threads`` process per phase (the Procfile's line, loading
bench.benchapp: the product's app and settings plus two bench tasks):

  noop   N ``bench.noop`` tasks (the send's arguments, a result like the send's)
  peer   N ``bench.peer_send``: a plain task that POSTs SENDSMS through a requests.Session
         and returns (no validation, no order record, no tracking, no exactly-once)
  ours   N ``mobyt.send_sms`` by name: validate, claim in Redis, SENDSMS, order accepted

peer and ours run against an instant provider and with 100 ms added to every answer,
in the same round, one after the other; the ratio ours/peer is taken within a round.
Each phase pre-fills the queue, then starts the worker; the rate is taken from the
results' ``date_done`` between the 10th and 90th percentile of completions (no start-up,
no tail). Goal: ours >= 1.0x peer, floor 0.9x. ``--taskset 0`` starts each worker under
``taskset -c 0``, to measure what pinning a worker to one CPU changes.

    .venv/bin/python bench/pipeline_throughput.py [--sends 4000] [--concurrency 64] [--rounds 3] [--taskset CPU]
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import time
import uuid
from typing import Any, Sequence

import redis
from celery import Celery

from harness import (QUEUE, Stack, completion_times, cpu_seconds, machine, steady_rate, wait_drained, wait_for,
                     worker_env)

from mobyt_worker.contract import SEND_SMS


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
          tag: str, redis_pid: int, sim_pid: int | None = None, prefix: Sequence[str] = ()) -> dict[str, Any]:
    """Pre-fill N tasks, start a worker, let it drain the queue; rate and CPU per task."""
    client = redis.Redis.from_url(url)
    client.flushall()
    ids, enqueue_rate = enqueue(url, task, n, tag)
    worker = stack.worker(env, concurrency=concurrency, name=tag, prefix=prefix)
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


PHASES = {"noop": ("no-op task (bench.noop)", "bench.noop"),
          "peer": ("peer: plain requests task", "bench.peer_send"),
          "ours": (f"ours: {SEND_SMS}", SEND_SMS)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=4000, help="tasks per phase (default 4000)")
    parser.add_argument("--concurrency", type=int, default=64, help="worker threads (Procfile default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all phases (default 3)")
    parser.add_argument("--taskset", metavar="CPU", help="start each worker under taskset -c CPU")
    args = parser.parse_args()
    prefix = ["taskset", "-c", args.taskset] if args.taskset else []
    print(machine())
    print(f"{args.sends} tasks per phase, one worker process, --pool threads --concurrency {args.concurrency}"
          f"{', under ' + ' '.join(prefix) if prefix else ', unpinned'}; {args.rounds} rounds")
    n, c = args.sends, args.concurrency
    runs: list[tuple[str, float | None]] = [("noop", None)]
    for latency in (0.0, 0.1):
        runs += [("peer", latency), ("ours", latency)]
    rates: dict[tuple[str, float | None], list[float]] = {run: [] for run in runs}
    cpus: dict[tuple[str, float | None], list[float]] = {run: [] for run in runs}  # worker ms per task
    exactly_once = True
    with Stack() as stack:
        server = stack.redis()
        sim = stack.simulator()
        env = worker_env(server.url, sim)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}:")
            order = runs if round_ % 2 else [runs[0], runs[2], runs[1], runs[4], runs[3]]  # ours first, then peer
            for tag, latency in order:
                label, task = PHASES[tag]
                sim.reset(latency=latency or 0.0)
                result = phase(stack, server.url, env, task, n, c, tag, server.proc.pid,
                               None if latency is None else sim.proc.pid, prefix)
                if latency:
                    result["in_flight"] = in_flight(sim.request_times("SENDSMS"), latency)
                show(f"{label}, {'no provider' if latency is None else f'{latency * 1000:.0f} ms provider'}", result)
                if tag == "ours":
                    exactly_once &= sim.stats()["billed"] == n
                rates[tag, latency].append(result["rate"])
                cpus[tag, latency].append(result["cpu_ms"]["worker"])
            for latency in (0.0, 0.1):
                print(f"  ours / peer at {latency * 1000:.0f} ms: "
                      f"{rates['ours', latency][-1] / rates['peer', latency][-1]:.2f}x")
    print()
    print("summary (range over rounds; ratio ours/peer per round):")
    print(f"  no-op task                 {min(rates['noop', None]):.0f}-{max(rates['noop', None]):.0f} tasks/s")
    for latency in (0.0, 0.1):
        peer, ours = rates["peer", latency], rates["ours", latency]
        ratios = [o / p for o, p in zip(ours, peer)]
        verdict = "MET" if min(ratios) >= 1.0 else "floor met" if min(ratios) >= 0.9 else "BELOW FLOOR"
        print(f"  {latency * 1000:3.0f} ms provider: peer {min(peer):.0f}-{max(peer):.0f}/s, "
              f"ours {min(ours):.0f}-{max(ours):.0f}/s, ours/peer {' '.join(f'{r:.2f}x' for r in ratios)} "
              f"(goal >= 1.0x, floor 0.9x: {verdict})")
        peer_cpu, ours_cpu = cpus["peer", latency], cpus["ours", latency]
        print(f"                   worker CPU per task: peer {min(peer_cpu):.2f}-{max(peer_cpu):.2f} ms, "
              f"ours {min(ours_cpu):.2f}-{max(ours_cpu):.2f} ms, ours/peer "
              + " ".join(f"{o / p:.2f}" for o, p in zip(ours_cpu, peer_cpu)))
    print(f"every one of our sends billed exactly once by the simulator: {'yes' if exactly_once else 'NO'}")
    return 0 if exactly_once else 1


if __name__ == "__main__":
    raise SystemExit(main())
