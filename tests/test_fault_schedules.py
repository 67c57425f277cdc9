"""Property: whatever faults the provider and the worker suffer, each order is billed at
most once and its final record agrees with the provider. Hypothesis draws fault sequences
on SENDSMS, SMSSTATUS and SMSHISTORY (answer lost before or after the provider committed,
5xx, 408, 429, KO, garbage, a hang past the read timeout) and worker SIGKILLs; they run
against the simulator over HTTP through one real worker and beat, shared by the examples."""

from __future__ import annotations

import itertools
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobyt_worker.connection import connect
from mobyt_worker.store import OrderStore

from .producer import bare_client, call
from .support import wait_for

SEND_FAULTS = ["drop", "lost_answer", "http500", "http503", "http408", "http429", "garbage", "slow", "ko"]
READ_FAULTS = ["drop", "http503", "garbage", "ko", "slow"]
SETTLED = ("accepted", "completed", "failed", "in_doubt")
ENV = {"MOBYT_DOUBT_LIMIT": "4", "MOBYT_READ_TIMEOUT": "1"}
_ids = itertools.count()

schedules = st.fixed_dictionaries({
    "SENDSMS": st.lists(st.sampled_from(SEND_FAULTS), max_size=3),
    "SMSSTATUS": st.lists(st.sampled_from(READ_FAULTS), max_size=3),
    "SMSHISTORY": st.lists(st.sampled_from(READ_FAULTS), max_size=2),
    "kill_after": st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.5)),
})


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(schedule=schedules)
def test_every_fault_schedule_bills_at_most_once_and_the_record_agrees(schedule, redis_url, simulator,
                                                                       start_process, request):
    procs = request.node.__dict__.setdefault("procs", {})
    if not procs:  # one worker and one beat for all examples
        procs["worker"] = start_process("worker", env=ENV)
        procs["beat"] = start_process("beat", env=ENV)
        procs["store"] = OrderStore(connect(redis_url), "mobyt")
        procs["client"] = bare_client(redis_url)
    store: OrderStore = procs["store"]
    simulator.reset()
    for function in ("SENDSMS", "SMSSTATUS", "SMSHISTORY"):
        for kind in schedule[function]:
            simulator.inject_fault(function, kind, delay=1.5 if kind == "slow" else 0.3)
    order_id = f"PROP{next(_ids)}T{int(time.time())}"
    call(procs["client"], "mobyt.send_sms", recipients=["+33612345670"], message="p", sender="ACME",
         order_id=order_id)
    if schedule["kill_after"] is not None:  # after the claim: the broker's own kill window is not ours
        wait_for(lambda: store.get_order(order_id), timeout=20, what=f"{order_id} claimed")
        time.sleep(schedule["kill_after"])
        procs["worker"].kill()
        procs["worker"].start()
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
        assert store.redis.zscore(store.keys.due, order_id) is not None or record.state == "failed", schedule
