"""The worker's Celery app plus one no-op task, for the bench only.

``celery -A bench.benchapp worker`` runs exactly the product's app (``mobyt_worker.worker``,
same settings, same tasks, same pool) with ``bench.noop`` added, so the no-op and the
real send are measured on the same broker, backend and pool.
"""

from __future__ import annotations

from typing import Any

from mobyt_worker.worker import app

__all__ = ["app", "noop"]


@app.task(name="bench.noop")
def noop(**kwargs: Any) -> dict[str, Any]:
    """Takes the send's arguments, returns a result of the same kind, does nothing else."""
    return {"order_id": "", "recipients": kwargs.get("recipients"), "credits": 1, "status": "noop"}
