"""Redis round trips of our own code per send and per status poll, counted on the
connection: the tasks run in this process (Celery's eager mode: no broker, no result
backend) against a private redis-server and the simulator over HTTP. Celery's own
round trips per task (BRPOP, unacked bookkeeping, result, ack) come on top.

    .venv/bin/pytest tests/system/test_claims_round_trips.py -s    # prints the figures
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Iterator

import pytest
import redis

from mobyt_worker.runtime import Runtime
from mobyt_worker.store.connection import connect

SENDS = 20
NUMBER = "+33612345670"


class CountingConnection(redis.Connection):
    """Counts, per thread, the writes to the socket (one per round trip: a pipeline sends
    all its commands at once) and the replies read (one per command)."""

    trips: Counter[int] = Counter()
    commands: Counter[int] = Counter()

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        CountingConnection.trips[threading.get_ident()] += 1
        return super().send_packed_command(command, check_health)

    def read_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingConnection.commands[threading.get_ident()] += 1
        return super().read_response(*args, **kwargs)


@pytest.fixture
def counted(settings, monkeypatch) -> Iterator[Runtime]:
    """The worker app's per-process Runtime, with its Redis client counting round trips."""
    from mobyt_worker.worker import app

    client = connect(settings.redis_url)
    client.connection_pool.connection_class = CountingConnection
    rt = Runtime(settings, app=app)
    rt.__dict__["redis"] = client
    monkeypatch.setattr(app, "_runtime", (os.getpid(), rt))  # what app.runtime hands every task
    yield rt
    rt.close()


def measure(call) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    me = threading.get_ident()
    trips, commands = CountingConnection.trips[me], CountingConnection.commands[me]
    call()
    return CountingConnection.trips[me] - trips, CountingConnection.commands[me] - commands


def test_a_send_makes_two_redis_round_trips_and_a_status_poll_three(counted, simulator):
    from mobyt_worker.tasks import poll_status, send_sms

    def send(i: int) -> None:
        reply = send_sms.apply(kwargs={"recipients": [NUMBER], "message": "trips", "sender": "ACME",
                                       "order_id": f"TRIPS{i}"}).get()
        assert reply["status"] == "accepted"

    def poll(i: int) -> None:
        record = poll_status.apply(kwargs={"order_id": f"TRIPS{i}"}).get()
        assert record["polls"] >= 1

    send(SENDS)  # the first calls load the Lua scripts (a NOSCRIPT answer, then SCRIPT LOAD)
    poll(SENDS)
    sends = [measure(lambda i=i: send(i)) for i in range(SENDS)]
    polls = [measure(lambda i=i: poll(i)) for i in range(SENDS)]
    print(f"\nper send: {sends[0][0]} round trips, {sends[0][1]} commands; "
          f"per status poll: {polls[0][0]} round trips, {polls[0][1]} commands")
    assert simulator.count("SENDSMS") == SENDS + 1 and simulator.count("SMSSTATUS") == SENDS + 1
    assert set(sends) == {(2, 2)}  # claim; accept (with the lock's release)
    assert set(polls) == {(3, 5)}  # read order + recipients (pipelined); apply; read both back
