"""What settling an outage's orders in doubt costs the provider: SMSHISTORY calls and rows.

Usage: ``.venv/bin/python bench/doubt_sweeps.py [--runs 3] [--burst 400] [--background 2]
[--outage 10] [--grace 30] [--margin 120]``

Each run starts a private redis-server, the simulator, two workers and beat, with the
default evidence rule (MOBYT_DOUBT_GRACE and MOBYT_CLOCK_MARGIN as given: the product's
defaults unless told). Background sends go on at ``--background`` per second from a margin
before the outage to a window after it, so the history around the outage is full of
orders that are fine. During the outage (``--outage`` seconds) every SENDSMS fails, half
refused before the provider committed (HTTP 500), half committed with their answers lost,
while a campaign of ``--burst`` sends arrives. Every order is then settled by the workers.

One line per run: orders, orders in doubt (those whose SENDSMS got a fault) and how many
of them the provider never committed (only SMSHISTORY can show those absent), SMSHISTORY
calls, history rows served, rows per order in doubt and per uncommitted order, billed,
duplicates, lost, in_doubt, wall time; and the peer measured in the same run: the rows a
read of each uncommitted order's own window would serve, once each (``peer_rows``), counted
from the provider's history over those windows.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from celery import Celery
from harness import Stack, machine, worker_env

from mobyt_worker.provider.client import MobytClient
from mobyt_worker.config import Settings
from mobyt_worker.store.connection import connect
from mobyt_worker.contract import QUEUE, SEND_SMS
from mobyt_worker.store.orders import OrderStore

SETTLED = {"accepted", "completed", "failed", "in_doubt"}
NUMBER = "+33612345671"  # delivered (simulator rule)


def run(index: int, args: argparse.Namespace) -> str:
    started = time.monotonic()
    began = datetime.now(timezone.utc)
    with Stack() as stack:
        server, sim = stack.redis(), stack.simulator(delivery_delay=1.0)
        env = {**worker_env(server.url, sim), "MOBYT_DOUBT_GRACE": str(args.grace),
               "MOBYT_CLOCK_MARGIN": str(args.margin)}
        for name in ("a", "b"):
            stack.worker(env, concurrency=16, name=name)
        stack.beat(env)
        time.sleep(3)
        producer = Celery("doubt-bench", broker=server.url, backend=server.url)
        ids: list[str] = []

        def enqueue(order_id: str) -> None:
            ids.append(order_id)
            producer.send_task(SEND_SMS, queue=QUEUE, kwargs={
                "recipients": [NUMBER], "message": f"bench {order_id}", "sender": "BENCH", "order_id": order_id})

        lead, tail = args.margin + 5, args.grace + args.margin + 5  # background over every window, and then some
        stop = threading.Event()

        def background() -> None:
            i = 0
            while not stop.is_set():
                enqueue(f"BG{index}X{i}")
                i += 1
                stop.wait(1 / args.background)

        feeder = threading.Thread(target=background, daemon=True)
        feeder.start()
        time.sleep(lead)
        for _ in range(int(args.burst + args.background * args.outage) + 50):  # more than the outage can use
            for kind in ("http500", "lost_answer"):
                sim.control("POST", "/_sim/fault", {"function": "SENDSMS", "kind": kind})
        outage_ends = time.monotonic() + args.outage
        for i in range(args.burst):
            enqueue(f"OUT{index}X{i}")
            time.sleep(args.outage / args.burst)
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        sim.control("POST", "/_sim/faults/clear")
        time.sleep(tail)
        stop.set()
        feeder.join()

        store = OrderStore(connect(server.url), "mobyt")
        deadline = time.monotonic() + args.grace + 2 * args.margin + args.timeout
        while time.monotonic() < deadline:
            states = Counter((r.state if (r := store.get_order(o, with_history=False)) else "missing") for o in ids)
            if set(states) <= SETTLED:
                break
            time.sleep(2)
        stats = sim.stats()  # before the bench's own history read below
        faulted = {r["params"]["order_id"]: r for r in sim.control("GET", "/_sim/requests?function=SENDSMS")
                   if r["fault"]}
        uncommitted = {oid: r["at"] for oid, r in faulted.items() if r["fault"] == "http500"}

        client = MobytClient(Settings.from_env(env))
        rows = [row for _, _, page in client.sms_history_windows(began - timedelta(minutes=1),
                                                                 datetime.now(timezone.utc) + timedelta(minutes=1))
                for row in page]
        billed = Counter(row.order_id for row in rows)
        stamps = sorted(row.created_at.timestamp() for row in rows if row.created_at is not None)
        peer = sum(_between(stamps, math.floor(at - args.margin), math.floor(at + args.grace + args.margin) + 1)
                   for at in uncommitted.values())
        due = set(store.redis.zrange(store.keys.due, 0, -1))
        records = {o: store.get_order(o, with_history=False) for o in ids}
        lost = [o for o, r in records.items() if r is None or (r.state not in ("completed", "failed") and o not in due)]
        in_doubt = sum(1 for r in records.values() if r and r.state == "in_doubt")
        calls, served = stats["counts"].get("SMSHISTORY", 0), stats["history_rows"]
        return (f"run={index} orders={len(ids)} in_doubt_orders={len(faulted)} uncommitted={len(uncommitted)} "
                f"smshistory_calls={calls} history_rows={served} "
                f"rows_per_doubt={served / max(1, len(faulted)):.2f} rows_per_uncommitted={served / max(1, len(uncommitted)):.2f} "
                f"peer_rows={peer} peer_rows_per_uncommitted={peer / max(1, len(uncommitted)):.0f} "
                f"billed={sum(billed[o] for o in ids)} duplicates={sum(1 for o in ids if billed[o] > 1)} "
                f"lost={len(lost)} in_doubt={in_doubt} "
                f"states={dict(Counter(r.state if r else 'missing' for r in records.values()))} "
                f"wall={time.monotonic() - started:.0f}s")


def _between(stamps: list[float], start: int, end: int) -> int:
    """Rows created in [start, end)."""
    return bisect.bisect_left(stamps, end) - bisect.bisect_left(stamps, start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=400, help="sends arriving during the outage")
    parser.add_argument("--background", type=float, default=2.0, help="background sends per second")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds every SENDSMS fails")
    defaults = Settings()
    parser.add_argument("--grace", type=float, default=defaults.doubt_grace, help="MOBYT_DOUBT_GRACE")
    parser.add_argument("--margin", type=float, default=defaults.clock_margin, help="MOBYT_CLOCK_MARGIN")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to settle after the windows are readable")
    args = parser.parse_args()
    print(machine(), flush=True)
    print(f"burst={args.burst} background={args.background}/s outage={args.outage}s grace={args.grace}s "
          f"margin={args.margin}s", flush=True)
    for index in range(1, args.runs + 1):
        print(run(index, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
