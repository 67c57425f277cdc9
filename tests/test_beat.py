"""Beat on several hosts: two real ``celery beat`` processes share one RedBeat lock in
Redis, so each periodic job runs once per interval (counted at the provider), and when
the beat holding the lock dies the other one takes over."""

from __future__ import annotations

import statistics
import time

from .support import CeleryProcess, wait_for

INTERVALS = {"SRNEWMESSAGES": 0.5, "CREDITS": 1.0, "SRHISTORYBYID": 2.0}
BEAT_ENV = {
    "MOBYT_INBOX_INTERVAL": str(INTERVALS["SRNEWMESSAGES"]),
    "MOBYT_CREDITS_INTERVAL": str(INTERVALS["CREDITS"]),
    "MOBYT_RECONCILE_INTERVAL": str(INTERVALS["SRHISTORYBYID"]),
}
WINDOW = 7.0
ACQUIRED = "beat: Acquired lock"
SENDING = "Scheduler: Sending due task"


def request_times(simulator, function: str, start: float, end: float = float("inf")) -> list[float]:
    return [r.at for r in simulator.requests(function) if start <= r.at < end]


def assert_once_per_interval(simulator, start: float, end: float) -> None:
    for function, interval in INTERVALS.items():
        times = request_times(simulator, function, start, end)
        expected = (end - start) / interval
        # one beat: about `expected` (a little less: each run is timed from its dispatch);
        # two beats firing would give about twice as many, with gaps of half an interval
        assert 0.5 * expected <= len(times) <= 1.25 * expected + 1, (function, len(times), expected)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert statistics.median(gaps) >= 0.8 * interval, (function, gaps)


def test_two_beats_run_each_job_once_per_interval_and_the_survivor_takes_over(
        simulator, start_process, runtime):
    start_process("worker")
    b1 = start_process("beat", name="b1", env=BEAT_ENV)
    b2 = start_process("beat", name="b2", env=BEAT_ENV)
    holder: CeleryProcess = wait_for(
        lambda: next((b for b in (b1, b2) if ACQUIRED in b.output()), None), timeout=15, what="a beat holds the lock")
    standby = b2 if holder is b1 else b1
    lock = f"{runtime.settings.key_prefix}:beat:lock"
    assert 0 < runtime.redis.pttl(lock) <= 5000  # 5 x --max-interval 1, extended at every tick

    wait_for(lambda: simulator.count("CREDITS") >= 1, timeout=10, what="first periodic run")
    start = time.time()
    time.sleep(WINDOW)  # a measurement window: the rate over time is what is asserted
    end = time.time()
    assert_once_per_interval(simulator, start, end)
    assert ACQUIRED not in standby.output() and SENDING not in standby.output()
    assert SENDING in holder.output()

    holder.kill()  # SIGKILL: the lock is not released, it must expire
    killed_at = time.time()
    # the lock expires 5 s after its last extension; 15 s leaves a loaded machine room
    wait_for(lambda: ACQUIRED in standby.output(), timeout=15, what="the standby beat takes the lock")
    wait_for(lambda: len(request_times(simulator, "CREDITS", killed_at)) >= 3, timeout=10, what="jobs run again")
    after = time.time()
    resumed = request_times(simulator, "SRNEWMESSAGES", killed_at)
    assert len(resumed) >= 2 and SENDING in standby.output()
    assert len(request_times(simulator, "CREDITS", killed_at, after)) <= (after - killed_at) / 1.0 + 2
