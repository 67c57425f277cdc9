"""Every CLI door that sends or cancels goes through the workers, and every edge answers
with one line and exit 4: no worker, no Redis (one ping, no retry)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from mobyt_worker import cli

from ..support import ROOT, free_port

STOPPED = "+33612345673"


@pytest.fixture(autouse=True)
def env(worker_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mobyt(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The real command in its own process, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "mobyt_worker", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_send_goes_through_the_workers_honours_opt_outs_and_is_tracked(capsys, start_process, simulator, runtime):
    start_process("worker")
    runtime.optouts.add(STOPPED, message_id="1")

    code, out, err = run(capsys, "send", "--to", STOPPED, "--message", "hi", "--order-id", "STOPPED1")
    assert code == 2 and "recipients" in err and len(err.strip().splitlines()) == 1
    assert simulator.count("SENDSMS") == 0

    code, out, err = run(capsys, "send", "--to", "+33612345671", "--message", "hi", "--order-id", "TRACKED1", "--json")
    assert code == 0, err
    assert json.loads(out)["order_id"] == "TRACKED1"
    assert runtime.store.get_order("TRACKED1").state in ("accepted", "completed")
    code, _, _ = run(capsys, "send", "--to", "+33612345671", "--message", "hi", "--order-id", "TRACKED1")
    assert code == 0 and simulator.count("SENDSMS") == 1  # the same order again: not billed twice
    code, out, _ = run(capsys, "order", "TRACKED1")
    assert code == 0 and "TRACKED1" in out


def test_cancel_runs_the_task_and_the_record_says_cancelled(capsys, start_process, simulator, runtime):
    start_process("worker")
    at = (datetime.now().astimezone() + timedelta(days=1)).isoformat(timespec="seconds")
    assert run(capsys, "send", "--to", "+33612345671", "--message", "hi", "--order-id", "LATER1", "--at", at)[0] == 0
    assert runtime.store.get_order("LATER1").state == "scheduled"

    code, out, err = run(capsys, "cancel", "LATER1")
    assert (code, out.strip()) == (0, "LATER1 cancelled"), err
    assert runtime.store.get_order("LATER1").state == "cancelled"
    assert simulator.count("REMOVE_DELAYED") == 1


def test_order_of_a_batch_id_shows_the_batch(capsys, start_process, simulator, monkeypatch):
    start_process("worker", env={"MOBYT_BULK_CHUNK_SIZE": "1"})
    monkeypatch.setenv("MOBYT_BULK_CHUNK_SIZE", "1")
    code, out, err = run(capsys, "enqueue", "--to", "+33612345671,+33612345672", "--message", "hi", "--json")
    assert code == 0, err
    batch_id = json.loads(out)["order_id"]
    code, out, err = run(capsys, "order", batch_id)
    assert code == 0, err
    assert out.startswith(f"batch {batch_id}: 2 orders, 2 recipients")


def test_enqueue_without_a_worker_exits_4_with_one_line_naming_the_order(worker_env, simulator):
    code, out, err = mobyt("enqueue", "--to", "+33612345671", "--message", "hi", "--order-id", "NOWORKER1",
                              "--timeout", "1", env=worker_env)
    assert code == 4 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "NOWORKER1" in err and "--order-id NOWORKER1" in err
    assert simulator.count("SENDSMS") == 0


def accepted(server: socket.socket) -> int:
    """Connections that reached the listening socket so far (each taken off its backlog)."""
    server.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.parametrize("listening", [False, True], ids=["refused", "silent"])
def test_a_redis_that_does_not_answer_is_exit_4_after_one_ping(worker_env, listening):
    """Refused: the connection error at once. Silent (accepts, never answers): the ping's
    own 2 s timeout, one connection per command; the workers' client would retry for
    minutes, past the 60 s this waits for the command."""
    silent = socket.socket()
    try:
        if listening:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            port = silent.getsockname()[1]
        else:
            port = free_port()
        env = {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        error = "TimeoutError" if listening else "ConnectionError"
        for argv in (["orders"], ["order", "ANY1"], ["enqueue", "--to", "+33612345671", "--message", "hi"]):
            code, out, err = mobyt(*argv, env=env)
            assert code == 4 and out == "", err
            assert len(err.strip().splitlines()) == 1, err
            assert f"Redis at 127.0.0.1:{port} does not answer ({error})" in err, err
            if listening:
                assert accepted(silent) == 1, argv  # one ping, not retried
    finally:
        silent.close()
