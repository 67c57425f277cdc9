"""Sends under a flaky provider, in waves: exactly once, nothing lost.

Usage: ``.venv/bin/python bench/fault_soak.py [--orders 300] [--waves 6] [--fault-rate 0.25]``

Starts a private redis-server, the simulator, two workers and beat; enqueues the orders in
waves, and before each wave injects faults on SENDSMS, SMSSTATUS and SMSHISTORY (answer
lost before or after the provider committed, 5xx, 408, 429, KO, garbage, a hang past the
read timeout). Waits until every order is settled, then counts from the provider's own
history. Prints one line: orders, faults injected, billed, duplicates (must be 0), lost
(must be 0: no record, or a record nothing revisits), in_doubt, wall time.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from harness import Stack, worker_env

from mobyt_worker.provider.client import MobytClient
from mobyt_worker.config import Settings
from mobyt_worker.store.connection import connect
from mobyt_worker.contract import QUEUE, SEND_SMS
from mobyt_worker.sandbox import FLAKY
from mobyt_worker.store.orders import OrderStore

ENV = {"MOBYT_READ_TIMEOUT": "1", "MOBYT_CONNECT_TIMEOUT": "1", "MOBYT_SEND_RETRY_MAX": "1",
       "MOBYT_CALL_DEADLINE": "2", "MOBYT_POLL_TICK": "0.3", "MOBYT_POLL_INTERVALS": "0.5,1,2",
       "MOBYT_DOUBT_GRACE": "0.5", "MOBYT_DOUBT_LIMIT": "20", "MOBYT_CLOCK_MARGIN": "1",
       "MOBYT_VISIBILITY_TIMEOUT": "10"}
SETTLED = {"accepted", "completed", "failed", "in_doubt"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--waves", type=int, default=6)
    parser.add_argument("--fault-rate", type=float, default=0.25, help="faults per order and function")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    rng = random.Random()
    start = time.monotonic()
    began = datetime.now(timezone.utc)
    with Stack() as stack:
        server, sim = stack.redis(), stack.simulator(delivery_delay=1.0)
        env = {**worker_env(server.url, sim), **ENV}
        for name in ("a", "b"):
            stack.worker(env, concurrency=16, name=name)
        stack.beat(env)
        time.sleep(3)
        from celery import Celery

        producer = Celery("soak", broker=server.url, backend=server.url)
        store = OrderStore(connect(server.url), "mobyt")
        ids, injected = [], 0
        per_wave = max(1, args.orders // args.waves)
        for wave in range(args.waves):
            for function, kinds in FLAKY.items():
                for _ in range(int(per_wave * args.fault_rate)):
                    kind = rng.choice(kinds)
                    sim.control("POST", "/_sim/fault", {"function": function, "kind": kind,
                                                        "delay": 1.5 if kind == "slow" else 0.5})
                    injected += 1
            for i in range(per_wave):
                oid = f"SOAK{wave}X{i}T{int(began.timestamp())}"
                ids.append(oid)
                producer.send_task(SEND_SMS, queue=QUEUE, kwargs={
                    "recipients": ["+33612345670"], "message": f"soak {oid}", "sender": "BENCH", "order_id": oid})
            time.sleep(1.0)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            states = Counter((r.state if (r := store.get_order(o, with_history=False)) else "missing") for o in ids)
            if set(states) <= SETTLED:
                break
            time.sleep(1)
        client = MobytClient(Settings.from_env(env))
        billed = Counter()
        for _, _, rows in client.sms_history_windows(began - timedelta(minutes=1),
                                                     datetime.now(timezone.utc) + timedelta(minutes=1)):
            billed.update(r.order_id for r in rows if r.order_id in set(ids))
        wall = time.monotonic() - start
        due = set(store.redis.zrange(store.keys.due, 0, -1))  # before the records: a completion may race
        records = {o: store.get_order(o, with_history=False) for o in ids}
        lost = [o for o, r in records.items() if r is None or (r.state not in ("completed", "failed") and o not in due)]
        wrong = [o for o, r in records.items() if r and ((r.state in ("accepted", "completed")) != (billed[o] == 1))
                 and r.state != "in_doubt"]
        duplicates = sum(1 for n in billed.values() if n > 1)
        in_doubt = sum(1 for r in records.values() if r and r.state == "in_doubt")
        print(f"orders={len(ids)} faults={injected} billed={sum(billed.values())} duplicates={duplicates} "
              f"lost={len(lost)} disagree={len(wrong)} in_doubt={in_doubt} "
              f"states={dict(Counter(r.state if r else 'missing' for r in records.values()))} wall={wall:.1f}s")
        return 0 if duplicates == 0 and not lost and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
