"""The order's one state machine (states.py): every event the table names, from every
state, through the store's methods and the Lua scripts, on fakeredis and on a real Redis.
An allowed move changes the record and emits what the table says; any other leaves the
record byte for byte as it was and emits nothing."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any, Callable

import pytest
import redis

from mobyt_worker.store import scripts
from mobyt_worker.errors import OrderNotFound, OrderNotResendable, ProviderConnectError, ProviderRejected
from mobyt_worker.store.intents import Intents
from mobyt_worker.provider.protocol import RecipientStatus, Status
from mobyt_worker.states import (
    CANCELLED,
    COMPLETED,
    FINAL_STATES,
    IN_DOUBT,
    OPEN_STATES,
    QUEUED,
    TRANSITIONS,
    UNSETTLED,
    Event,
    OrderState,
    allowed,
    sources,
)
from mobyt_worker.store.orders import OrderStore, now_iso

OID, A, TOKEN = "ORDER1", "+33612345670", "attempt-1"
SOURCES: list[OrderState | None] = [None, *OrderState]


# --- the table -----------------------------------------------------------------------------


def test_every_state_is_queued_open_or_final():
    assert {QUEUED} | OPEN_STATES | FINAL_STATES == set(OrderState)
    assert not OPEN_STATES & FINAL_STATES and QUEUED not in OPEN_STATES | FINAL_STATES
    assert UNSETTLED < OPEN_STATES
    assert FINAL_STATES == {COMPLETED, OrderState.EXPIRED, OrderState.FAILED, CANCELLED}


def test_every_state_and_the_end_of_a_record_is_the_target_of_some_event():
    """So the walk below tries every (from, to) pair, allowed or not."""
    assert {t.target for t in TRANSITIONS.values()} == set(SOURCES)
    assert allowed(None, QUEUED) and allowed(QUEUED, None) and not allowed(COMPLETED, IN_DOUBT)


def test_each_row_names_a_writer_that_exists():
    writers = {t.writer for t in TRANSITIONS.values()}
    assert {w[:-4] for w in writers if w.endswith(".lua")} == scripts.ORDER_SCRIPTS
    assert all(callable(getattr(OrderStore, w)) for w in writers if not w.endswith(".lua"))


def test_a_caller_may_narrow_an_event_but_never_widen_it():
    assert sources(Event.FAIL, ["in_doubt"]) == {IN_DOUBT}
    with pytest.raises(ValueError, match="fail never moves an order from accepted"):
        sources(Event.FAIL, ["accepted"])


def test_the_states_keep_their_stored_spelling():
    assert [str(s) for s in OrderState] == ["queued", "sending", "unsent", "scheduled", "accepted", "completed",
                                            "expired", "failed", "cancelled", "in_doubt"]
    assert f"{IN_DOUBT}" == "in_doubt" and json.dumps({"state": IN_DOUBT}) == '{"state": "in_doubt"}'


def test_the_lua_table_is_the_python_table(redis_client):
    """Generated, then read back by Redis's own Lua: names, sets, and ``move`` for every
    event from every state."""
    names = [s or "" for s in SOURCES]
    probe = scripts.prelude() + """
local moves = {}
for event in pairs(TRANSITION) do
  moves[event] = {}
  for _, s in ipairs(cjson.decode(ARGV[1])) do moves[event][s] = move(event, s ~= '' and s or false) or cjson.null end
end
return cjson.encode({STATE=STATE, UNSETTLED=UNSETTLED, TRANSITION=TRANSITION, moves=moves})"""
    lua = json.loads(redis_client.eval(probe, 0, json.dumps(names)))
    assert lua["STATE"] == {s.name: s.value for s in OrderState}
    assert lua["UNSETTLED"] == dict.fromkeys(UNSETTLED, True)
    assert lua["TRANSITION"] == {
        event.value: {"to": t.target or "", "from": {s or "": True for s in t.sources}}
        for event, t in TRANSITIONS.items()}
    assert lua["moves"] == {
        event.value: {s or "": ((t.target or "") if s in t.sources else None) for s in SOURCES}
        for event, t in TRANSITIONS.items()}


def _lua_code(name: str) -> str:
    text = files("mobyt_worker.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return re.sub(r"--[^\n]*", "", text)


def test_no_lua_script_spells_a_state_and_each_that_reads_one_gets_the_table():
    names = [p.name[:-4] for p in files("mobyt_worker.store").joinpath("lua").iterdir() if p.name.endswith(".lua")]
    spelled = {n for n in names if re.search(r"'(%s)'" % "|".join(OrderState), _lua_code(n))}
    assert spelled == set()
    reading = {n for n in names if "'state'" in _lua_code(n)}
    assert reading == scripts.ORDER_SCRIPTS
    assert all(scripts.source(n).startswith(scripts.prelude()) for n in reading)


# --- the walk ------------------------------------------------------------------------------


class Order:
    """One order, put in a state by hand, then moved only through the store and the scripts."""

    def __init__(self, client: redis.Redis) -> None:
        self.store = OrderStore(client, "t", ttl=3600, poll_intervals=(10, 20))
        self.intents = Intents(client, "t", ttl=3600, replay_after=60)
        self.redis, self.keys = client, self.store.keys

    def put(self, state: OrderState | None) -> None:
        if state is None:
            return
        now = time.time()
        self.redis.hset(self.keys.order(OID), mapping={
            "order_id": OID, "state": state, "created_at": now_iso(now), "task_id": "send-1", "message_type": "N",
            "request": json.dumps({"recipients": [A], "message": "hi", "order_id": OID}), "polls": 0,
            "final": int(state in FINAL_STATES), "cancelled": int(state == CANCELLED), "attempts": 1,
            "attempt_token": TOKEN, "doubt": 1, "doubt_since": now, "claimed_at": now})
        done = state == COMPLETED
        self.redis.hset(self.keys.recipients(OID), A, json.dumps(
            {"status": "DLVRD" if done else "", "delivered_at": "", "changed_at": "", "final": int(done)}))
        self.redis.zadd(self.keys.due, {OID: now + 60})
        if state == IN_DOUBT:
            self.redis.zadd(self.keys.in_doubt, {OID: now + 3600})

    def field(self, name: str, value: Any) -> None:
        """A field the event also looks at (its state is what the table decides on)."""
        if self.redis.exists(self.keys.order(OID)):
            self.redis.hset(self.keys.order(OID), name, value)

    def record(self) -> dict[str, str]:
        return self.redis.hgetall(self.keys.order(OID))

    def order_events(self) -> list[dict[str, str]]:
        return [f for _, f in self.redis.xrange(self.keys.events) if f["type"] == "order"]


def _statuses(status: Status) -> Callable[[Order], Any]:
    at = datetime.now(timezone.utc) if status.is_final else None
    return lambda o: o.store.apply_statuses(OID, [RecipientStatus(A, status, at)], source="push")


def _resend(o: Order) -> None:
    try:
        o.store.allow_resend(OID)
    except (OrderNotResendable, OrderNotFound):
        pass


def _nothing(o: Order) -> None:
    pass


#: How each event is made to happen, as the workers make it: what it needs besides the
#: order's state (done before the record is compared), then the call.
EVENTS: dict[Event, tuple[Callable[[Order], Any], Callable[[Order], Any]]] = {
    Event.INTENT: (_nothing, lambda o: o.intents.record(OID, "send-2", {"recipients": [A], "message": "again"})),
    Event.BATCHED: (_nothing, lambda o: o.store.record_batch(OID, ["C0", "C1"])),
    Event.CLAIM: (lambda o: o.field("doubt", 0),  # no attempt in doubt: the claim of an unsent order sends
                  lambda o: o.store.claim_send(OID, {"message_type": "N"}, lock_seconds=5, token="claim-1")),
    Event.ACCEPT: (_nothing, lambda o: o.store.mark_accepted(OID, scheduled=False, recipients=[A],
                                                             first_poll_at=time.time())),
    Event.SCHEDULE: (_nothing, lambda o: o.store.mark_accepted(OID, scheduled=True, recipients=[A],
                                                               first_poll_at=time.time())),
    Event.SENT: (_nothing, _statuses(Status.WAIT4DLVR)),
    Event.COMPLETE: (_nothing, _statuses(Status.DLVRD)),
    Event.UNSENT: (_nothing, lambda o: o.store.mark_unsent(OID, ProviderConnectError("refused"), TOKEN)),
    Event.ABSENT: (lambda o: o.redis.set(o.keys.send_lock(OID), TOKEN), lambda o: o.store.end_doubt(OID, TOKEN)),
    Event.RESEND: (_nothing, _resend),
    Event.FAIL: (_nothing, lambda o: o.store.mark_failed(OID, ProviderRejected("refused", "7"),
                                                         allowed=TRANSITIONS[Event.FAIL].sources - {None})),
    Event.DOUBT: (_nothing, lambda o: o.store.mark_in_doubt(OID, None)),
    Event.EXPIRE: (_nothing, lambda o: o.store.expire_order(OID)),
    Event.CANCEL: (_nothing, lambda o: o.store.mark_cancelled(OID, recipients=[A])),
}


def test_every_event_of_the_table_is_walked():
    assert set(EVENTS) == set(Event) == set(TRANSITIONS)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s or "none")
@pytest.mark.parametrize("event", list(Event), ids=str)
def test_an_event_moves_an_order_only_as_the_table_says(redis_client, event, source):
    row, order = TRANSITIONS[event], Order(redis_client)
    prepare, act = EVENTS[event]
    order.put(source)
    prepare(order)
    before = order.record()
    indexed = redis_client.zscore(order.keys.in_doubt, OID) is not None

    act(order)
    after, emitted = order.record(), order.order_events()

    if source not in row.sources:
        assert after == before, f"{event} from {source}: refused, yet the record changed"
        assert emitted == [], f"{event} from {source}: refused, yet it emitted {emitted}"
        assert (redis_client.zscore(order.keys.in_doubt, OID) is not None) == indexed
        return
    assert after != before, f"{event} from {source}: allowed, yet nothing was written"
    assert after.get("state") == (row.target and row.target.value)
    if row.target is None:
        assert after == {}
        return
    assert (after["final"] == "1") == (row.target in FINAL_STATES)
    assert [e["state"] for e in emitted] == ([row.emits] if row.emits else [])
    assert all(e["order_id"] == OID for e in emitted)
    assert (redis_client.zscore(order.keys.in_doubt, OID) is not None) == (row.target == IN_DOUBT)
