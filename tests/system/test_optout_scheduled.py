"""After a number texts STOP it receives nothing more, not even what was scheduled for it
before: real worker and beat processes, real Redis, the simulator over HTTP. The STOP
comes in through the simulator's inbound route; the scheduled time comes by moving the
simulator's clock, and the simulator then says what it handed to the network."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Iterator
from zoneinfo import ZoneInfo

import pytest
import requests

from mobyt_worker.contract import replacement_order_id
from mobyt_worker.store.optouts import OptOuts
from mobyt_worker.sandbox import ProviderSimulator

from ..conftest import LOGIN, PASSWORD
from ..producer import bare_client, run
from ..support import wait_for

PARIS = ZoneInfo("Europe/Paris")
A, B = "+33612345671", "+33612345672"


class Clock:
    """The simulator's clock: real time, plus what a test moved it by."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def simulator(clock: Clock) -> Iterator[ProviderSimulator]:
    sim = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.6, timeout_after=3.0, clock=clock)
    yield sim
    sim.close()


def test_a_stop_withdraws_what_was_scheduled_for_the_number(clock, simulator, provider, start_process, runtime,
                                                            redis_url):
    start_process("worker")
    start_process("beat")  # polls the inbox every 0.5 s
    client = bare_client(redis_url)
    at = (datetime.now(PARIS) + timedelta(hours=1)).replace(microsecond=0)
    for order_id, recipients in (("ALONE1", [A]), ("SHARED1", [A, B])):
        sent = run(client, "mobyt.send_sms", recipients=recipients, message="Rappel: RDV demain 9h",
                   scheduled_at=at.isoformat(), order_id=order_id)
        assert sent["status"] == "scheduled"
    assert set(simulator.scheduled()) == {"ALONE1", "SHARED1"}

    answer = requests.post(f"{provider.url}/_sim/inbound", json={"sender": "06 12 34 56 71", "text": "Arrêt svp"},
                           timeout=5)
    assert answer.ok
    new = replacement_order_id("SHARED1")
    wait_for(lambda: A in runtime.optouts.all() and runtime.optouts.pending() == 0, timeout=30,
             what="the STOP stored and applied")
    wait_for(lambda: (r := runtime.store.get_order(new)) is not None and r.state == "scheduled", timeout=30,
             what="the replacement scheduled")

    assert sorted(r.params["order_id"] for r in simulator.requests("REMOVE_DELAYED")) == ["ALONE1", "SHARED1"]
    assert simulator.scheduled() == {new: {"recipients": [B], "scheduled_at": at.timestamp()}}
    assert simulator.billed_sends(new) == 1
    alone, shared, replacement = (runtime.store.require_order(oid) for oid in ("ALONE1", "SHARED1", new))
    assert (alone.state, alone.replaced_by) == ("cancelled", None)
    assert (shared.state, shared.replaced_by) == ("cancelled", new)
    assert (replacement.replaces, list(replacement.recipients)) == ("SHARED1", [B])
    assert datetime.fromisoformat(replacement.scheduled_at or "") == at
    events = [f for _, f in runtime.redis.xrange(runtime.store.keys.events) if f.get("reason") == "optout"]
    assert sorted((e["order_id"], e["replaced_by"]) for e in events) == [("ALONE1", ""), ("SHARED1", new)]

    assert run(client, "mobyt.apply_optout", number=A)["orders"] == {}  # a redelivery finds nothing left
    clock.ahead = 2 * 3600  # the scheduled time has come and gone
    assert simulator.deliveries(A) == []
    assert simulator.deliveries(B) == [{"order_id": new, "recipient": B}]
    assert simulator.billed_sends(new) == 1



def test_a_stop_whose_application_was_never_published_is_applied_by_the_beat(simulator, start_process, runtime,
                                                                            redis_url):
    fast = {"MOBYT_REPLAY_AFTER": "1"}
    start_process("worker", env=fast)
    start_process("beat", env=fast)
    at = (datetime.now(PARIS) + timedelta(hours=1)).replace(microsecond=0)
    run(bare_client(redis_url), "mobyt.send_sms", recipients=[A], message="Rappel", scheduled_at=at.isoformat(),
        order_id="LOST1")
    OptOuts(runtime.redis, runtime.settings.key_prefix, replay_after=1).add(A)  # stored; no task published
    wait_for(lambda: runtime.optouts.pending() == 0, timeout=30, what="the beat's replay applying the STOP")
    assert [r.params["order_id"] for r in simulator.requests("REMOVE_DELAYED")] == ["LOST1"]
    assert runtime.store.require_order("LOST1").state == "cancelled" and simulator.scheduled() == {}
