"""A STOP applied to the orders scheduled before it (withdraw.py), in this process: the send
task in Celery's eager mode (no broker), fakeredis, the simulator over HTTP. A run that
stops between two steps is run again and finishes the work without sending twice."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import fakeredis
import pytest

from mobyt_worker import withdraw
from mobyt_worker.config import Secret, Settings
from mobyt_worker.contract import replacement_order_id
from mobyt_worker.errors import ProviderConnectError, RecipientOptedOut
from mobyt_worker.runtime import Runtime
from mobyt_worker.sandbox import ProviderSimulator, SimulatorServer

LOGIN, PASSWORD = "acme", "withdraw-s3cret"
A, B, C = "+33612345671", "+33612345672", "+33612345673"
PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def sim() -> Iterator[tuple[ProviderSimulator, str]]:
    simulator = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.0)
    server = SimulatorServer(simulator).start()
    yield simulator, server.url
    server.stop()
    simulator.close()


@pytest.fixture
def rt(sim, monkeypatch) -> Iterator[Runtime]:
    """The Runtime every task of this process gets, on fakeredis and the simulator."""
    from mobyt_worker.worker import app

    settings = Settings(login=LOGIN, password=Secret(PASSWORD), base_url=sim[1], key_prefix="t", default_sender="ACME",
                        connect_timeout=1, read_timeout=2)
    built = Runtime(settings, app=app)
    built.__dict__["redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    monkeypatch.setattr(app, "_runtime", (os.getpid(), built))  # what app.runtime hands every task
    yield built
    built.close()


AT = (datetime.now(PARIS) + timedelta(hours=2)).replace(microsecond=0)


def send(order_id: str, recipients: list[str], **kwargs: Any) -> dict[str, Any]:
    from mobyt_worker.tasks import send_sms

    kwargs = {"recipients": recipients, "message": "Rappel: RDV demain", "scheduled_at": AT.isoformat(),
              "order_id": order_id, **kwargs}
    return send_sms.apply(kwargs=kwargs).get()


def run_published(task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    from mobyt_worker.tasks import send_sms

    return send_sms.apply(kwargs=kwargs, task_id=task_id).get()


class Publisher:
    """What apply_optout publishes (here: sends run by the test), failing the first ``crash`` calls."""

    def __init__(self, crash: int = 0) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.crash = crash

    def __call__(self, task_id: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((task_id, kwargs))
        if len(self.calls) <= self.crash:
            raise SystemExit("the worker died here")


def test_a_stop_cancels_the_number_s_own_order_and_replaces_a_shared_one(rt, sim):
    simulator = sim[0]
    assert send("ALONE1", [A])["status"] == send("SHARED1", [A, B, C])["status"] == "scheduled"
    assert set(simulator.scheduled()) == {"ALONE1", "SHARED1"}
    rt.optouts.add(A)
    publish = Publisher()

    assert withdraw.apply(rt, A, publish) == {"ALONE1": withdraw.CANCELLED, "SHARED1": withdraw.REPLACED}
    new = replacement_order_id("SHARED1")
    [(task_id, kwargs)] = publish.calls
    assert (kwargs["recipients"], kwargs["order_id"], kwargs["replaces"]) == ([B, C], new, "SHARED1")
    assert datetime.fromisoformat(kwargs["scheduled_at"]) == AT
    assert sorted(r.params["order_id"] for r in simulator.requests("REMOVE_DELAYED")) == ["ALONE1", "SHARED1"]
    assert simulator.scheduled() == {}
    alone, shared = rt.store.require_order("ALONE1"), rt.store.require_order("SHARED1")
    assert (alone.state, alone.replaced_by, shared.state, shared.replaced_by) == ("cancelled", None, "cancelled", new)
    assert rt.store.require_order(new).state == "queued"  # an intent: replayed if its message is lost
    events = [f for _, f in rt.redis.xrange(rt.store.keys.events) if f.get("state") == "cancelled"]
    assert [(e["order_id"], e["reason"], e["replaced_by"]) for e in events] == [
        ("ALONE1", "optout", ""), ("SHARED1", "optout", new)]

    assert run_published(task_id, kwargs)["status"] == "scheduled"
    assert simulator.scheduled() == {new: {"recipients": [B, C], "scheduled_at": AT.timestamp()}}
    replacement = rt.store.require_order(new)
    assert (replacement.state, replacement.replaces, sorted(replacement.recipients)) == ("scheduled", "SHARED1", [B, C])
    assert rt.store.scheduled_for(A) == [] and rt.store.scheduled_for(B) == [new]
    assert withdraw.apply(rt, A, publish) == {} and len(publish.calls) == 1  # nothing left for A


def test_a_run_that_died_between_two_steps_is_finished_by_the_next_and_the_replacement_billed_once(rt, sim):
    simulator = sim[0]
    send("SHARED1", [A, B])
    rt.optouts.add(A)
    died = Publisher(crash=1)
    with pytest.raises(SystemExit):  # REMOVE_DELAYED answered, the intent written and published, then it died
        withdraw.apply(rt, A, died)
    assert simulator.scheduled() == {} and rt.store.require_order("SHARED1").state == "scheduled"

    publish = Publisher()
    assert withdraw.apply(rt, A, publish) == {"SHARED1": withdraw.REPLACED}  # on evidence: SMSSTATUS says gone
    assert simulator.count("REMOVE_DELAYED") == 2 and simulator.count("SMSSTATUS") == 1
    assert publish.calls == died.calls  # the same task id and kwargs: the same order
    for task_id, kwargs in died.calls + publish.calls:  # both messages reach a worker
        assert run_published(task_id, kwargs)["recipients"] == [B]
    assert simulator.billed_sends() == 2  # SHARED1 once, its replacement once
    assert simulator.scheduled() == {replacement_order_id("SHARED1"): {"recipients": [B], "scheduled_at": AT.timestamp()}}


def test_an_order_is_withdrawn_only_on_evidence(rt, sim):
    simulator = sim[0]
    send("SHARED1", [A, B])
    rt.optouts.add(A)
    simulator.inject_fault("REMOVE_DELAYED", "ko")  # refused, and SMSSTATUS still lists the order
    assert withdraw.apply(rt, A, Publisher()) == {"SHARED1": withdraw.WAIT}
    assert set(simulator.scheduled()) == {"SHARED1"} and rt.store.require_order("SHARED1").state == "scheduled"
    assert withdraw.apply(rt, A, Publisher()) == {"SHARED1": withdraw.REPLACED}


def test_an_order_being_sent_waits_and_one_that_never_left_needs_no_provider(rt, sim):
    simulator = sim[0]
    request = json.dumps({"recipients": [A, B], "message": "Rappel", "message_type": "N", "sender": "ACME",
                          "scheduled_at": AT.isoformat()})
    meta = {"message_type": "N", "scheduled_at": AT.isoformat(), "request": request}
    tokens = [rt.store.claim_send(order_id, meta, lock_seconds=30, recipients=[A, B], scheduled_epoch=AT.timestamp())[2]
              for order_id in ("SENDING1", "UNSENT1")]
    token = tokens[1]
    rt.store.mark_unsent("UNSENT1", ProviderConnectError("refused"), token)  # surely never reached the provider
    rt.store.release_send("UNSENT1", token)
    rt.optouts.add(A)
    publish = Publisher()

    assert withdraw.apply(rt, A, publish) == {"SENDING1": withdraw.WAIT, "UNSENT1": withdraw.REPLACED}
    assert simulator.count("REMOVE_DELAYED") == 0
    assert [k["recipients"] for _, k in publish.calls] == [[B]]
    assert rt.store.require_order("SENDING1").state == "sending" and rt.store.scheduled_for(A) == ["SENDING1"]


def test_a_replacement_drops_a_recipient_who_sent_stop_before_its_claim(rt, sim):
    simulator = sim[0]
    rt.optouts.add(B)
    with pytest.raises(RecipientOptedOut):  # an ordinary send naming B is refused whole
        send("ORDINARY1", [B, C])
    reply = send("NEW1", [B, C], replaces="OLD1")
    assert reply["recipients"] == [C] and simulator.requests("SENDSMS")[-1].params["recipient"] == C
    assert json.loads(rt.store.require_order("NEW1").request or "{}")["recipients"] == [C]
    with pytest.raises(RecipientOptedOut):  # nobody left
        send("NEW2", [B], replaces="OLD2")
    assert simulator.count("SENDSMS") == 1
