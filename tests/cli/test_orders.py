"""`mobyt order`, `mobyt orders` and `mobyt batch`: what the workers recorded in a real Redis,
as tables for people (coloured on a terminal) and JSON for scripts."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from mobyt_worker import cli
from mobyt_worker.errors import ProviderRejected
from mobyt_worker.provider.protocol import RecipientStatus, Status
from mobyt_worker.store.orders import OrderStore

DLVRD, ERROR, WAITING = "+33612345670", "+33612345676", "+33612345671"
GREEN, RED, YELLOW = "\x1b[32m", "\x1b[31m", "\x1b[33m"


@pytest.fixture(autouse=True)
def env(worker_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def store(runtime) -> OrderStore:
    return runtime.store


def track(store: OrderStore, order_id: str, statuses: dict[str, Status | None], *, batch_id: str | None = None) -> None:
    """An order as a worker leaves it: claimed, accepted, then the statuses of one poll."""
    store.claim_send(order_id, {"message_type": "N", "sender": "ACME", "batch_id": batch_id, "task_id": f"t-{order_id}",
                                "credits": len(statuses), "parts": 1}, lock_seconds=5)
    store.mark_accepted(order_id, scheduled=False, recipients=list(statuses), first_poll_at=time.time() + 60)
    delivered = datetime(2026, 3, 9, 12, 6, 36, tzinfo=timezone.utc)
    rows = [RecipientStatus(r, s, delivered if s is Status.DLVRD else None) for r, s in statuses.items() if s]
    if rows:
        store.apply_statuses(order_id, rows, source="poll")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_order_shows_the_record_each_recipient_and_the_history(store, capsys):
    track(store, "ORDER1", {DLVRD: Status.DLVRD, ERROR: Status.ERROR})
    code, out, err = run(capsys, "order", "ORDER1")

    assert code == 0, err
    record, recipients, history = out.split("\n\n")
    assert record.splitlines()[0].split() == ["order", "ORDER1"]
    assert "state         completed" in record and "final         yes" in record and "polls         1" in record
    assert "task_id       t-ORDER1" in record and "sender        ACME" in record
    lines = recipients.splitlines()
    assert lines[0].split() == ["recipient", "status", "final", "delivered_at", "changed_at"]
    assert lines[1].split()[:4] == [DLVRD, "DLVRD", "yes", "2026-03-09T12:06:36+00:00"]
    assert lines[2].split()[:4] == [ERROR, "ERROR", "yes", "-"]
    assert [line.split()[1:] for line in history.strip().splitlines()[1:]] == [
        [DLVRD, "-", "DLVRD", "poll"], [ERROR, "-", "ERROR", "poll"]]
    assert "\x1b[" not in out  # not a terminal: no colour codes


def test_order_json_is_the_record_with_its_history(store, capsys):
    track(store, "ORDER2", {DLVRD: Status.WAIT4DLVR})
    code, out, _ = run(capsys, "order", "ORDER2", "--json")

    data = json.loads(out)
    assert code == 0
    assert data["order_id"] == "ORDER2" and data["state"] == "accepted" and data["final"] is False
    assert data["recipients"][DLVRD]["status"] == "WAIT4DLVR"
    assert [(h["recipient"], h["status"], h["source"]) for h in data["history"]] == [(DLVRD, "WAIT4DLVR", "poll")]
    assert "password" not in out.lower()


def test_unknown_and_invalid_order_ids_are_clear_errors(store, capsys):
    code, out, err = run(capsys, "order", "NOPE1")
    assert code == 1 and out == ""
    assert "no tracked order 'NOPE1'" in err
    code, _, err = run(capsys, "order", "bad:id")
    assert code == 2 and "[order_id]" in err


def test_colours_on_a_terminal_unless_no_color(store, capsys, monkeypatch):
    track(store, "ORDER3", {DLVRD: Status.DLVRD, ERROR: Status.ERROR, WAITING: Status.WAITING})
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    _, out, _ = run(capsys, "order", "ORDER3")
    assert f"{GREEN}DLVRD\x1b[0m" in out and f"{RED}ERROR\x1b[0m" in out and f"{YELLOW}WAITING\x1b[0m" in out
    plain = out.replace(GREEN, "").replace(RED, "").replace(YELLOW, "").replace("\x1b[0m", "")
    assert f"{ERROR}  ERROR " in plain  # colour codes do not shift the columns
    monkeypatch.setenv("NO_COLOR", "1")
    _, out, _ = run(capsys, "order", "ORDER3")
    assert "\x1b[" not in out


def test_orders_lists_newest_first_and_filters_by_state(store, capsys):
    track(store, "OLDEST", {DLVRD: Status.DLVRD})
    time.sleep(0.01)
    track(store, "MIDDLE", {WAITING: Status.WAITING})
    time.sleep(0.01)
    store.claim_send("NEWEST", {"message_type": "N", "sender": "ACME"}, lock_seconds=5)
    store.mark_failed("NEWEST", ProviderRejected("insufficient credits", "30"))

    code, out, _ = run(capsys, "orders")
    lines = out.strip().splitlines()
    assert code == 0
    assert lines[0].split() == ["order_id", "state", "created_at", "type", "sender", "recipients", "statuses",
                                "polls", "batch_id"]
    assert [line.split()[:2] for line in lines[1:]] == [["NEWEST", "failed"], ["MIDDLE", "accepted"],
                                                        ["OLDEST", "completed"]]
    assert "WAITING 1" in lines[2] and "DLVRD 1" in lines[3]

    _, out, _ = run(capsys, "orders", "--status", "completed", "failed", "--json")
    assert [o["order_id"] for o in json.loads(out)] == ["NEWEST", "OLDEST"]
    _, out, _ = run(capsys, "orders", "--limit", "1", "--json")
    assert [o["order_id"] for o in json.loads(out)] == ["NEWEST"]
    code, out, err = run(capsys, "orders", "--status", "cancelled")
    assert code == 0 and out.strip().splitlines()[1:] == [] and "no tracked order in state cancelled" in err
    code, _, err = run(capsys, "orders", "--status", "done")
    assert code == 2 and "invalid choice" in err


def test_batch_shows_each_chunk_and_the_totals(store, capsys):
    track(store, "CHUNK0", {DLVRD: Status.DLVRD, WAITING: Status.DLVRD}, batch_id="BULK1")
    track(store, "CHUNK1", {ERROR: Status.ERROR}, batch_id="BULK1")
    store.record_batch("BULK1", ["CHUNK0", "CHUNK1"])

    code, out, _ = run(capsys, "batch", "BULK1")
    summary, rows = out.split("\n\n")
    assert code == 0
    assert summary == "batch BULK1: 2 orders, 3 recipients; completed 2; DLVRD 2, ERROR 1"
    assert [line.split()[0] for line in rows.strip().splitlines()[1:]] == ["CHUNK0", "CHUNK1"]
    _, out, _ = run(capsys, "batch", "BULK1", "--json")
    data = json.loads(out)
    assert data["statuses"] == {"DLVRD": 2, "ERROR": 1} and [o["order_id"] for o in data["orders"]] == ["CHUNK0", "CHUNK1"]
    code, _, err = run(capsys, "batch", "NOBATCH")
    assert code == 1 and "NOBATCH" in err


def test_enqueue_goes_through_the_workers_and_wait_follows_every_chunk(capsys, simulator, start_process, monkeypatch):
    monkeypatch.setenv("MOBYT_BULK_CHUNK_SIZE", "2")
    start_process("worker", env={"MOBYT_BULK_CHUNK_SIZE": "2"})
    start_process("beat")
    code, out, err = run(capsys, "enqueue", "--to", f"{DLVRD},{ERROR},+33612345672", "--message", "hi",
                         "--sender", "ACME", "--order-id", "CLIBATCH", "--wait", "--timeout", "60", "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["status"] == "batched" and reply["batch_id"] == "CLIBATCH" and len(reply["orders"]) == 2
    finals = {n: s["status"] for r in reply["final"] for n, s in r["recipients"].items()}
    assert finals == {DLVRD: "DLVRD", ERROR: "ERROR", "+33612345672": "DLVRD"}
    assert simulator.count("SENDSMS") == 2


def test_enqueue_refuses_bad_input_before_queueing(capsys, simulator):
    code, _, err = run(capsys, "enqueue", "--to", "123", "--message", "hi", "--sender", "ACME")
    assert code == 2 and "recipients" in err and simulator.requests() == []
