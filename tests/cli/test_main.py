"""The `mobyt` command, run in-process against the simulator over HTTP."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from mobyt_worker import cli
from mobyt_worker.provider.client import MobytClient
from mobyt_worker.config import DEFAULT_PATHS, Secret, Settings
from mobyt_worker.provider.protocol import Status
from mobyt_worker.sandbox import ProviderSimulator, SimulatorServer
from mobyt_worker.sms import build_send_request

from ..support import free_port

LOGIN = "acme"
PASSWORD = "cli-s3cr3t|;pw"
NUMBERS = ["+33612345671", "+33698765432"]  # last digits 1, 2: delivered (simulator rule)
PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def sim():
    simulator = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.0)
    yield simulator
    simulator.close()


@pytest.fixture
def server(sim):
    server = SimulatorServer(sim).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def env(server, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in {
        "MOBYT_LOGIN": LOGIN,
        "MOBYT_PASSWORD": PASSWORD,
        "MOBYT_BASE_URL": server.url,
        "MOBYT_CONNECT_TIMEOUT": "1",
        "MOBYT_READ_TIMEOUT": "2",
        "MOBYT_TIMEZONE": "Europe/Paris",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing answers: these commands never need Redis
    }.items():
        monkeypatch.setenv(name, value)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert PASSWORD not in out and PASSWORD not in err
    return code, out, err


def seed(server, order_id: str, at: datetime | None = None) -> None:
    """An order at the provider, sent around the command: ``mobyt`` itself only sends
    through the workers (tests/cli/test_workers.py)."""
    settings = Settings(login=LOGIN, password=Secret(PASSWORD), base_url=server.url)
    with MobytClient(settings) as client:
        client.send_sms(build_send_request(recipients=NUMBERS, message="Bonjour | 100%", message_type="N",
                                           sender="ACME", order_id=order_id, scheduled_at=at, tz=PARIS,
                                           now=datetime.now(PARIS)))


def test_status(capsys, sim, server):
    seed(server, "CLI1")
    code, out, err = run(capsys, "status", "CLI1")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["recipient", "status", "final", "delivered_at"]
    assert sorted(row.split()[0] for row in rows) == sorted(NUMBERS)
    column = header.index("status")  # aligned: every status starts under its header
    assert all(row[column:].split()[0] in ("DLVRD", "WAITING", "WAIT4DLVR") for row in rows)
    assert sim.count("SENDSMS") == 1


def test_status_json(capsys, server):
    seed(server, "CLI2")
    code, out, _ = run(capsys, "status", "CLI2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["order_id"] == "CLI2"
    assert sorted(r["recipient"] for r in data["recipients"]) == sorted(NUMBERS)
    for row in data["recipients"]:
        assert isinstance(row["status"], str) and isinstance(row["final"], bool)
        if row["delivered_at"] is not None:
            assert datetime.fromisoformat(row["delivered_at"]).utcoffset() is not None


def test_send_has_no_direct_door(capsys, sim):
    """Every send goes through the workers' validation, opt-outs and exactly-once path."""
    code, _, err = run(capsys, "send", "--direct", "--to", NUMBERS[0], "--message", "hi", "--sender", "ACME")
    assert code == 2 and "--direct" in err
    assert sim.count("SENDSMS") == 0


def test_direct_cancel_of_an_untracked_scheduled_order(capsys, sim, server):
    seed(server, "LATER", datetime.now(PARIS) + timedelta(days=1))
    code, out, _ = run(capsys, "cancel", "--direct", "LATER", "--json")
    assert code == 0 and json.loads(out) == {"order_id": "LATER", "cancelled": True, "tracked": False}
    assert sim.count("REMOVE_DELAYED") == 1


@pytest.mark.parametrize(
    "argv, field",
    [
        (["send", "--to", "12", "--message", "hi", "--sender", "ACME"], "recipients"),
        (["send", "--to", NUMBERS[0], "--message", "hi", "--sender", "too long sender!"], "sender"),
        (["send", "--to", NUMBERS[0], "--message", "hi", "--sender", "ACME", "--type", "X"], "message_type"),
        (["send", "--to", NUMBERS[0], "--message", "hi", "--sender", "ACME", "--at", "2001-01-01T00:00:00+00:00"], "scheduled_at"),
        (["send", "--to", NUMBERS[0], "--message", "hi", "--sender", "ACME", "--at", "tomorrow"], "scheduled_at"),
        (["send", "--to", NUMBERS[0], "--message", "hi", "--sender", "ACME", "--order-id", "no-dashes"], "order_id"),
        (["send", "--to", NUMBERS[0], "--message", "x" * 1001, "--sender", "ACME"], "message"),
        (["status", "bad id!"], "order_id"),
        (["history", "--from", "yesterday", "--to", "2024-01-01"], "from"),
        (["inbox", "--from", "2024-01-01"], "to"),
    ],
)
def test_bad_input_exits_2_naming_the_field_before_any_request(argv, field, capsys, sim):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert field in err
    assert sum(sim.count(f) for f in ("SENDSMS", "SMSSTATUS", "SMSHISTORY", "SRHISTORY")) == 0


def test_bad_input_json_error(capsys):
    code, out, err = run(capsys, "send", "--json", "--to", "12", "--message", "hi", "--sender", "ACME")
    assert code == 2 and out == ""
    assert json.loads(err) | {"message": ""} == {"error": "invalid_input", "field": "recipients", "message": ""}


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "send", "--to", NUMBERS[0])
    assert code == 2 and "--message" in err


def test_missing_configuration_exits_2(capsys, monkeypatch, sim):
    monkeypatch.delenv("MOBYT_PASSWORD")
    code, _, err = run(capsys, "credits", "--live")
    assert code == 2 and "MOBYT_PASSWORD" in err
    assert sim.count("CREDITS") == 0


def test_wrong_password_exits_3(capsys, monkeypatch):
    monkeypatch.setenv("MOBYT_PASSWORD", "wrong")
    code, out, err = run(capsys, "credits", "--live")
    assert code == 3 and out == ""
    assert "rejected [" in err and len(err.strip().splitlines()) == 1
    assert "wrong" not in err
    code, _, err = run(capsys, "credits", "--live", "--json")
    info = json.loads(err)
    assert code == 3 and info["error"] == "rejected" and info["code"] and info["message"]


def test_transient_failure_exits_4(capsys, sim):
    sim.inject_fault("SRNEWMESSAGES", "http500")  # a destructive read: asked once, never again by itself
    code, out, err = run(capsys, "inbox", "--new")
    assert code == 4 and out == ""
    assert "HTTP500" in err and len(err.strip().splitlines()) == 1
    assert sim.count("SRNEWMESSAGES") == 1


def test_credits_history_inbox(capsys, sim, server):
    seed(server, "H1")
    code, out, _ = run(capsys, "credits", "--live")
    assert code == 0 and out.split()[:3] == ["type", "nation", "available"]
    code, out, _ = run(capsys, "credits", "--live", "--json")
    assert code == 0 and {"message_type", "nation", "available"} <= set(json.loads(out)[0])

    day = datetime.now().astimezone()
    span = ["--from", (day - timedelta(hours=1)).isoformat(), "--to", (day + timedelta(hours=1)).isoformat()]
    code, out, _ = run(capsys, "history", *span, "--json")
    assert code == 0 and "H1" in [row["order_id"] for row in json.loads(out)]
    code, out, _ = run(capsys, "history", *span)
    assert code == 0 and "H1" in out

    sim.add_inbound("+33611111111", "Stop|now; merci")
    code, out, _ = run(capsys, "inbox", "--json")
    assert code == 0
    (msg,) = json.loads(out)
    assert msg["text"] == "Stop|now; merci" and datetime.fromisoformat(msg["received_at"])
    code, out, _ = run(capsys, "inbox", "--since", str(msg["id"]))
    assert code == 0 and out.strip().split() == ["id", "received_at", "sender", "receiver", "keyword", "text"]
    code, out, _ = run(capsys, "inbox", *span)
    assert code == 0 and "Stop|now; merci" in out
    code, out, _ = run(capsys, "inbox", "--new", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)] == [msg["id"]]
    assert sim.count("SRNEWMESSAGES") == 1


def test_history_over_days_shows_progress_on_a_terminal(sim, server, tmp_path):
    """The real command with its stderr on a pseudo-terminal, as an operator runs it."""
    seed(server, "H2")
    day = datetime.now().astimezone()
    argv = [sys.executable, "-m", "mobyt_worker", "history", "--window", "24", "--json",
            "--from", (day - timedelta(days=2, hours=12)).isoformat(), "--to", (day + timedelta(hours=1)).isoformat()]
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=follower, timeout=60, cwd=tmp_path)
        os.close(follower)
        shown = b""
        while select.select([leader], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert [row["order_id"] for row in json.loads(done.stdout)] == ["H2"]
    assert sim.count("SMSHISTORY") == 3  # 2.5 days + 1 hour in windows of 24 h
    progress = shown.decode().replace("\r\n", "\n").split("\r")
    assert [p.strip() for p in progress if p.strip()] == [
        "SMSHISTORY 1/3 windows, 0 orders", "SMSHISTORY 2/3 windows, 0 orders", "SMSHISTORY 3/3 windows, 1 orders"]


def test_history_without_a_terminal_prints_no_progress(capsys, sim):
    day = datetime.now().astimezone()
    code, out, err = run(capsys, "history", "--window", "1", "--from", (day - timedelta(hours=3)).isoformat(),
                         "--to", day.isoformat())
    assert code == 0 and err == "" and sim.count("SMSHISTORY") == 3


def test_help_documents_exit_codes(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit codes:" in out and "3  the provider refused" in out
    for name in cli.COMMANDS:
        assert name in out


def test_simulator_command_serves_with_its_latency_and_delivery_delay_until_sigterm():
    """``mobyt simulator`` as a user runs it: the options reach the fake provider it serves."""
    mobyt = str(Path(sys.executable).with_name("mobyt"))
    proc = subprocess.Popen([mobyt, "simulator", "--port", "0", "--latency", "0.3", "--delivery-delay", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        banner = dict(line.strip().split("=", 1) for line in (proc.stdout.readline() for _ in range(4)) if "=" in line)
        assert banner["MOBYT_BASE_URL"] == url
        settings = Settings(login=banner["MOBYT_LOGIN"], password=Secret(banner["MOBYT_PASSWORD"]), base_url=url)
        credits = {"login": settings.login, "password": banner["MOBYT_PASSWORD"]}
        with pytest.raises(requests.ReadTimeout):  # --latency: the answer is 0.3 s away, a 0.05 s wait ends first
            requests.post(url + DEFAULT_PATHS["CREDITS"], data=credits, timeout=(2, 0.05))
        with MobytClient(settings) as client:
            assert client.credits()
            client.send_sms(build_send_request(recipients=["+33612345671"], message="hi", message_type="N",
                                               sender="ACME", order_id="CLI1", tz=PARIS, now=datetime.now(PARIS)))
            assert [r.status for r in client.sms_status("CLI1")] == [Status.DLVRD]  # --delivery-delay 0
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
