"""The ``web`` process: the push receiver, the HTTP API, health and metrics
(``gunicorn 'mobyt_worker.web:wsgi_app()'``)."""

from .app import create_app, wsgi_app

__all__ = ["create_app", "wsgi_app"]
