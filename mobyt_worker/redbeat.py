"""RedBeat's scheduler, made to ride out a Redis outage or a Sentinel failover.

RedBeat extends its lock at every tick and lets any Redis error escape ``tick()``, which
ends ``celery beat``. Here a tick that cannot reach Redis is skipped and tried again
shortly; a beat that no longer holds the lock (it expired during the outage, or another
beat took it) does not tick until it has taken the lock again, so one beat ticks at a
time.

It also runs the jobs of a fresh deployment at once: RedBeat stores a new entry as last
run *now*, so the first credits check would wait a whole interval. An entry that ran
before keeps its pace, across a restart or a takeover, and a beat starting while another
ticks never undoes that one's runs: never twice for one interval.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import LockError
from redis.sentinel import MasterNotFoundError

log = logging.getLogger("celery.beat")

#: Errors of an unreachable Redis or a master being replaced: worth another try.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, MasterNotFoundError)
#: Seconds between tries while Redis is unreachable or another beat holds the lock.
RETRY_PAUSE = 1.0
#: RedBeat's meta of an entry that never ran: due at once.
NEVER_RUN = json.dumps({"last_run_at": None})


class ResilientRedBeatScheduler(RedBeatScheduler):
    """``beat_scheduler``: RedBeat, with ticks that survive Redis errors."""

    lock: Any = None  # RedBeat's redis-py Lock while held
    _lost: Any = None  # the lock object while it is not held (None: held, or never taken)
    _outage = False

    def setup_schedule(self) -> None:
        """Store the static entries, a new one as never run. Beats start side by side, and
        one may tick while another is still starting: that mark is only ever created
        (HSETNX, as RedBeat stores its meta), never written over another beat's last run,
        and each entry's place in the schedule is then computed from what is stored."""
        client = get_redis(self.app)
        keys = [self.Entry.generate_key(self.app, name) for name in self.app.redbeat_conf.schedule]
        with client.pipeline() as pipe:
            for key in keys:
                pipe.hsetnx(key, "meta", NEVER_RUN)
            pipe.execute()
        super().setup_schedule()  # keeps the stored meta; a key it created scores as run now
        for key in keys:
            try:
                entry = self.Entry.from_key(key, app=self.app)
            except KeyError:  # removed meanwhile by a beat of another version
                continue
            client.zadd(self.app.redbeat_conf.schedule_key, {key: entry.score})

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and self.lock is None and not self._take_lock():
                return RETRY_PAUSE
            interval = super().tick(*args, **kwargs)
        except UNREACHABLE as exc:
            if not self._outage:
                log.warning("beat: Redis unreachable (%s); trying again every %.0fs", type(exc).__name__, RETRY_PAUSE)
            self._outage = True
            return RETRY_PAUSE
        except LockError:  # the extension found another token, or none: not ours any more
            log.warning("beat: lost the lock; not ticking until it is taken again")
            self._lost, self.lock = self.lock, None
            return RETRY_PAUSE
        if self._outage:
            log.info("beat: Redis reachable again; ticking")
            self._outage = False
        return interval

    def _take_lock(self) -> bool:
        """Take the lock without waiting, as RedBeat takes it at start; False while another
        beat holds it."""
        lock = self._lost or self._new_lock()
        if not lock.acquire(blocking=False):
            self._lost = lock
            return False
        log.info("beat: Acquired lock")
        self.lock, self._lost = lock, None
        return True

    def _new_lock(self) -> Any:
        """RedBeat's lock (``acquire_distributed_beat_lock``), for a beat whose start found
        Redis unreachable."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        return lock

    def close(self) -> None:
        try:
            super().close()
        except (*UNREACHABLE, LockError) as exc:  # the lock expires on its own
            log.warning("beat: could not release the lock (%s)", type(exc).__name__)
