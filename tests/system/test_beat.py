"""Beat on several hosts: two real ``celery beat`` processes share one RedBeat lock in
Redis, so only the beat holding it dispatches the periodic jobs, each dispatch is counted
once on the shared entry and is one run at the provider; when the beat holding the lock
dies the other one takes over."""

from __future__ import annotations

from ..support import ACQUIRED, SENDING, CeleryProcess, one_run_per_dispatch, wait_for

#: schedule entry -> the provider function its job calls
JOBS = {"poll-inbox": "SRNEWMESSAGES", "check-credits": "CREDITS", "reconcile-inbox": "SRHISTORYBYID"}
BEAT_ENV = {"MOBYT_INBOX_INTERVAL": "0.5", "MOBYT_CREDITS_INTERVAL": "1", "MOBYT_RECONCILE_INTERVAL": "2"}


def test_two_beats_run_each_job_once_per_dispatch_and_the_survivor_takes_over(simulator, start_process, runtime):
    start_process("worker")
    b1 = start_process("beat", name="b1", env=BEAT_ENV)
    b2 = start_process("beat", name="b2", env=BEAT_ENV)
    holder: CeleryProcess = wait_for(
        lambda: next((b for b in (b1, b2) if ACQUIRED in b.output()), None), timeout=15, what="a beat holds the lock")
    standby = b2 if holder is b1 else b1
    prefix = runtime.settings.key_prefix
    lock = f"{prefix}:beat:lock"
    assert 0 < runtime.redis.pttl(lock) <= 5000  # 5 x --max-interval 1, extended at every tick

    wait_for(lambda: all(simulator.count(f) >= 3 for f in JOBS.values()), timeout=20, what="every job run 3 times")
    assert ACQUIRED not in standby.output() and SENDING not in standby.output()
    wait_for(lambda: one_run_per_dispatch(runtime.redis, prefix, simulator, JOBS, [b1, b2]), timeout=10,
             what="the holder's dispatches, RedBeat's counts and the provider's runs to agree")

    holder.kill()  # SIGKILL: the lock is not released, it must expire
    before = {f: simulator.count(f) for f in JOBS.values()}
    # the lock expires 5 s after its last extension; 15 s leaves a loaded machine room
    wait_for(lambda: ACQUIRED in standby.output(), timeout=15, what="the standby beat takes the lock")
    wait_for(lambda: all(simulator.count(f) >= before[f] + 2 for f in JOBS.values()), timeout=20,
             what="every job run again")
    waiting, _ = standby.output().split(ACQUIRED, 1)
    assert SENDING not in waiting  # it dispatched nothing before it held the lock
    wait_for(lambda: one_run_per_dispatch(runtime.redis, prefix, simulator, JOBS, [b1, b2], killed=holder),
             timeout=10, what="both beats' dispatches, RedBeat's counts and the provider's runs to agree")
