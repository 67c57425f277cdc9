"""MOBYT_WORKER_CPU: real worker processes pin every thread to one CPU, ``auto`` spreads
the workers of one host over distinct CPUs, and a SIGKILLed worker's CPU is taken again.

Pinning is read back from ``/proc/<pid>/task/*/status`` of the worker subprocesses; each
test gives the workers a private temporary directory, so the CPU lock files of other
processes on the machine never interfere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mobyt_worker.affinity import pin_process

from .producer import bare_client, call
from .support import CeleryProcess

CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs at least two CPUs to be visible")


def _parse_cpu_list(text: str) -> set[int]:
    """``0-2,5`` -> {0, 1, 2, 5} (the kernel's Cpus_allowed_list)."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def thread_cpus(pid: int) -> list[set[int]]:
    """The allowed CPUs of each thread of process ``pid``."""
    out = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            line = next(row for row in status.read_text().splitlines() if row.startswith("Cpus_allowed_list:"))
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out.append(_parse_cpu_list(line.split(":", 1)[1].strip()))
    return out


def pinned_cpu(pid: int) -> int | None:
    """The one CPU every thread of ``pid`` is pinned to, or None when the process is not pinned."""
    masks = thread_cpus(pid)
    assert masks, f"no threads found for {pid}"
    if all(mask == set(CPUS) for mask in masks):
        return None
    assert all(len(mask) == 1 for mask in masks) and len({min(m) for m in masks}) == 1, masks
    return min(masks[0])


@pytest.fixture
def lock_dir(tmp_path: Path) -> dict[str, str]:
    return {"TMPDIR": str(tmp_path)}


def test_off_by_default_leaves_the_worker_where_the_kernel_puts_it(start_process):
    worker = start_process("worker")
    assert pinned_cpu(worker.proc.pid) is None
    assert "pinned" not in worker.output()


@needs_two_cpus
def test_a_given_cpu_pins_every_thread_of_the_worker_and_it_still_sends(redis_url, simulator, start_process,
                                                                        lock_dir):
    worker = start_process("worker", env={"MOBYT_WORKER_CPU": str(CPUS[-1]), **lock_dir})
    client = bare_client(redis_url)
    reply = call(client, "mobyt.send_sms", recipients=["+33612345670"], message="Code 1", sender="ACME").get(timeout=20)
    assert reply["status"] == "accepted"
    assert [r.params["order_id"] for r in simulator.requests("SENDSMS")] == [reply["order_id"]]
    assert len(thread_cpus(worker.proc.pid)) > 2  # the pool's threads exist now, and are pinned too
    assert pinned_cpu(worker.proc.pid) == CPUS[-1]
    assert f"worker pinned to CPU {CPUS[-1]}" in worker.output()


@needs_two_cpus
def test_auto_gives_workers_distinct_cpus_and_a_killed_workers_cpu_is_taken_again(start_process, lock_dir):
    env = {"MOBYT_WORKER_CPU": "auto", **lock_dir}
    first = start_process("worker", name="w1", env=env)
    second = start_process("worker", name="w2", env=env)
    assert pinned_cpu(first.proc.pid) == CPUS[0]
    assert pinned_cpu(second.proc.pid) == CPUS[1]

    first.kill()  # SIGKILL: no clean-up; the kernel drops its lock
    third = start_process("worker", name="w3", env=env)
    assert pinned_cpu(third.proc.pid) == CPUS[0]


@pytest.mark.skipif(len(CPUS) != 2, reason="fills every CPU of a two-CPU machine")
def test_auto_with_every_cpu_taken_stays_unpinned_and_says_so(start_process, lock_dir):
    env = {"MOBYT_WORKER_CPU": "auto", **lock_dir}
    start_process("worker", name="w1", env=env)
    start_process("worker", name="w2", env=env)
    third = start_process("worker", name="w3", env=env)
    assert pinned_cpu(third.proc.pid) is None
    assert "all taken by other workers; not pinned" in third.output()


def test_off_pins_nothing_in_this_process():
    before = os.sched_getaffinity(0)
    assert pin_process("off") is None
    assert os.sched_getaffinity(0) == before



@needs_two_cpus
def test_auto_in_a_worker_already_confined_to_one_cpu_keeps_others_off_it(worker_env, start_process, lock_dir):
    """A worker started under ``taskset`` (or re-executed by a restart, which keeps the mask)
    holds the lock of its one CPU, so the next ``auto`` worker takes another."""
    env = {**worker_env, "MOBYT_WORKER_CPU": "auto", **lock_dir}
    confined = CeleryProcess("worker", env, name="confined")
    confined.args = ["taskset", "-c", str(CPUS[0]), *confined.args]
    try:
        confined.start()
        assert pinned_cpu(confined.proc.pid) == CPUS[0]
        other = start_process("worker", name="w2", env=env)
        assert pinned_cpu(other.proc.pid) == CPUS[1]
    finally:
        confined.stop()
