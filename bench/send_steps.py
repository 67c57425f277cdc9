"""CPU of each step of one send, in one thread, without Celery: what our own code costs.

The steps ``mobyt.send_sms`` runs for a new order, called the way the task calls them,
against a private redis-server and the simulator in its own process:

  validate  sms.build_send_request (numbers, GSM length, sender, order id)
  claim     OrderStore.claim_send (one Lua call: record, lock, opt-out check)
  post      MobytClient.send_sms (one SENDSMS over a kept-alive connection)
  accept    OrderStore.mark_accepted (one Lua call: state, recipients, first poll, event, unlock)

Beside them, ``peer``: the same SENDSMS as a plain ``requests.Session().post`` (what a
user writes instead, bench.benchapp's peer task), in the same thread, sends interleaved.

CPU is this thread's (``time.thread_time``), so waiting for Redis or the simulator is
not counted; each figure is the mean over N sends after 200 unmeasured ones.

    .venv/bin/python bench/send_steps.py [--sends 3000]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import requests
from harness import LOGIN, PASSWORD, Stack, machine

from mobyt_worker import sms
from mobyt_worker.config import Settings
from mobyt_worker.runtime import Runtime

STEPS = ("validate", "claim", "post", "accept")


def one_send(rt: Runtime, i: int, spent: dict[str, float]) -> None:
    s = rt.settings
    t0 = time.thread_time()
    request = sms.build_send_request(
        recipients=[f"+336{i:07d}{i % 6}"], message=f"Votre code: {i:06d}", message_type="N", sender="BENCH",
        order_id=f"STEP{i:012d}", country=s.country, tz=s.timezone, now=datetime.now(timezone.utc))
    t1 = time.thread_time()
    meta = {"message_type": "N", "sender": "BENCH", "batch_id": None, "scheduled_at": None,
            "parts": request.length.parts, "credits": request.credits, "task_id": f"t{i}", "recipient_count": 1}
    verdict, _, token = rt.store.claim_send(f"STEP{i:012d}", meta, lock_seconds=40,
                                            recipients=request.recipients)
    assert verdict == "send", verdict
    t2 = time.thread_time()
    rt.client.send_sms(request)
    t3 = time.thread_time()
    rt.store.mark_accepted(f"STEP{i:012d}", scheduled=False, recipients=request.recipients,
                           first_poll_at=time.time() + 15, release_token=token)
    t4 = time.thread_time()
    for step, cost in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        spent[step] += cost


def peer_post(session: requests.Session, url: str, i: int) -> float:
    """CPU of one SENDSMS posted the way bench.benchapp's peer task posts it."""
    t0 = time.thread_time()
    answer = session.post(url, timeout=(5.0, 30.0), data={
        "login": LOGIN, "password": PASSWORD, "message_type": "N", "recipient": f"+336{i:07d}{i % 6}",
        "message": f"Votre code: {i:06d}", "sender": "BENCH"})
    answer.raise_for_status()
    return time.thread_time() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=3000, help="measured sends (default 3000)")
    args = parser.parse_args()
    print(machine())
    with Stack() as stack:
        server = stack.redis()
        sim = stack.simulator()
        rt = Runtime(Settings.from_env({"REDIS_URL": server.url, "MOBYT_LOGIN": LOGIN, "MOBYT_PASSWORD": PASSWORD,
                                        "MOBYT_BASE_URL": sim.url}))
        spent = dict.fromkeys(STEPS, 0.0)
        for i in range(200):  # warm-up: connections, scripts loaded, caches
            one_send(rt, i, spent)
        session, url, peer = requests.Session(), rt.settings.url_for("SENDSMS"), 0.0
        for i in range(200):
            peer_post(session, url, i)
        spent = dict.fromkeys(STEPS, 0.0)
        for i in range(200, 200 + args.sends):
            one_send(rt, i, spent)
            peer += peer_post(session, url, i)
        billed = sim.stats()["billed"] - 200 - args.sends  # ours only
        rt.close()
    total = sum(spent.values())
    print(f"{args.sends} sends, one thread, CPU per send (mean):")
    for step in STEPS:
        print(f"  {step:<9} {spent[step] / args.sends * 1e6:6.0f} µs")
    print(f"  {'total':<9} {total / args.sends * 1e6:6.0f} µs   (billed by the simulator: {billed})")
    print(f"  {'peer':<9} {peer / args.sends * 1e6:6.0f} µs   requests.Session().post of the same SENDSMS "
          f"(post / peer = {spent['post'] / peer:.2f})")
    return 0 if billed == args.sends + 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
