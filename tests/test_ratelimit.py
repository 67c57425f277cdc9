"""The global send rate limit: GCRA in Redis (mobyt_worker/ratelimit.py).

Unit tests run the script against a real redis-server; the last test runs two real
worker processes sharing one cap and reads the rate from the simulator's request
timestamps. Wall-clock bounds are deliberately loose (the tight figure is measured by
bench/rate_limit.py).
"""

from __future__ import annotations

import bisect
import re
import threading
import time

import pytest
import redis

from mobyt_worker.ratelimit import RateLimiter

from .producer import bare_client, call
from .support import wait_for

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
    """Each acquire is one Lua call (a reservation), not a herd re-asking every interval."""
    rate, threads, each = 50.0, 4, 8
    limiter = RateLimiter(client, KEY, rate=rate)
    RateLimiter(client, KEY + ":warm", rate=1).try_acquire()  # the script is loaded now
    commands: list[str] = []
    send = client.execute_command

    def counting(*args, **options):
        commands.append(str(args[0]).upper())
        return send(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    admitted: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(each):
            limiter.acquire(timeout=10)
            with lock:
                admitted.append(time.monotonic())

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(20)
    n = threads * each
    assert len(admitted) == n
    assert commands == ["EVALSHA"] * n
    span = max(admitted) - min(admitted)
    assert span >= 0.8 * (n - 1) / rate  # 32 sends at 50/s: at least ~0.5 s


def test_two_worker_processes_share_one_cap(redis_url, simulator, start_process):
    cap, burst, sends = 20, 1, 40
    env = {"MOBYT_SEND_RATE_LIMIT": str(cap)}
    workers = [start_process("worker", name=name, env=env) for name in ("a", "b")]
    client = bare_client(redis_url)
    results = [call(client, "mobyt.send_sms", recipients=["+33612345670"], message=f"capped {i}", sender="ACME")
               for i in range(sends)]
    for result in results:
        assert result.get(timeout=60)["status"] == "accepted"
    times = sorted(r.at for r in simulator.requests("SENDSMS"))
    assert len(times) == sends and simulator.billed_sends() == sends
    # 40 sends at 20/s need 39 intervals of 50 ms: ~1.95 s of provider time, 1.5 s at the least.
    assert times[-1] - times[0] >= 1.5, times[-1] - times[0]
    # In any 1 s window: at most cap + burst, plus slack for sends delayed on their way.
    busiest = max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    assert busiest <= cap + burst + 3, busiest
    for worker in workers:  # the cap was shared, not served by one process alone
        assert re.search(r"Task mobyt\.send_sms\[[^]]+\] succeeded", worker.output()), worker.name


def test_a_send_that_cannot_get_a_slot_in_time_is_queued_again_not_failed(redis_url, simulator, start_process):
    """Cap 2/s, and a task may wait at most 1 s for a slot: a burst of 6 sends must queue
    some of them again with a countdown to their slot, and still send every one exactly once."""
    from .producer import bare_client, call

    worker = start_process("worker", env={"MOBYT_SEND_RATE_LIMIT": "2", "MOBYT_TASK_TIME_LIMIT": "1"})
    client = bare_client(redis_url)
    results = [call(client, "mobyt.send_sms", recipients=["+33612345670"], message="x", sender="ACME",
                    order_id=f"SLOT{i}") for i in range(6)]
    assert {r.get(timeout=60)["status"] for r in results} == {"accepted"}
    assert [simulator.billed_sends(f"SLOT{i}") for i in range(6)] == [1] * 6
    assert re.search(r"no slot in time: queued again in \d", worker.output())  # some were queued again
    assert re.search(r"Task mobyt\.send_sms\[[^]]+\] retry: Retry in \d", worker.output())
