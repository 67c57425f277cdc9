"""``mobyt demo`` as a user runs it: a subprocess, real children, the session's Redis.

Children are found through ``/proc/*/environ``: each run carries a unique marker variable
that every process it starts inherits, so "nothing left behind" is checked for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import redis

from mobyt_worker.sandbox import demo_env
from mobyt_worker.sandbox.processes import stop_all

from ..support import ROOT, free_port, wait_for

MOBYT = str(Path(sys.executable).with_name("mobyt"))

pytestmark = pytest.mark.integration  # the demo starts or finds a redis-server


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def start_demo(redis_url: str, marker: str, **env: str) -> subprocess.Popen:
    environ = {**os.environ, "REDIS_URL": redis_url, "DEMO_TEST_MARKER": marker, **env}
    return subprocess.Popen([MOBYT, "demo"], env=environ, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def demo_db(redis_url: str) -> redis.Redis:
    url = demo_env.demo_url(redis_url)
    assert url is not None
    return redis.Redis.from_url(url, decode_responses=True)


#: What the demo prints, step after step (the lines of one step in any order): each step ran to its end.
STORY = [
    ("redis      {url}: the local Redis, database 15",),
    ("send_task('mobyt.send_sms'",),
    ("accepted: order_id",),
    ("+33612345670  WAIT4DLVR -> DLVRD", "+33612345676  WAIT4DLVR -> ERROR"),
    ("order completed: +33612345670 DLVRD at",),
    ("cancelled: REMOVE_DELAYED sent once, state cancelled, polling stopped",),
    ("batch ",),
    ("3 SENDSMS calls, one per chunk",),
    ("inbound #1 from +33612345672: 'Bonjour, je serai la a 15h'",),
    ("opt-out recorded for +33612345673",),
    ("refused before any HTTP call: RecipientOptedOut",),
    ("N FR ",),
    ("all acknowledged, 0 pending",),
    ("done in",),
]


def test_the_demo_tells_the_whole_story_in_order_and_leaves_nothing_behind(redis_url):
    db = demo_db(redis_url)
    db.set("someone:else", "kept")  # the demo's database may hold others' keys: they survive
    marker = uuid.uuid4().hex
    proc = start_demo(redis_url, marker)
    out, err = proc.communicate(timeout=90)
    print(out, err)

    assert proc.returncode == 0, err
    at = 0
    for step in STORY:
        ends = []
        for line in (line.format(url=demo_env.demo_url(redis_url)) for line in step):
            found = out.find(line, at)
            assert found >= 0, (line, out[at:])
            ends.append(found + len(line))
        at = max(ends)
    assert "demo-password" not in out + err
    assert processes_with(marker) == []
    assert db.keys("mobytdemo:*") == []
    assert db.get("someone:else") == "kept"


def test_ctrl_c_mid_story_stops_every_process(redis_url):
    marker = uuid.uuid4().hex
    proc = start_demo(redis_url, marker)
    lines: list[str] = []
    wait_for(lambda: lines.append(proc.stdout.readline()) or "1. A send" in lines[-1] or proc.poll() is not None,
             timeout=40, what="the first step")
    assert proc.poll() is None, "".join(lines)
    assert len(processes_with(marker)) >= 5  # the demo, simulator, web (master + worker), worker, beat
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130
    assert "interrupted: stopping every process" in err
    assert processes_with(marker) == []
    assert demo_db(redis_url).keys("mobytdemo:*") == []


def test_without_a_reachable_redis_it_starts_a_private_redis_server():
    said: list[str] = []
    with tempfile.TemporaryDirectory() as workdir:
        environ = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}"}
        url, server = demo_env.choose_redis(environ, Path(workdir), said.append)
        try:
            assert server is not None and server.alive()
            assert redis.Redis.from_url(url).ping()
            assert url.endswith("/15")
        finally:
            if server is not None:
                stop_all([server])
    assert "starting a private redis-server" in said[0]
    assert not server.alive()


def test_without_redis_or_redis_server_it_says_what_is_missing_and_starts_nothing():
    marker = uuid.uuid4().hex
    proc = start_demo(f"redis://127.0.0.1:{free_port()}", marker, PATH="/nonexistent")
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 2
    assert "no Redis answers at redis://127.0.0.1:" in err
    assert "no redis-server binary is on PATH" in err and "REDIS_URL" in err
    assert "simulator  http" not in out
    assert processes_with(marker) == []


def test_demo_url_uses_database_15_and_never_prints_a_password():
    assert demo_env.demo_url("redis://localhost:6379/0") == "redis://localhost:6379/15"
    assert demo_env.demo_url("redis://:pw@host:6380?db=2") == "redis://:pw@host:6380/15"
    assert demo_env.demo_url("unix:///tmp/redis.sock") is None
    said: list[str] = []
    with tempfile.TemporaryDirectory() as workdir:
        _, server = demo_env.choose_redis({"REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}"}, Path(workdir),
                                      said.append)
        if server is not None:
            stop_all([server])
    assert "no Redis answers at redis://127.0.0.1:" in said[0]
    assert not any("hunter2" in s for s in said)
