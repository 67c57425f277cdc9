from __future__ import annotations

import gc
import secrets
from typing import Callable, Iterator

import fakeredis
import pytest
import redis

from mobyt_worker.config import Settings
from mobyt_worker.runtime import Runtime
from mobyt_worker.sandbox import ProviderSimulator, SimulatorServer
from mobyt_worker.store.connection import connect

from .support import CeleryProcess, RedisServer, refuse_redis_servers

LOGIN = "acme"
PASSWORD = "s3cr3t-Pa55word-" + secrets.token_hex(4)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a redis-server (directly or through a worker) is an integration test."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``redis_client`` runs each test on fakeredis and on a real server (the integration tier);
    a test marked ``integration`` (it asks the server itself something) runs on the real one only."""
    if "redis_client" in metafunc.fixturenames:
        real = pytest.param("real", marks=pytest.mark.integration)
        only_real = metafunc.definition.get_closest_marker("integration")
        metafunc.parametrize("redis_backend", [real] if only_real else ["fake", real], indirect=True)


@pytest.fixture(autouse=True)
def no_redis_server_in_the_unit_tier(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Outside the integration tier any connection to a Redis server fails the test (even one
    the code under test catches); yields the refused addresses.

    An integration test's garbage is collected as it ends: a Celery result it dropped may
    reconnect to that test's Redis from ``AsyncResult.__del__``, and collected later, in a
    unit test of the same process, that was a refused connection (and, run in the middle
    of ``ast.parse``, CPython 3.11's "AST constructor recursion depth mismatch")."""
    if request.node.get_closest_marker("integration"):
        yield []
        gc.collect()
        return
    with refuse_redis_servers() as attempts:
        yield attempts
    assert not attempts, f"the unit tier connected to Redis servers: {attempts}"


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def redis_client(request: pytest.FixtureRequest, redis_backend: str) -> Iterator[redis.Redis]:
    """An empty Redis with decoded replies: fakeredis (with Lua) or the session's redis-server."""
    if redis_backend == "fake":
        client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    else:
        client = connect(request.getfixturevalue("redis_url"))
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def simulator() -> Iterator[ProviderSimulator]:
    sim = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.6, timeout_after=3.0)
    yield sim
    sim.close()


@pytest.fixture
def provider(simulator: ProviderSimulator) -> Iterator[SimulatorServer]:
    server = SimulatorServer(simulator).start()
    yield server
    server.stop()


@pytest.fixture
def worker_env(redis_url: str, provider: SimulatorServer) -> dict[str, str]:
    """Environment of worker/beat processes (and of Settings in the test process)."""
    return {
        "REDIS_URL": redis_url,
        "MOBYT_LOGIN": LOGIN,
        "MOBYT_PASSWORD": PASSWORD,
        "MOBYT_BASE_URL": provider.url,
        "MOBYT_DEFAULT_SENDER": "ACME",
        "MOBYT_CONNECT_TIMEOUT": "1",
        "MOBYT_READ_TIMEOUT": "2",
        "MOBYT_CALL_DEADLINE": "3",
        "MOBYT_POLL_TICK": "0.3",
        "MOBYT_POLL_INTERVALS": "0.3,0.6,1",
        "MOBYT_SEND_RETRY_MAX": "0.3",
        "MOBYT_DOUBT_GRACE": "0.3",
        "MOBYT_CLOCK_MARGIN": "1",  # one clock: a margin of a second, not two minutes, before history proves absence
        "MOBYT_VISIBILITY_TIMEOUT": "8",
        "MOBYT_INBOX_INTERVAL": "0.5",
        "MOBYT_RECONCILE_INTERVAL": "2",
        "MOBYT_CREDITS_INTERVAL": "1",
        "MOBYT_WORKER_CONCURRENCY": "8",
    }


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env(worker_env)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def private_redis() -> Iterator[Callable[..., RedisServer]]:
    """Start a redis-server of the test's own (e.g. to restart it); stopped after every
    worker and beat (start_process depends on this fixture), so none hangs on a dead Redis."""
    servers: list[RedisServer] = []

    def start(**kw) -> RedisServer:
        servers.append(RedisServer(**kw).start())
        return servers[-1]

    yield start
    for server in servers:
        server.cleanup()


@pytest.fixture
def start_process(worker_env: dict[str, str], private_redis: Callable[..., RedisServer]):
    """Start worker/beat subprocesses; all are stopped (and logs shown on failure) at teardown."""
    started: list[CeleryProcess] = []

    def start(kind: str = "worker", *, name: str = "w1", env: dict[str, str] | None = None, **kw) -> CeleryProcess:
        proc = CeleryProcess(kind, {**worker_env, **(env or {})}, name=name, **kw).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    for proc in started:
        print(f"--- {proc.kind} {proc.name} log (tail) ---\n{proc.output()[-4000:]}")
        proc.log.unlink(missing_ok=True)
