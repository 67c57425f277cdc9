"""The inbox exactly once: real Redis, real worker processes, the simulator over HTTP.

SRNEWMESSAGES is destructive, so every test that loses an answer checks that the
messages come back through reconciliation (SRHISTORYBYID), and that nothing is doubled.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mobyt_worker import cli
from mobyt_worker.errors import InvalidInput, ProviderDisconnected, RecipientOptedOut
from mobyt_worker.store.inbox import InboxStore
from mobyt_worker.provider.protocol import InboundMessage

from ..producer import bare_client, call, run
from ..support import wait_for

PARIS = ZoneInfo("Europe/Paris")
SENDERS = ["+33612345671", "+33612345672", "0033698765431", "+33698765432", "+32470123451"]
TEXTS = [
    "a|b|c", "x;y;z;", "1+1=2", "100% sûr", "Très bien, déjà vu: éèêàçù",
    "pipes|and;semis", "plus+plus ++", "50%+ off | today;", "Ça marche € ~ ^ { } [ ]", "&amp=&%26",
]


def text_for(i: int) -> str:
    return f"{TEXTS[i % len(TEXTS)]} #{i}"


@pytest.fixture
def inbox(runtime) -> InboxStore:
    return runtime.inbox


def stored_texts(inbox: InboxStore) -> dict[int, str]:
    return {m["id"]: m["text"] for m in inbox.recent(limit=1000)}


def assert_exactly_once(inbox: InboxStore, expected: dict[int, str]) -> None:
    assert stored_texts(inbox) == expected
    assert inbox.count() == len(expected)
    entries = inbox.redis.xrange(inbox.keys.inbound)
    assert len(entries) == len(expected)
    assert sorted(int(fields["id"]) for _, fields in entries) == sorted(expected)
    assert {int(f["id"]): f["text"] for _, f in entries} == expected


def test_store_is_idempotent_when_many_threads_race(redis_client):
    inbox = InboxStore(redis_client, "t", country="FR")
    messages = [InboundMessage(i, "+33700000001", SENDERS[i % 5], text_for(i), datetime.now(PARIS), "")
                for i in range(1, 26)]
    sources = ["poll", "push", "reconcile"] * 3
    new_counts: list[int] = []

    def store_all(source: str) -> None:
        new_counts.append(inbox.store_all(reversed(messages), source=source).new)

    threads = [threading.Thread(target=store_all, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(new_counts) == 25
    assert_exactly_once(inbox, {m.id: m.text for m in messages})
    assert inbox.high_water_mark() == 25
    stored = inbox.get(7)
    assert stored["sender"] == SENDERS[2] and stored["text"] == text_for(7)
    assert datetime.fromisoformat(stored["received_at"]).utcoffset() is not None


def test_two_workers_polling_concurrently_plus_reconciliation_store_each_message_once(
        runtime, inbox, simulator, start_process, redis_url):
    start_process("worker", name="w1")
    start_process("worker", name="w2")
    client = bare_client(redis_url)
    expected: dict[int, str] = {}
    lost: list[int] = []
    pending = []
    for batch in range(5):
        if batch == 2:  # every earlier poll has answered, so the lost answer carries this batch
            for result in pending:
                result.get(timeout=20, propagate=False)
        ids = [simulator.add_inbound(SENDERS[n % 5], text_for(n)) for n in range(batch * 5, batch * 5 + 5)]
        expected.update({i: text_for(batch * 5 + k) for k, i in enumerate(ids)})
        if batch == 2:  # one answer lost on the way back: only reconciliation can recover it
            simulator.inject_fault("SRNEWMESSAGES", "lost_answer")
            lost = ids
        pending += [call(client, "mobyt.poll_inbox") for _ in range(4)]
        if batch == 0:  # the first messages are certainly the polls' (then everything races)
            for result in pending:
                result.get(timeout=20, propagate=False)
        pending.append(call(client, "mobyt.reconcile_inbox"))
    wait_for(lambda: inbox.count() >= 25, timeout=20, what="25 messages stored")
    for result in pending:  # every task finished: nothing more can arrive after this
        result.get(timeout=20, propagate=False)
    # recovered by the reconciliations the workers ran, before any asked for here
    assert {inbox.get(i)["source"] for i in lost} == {"reconcile"}
    run(client, "mobyt.reconcile_inbox")
    run(client, "mobyt.poll_inbox")

    assert_exactly_once(inbox, expected)
    assert inbox.high_water_mark() == 25 and inbox.reconciled() == 25
    assert simulator.count("SRNEWMESSAGES") >= 20
    sources = {m["source"] for m in inbox.recent(limit=100)}
    assert sources <= {"poll", "reconcile"} and "poll" in sources
    received = inbox.get(1)["received_at"]
    assert datetime.fromisoformat(received).utcoffset() is not None  # zone-aware


def test_answer_lost_after_srnewmessages_is_recovered_by_reconciliation(inbox, simulator, start_process, redis_url):
    start_process("worker")
    client = bare_client(redis_url)
    lost = {simulator.add_inbound(SENDERS[i], text_for(i)): text_for(i) for i in range(5)}
    simulator.inject_fault("SRNEWMESSAGES", "lost_answer")  # the provider marks them read
    with pytest.raises(ProviderDisconnected):
        run(client, "mobyt.poll_inbox")
    assert simulator.count("SRNEWMESSAGES") == 1
    # the failed poll asked for a reconciliation at once
    wait_for(lambda: inbox.count() == 5, timeout=15, what="lost messages recovered")
    assert simulator.count("SRHISTORYBYID") >= 1
    assert {m["source"] for m in inbox.recent()} == {"reconcile"}
    run(client, "mobyt.poll_inbox")
    run(client, "mobyt.reconcile_inbox")
    assert_exactly_once(inbox, lost)


def test_worker_killed_after_srnewmessages_answered_loses_nothing(inbox, simulator, start_process, redis_url):
    """The answer is on its way when the worker dies; newer messages are then polled
    by another worker, so the high-water mark passes the lost ones: reconciliation must
    still find them (it has its own cursor)."""
    w1 = start_process("worker", name="w1")
    client = bare_client(redis_url)
    expected = {simulator.add_inbound(SENDERS[i], text_for(i)): text_for(i) for i in range(5)}
    simulator.inject_fault("SRNEWMESSAGES", "slow", delay=30)  # processed now, answered in 30 s
    call(client, "mobyt.poll_inbox")
    wait_for(lambda: simulator.count("SRNEWMESSAGES") == 1, timeout=15, what="SRNEWMESSAGES received")
    w1.kill()  # SIGKILL: the provider has marked messages 1-5 read, nobody stores them

    start_process("worker", name="w2")
    later = {simulator.add_inbound(SENDERS[i], text_for(10 + i)): text_for(10 + i) for i in range(3)}
    run(client, "mobyt.poll_inbox")
    assert stored_texts(inbox) == later
    assert inbox.high_water_mark() == 8  # past the lost ids 1-5

    result = run(client, "mobyt.reconcile_inbox")
    assert result["new"] == 5 and result["from_id"] == 0 and result["reconciled"] == 8
    expected.update(later)
    assert_exactly_once(inbox, expected)
    assert all(inbox.get(i)["source"] == "reconcile" for i in range(1, 6))
    run(client, "mobyt.reconcile_inbox")  # nothing new: the cursor moved to 8
    assert simulator.requests("SRHISTORYBYID")[-1].params["id"] == "8"
    assert_exactly_once(inbox, expected)


def test_stop_then_send_is_refused_before_any_http_call(runtime, inbox, simulator, start_process, redis_url):
    start_process("worker")
    client = bare_client(redis_url)
    simulator.add_inbound("0033612345671", "stop")  # any case, international 00 prefix
    simulator.add_inbound("+33612345672", "Stopping by later")  # not a STOP
    result = run(client, "mobyt.poll_inbox")
    assert result["new"] == 2 and result["stops"] == 1
    assert set(runtime.optouts.all()) == {"+33612345671"}  # E.164, as sends are checked
    events = [f for _, f in runtime.redis.xrange(runtime.store.keys.events) if f["type"] == "optout"]
    assert [(e["number"], e["message_id"]) for e in events] == [("+33612345671", "1")]

    with pytest.raises(RecipientOptedOut) as refused:
        run(client, "mobyt.send_sms", recipients=["06 12 34 56 71", "+33612345672"], message="Promo")
    assert refused.value.field == "recipients" and "+336*****71" in refused.value.message
    assert simulator.count("SENDSMS") == 0

    runtime.optouts.clear("+33612345671")  # the documented way back (mobyt optouts --clear)
    assert run(client, "mobyt.send_sms", recipients=["0612345671"], message="Bienvenue")["status"] == "accepted"
    assert simulator.count("SENDSMS") == 1


def test_inbox_history_wraps_srhistory_and_srhistorybyid(simulator, start_process, redis_url):
    start_process("worker")
    client = bare_client(redis_url)
    for i in range(3):
        simulator.add_inbound(SENDERS[i], text_for(i))
    rows = run(client, "mobyt.inbox_history", since_id=1)
    assert [r["id"] for r in rows] == [2, 3] and rows[0]["text"] == text_for(1)
    assert datetime.fromisoformat(rows[0]["received_at"]).utcoffset() is not None
    now = datetime.now(PARIS).replace(microsecond=0)
    hour = timedelta(hours=1)
    rows = run(client, "mobyt.inbox_history", date_from=(now - hour).isoformat(), date_to=(now + hour).isoformat())
    assert [r["id"] for r in rows] == [1, 2, 3]
    before = simulator.count("SRHISTORYBYID") + simulator.count("SRHISTORY")
    for kwargs, field in [({"since_id": "x"}, "since_id"), ({"since_id": -1}, "since_id"),
                          ({}, "date_from"), ({"date_from": now.isoformat()}, "date_to"),
                          ({"date_from": "yesterday", "date_to": now.isoformat()}, "date_from"),
                          ({"since_id": 0, "date_from": now.isoformat()}, "since_id")]:
        with pytest.raises(InvalidInput) as bad:
            run(client, "mobyt.inbox_history", **kwargs)
        assert bad.value.field == field, kwargs
    assert simulator.count("SRHISTORYBYID") + simulator.count("SRHISTORY") == before
    assert simulator.count("SRNEWMESSAGES") == 0  # a history query never consumes the inbox


def test_cli_lists_and_clears_optouts_and_lists_the_stored_inbox(
        runtime, inbox, worker_env, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    inbox.store(InboundMessage(4, "+33700000001", "0612345671", "STOP", None, "STOP"), source="push")
    inbox.store(InboundMessage(5, "+33700000001", "+33612345672", "a|b;c +%", None, ""), source="poll")

    assert cli.main(["optouts", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["number"] == "+33612345671" and row["message_id"] == 4
    assert cli.main(["inbox", "--stored", "--json"]) == 0
    assert [(m["id"], m["text"], m["source"]) for m in json.loads(capsys.readouterr().out)] == [
        (5, "a|b;c +%", "poll"), (4, "STOP", "push")]

    assert cli.main(["optouts", "--clear", "06 12 34 56 71"]) == 0  # any spelling of the number
    assert capsys.readouterr().out.strip() == "cleared +33612345671"
    assert runtime.optouts.all() == {}
    assert cli.main(["optouts", "--clear", "+33612345671", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"number": "+33612345671", "cleared": False}
