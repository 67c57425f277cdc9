"""Two ``celery beat`` processes as the Procfile runs them (beat_max_loop_interval 5 s, so
RedBeat's lock lives 25 s unless extended): the one holding the lock is SIGKILLed and the
standby takes over once the lock expires. Only the beat holding the lock dispatches; each
dispatch, before and after the takeover, is counted once on the shared entry and is one
run at the provider; and a job that ran within its interval is not run again by the
standby (it keeps its pace across the takeover)."""

from __future__ import annotations

from .support import ACQUIRED, SENDING, CeleryProcess, dispatches, one_run_per_dispatch, wait_for

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
        wait_for(lambda: one_run_per_dispatch(runtime.redis, prefix, simulator, JOBS, beats), timeout=10,
                 what="both beats' dispatches, RedBeat's counts and the provider's runs to agree")
    finally:
        for beat in beats:
            beat.stop()
        for beat in beats:
            print(f"--- beat {beat.name} log (tail) ---\n{beat.output()[-3000:]}")
