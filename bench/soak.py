"""Soak: a steady stream of sends through real workers and beat while faults hit them.

One line per scenario: sends accepted by the producer helper, faults (kills, Redis
restarts, outage or cut seconds), billed SENDSMS calls, and the four figures that must be
0: duplicates (an order billed more than once), lost (accepted, never billed, not in a
recorded end state), stranded (open state with nothing scheduled to revisit it: not in
the poll due-set nor in the intents index), untracked (billed with no order record).

    python bench/soak.py            # full size (make soak)
    python bench/soak.py --small    # CI size (tests/system/test_soak.py)
    python bench/soak.py --only storm,redis

``all`` puts the kill storm, the Redis restarts, the outage and a provider that loses
answers and fails reads at random on one stream of sends, at once.

The netns scenario needs root and iproute2: it makes a network namespace and a veth pair
of its own, runs one worker inside, and takes the link down and up.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mobyt_worker.producer import connect, new_order_id, send_sms  # noqa: E402
from mobyt_worker.sandbox import FLAKY, FUNCTIONS, ProviderSimulator, SimulatorServer  # noqa: E402
from mobyt_worker.store.keys import Keys  # noqa: E402
from mobyt_worker.states import OPEN_STATES  # noqa: E402
from mobyt_worker.store.orders import OrderStore  # noqa: E402
from mobyt_worker.store.connection import connect as connect_redis  # noqa: E402
from mobyt_worker.contract import SEND_SMS  # noqa: E402
from tests.support import CeleryProcess, RabbitVhost, RedisServer  # noqa: E402

LOGIN, PASSWORD, NUMBER = "soak", "soak-password", "+33612345670"
END_STATES = {"completed", "failed", "cancelled", "expired"}
NETNS_HOST, NETNS_PEER = "10.213.7.1", "10.213.7.2"


@dataclass(frozen=True)
class Size:
    sends: int
    rate: float  # sends per second
    settle: float  # seconds allowed for every order to reach its end after the faults


SMALL, BIG = Size(sends=80, rate=8.0, settle=60.0), Size(sends=800, rate=20.0, settle=180.0)


@dataclass
class Result:
    scenario: str
    sends: int = 0
    faults: str = ""
    billed: int = 0
    duplicates: int = 0
    lost: int = 0
    stranded: int = 0
    untracked: int = 0
    seconds: float = 0.0
    stranded_states: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.scenario:<8} sends={self.sends} {self.faults} billed={self.billed} "
                f"duplicates={self.duplicates} lost={self.lost} stranded={self.stranded} "
                f"untracked={self.untracked} wall={self.seconds:.0f}s"
                + (f" stranded_in={self.stranded_states}" if self.stranded_states else "")
                + f" states={self.states}")

    @property
    def clean(self) -> bool:
        return self.duplicates == self.lost == self.stranded == self.untracked == 0


class Stack:
    """Redis (AOF), the simulator, workers and beat of one scenario; all stopped at exit."""

    def __init__(self, exits: ExitStack, *, broker_url: str | None = None, bind: str = "127.0.0.1") -> None:
        self.redis_server = RedisServer(appendonly=True).start()
        exits.callback(self.redis_server.cleanup)
        self.sim = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.5, timeout_after=3.0)
        self.http = SimulatorServer(self.sim, host=bind).start()
        exits.callback(self.sim.close)
        exits.callback(self.http.stop)
        self.redis_url = self.redis_server.url
        self.env = {
            "REDIS_URL": self.redis_url, "MOBYT_LOGIN": LOGIN, "MOBYT_PASSWORD": PASSWORD,
            "MOBYT_BASE_URL": self.http.url, "MOBYT_DEFAULT_SENDER": "ACME", "MOBYT_CONNECT_TIMEOUT": "1",
            "MOBYT_READ_TIMEOUT": "2", "MOBYT_CALL_DEADLINE": "3",
            "MOBYT_POLL_TICK": "0.5", "MOBYT_POLL_INTERVALS": "0.5,1,2",
            "MOBYT_SEND_RETRY_MAX": "2", "MOBYT_VISIBILITY_TIMEOUT": "10", "MOBYT_REPLAY_AFTER": "4",
            "MOBYT_INBOX_INTERVAL": "30", "MOBYT_RECONCILE_INTERVAL": "300", "MOBYT_CREDITS_INTERVAL": "300",
            "MOBYT_WORKER_CONCURRENCY": "8",
            "MOBYT_DOUBT_GRACE": "1", "MOBYT_CLOCK_MARGIN": "1",  # one clock: history proves absence after seconds
        }
        if broker_url:
            self.env["MOBYT_BROKER_URL"] = broker_url
        self.broker_url = broker_url or self.redis_url
        self.processes: list[CeleryProcess] = []
        exits.callback(self.stop_processes)

    def start(self, kind: str, name: str, env: dict[str, str] | None = None,
              prefix: list[str] | None = None) -> CeleryProcess:
        proc = CeleryProcess(kind, {**self.env, **(env or {})}, name=name)
        proc.args = (prefix or []) + proc.args
        self.processes.append(proc.start())
        return proc

    def stop_processes(self) -> None:
        for proc in self.processes:
            proc.stop()
            proc.log.unlink(missing_ok=True)


def feed(stack: Stack, size: Size, accepted: list[str], stop: threading.Event) -> None:
    """The producer helper at ``size.rate``; a send counts as accepted once send_sms returned."""
    app = connect(stack.broker_url, redis_url=stack.redis_url, replay_after=4)
    for i in range(size.sends):
        due = time.monotonic() + 1 / size.rate
        order_id = new_order_id()  # a retry keeps it: a failed call may have written the intent already
        for _ in range(20):  # a producer retries while its broker or Redis is away
            try:
                accepted.append(send_sms(app, [NUMBER], f"soak {i}", sender="ACME", order_id=order_id).order_id)
                break
            except Exception:  # noqa: BLE001 - not accepted: the caller saw the error
                time.sleep(0.5)
        time.sleep(max(0.0, due - time.monotonic()))
    stop.set()


def measure(stack: Stack, accepted: list[str], settle: float) -> Result:
    """Wait for every accepted order to end (or the settle time), then count."""
    store = OrderStore(connect_redis(stack.redis_url), "mobyt")
    keys, r = Keys("mobyt"), store.redis
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        records = [store.get_order(oid, with_history=False) for oid in accepted]
        if all(rec is not None and rec.state in END_STATES for rec in records):
            break
        time.sleep(1.0)
    with stack.sim._lock:  # the simulator's own ledger of billed sends
        billed = dict(stack.sim._billed)
    result = Result("", sends=len(accepted), billed=sum(billed.values()))
    result.duplicates = sum(1 for n in billed.values() if n > 1)
    result.untracked = sum(1 for oid in billed if not r.exists(keys.order(oid)))
    for oid in accepted:
        rec = store.get_order(oid, with_history=False)
        state = rec.state if rec else ""
        result.states[state or "missing"] = result.states.get(state or "missing", 0) + 1
        if not billed.get(oid) and state not in END_STATES:
            result.lost += 1
        if state in OPEN_STATES | {"queued"} and r.zscore(keys.due, oid) is None \
                and r.zscore(keys.intents, oid) is None:
            result.stranded += 1
            result.stranded_states[state] = result.stranded_states.get(state, 0) + 1
    return result


def run(name: str, size: Size, fault: Callable[[Stack, threading.Event], str], *,
        broker_url: str | None = None, workers: int = 2, setup: Callable[[ExitStack], dict] | None = None) -> Result:
    started = time.monotonic()
    with ExitStack() as exits:
        extra = setup(exits) if setup else {}
        stack = Stack(exits, broker_url=broker_url, bind=extra.get("bind", "127.0.0.1"))
        if "bind" in extra:  # Redis also answers on the veth address
            connect_redis(stack.redis_url).config_set("bind", f"127.0.0.1 {extra['bind']}")
        for n in range(workers):
            stack.start("worker", f"w{n}")
        stack.start("beat", "beat")
        accepted: list[str] = []
        stop = threading.Event()
        producer = threading.Thread(target=feed, args=(stack, size, accepted, stop), daemon=True)
        producer.start()
        faults = fault(stack, stop)
        producer.join()
        result = measure(stack, accepted, size.settle)
    result.scenario, result.faults, result.seconds = name, faults, time.monotonic() - started
    return result


# --- faults ---------------------------------------------------------------------------------


def kill_storm(every: float) -> Callable[[Stack, threading.Event], str]:
    def fault(stack: Stack, stop: threading.Event) -> str:
        kills = 0
        workers = [p for p in stack.processes if p.kind == "worker"]
        while not stop.wait(every * random.uniform(0.7, 1.3)):
            victim = random.choice(workers)
            victim.kill()
            kills += 1
            victim.start(wait=False)
        return f"kills={kills}"
    return fault


def redis_restarts(count: int) -> Callable[[Stack, threading.Event], str]:
    def fault(stack: Stack, stop: threading.Event) -> str:
        for _ in range(count):
            if stop.wait(3.0):
                break
            stack.redis_server.restart(down_for=1.0)
        stop.wait()
        dead = sum(1 for p in stack.processes if p.proc and p.proc.poll() is not None)
        return f"restarts={count} dead_processes={dead}"
    return fault


def provider_outage(seconds: float) -> Callable[[Stack, threading.Event], str]:
    def fault(stack: Stack, stop: threading.Event) -> str:
        stop.wait(2.0)
        for function in FUNCTIONS:
            stack.sim.inject_fault(function, "http500", count=100_000)
        time.sleep(seconds)
        stack.sim.clear_faults()  # the outage ends: the simulator answers again
        stop.wait()
        return f"outage={seconds:.0f}s"
    return fault


def flaky_provider(every: float, per_wave: int) -> Callable[[Stack, threading.Event], str]:
    """Every ``every`` seconds, ``per_wave`` faults on the send and on both reads that settle
    a doubt (``sandbox.FLAKY``); a hang outlasts the read timeout."""
    def fault(stack: Stack, stop: threading.Event) -> str:
        injected = 0
        while not stop.wait(every):
            for _ in range(per_wave):
                function = random.choice(list(FLAKY))
                kind = random.choice(FLAKY[function])
                stack.sim.inject_fault(function, kind, delay=2.5 if kind == "slow" else 0.0)
                injected += 1
        return f"provider_faults={injected}"
    return fault


def together(*faults: Callable[[Stack, threading.Event], str]) -> Callable[[Stack, threading.Event], str]:
    """All the faults at once, each in its own thread, over the same stream of sends."""
    def fault(stack: Stack, stop: threading.Event) -> str:
        with ThreadPoolExecutor(len(faults)) as pool:
            return " ".join(pool.map(lambda one: one(stack, stop), faults))
    return fault


def netns_cut(seconds: float, ns: str, host_if: str) -> Callable[[Stack, threading.Event], str]:
    def fault(stack: Stack, stop: threading.Event) -> str:
        stack.start("worker", "cut", env={"REDIS_URL": stack.redis_url.replace("127.0.0.1", NETNS_HOST),
                                         "MOBYT_BASE_URL": stack.http.url.replace("127.0.0.1", NETNS_HOST)},
                    prefix=["ip", "netns", "exec", ns])
        stop.wait(3.0)
        subprocess.run(["ip", "link", "set", host_if, "down"], check=True)
        time.sleep(seconds)
        subprocess.run(["ip", "link", "set", host_if, "up"], check=True)
        stop.wait()
        inside = [p for p in stack.processes if p.name == "cut"][0].output().count(f"Task {SEND_SMS}[")
        return f"cut={seconds:.0f}s cut_worker_log_lines={inside}"
    return fault


def netns_setup(ns: str, host_if: str) -> Callable[[ExitStack], dict]:
    def setup(exits: ExitStack) -> dict:
        peer = host_if + "p"
        cmds = [["ip", "netns", "add", ns], ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer],
                ["ip", "link", "set", peer, "netns", ns], ["ip", "addr", "add", f"{NETNS_HOST}/30", "dev", host_if],
                ["ip", "link", "set", host_if, "up"],
                ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{NETNS_PEER}/30", "dev", peer],
                ["ip", "netns", "exec", ns, "ip", "link", "set", peer, "up"],
                ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
        exits.callback(subprocess.run, ["ip", "netns", "del", ns], capture_output=True)
        exits.callback(subprocess.run, ["ip", "link", "del", host_if], capture_output=True)
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        return {"bind": NETNS_HOST}
    return setup


def netns_possible() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def scenarios(size: Size, small: bool) -> dict[str, Callable[[], Result]]:
    ns, host_if = f"mobytsoak{os.getpid()}", f"msk{os.getpid() % 100000}"

    def rabbit() -> Result:
        vhost = RabbitVhost().create()
        try:
            return run("rabbit", size, kill_storm(3.0), broker_url=vhost.url)
        finally:
            vhost.cleanup()

    return {
        "storm": lambda: run("storm", size, kill_storm(3.0)),
        "redis": lambda: run("redis", size, redis_restarts(2)),
        "outage": lambda: run("outage", size, provider_outage(4.0 if small else 6.0)),
        "netns": lambda: run("netns", size, netns_cut(8.0 if small else 30.0, ns, host_if), workers=1,
                             setup=netns_setup(ns, host_if)),
        "rabbit": rabbit,
        "all": lambda: run("all", size, together(kill_storm(3.0), redis_restarts(2),
                                                 provider_outage(4.0 if small else 6.0), flaky_provider(1.0, 4))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CI size")
    parser.add_argument("--only", default="", help="comma-separated scenarios (storm,redis,outage,netns,rabbit,all)")
    args = parser.parse_args(argv)
    size = SMALL if args.small else BIG
    chosen = scenarios(size, args.small)
    names = [n for n in (args.only.split(",") if args.only else chosen) if n]
    clean = True
    for name in names:
        if name == "netns" and not netns_possible():
            print(f"{name:<8} skipped: needs root and iproute2", flush=True)
            continue
        if name == "rabbit" and not RabbitVhost.available():
            print(f"{name:<8} skipped: RabbitMQ is not running", flush=True)
            continue
        result = chosen[name]()
        clean = clean and result.clean
        print(result.line(), flush=True)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
