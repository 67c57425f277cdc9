"""Two ``celery beat`` processes as the Procfile runs them (beat_max_loop_interval 5 s, so
RedBeat's lock lives 25 s unless extended): the one holding the lock is SIGKILLed, the
standby takes over within ~30 s, and no periodic job runs twice for one interval, before,
across or after the takeover (runs counted at the provider)."""

from __future__ import annotations

import time

from .support import CeleryProcess, Gate, wait_for

INTERVALS = {"SRNEWMESSAGES": 2.0, "CREDITS": 3.0}
BEAT_ENV = {"MOBYT_INBOX_INTERVAL": "2", "MOBYT_CREDITS_INTERVAL": "3", "MOBYT_RECONCILE_INTERVAL": "60"}
ACQUIRED = "beat: Acquired lock"
SENDING = "Scheduler: Sending due task"


def procfile_beat(env: dict[str, str], name: str) -> CeleryProcess:
    """The Procfile's ``celery -A mobyt_worker.worker beat`` (with info logs): no --max-interval."""
    beat = CeleryProcess("beat", env, name=name)
    beat.args.remove("--max-interval")
    beat.args.remove("1")
    return beat


def run_times(simulator, function: str) -> list[float]:
    return [r.at for r in simulator.requests(function)]


def test_standby_beat_takes_over_with_the_procfile_timing_and_runs_each_job_once_per_interval(
        simulator, worker_env, start_process, runtime):
    start_process("worker")
    env = {**worker_env, **BEAT_ENV}
    beats = [procfile_beat(env, "b1"), procfile_beat(env, "b2")]
    try:
        for beat in beats:
            beat.start()
        holder = wait_for(lambda: next((b for b in beats if ACQUIRED in b.output()), None), timeout=20,
                          what="a beat holds the lock")
        standby = beats[1] if holder is beats[0] else beats[0]
        lock = f"{runtime.settings.key_prefix}:beat:lock"
        assert 5_000 < runtime.redis.pttl(lock) <= 25_000  # 5 x beat_max_loop_interval

        wait_for(lambda: len(run_times(simulator, "CREDITS")) >= 3, timeout=20, what="the holder's runs")
        assert SENDING in holder.output() and SENDING not in standby.output()
        holder.kill()  # SIGKILL: the lock is not released, it has to expire
        killed_at = time.time()
        last_before = {f: run_times(simulator, f)[-1] for f in INTERVALS}

        wait_for(lambda: ACQUIRED in standby.output(), timeout=40, what="the standby takes the lock")
        took_over = time.time() - killed_at
        assert took_over <= 30, took_over
        wait_for(lambda: len([t for t in run_times(simulator, "CREDITS") if t > killed_at]) >= 3, timeout=20,
                 what="the standby's runs")
        assert SENDING in standby.output()

        for function, interval in INTERVALS.items():
            times = run_times(simulator, function)
            gaps = [b - a for a, b in zip(times, times[1:])]
            # two beats firing would put two runs within a fraction of an interval
            assert min(gaps) >= 0.7 * interval, (function, gaps)
            first_after = next(t for t in times if t > killed_at)
            assert first_after - last_before[function] >= took_over - 1, (function, took_over)
    finally:
        for beat in beats:
            beat.stop()
        for beat in beats:
            print(f"--- beat {beat.name} log (tail) ---\n{beat.output()[-3000:]}")


def test_a_standby_started_beside_the_first_beat_keeps_its_runs_and_repeats_none_when_it_takes_over(
        simulator, worker_env, start_process, runtime, redis_server):
    """A fresh deployment whose two beats start together: the standby has looked at the
    entries (none stored yet) but not stored them when the other beat stores them, takes the
    lock, runs its first round and is SIGKILLed. Its Redis requests held at RedBeat's first
    one (SMEMBERS) meanwhile, the standby then finishes starting, takes over when the lock
    expires, and runs no job again within its interval."""
    start_process("worker")
    env = {**worker_env, "MOBYT_INBOX_INTERVAL": "2", "MOBYT_CREDITS_INTERVAL": "600",
           "MOBYT_RECONCILE_INTERVAL": "600"}
    gate = Gate(redis_server.port, hold_at=b"SMEMBERS")
    standby = procfile_beat({**env, "REDIS_URL": gate.url}, "standby")
    first = procfile_beat(env, "first")
    entries = {name: f"{runtime.settings.key_prefix}:beat:{name}" for name in ("check-credits", "reconcile-inbox")}
    try:
        standby.start()
        wait_for(gate.held.is_set, timeout=30, what="the standby's start reaches RedBeat's setup")
        first.start()
        wait_for(lambda: simulator.count("CREDITS") and simulator.count("SRHISTORYBYID"), timeout=30,
                 what="the first beat's first round")
        first.kill()  # right after the tick that sent it; its lock has to expire
        runs = {name: runtime.redis.hget(key, "meta") for name, key in entries.items()}
        gate.release()

        wait_for(lambda: ACQUIRED in standby.output(), timeout=60, what="the standby takes the lock")
        wait_for(lambda: standby.output().count(f"{SENDING} poll-inbox") >= 2, timeout=20,
                 what="two ticks of the standby: it has looked at every entry")
        polls = len(run_times(simulator, "SRNEWMESSAGES"))
        wait_for(lambda: len(run_times(simulator, "SRNEWMESSAGES")) > polls, timeout=20,
                 what="a poll the standby sent after its first round reaches the provider")

        assert f"{SENDING} check-credits" not in standby.output()
        assert f"{SENDING} reconcile-inbox" not in standby.output()
        assert {name: runtime.redis.hget(key, "meta") for name, key in entries.items()} == runs  # last run: the first beat's
        assert simulator.count("CREDITS") == 1 and simulator.count("SRHISTORYBYID") == 1
    finally:
        gate.close()
        for beat in (first, standby):
            beat.stop()
        for beat in (first, standby):
            print(f"--- beat {beat.name} log (tail) ---\n{beat.output()[-3000:]}")
            beat.log.unlink(missing_ok=True)
