"""Two ``celery beat`` processes as the Procfile runs them (beat_max_loop_interval 5 s, so
RedBeat's lock lives 25 s unless extended): the one holding the lock is SIGKILLed and the
standby takes over once the lock expires. Only the beat holding the lock dispatches; each
dispatch, before and after the takeover, is counted once on the shared entry and is one
run at the provider; and a job that ran within its interval is not run again by the
standby (it keeps its pace across the takeover)."""

from __future__ import annotations

from ..support import ACQUIRED, SENDING, CeleryProcess, Gate, dispatches, one_run_per_dispatch, wait_for

#: schedule entry -> the provider function its job calls
JOBS = {"poll-inbox": "SRNEWMESSAGES", "check-credits": "CREDITS", "reconcile-inbox": "SRHISTORYBYID"}
#: reconcile-inbox runs at once on a fresh deployment, then not again within the test
BEAT_ENV = {"MOBYT_INBOX_INTERVAL": "2", "MOBYT_CREDITS_INTERVAL": "3", "MOBYT_RECONCILE_INTERVAL": "600"}


def procfile_beat(env: dict[str, str], name: str) -> CeleryProcess:
    """The Procfile's ``celery -A mobyt_worker.worker beat`` (with info logs): no --max-interval."""
    beat = CeleryProcess("beat", env, name=name)
    beat.args.remove("--max-interval")
    beat.args.remove("1")
    return beat


def test_standby_beat_takes_over_with_the_procfile_timing_and_keeps_each_jobs_pace(
        simulator, worker_env, start_process, runtime):
    start_process("worker")
    env = {**worker_env, **BEAT_ENV}
    holder, standby = procfile_beat(env, "b1"), procfile_beat(env, "b2")
    beats = [holder, standby]
    prefix = runtime.settings.key_prefix
    try:
        holder.start()
        wait_for(lambda: ACQUIRED in holder.output(), timeout=20, what="the first beat holds the lock")
        wait_for(lambda: simulator.count("SRHISTORYBYID") == 1, timeout=20, what="the fresh deployment's first round")
        standby.start()  # another host's beat, started after the jobs ran: it waits for the lock
        lock = f"{prefix}:beat:lock"
        assert 5_000 < runtime.redis.pttl(lock) <= 25_000  # 5 x beat_max_loop_interval

        wait_for(lambda: simulator.count("CREDITS") >= 3, timeout=20, what="the holder's runs")
        assert ACQUIRED not in standby.output() and SENDING not in standby.output()
        holder.kill()  # SIGKILL: the lock is not released, it has to expire

        wait_for(lambda: ACQUIRED in standby.output(), timeout=40, what="the standby takes the lock")
        taken_over = simulator.count("CREDITS")
        wait_for(lambda: simulator.count("CREDITS") >= taken_over + 3, timeout=20, what="the standby's runs")
        waiting, holding = standby.output().split(ACQUIRED, 1)
        assert SENDING not in waiting  # nothing dispatched before it held the lock
        assert dispatches(holding, "check-credits") >= 3  # it ticks: every due job was looked at...
        assert dispatches(holding, "reconcile-inbox") == 0  # ...and this one, run within its interval, is not due
        assert simulator.count("SRHISTORYBYID") == 1
        wait_for(lambda: one_run_per_dispatch(runtime.redis, prefix, simulator, JOBS, beats, killed=holder), timeout=10,
                 what="both beats' dispatches, RedBeat's counts and the provider's runs to agree")
    finally:
        for beat in beats:
            beat.stop()
        for beat in beats:
            print(f"--- beat {beat.name} log (tail) ---\n{beat.output()[-3000:]}")


def run_times(simulator, function: str) -> list[float]:
    return [r.at for r in simulator.requests(function)]


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
