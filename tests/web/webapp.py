"""The ``web`` app in-process for the unit tier: fakeredis for the store, Celery's in-memory
broker and result store for what it enqueues, Falcon's test client for requests."""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlencode

import fakeredis
import falcon.testing

from mobyt_worker.celeryapp import create_app as create_celery
from mobyt_worker.config import Settings
from mobyt_worker.runtime import Runtime
from mobyt_worker.web.app import create_app

API_TOKEN = "api-" + "a" * 28
WEBHOOK_TOKEN = "push-" + "w" * 27
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
STATUS, INBOUND = f"/callbacks/{WEBHOOK_TOKEN}/status", f"/callbacks/{WEBHOOK_TOKEN}/inbound"


class WebApp:
    """``rt`` (its Runtime, on fakeredis), ``app`` (the WSGI app), ``client`` (Falcon's)."""

    def __init__(self, **env: str) -> None:
        settings = Settings.from_env({"MOBYT_API_TOKEN": API_TOKEN, "MOBYT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
                                      "MOBYT_DEFAULT_SENDER": "ACME", **env})
        store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        app = create_celery(settings)
        app.conf.update(broker_url="memory://", result_backend="cache+memory://")
        self.rt = Runtime(settings, app=app)
        self.rt.__dict__["redis"] = store  # the intents and every store are built on it
        self.app = create_app(self.rt)
        self.client = falcon.testing.TestClient(self.app)

    def push(self, path: str, form: dict[str, str]) -> falcon.testing.Result:
        return self.client.simulate_post(path, body=urlencode(form), headers=FORM)

    def close(self) -> None:
        self.rt.metrics.flush()
        self.rt.redis.close()


def web_app(**env: str) -> Iterator[WebApp]:
    web = WebApp(**env)
    yield web
    web.close()


def error_shape(answer: Any) -> dict[str, Any]:
    """The body of an error answer, checked to be the one shape of web/io.py."""
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body = answer.json
    assert isinstance(body, dict) and isinstance(body["error"], str) and isinstance(body["message"], str), body
    assert set(body) <= {"error", "message", "field", "limit", "expected"}, body
    return body
