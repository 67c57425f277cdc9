"""The ``web`` process: one Falcon app for the push receiver, the HTTP API, health and metrics.

``GET /healthz``  200 when Redis answers, else 503: this process's liveness.
``GET /readyz``   200 when every check of fleet.py passes, else 503 naming the failed ones.
``GET /metrics``  Prometheus text of every process's counters (metrics.py); no token:
                  keep it off the public side of your proxy.
The callbacks (webhooks.py) are served when ``MOBYT_WEBHOOK_TOKEN`` is set, the API
(api.py) when ``MOBYT_API_TOKEN`` is; at least one of them must be.
"""

from __future__ import annotations

import falcon
import redis

from . import api, webhooks
from .. import metrics
from ..config import Settings
from ..errors import ConfigError
from ..fleet import Fleet, quick_client
from ..runtime import Runtime
from .io import Problem, answer, internal, redis_unavailable, serialize_error


class Health:
    def __init__(self, runtime: Runtime) -> None:
        s = runtime.settings
        # its own short timeouts: a load balancer must hear "down" in seconds, not ride out a failover
        self.redis = quick_client(s)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.redis.ping()
        except redis.RedisError:
            answer(resp, {"status": "unavailable", "redis": False}, 503)
            return
        answer(resp, {"status": "ok", "redis": True})

    on_head = on_get


class Ready:
    def __init__(self, runtime: Runtime, health: Health) -> None:
        self.fleet = Fleet(health.redis, runtime.settings)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        snapshot = self.fleet.snapshot()
        answer(resp, snapshot, 200 if snapshot["ready"] else 503)


class Metrics:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            resp.data = self.runtime.metrics.render()
        except redis.RedisError:
            raise Problem(503, "Redis is unavailable; metrics cannot be read") from None
        resp.content_type = metrics.CONTENT_TYPE

    on_head = on_get


def create_app(runtime: Runtime) -> falcon.App:
    s = runtime.settings
    if not s.webhook_token and not s.api_tokens:
        raise ConfigError("MOBYT_WEBHOOK_TOKEN", "or MOBYT_API_TOKEN is required to serve anything")
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.secure_cookies_by_default = True
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, internal)
    app.add_error_handler(redis.RedisError, redis_unavailable)
    health = Health(runtime)
    app.add_route("/healthz", health)
    app.add_route("/readyz", Ready(runtime, health))
    app.add_route("/metrics", Metrics(runtime))
    webhooks.add_routes(app, runtime)
    api.add_routes(app, runtime)
    return app


def wsgi_app(settings: Settings | None = None) -> falcon.App:
    """What gunicorn calls (``'mobyt_worker.web:wsgi_app()'``): settings from the
    environment, log masking of every token installed before the first request."""
    settings = settings or Settings.from_env()
    webhooks.install_log_filter(settings.secrets())
    return create_app(Runtime(settings))
