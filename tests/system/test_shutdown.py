"""SIGTERM to a worker: a running send finishes, a message it held goes back to the queue
at once (not after the visibility timeout), and no send is billed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from mobyt_worker.producer import connect, send_sms

from ..support import ROOT, wait_for

#: Far longer than the test: a message seen in the queue came back by the shutdown, not by expiry.
SHUTDOWN_ENV = {"MOBYT_VISIBILITY_TIMEOUT": "600", "MOBYT_READ_TIMEOUT": "30", "MOBYT_CALL_DEADLINE": "31"}


def _sigterm(proc) -> None:
    """SIGTERM the worker (as a process manager does) and wait for it to exit."""
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.wait(30)


def test_sigterm_lets_a_running_send_finish(start_process, simulator, redis_url, runtime):
    worker = start_process("worker", env=SHUTDOWN_ENV)
    simulator.inject_fault("SENDSMS", "slow", delay=2.0)
    sent = send_sms(connect(redis_url), "+33612345671", "hi", sender="ACME")
    wait_for(lambda: simulator.count("SENDSMS") == 1, what="SENDSMS in flight")

    _sigterm(worker)

    assert sent.result.get(timeout=5)["status"] == "accepted"
    assert runtime.store.get_order(sent.order_id, with_history=False).state in ("accepted", "completed")
    # it waited for the answer instead of dropping the send: the task ended after the shutdown began
    log = worker.output()
    assert "Warm shutdown" in log
    assert f"Task mobyt.send_sms[send-{sent.order_id}] succeeded" in log.split("Warm shutdown", 1)[1]
    assert simulator.count("SENDSMS") == 1
    r = redis.Redis.from_url(redis_url)
    assert r.hlen("unacked") == 0 and not r.exists("mobyt")  # acked: nothing left to deliver again


def test_sigterm_hands_held_messages_back_to_the_queue_at_once(start_process, redis_url):
    """A message the worker holds (here a countdown, as a retry has) is unacked in Redis;
    the shutdown puts it back in the queue instead of leaving it for the visibility timeout."""
    worker = start_process("worker", env=SHUTDOWN_ENV)
    result = connect(redis_url).send_task("mobyt.check_credits", countdown=60)
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: r.hlen("unacked") == 1 and r.llen("mobyt") == 0, what="the worker to hold the message")

    _sigterm(worker)

    assert r.hlen("unacked") == 0 and r.llen("mobyt") == 1
    assert result.id in r.lindex("mobyt", 0).decode()


def test_the_procfile_worker_logs_each_order_at_info(worker_env, simulator, redis_url, tmp_path):
    line = next(l for l in (ROOT / "Procfile").read_text().splitlines() if l.startswith("worker:"))
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", "exec " + line.split(":", 1)[1].strip()], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **worker_env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    try:
        wait_for(lambda: "ready." in log.read_text(), timeout=30, what="the Procfile's worker")
        sent = send_sms(connect(redis_url), "+33612345671", "hi", sender="ACME")
        assert sent.result.get(timeout=20)["status"] == "accepted"
        wait_for(lambda: f"order_id={sent.order_id}" in log.read_text(), what="a per-order INFO line")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
