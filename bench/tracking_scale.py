"""Tracking 100 000 outstanding orders: Redis memory, one poll tick, a worker's memory.

1. Fill: N accepted orders written the way the worker writes them (OrderStore.claim_send,
   then mark_accepted pipelined per batch), each with one recipient and its first poll
   due in 10-60 minutes; Redis INFO memory before/after gives the bytes per order.
2. Tick: store.claim_due(limit=MOBYT_POLL_BATCH) with B orders due, once beside the N not
   yet due and once beside only 100; it should not depend on how many are not due.
3. Worker: a worker and beat (the Procfile's lines) follow 1000 real orders through
   the simulator (recipients that stay WAIT4DLVR, short poll intervals, so polls never
   stop) next to the N not yet due; the worker's RSS is sampled while it polls.

    .venv/bin/python bench/tracking_scale.py [--orders 100000] [--watch 90]
"""

from __future__ import annotations

import argparse
import statistics
import time
from multiprocessing import Pool

from harness import Stack, machine, rss_mb, thread_count, wait_for, worker_env
from pipeline_throughput import enqueue

from mobyt_worker.store.connection import connect
from mobyt_worker.contract import SEND_SMS
from mobyt_worker.store.orders import OrderStore

PREFIX = "mobyt"
META = {"message_type": "N", "sender": "BENCH", "batch_id": None, "scheduled_at": None, "parts": 1,
        "credits": 1, "recipient_count": 1}


def fill(args: tuple[str, str, int, int]) -> None:
    """Orders ``start``..``stop`` (one process of the pool): claimed, then accepted."""
    url, prefix, start, stop = args
    client = connect(url)
    store = OrderStore(client, prefix)
    now = time.time()
    for first in range(start, stop, 500):
        batch = range(first, min(first + 500, stop))
        tokens = [store.claim_send(f"T{i:09d}", {**META, "task_id": f"bench-{i}"}, lock_seconds=35)[2]
                  for i in batch]
        with client.pipeline(transaction=False) as pipe:
            piped = OrderStore(pipe, prefix)  # the same scripts, queued on the pipeline
            for i, token in zip(batch, tokens):
                piped.mark_accepted(f"T{i:09d}", scheduled=False, recipients=[f"+336{i % 10**8:08d}"],
                                    first_poll_at=now + 600 + (i % 3000), release_token=token)
            pipe.execute()
    client.close()


def tick_ms(store: OrderStore, due: int, batch: int, rounds: int = 25) -> float:
    """Median ms of one claim_due(limit=batch) with ``due`` orders due (put back each round)."""
    samples = []
    ids = [f"DUE{i:06d}" for i in range(due)]
    for _ in range(rounds):
        store.redis.zadd(store.keys.due, {oid: time.time() - 1 for oid in ids})
        start = time.perf_counter()
        claimed = store.claim_due(limit=batch, lease=60)
        samples.append((time.perf_counter() - start) * 1000)
        assert len(claimed) == min(due, batch)
        store.redis.zrem(store.keys.due, *ids)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000, help="outstanding orders (default 100000)")
    parser.add_argument("--batch", type=int, default=500, help="poll batch, MOBYT_POLL_BATCH (default 500)")
    parser.add_argument("--watch", type=float, default=90.0, help="seconds of worker RSS sampling (default 90)")
    args = parser.parse_args()
    print(machine())
    with Stack() as stack:
        server = stack.redis()
        sim = stack.simulator()
        client = connect(server.url)
        store = OrderStore(client, PREFIX)

        # 1. memory per order
        before = client.info("memory")["used_memory"]
        start = time.perf_counter()
        half = args.orders // 2
        with Pool(2) as pool:
            pool.map(fill, [(server.url, PREFIX, 0, half), (server.url, PREFIX, half, args.orders)])
        filled = time.perf_counter() - start
        after = client.info("memory")["used_memory"]
        per_order = (after - before) / args.orders
        sample = "T000000001"
        parts = {"order hash": client.memory_usage(store.keys.order(sample)),
                 "recipients hash": client.memory_usage(store.keys.recipients(sample))}
        assert store.due_count() == args.orders and client.exists(store.keys.send_lock(sample)) == 0
        print(f"{args.orders} outstanding orders written in {filled:.1f} s ({args.orders / filled:.0f}/s, "
              f"2 processes: claim_send, then mark_accepted pipelined by 500)")
        print(f"  Redis used_memory {before / 2**20:.1f} -> {after / 2**20:.1f} MiB: {per_order:.0f} bytes per order "
              f"(of which {', '.join(f'{k} {v} B' for k, v in parts.items())}; the rest: due and recent-orders "
              f"index entries and the order's event in the capped stream)")

        # 2. one poll tick
        small = OrderStore(client, "small")
        small.redis.zadd(small.keys.due, {f"S{i}": time.time() + 3600 for i in range(100)})
        big_ms = tick_ms(store, args.batch, args.batch)
        small_ms = tick_ms(small, args.batch, args.batch)
        print(f"one poll tick, claim_due(limit={args.batch}) with {args.batch} due: {big_ms:.2f} ms beside "
              f"{args.orders} not yet due, {small_ms:.2f} ms beside 100 not yet due "
              f"(ratio {big_ms / small_ms:.2f}; median of 25)")

        # 3. a worker's memory while it polls, next to the orders not yet due
        env = worker_env(server.url, sim, MOBYT_POLL_TICK="0.5", MOBYT_POLL_INTERVALS="1,2,4",
                         MOBYT_POLL_BATCH=str(args.batch))
        worker = stack.worker(env, app="mobyt_worker.worker", name="tracker")
        stack.beat(env)
        followed = 1000
        enqueue(server.url, SEND_SMS, followed, "track", last_digit=9)  # WAIT4DLVR for 48 h
        wait_for(lambda: store.due_count() >= args.orders + followed, timeout=120, interval=0.5,
                 what="the followed orders to be accepted")
        time.sleep(3)  # polling under way
        polls0, samples, threads = sim.stats()["counts"].get("SMSSTATUS", 0), [], []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.watch:
            samples.append(rss_mb(worker.pid))
            threads.append(thread_count(worker.pid))
            time.sleep(1)
        polls = sim.stats()["counts"].get("SMSSTATUS", 0) - polls0
        client.close()
    half = samples[len(samples) // 2:]
    print(f"worker RSS while polling {followed} live orders next to {args.orders} not yet due for {args.watch:.0f} s "
          f"({polls} SMSSTATUS polls, {polls / args.watch:.0f}/s): {samples[0]:.1f} MiB at the start, "
          f"{samples[-1]:.1f} at the end, {half[-1] - half[0]:+.1f} MiB over the second half")
    print("  RSS every 5 s (MiB): " + " ".join(f"{mb:.1f}" for mb in samples[::5]))
    print("  threads every 5 s:   " + " ".join(f"{n:4d}" for n in threads[::5])
          + "   (the pool starts a thread when a burst finds none idle; each new one adds its stack and arena)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
