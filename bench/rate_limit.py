"""The global send rate limit (MOBYT_SEND_RATE_LIMIT) as the provider sees it.

Two ``celery worker`` processes share one cap through Redis (GCRA, mobyt_worker/store/ratelimit.py).
The queue is pre-filled with more sends than the cap allows in the run, the workers are
started, and the SENDSMS arrival times recorded by the simulator give the observed rate
over a steady window (the first and last seconds left out). Target (issue 5): within 5%
of the cap.

    .venv/bin/python bench/rate_limit.py [--cap 50] [--seconds 12] [--workers 2]
"""

from __future__ import annotations

import argparse
import bisect
import time

import redis

from harness import Stack, machine, wait_for, worker_env
from pipeline_throughput import enqueue

from mobyt_worker.contract import SEND_SMS


def observed(times: list[float], start: float, end: float) -> float:
    """Sends per second between ``start`` and ``end``: (n - 1) intervals over their span."""
    window = [t for t in times if start <= t <= end]
    return (len(window) - 1) / (window[-1] - window[0])


def busiest_second(times: list[float]) -> int:
    """The most sends in any 1-second window."""
    return max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=50.0, help="MOBYT_SEND_RATE_LIMIT (default 50/s)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the run (default 12)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=64, help="threads per worker (default 64)")
    args = parser.parse_args()
    print(machine())
    n = int(args.cap * args.seconds)
    print(f"cap {args.cap:g}/s shared by {args.workers} worker processes x {args.concurrency} threads; "
          f"{n} sends queued (~{args.seconds:g} s at the cap)")
    with Stack() as stack:
        server = stack.redis()
        sim = stack.simulator()
        env = worker_env(server.url, sim, MOBYT_SEND_RATE_LIMIT=str(args.cap))
        enqueue(server.url, SEND_SMS, n, "rate")
        for i in range(args.workers):
            stack.worker(env, concurrency=args.concurrency, name=f"rate{i}")
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: sim.stats()["counts"].get("SENDSMS", 0) >= n, timeout=args.seconds * 3 + 30,
                 interval=0.5, what="every send to reach the simulator")
        time.sleep(0.5)
        times = sim.request_times("SENDSMS")
        billed = sim.stats()["billed"]
        scripts = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        client.close()
    start, end = times[0] + 2.0, times[-1] - 1.0
    rate = observed(times, start, end)
    error = rate / args.cap - 1
    print(f"  SENDSMS seen by the simulator: {len(times)} (billed {billed}) over {times[-1] - times[0]:.2f} s")
    print(f"  steady window {end - start:.1f} s: {rate:.2f} sends/s observed for a cap of {args.cap:g}/s "
          f"({error:+.1%}; target within 5%: {'MET' if abs(error) <= 0.05 else 'NOT MET'})")
    print(f"  busiest 1-second window: {busiest_second(times)} sends")
    # each send runs two scripts of its own (claim, accept); the rest are the limiter's
    print(f"  limiter calls per send: {(scripts - 2 * n) / n:.1f} (Lua calls in Redis beyond the send's own two)")
    return 0 if billed == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
