"""Property: whatever faults the provider and the worker suffer, each order is billed at
most once and its final record agrees with the provider. Hypothesis draws fault sequences
on SENDSMS, SMSSTATUS, SMSHISTORY and REMOVE_DELAYED (answer lost before or after the
provider committed, 5xx, 408, 429, KO, garbage, a hang past the read timeout) and a worker
SIGKILL at any moment after the enqueue, even before a worker took the message: the order
is sent through the producer, whose intent the beat replays if the broker lost the
message with the killed worker. They run against the simulator over HTTP through one real
worker and beat per test, shared by its examples."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobyt_worker import producer
from mobyt_worker.store.connection import connect
from mobyt_worker.store.orders import OrderStore

from ..producer import bare_client, call
from ..support import wait_for

SEND_FAULTS = ["drop", "lost_answer", "http500", "http503", "http408", "http429", "garbage", "slow", "ko"]
READ_FAULTS = ["drop", "http503", "garbage", "ko", "slow"]
SETTLED = ("accepted", "completed", "failed", "in_doubt")
REPLAY_AFTER = 2.0
ENV = {"MOBYT_DOUBT_LIMIT": "4", "MOBYT_READ_TIMEOUT": "1", "MOBYT_CALL_DEADLINE": "2",
       "MOBYT_REPLAY_AFTER": str(REPLAY_AFTER)}
NUMBER = "+33612345670"
_ids = itertools.count()
examples = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

schedules = st.fixed_dictionaries({
    "SENDSMS": st.lists(st.sampled_from(SEND_FAULTS), max_size=3),
    "SMSSTATUS": st.lists(st.sampled_from(READ_FAULTS), max_size=3),
    "SMSHISTORY": st.lists(st.sampled_from(READ_FAULTS), max_size=2),
    "kill_after": st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.5)),
})
cancel_schedules = st.fixed_dictionaries({
    "REMOVE_DELAYED": st.lists(st.sampled_from(SEND_FAULTS), min_size=1, max_size=3),
    "SMSSTATUS": st.lists(st.sampled_from(READ_FAULTS), max_size=2),  # the read after a refusal
    "kill_after": st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
})


def _stack(request: pytest.FixtureRequest, redis_url: str, start_process: Any) -> dict[str, Any]:
    """One worker, one beat, a store and two producers for all examples of a test."""
    procs = request.node.__dict__.setdefault("procs", {})
    if not procs:
        procs["worker"] = start_process("worker", env=ENV)
        procs["beat"] = start_process("beat", env=ENV)
        procs["store"] = OrderStore(connect(redis_url), "mobyt")
        procs["client"] = bare_client(redis_url)
        procs["producer"] = producer.connect(redis_url, replay_after=REPLAY_AFTER)
    return procs


def _inject(simulator: Any, schedule: dict[str, Any]) -> None:
    for function, kinds in schedule.items():
        for kind in kinds if function.isupper() else ():
            simulator.inject_fault(function, kind, delay=1.5 if kind == "slow" else 0.3)


def _kill_after(procs: dict[str, Any], seconds: float | None) -> None:
    if seconds is not None:
        time.sleep(seconds)
        procs["worker"].kill()
        procs["worker"].start()


@examples
@given(schedule=schedules)
def test_every_fault_schedule_bills_at_most_once_and_the_record_agrees(schedule, redis_url, simulator,
                                                                       start_process, request):
    procs = _stack(request, redis_url, start_process)
    store: OrderStore = procs["store"]
    simulator.reset()
    _inject(simulator, schedule)
    order_id = f"PROP{next(_ids)}T{int(time.time())}"
    producer.send_sms(procs["producer"], [NUMBER], "p", sender="ACME", order_id=order_id)
    _kill_after(procs, schedule["kill_after"])  # the message may not even be taken yet
    record = wait_for(lambda: (r := store.get_order(order_id)) and r.state in SETTLED and r, timeout=60,
                      what=f"{order_id} settled ({schedule})")
    billed = simulator.billed_sends(order_id)
    assert billed <= 1, schedule
    if record.state in ("accepted", "completed"):
        assert billed == 1, schedule
    elif record.state == "failed":
        assert billed == 0, schedule
    else:  # in_doubt only while reads keep failing
        assert schedule["SMSSTATUS"] or schedule["SMSHISTORY"], schedule
        assert record.doubt
    if record.state != "completed":  # anything not final is still where the poller revisits it
        in_due = store.redis.zscore(store.keys.due, order_id) is not None
        assert in_due or store.require_order(order_id).state in ("completed", "failed"), schedule  # (or final since)


@examples
@given(schedule=cancel_schedules)
def test_a_cancel_under_faults_says_cancelled_only_if_the_provider_removed_the_order(schedule, redis_url, simulator,
                                                                                   start_process, request):
    """A scheduled order, then ``mobyt.cancel`` while REMOVE_DELAYED (and the SMSSTATUS read
    that follows a refusal) fail and the worker may be killed. The simulator knows whether
    the order is still to be sent (``stats()["orders"]``); the record may say ``cancelled``
    only if it is not, and an order not cancelled stays scheduled, followed, billed once,
    and a later cancel without faults still removes it."""
    procs = _stack(request, redis_url, start_process)
    store: OrderStore = procs["store"]
    simulator.reset()
    order_id = f"CANC{next(_ids)}T{int(time.time())}"
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    producer.send_sms(procs["producer"], [NUMBER], "c", sender="ACME", scheduled_at=when, order_id=order_id)
    wait_for(lambda: (r := store.get_order(order_id)) and r.state == "scheduled", timeout=30, what=f"{order_id} scheduled")
    _inject(simulator, schedule)
    result = call(procs["client"], "mobyt.cancel", order_id=order_id)
    _kill_after(procs, schedule["kill_after"])  # a killed cancel is redelivered and runs again
    try:
        result.get(timeout=40)
    except Exception:  # noqa: BLE001 - refused or unavailable: the record must say so, checked below
        pass
    record = store.require_order(order_id)
    still_to_send = simulator.stats()["orders"] == 1
    assert simulator.billed_sends(order_id) == 1, schedule
    if record.state == "cancelled":
        assert not still_to_send, schedule  # never "cancelled" while the provider will send it
    else:
        assert record.state == "scheduled", (record.state, schedule)
        assert store.redis.zscore(store.keys.due, order_id) is not None, schedule
        simulator.clear_faults()  # whatever fault was not consumed is gone: the provider answers
        assert call(procs["client"], "mobyt.cancel", order_id=order_id).get(timeout=30)["state"] == "cancelled"
        assert simulator.stats()["orders"] == 0 and simulator.billed_sends(order_id) == 1, schedule
