"""mobyt_worker: Celery workers for the Mobyt SMS HTTP API."""

__version__ = "0.1.0"
