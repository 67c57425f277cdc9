"""The global send rate limit: GCRA in Redis (mobyt_worker/store/ratelimit.py).

Unit tests run the script on fakeredis and a real redis-server; the last tests run real
workers sharing one cap. Assertions are on the limiter's own record (the TAT in Redis,
on Redis's clock) and on what the provider saw; the rate itself is measured by
bench/rate_limit.py.
"""

from __future__ import annotations

import re
import threading

import pytest
import redis

from mobyt_worker.store.ratelimit import RateLimiter

from ..producer import bare_client, call
from ..support import wait_for

KEY = "mobyt:ratelimit:send"


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


def tat(client: redis.Redis) -> float:
    return float(client.get(KEY))


def test_a_cap_must_be_positive(client):
    with pytest.raises(ValueError):
        RateLimiter(client, KEY, 0)


def test_without_burst_the_second_request_waits_one_interval_and_try_reserves_nothing(client):
    limiter = RateLimiter(client, KEY, rate=1)  # one send per second: the calls below take far less
    assert limiter.try_acquire() == 0.0
    first = tat(client)
    wait = limiter.try_acquire()
    assert 0.5 < wait <= 1.0
    assert tat(client) == first  # refused: the TAT did not move
    assert 0.0 < limiter.try_acquire() <= wait


def test_burst_admits_that_many_at_once_then_spaces_the_rest(client):
    limiter = RateLimiter(client, KEY, rate=1, burst=3)
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire() > 0.5


def test_reservations_are_spaced_by_exactly_one_interval(client):
    """The TAT is stored with microseconds: no drift however many sends are queued."""
    limiter = RateLimiter(client, KEY, rate=7)  # 1/7 s: not a round number in binary or decimal
    limiter.acquire(timeout=0)
    steps = []
    for _ in range(50):
        before = tat(client)
        assert limiter._call(1, 3600.0) > 0  # reserved, in the future
        steps.append(tat(client) - before)
    assert all(abs(step - 1 / 7) < 2e-6 for step in steps), steps


def test_acquire_past_its_timeout_raises_and_reserves_nothing(client):
    limiter = RateLimiter(client, KEY, rate=1)
    limiter.acquire(timeout=1)
    held = tat(client)
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=0.5)  # the next slot is ~1 s away
    assert tat(client) == held


def test_the_key_lives_one_second_past_its_tat_then_goes(client):
    limiter = RateLimiter(client, KEY, rate=20)
    limiter.acquire()
    assert 0 < client.pttl(KEY) <= 1050 + 50
    wait_for(lambda: not client.exists(KEY), timeout=5, what="the limiter key to expire")
    assert limiter.try_acquire() == 0.0  # a fresh start after idling


def test_waiting_threads_ask_redis_once_each_and_keep_the_cap(client, monkeypatch):
    """Each acquire is one Lua call (a reservation), not a herd re-asking every interval;
    each takes a slot of its own and returns only once that slot has come."""
    rate, threads, each = 50.0, 4, 8
    limiter = RateLimiter(client, KEY, rate=rate)
    limiter.acquire()  # the script is loaded, and the first slot taken at once
    first = tat(client)
    commands: list[str] = []
    send = client.execute_command

    def counting(*args, **options):
        commands.append(str(args[0]).upper())
        return send(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    admitted: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(each):
            limiter.acquire(timeout=10)
            with lock:
                admitted.append(1)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(20)
    n = threads * each
    assert len(admitted) == n
    assert commands == ["EVALSHA"] * n
    # one slot each, one interval apart on the limiter's timeline (a thread late for its
    # turn starts a later slot, never an earlier one)
    assert tat(client) >= first + n / rate - 1e-6
    # the last slot is TAT - interval: every acquire slept until its own, so it has come
    # by Redis's clock (the limiter's) once they all returned
    seconds, micros = send("TIME")
    assert tat(client) - 1 / rate <= int(seconds) + int(micros) / 1e6 + 1e-3


def test_two_worker_processes_share_one_cap(redis_url, simulator, start_process):
    """Both processes take their slots on the one limiter key: 40 sends at 20/s move its
    TAT 40 intervals past where it stood, and no send reached the provider before the last
    slot came (each waited for its own)."""
    cap, sends = 20, 40
    env = {"MOBYT_SEND_RATE_LIMIT": str(cap)}
    workers = [start_process("worker", name=name, env=env) for name in ("a", "b")]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    seconds, micros = r.time()
    start = seconds + micros / 1e6  # Redis's clock, the limiter's: every slot is at or after it
    highest: list[float] = [0.0]
    done = threading.Event()

    def watch() -> None:  # the key lives 1 s past its TAT: read it while the sends run, and once after
        while True:
            stop = done.wait(0.02)
            highest[0] = max(highest[0], float(r.get(KEY) or 0))
            if stop:
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    client = bare_client(redis_url)
    results = [call(client, "mobyt.send_sms", recipients=["+33612345670"], message=f"capped {i}", sender="ACME")
               for i in range(sends)]
    try:
        for result in results:
            assert result.get(timeout=60)["status"] == "accepted"
    finally:
        done.set()
        watcher.join(5)
    assert simulator.count("SENDSMS") == sends and simulator.billed_sends() == sends
    assert highest[0] >= start + sends / cap - 1e-6, (highest[0] - start)
    last_slot = highest[0] - 1 / cap
    assert max(q.at for q in simulator.requests("SENDSMS")) >= last_slot - 0.01
    for worker in workers:  # the cap was shared, not served by one process alone
        assert re.search(r"Task mobyt\.send_sms\[[^]]+\] succeeded", worker.output()), worker.name


def test_a_send_that_cannot_get_a_slot_in_time_is_queued_again_not_failed(redis_url, simulator, start_process):
    """Cap 2/s, and a task may wait at most 1 s for a slot: a burst of 6 sends must queue
    some of them again with a countdown to their slot, and still send every one exactly once."""
    from ..producer import bare_client, call

    worker = start_process("worker", env={"MOBYT_SEND_RATE_LIMIT": "2", "MOBYT_TASK_TIME_LIMIT": "1"})
    client = bare_client(redis_url)
    results = [call(client, "mobyt.send_sms", recipients=["+33612345670"], message="x", sender="ACME",
                    order_id=f"SLOT{i}") for i in range(6)]
    assert {r.get(timeout=60)["status"] for r in results} == {"accepted"}
    assert [simulator.billed_sends(f"SLOT{i}") for i in range(6)] == [1] * 6
    assert re.search(r"no slot in time: queued again in \d", worker.output())  # some were queued again
    assert re.search(r"Task mobyt\.send_sms\[[^]]+\] retry: Retry in \d", worker.output())
