"""``mobyt demo``: the whole product on one machine, in well under a minute, with no account.

It starts, each as a subprocess in its own process group:

- the built-in simulator (``mobyt simulator``), a fake Mobyt on a free port, pushing
  statuses and inbound SMS to the web receiver;
- the web receiver (gunicorn serving ``mobyt_worker.web:wsgi_app()``, the
  Procfile's ``web`` line);
- one worker (``celery -A mobyt_worker.worker worker --pool threads``) and beat;

then tells the story as it happens: a send enqueued by name, its per-recipient statuses
arriving, a scheduled send cancelled, a bulk send split into chunks, an inbound SMS and a
STOP honoured, the credit balance, and the events read the way another service reads them
(``XREADGROUP`` with a consumer group). Every child is stopped at the end, also after an
error, Ctrl-C or SIGTERM: each process group gets SIGTERM, then SIGKILL.

Exit codes: 0 every step happened; 1 a step did not happen (the children's log tails are
printed); 2 the demo cannot run here (no Redis, a process did not start); 130 interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TextIO

from ..contract import CANCEL, CHECK_CREDITS, QUEUE
from ..store.credits import CreditsWatch
from .demo_env import CHUNK_SIZE, PREFIX
from .demo_stage import STEP_TIMEOUT, Events, Stage, StepFailed, post_json
from .processes import CannotRun, tail

#: Numbers whose last digit picks their fate in the simulator (see timeline.py).
DELIVERED, FAILED, REPLIES, STOPS = "+33612345670", "+33612345676", "+33612345672", "+33612345673"
BULK = [f"+3361000000{i}" for i in range(7)]


class Story(Stage):
    """The six steps, each checked: a step that does not happen raises :class:`StepFailed`."""

    def step_send(self) -> None:
        self.title("1. A send, enqueued by name (Celery + the broker URL, none of our code)")
        recipients = [DELIVERED, FAILED]
        self.say(f"send_task('mobyt.send_sms', kwargs={{'recipients': {recipients}, "
                 "'message': 'Your code is 4821', 'sender': 'DEMO'}, queue='mobyt')")
        reply = self.send(recipients=recipients, message="Your code is 4821", sender="DEMO").get(timeout=STEP_TIMEOUT)
        order_id = reply["order_id"]
        if reply["status"] != "accepted":
            raise StepFailed(f"send answered {reply}")
        self.say(f"accepted: order_id {order_id}, {len(reply['recipients'])} recipients, {reply['credits']} credits")
        self.handlers = [self._print_statuses(order_id)]
        record = self.watch(lambda: self.final(order_id), f"order {order_id} to reach final statuses")
        got = {r: s.status for r, s in record.recipients.items()}
        if got != {DELIVERED: "DLVRD", FAILED: "ERROR"}:
            raise StepFailed(f"unexpected final statuses {got}")
        self.say(f"order {record.state}: {DELIVERED} DLVRD at {record.recipients[DELIVERED].delivered_at}, "
                 f"{FAILED} ERROR; {record.polls} SMSSTATUS polls; billed sends at the provider: "
                 f"{self.stats()['billed']}")

    def _print_statuses(self, order_id: str) -> Callable[[str, dict[str, str]], None]:
        def show(stream: str, e: dict[str, str]) -> None:
            if e.get("order_id") != order_id:
                return
            if e["type"] == "status":
                self.say(f"  {e['recipient']}  {e['previous'] or '(new)':>9} -> {e['status']:<9} (by {e['source']})")
            elif e["type"] == "order":
                self.say(f"  order {e['state']}")
        return show

    def step_cancel(self) -> None:
        self.title("2. A scheduled send, cancelled")
        at = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(microsecond=0)
        self.handlers = []
        reply = self.send(recipients=[DELIVERED], message="See you tomorrow", scheduled_at=at.isoformat()
                          ).get(timeout=STEP_TIMEOUT)
        if reply["status"] != "scheduled":
            raise StepFailed(f"scheduled send answered {reply}")
        order_id = reply["order_id"]
        self.say(f"scheduled for {at.isoformat()}: order_id {order_id}")
        self.say(f"send_task('mobyt.cancel', kwargs={{'order_id': '{order_id}'}})")
        record = self.producer.send_task(CANCEL, kwargs={"order_id": order_id}, queue=QUEUE
                                         ).get(timeout=STEP_TIMEOUT)
        removed = self.stats()["counts"].get("REMOVE_DELAYED", 0)
        if record["state"] != "cancelled" or not record["cancelled"] or removed != 1:
            raise StepFailed(f"cancel gave state {record['state']!r}, REMOVE_DELAYED calls: {removed}")
        due = self.db.zscore(f"{PREFIX}:poll:due", order_id)
        self.say(f"cancelled: REMOVE_DELAYED sent once, state {record['state']}, "
                 f"polling {'stopped' if due is None else 'STILL SCHEDULED'}")
        if due is not None:
            raise StepFailed("the cancelled order is still due for polling")

    def step_bulk(self) -> None:
        self.title(f"3. A bulk send of {len(BULK)} recipients, split into chunks of {CHUNK_SIZE} "
                   "(MOBYT_BULK_CHUNK_SIZE)")
        before = self.stats()["counts"].get("SENDSMS", 0)
        reply = self.send(recipients=BULK, message="Flash sale today only").get(timeout=STEP_TIMEOUT)
        if reply.get("status") != "batched":
            raise StepFailed(f"bulk send answered {reply}")
        orders = reply["orders"]
        self.say(f"batch {reply['batch_id']}: {len(orders)} orders, one per chunk: {', '.join(orders)}")
        completed: dict[str, Any] = {}

        def all_done() -> bool:
            for index, oid in enumerate(orders):
                if oid not in completed and (record := self.final(oid)) is not None:
                    completed[oid] = record
                    counts = Counter(s.status for s in record.recipients.values())
                    self.say(f"  chunk {index + 1}/{len(orders)}  order {oid}  {len(record.recipients)} recipient(s)  "
                             f"{record.state}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            return len(completed) == len(orders)

        self.watch(all_done, f"the {len(orders)} chunk orders to complete")
        sizes = sorted(len(r.recipients) for r in completed.values())
        sent = self.stats()["counts"].get("SENDSMS", 0) - before
        batch = self.store.batch_orders(reply["batch_id"])
        if sizes != [1, CHUNK_SIZE, CHUNK_SIZE] or sent != len(orders) or batch != orders:
            raise StepFailed(f"chunks of {sizes}, {sent} SENDSMS calls, batch lists {batch}")
        self.say(f"{sent} SENDSMS calls, one per chunk; the batch is queryable as a whole "
                 f"(OrderStore.batch_orders('{reply['batch_id']}'))")

    def step_inbound(self) -> None:
        self.title("4. An inbound SMS, then a STOP, honoured")
        text = "Bonjour, je serai la a 15h"
        received: dict[str, dict[str, str]] = {}

        def inbound(stream: str, e: dict[str, str]) -> None:
            if e.get("type") == "inbound":
                received[e["id"]] = e
                self.say(f"  inbound #{e['id']} from {e['sender']}: {e['text']!r} (stored once, via {e['source']})")
            elif e.get("type") == "optout":
                received["optout"] = e
                self.say(f"  opt-out recorded for {e['number']} (message #{e['message_id']})")

        self.handlers = [inbound]
        self.say(f"a customer {REPLIES} texts {text!r} (simulator: POST /_sim/inbound)")
        post_json(f"{self.sim_url}/_sim/inbound", {"sender": REPLIES, "text": text})
        self.watch(lambda: any(e.get("text") == text for e in received.values()), "the inbound SMS")
        self.say(f"{STOPS} texts 'STOP'")
        post_json(f"{self.sim_url}/_sim/inbound", {"sender": STOPS, "text": "STOP"})
        self.watch(lambda: "optout" in received, "the opt-out")
        before = self.stats()["counts"].get("SENDSMS", 0)
        self.say(f"send_task('mobyt.send_sms', kwargs={{'recipients': ['{STOPS}'], ...}})")
        try:
            self.send(recipients=[STOPS], message="Last chance!").get(timeout=STEP_TIMEOUT)
        except Exception as exc:  # the task's error, rebuilt by Celery from the result backend
            refusal = f"{type(exc).__name__}: {exc}"
        else:
            raise StepFailed(f"a send to {STOPS} was accepted after STOP")
        after = self.stats()["counts"].get("SENDSMS", 0)
        if after != before or "opted out" not in refusal:
            raise StepFailed(f"refusal {refusal!r}; SENDSMS calls {before} -> {after}")
        self.say(f"refused before any HTTP call: {refusal}; SENDSMS calls at the provider unchanged ({after})")

    def step_credits(self) -> None:
        self.title("5. The credit balance")
        self.handlers = []
        self.say("send_task('mobyt.check_credits') (beat also runs it every 2 s)")
        self.producer.send_task(CHECK_CREDITS, queue=QUEUE).get(timeout=STEP_TIMEOUT)
        balances = CreditsWatch(self.db, PREFIX).balances()
        provider = self.stats()["credits"]
        if not balances or any(provider.get(b.field) != b.available for b in balances):
            raise StepFailed(f"stored balances {balances} differ from the provider's {provider}")
        for b in balances:
            self.say(f"  {b.message_type} {b.nation or '(abroad)':<8} {b.available:>6} credits  (stored at {b.at})")
        self.say(f"this demo spent {10000 - provider['N|FR']} SMS Top credits")

    def step_events(self) -> None:
        self.title("6. The events, as another service reads them (a consumer group of its own)")
        self.handlers = []
        crm = Events(self.db, "crm")
        crm.create("0")
        self.say(f"XGROUP CREATE {PREFIX}:events crm 0; XREADGROUP GROUP crm demo-1 STREAMS {PREFIX}:events "
                 f"{PREFIX}:inbound > ; XACK ...")
        for _ in range(2):  # then catch up both groups, for entries written meanwhile
            while list(crm.read(block_ms=200)):
                pass
            self.watch(lambda: True, "the story's own reader")
        kinds = Counter(f"{f['type']} {f.get('status') or f.get('state') or ''}".strip() for _, f in crm.seen)
        for kind, n in sorted(kinds.items()):
            self.say(f"  {n:>3} x {kind}")
        pending = crm.pending() + self.events.pending()
        if not crm.seen or len(crm.seen) != len(self.events.seen) or pending:
            raise StepFailed(f"crm read {len(crm.seen)}, the story read {len(self.events.seen)}, {pending} pending")
        self.say(f"each group gets every entry: crm read {len(crm.seen)}, the story's group "
                 f"{len(self.events.seen)}; all acknowledged, 0 pending")

    def run(self) -> None:
        self.start()
        for step in (self.step_send, self.step_cancel, self.step_bulk, self.step_inbound, self.step_credits,
                     self.step_events):
            step()



def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(out: TextIO = sys.stdout, environ: dict[str, str] | None = None) -> int:
    """Tell the story; returns the exit code (module docstring)."""
    story = Story(out, dict(os.environ if environ is None else environ))
    previous = signal.signal(signal.SIGTERM, _terminate)
    code = 0
    try:
        story.run()
    except CannotRun as exc:
        print(f"mobyt demo cannot run here: {exc}", file=sys.stderr, flush=True)
        code = 2
    except StepFailed as exc:
        print(f"\nmobyt demo FAILED: {exc}", file=sys.stderr, flush=True)
        for child in story.children:
            print(f"--- {child.name} log (last lines) ---\n{tail(child.output())}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr, flush=True)
        code = 130
    finally:
        try:
            story.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
    if code == 0:
        story.title(f"done in {time.monotonic() - story.started:.1f}s: every process stopped, "
                    f"the demo's keys removed from Redis")
    if code in (0, 130) or not story.children:
        shutil.rmtree(story.workdir, ignore_errors=True)
    else:
        print(f"logs kept in {story.workdir}", file=sys.stderr)
    return code
