"""A plain ``rediss://host/0`` verifies the server's certificate in every client: ours,
the broker's (kombu), the result backend's (Celery) and RedBeat's. Against a real
redis-server speaking TLS with a self-signed certificate: trusted (``SSL_CERT_FILE``),
each one answers; not trusted, each one refuses the handshake."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
import redis
from kombu.exceptions import OperationalError
from redbeat.schedulers import get_redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mobyt_worker.celeryapp import create_app
from mobyt_worker.config import Settings
from mobyt_worker.store.connection import connect

from ..support import RedisServer, SelfSignedCert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs() -> Iterator[tuple[SelfSignedCert, SelfSignedCert]]:
    server_cert, other = SelfSignedCert(), SelfSignedCert()
    yield server_cert, other
    server_cert.cleanup()
    other.cleanup()


@pytest.fixture(scope="module")
def tls_url(certs) -> Iterator[str]:
    server = RedisServer(tls=certs[0], password="tls-pw-" + "z" * 12).start()
    yield server.url  # rediss://:pw@127.0.0.1:port/0: no ssl_* parameter
    server.cleanup()


def pings(url: str) -> dict[str, Callable[[], object]]:
    app = create_app(Settings.from_env({"REDIS_URL": url}))

    def broker() -> object:
        with app.connection_for_write() as conn:
            conn.connect()  # one attempt
            return conn.default_channel.client.ping()

    def redbeat() -> object:  # RedBeat's own client retries for ever: its options, one attempt
        pool = get_redis(app).wrapped_connection.connection_pool
        kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)).ping()

    return {"ours": lambda: connect(url, quick=True).ping(), "broker": broker,
            "backend": lambda: app.backend.client.ping(), "redbeat": redbeat}


def test_every_client_answers_when_the_certificate_is_trusted(tls_url, certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs[0].cert))
    assert {name: ping() for name, ping in pings(tls_url).items()} == dict.fromkeys(
        ("ours", "broker", "backend", "redbeat"), True)


def test_every_client_refuses_a_certificate_it_cannot_verify(tls_url, certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs[1].cert))  # trusts another CA only
    refused = {}
    for name, ping in pings(tls_url).items():
        with pytest.raises((redis.ConnectionError, OperationalError)) as info:  # kombu wraps redis-py's
            ping()
        refused[name] = "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert refused == dict.fromkeys(("ours", "broker", "backend", "redbeat"), True)
