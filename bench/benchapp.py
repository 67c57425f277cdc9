"""The worker's Celery app plus two bench tasks: a no-op and the peer send.

``celery -A bench.benchapp worker`` runs exactly the product's app (``mobyt_worker.worker``,
same settings, same tasks, same pool) with ``bench.noop`` and ``bench.peer_send`` added,
so all three are measured on the same broker, backend, pool and worker settings.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from mobyt_worker.config import Settings
from mobyt_worker.worker import app

__all__ = ["app", "noop", "peer_send"]

SETTINGS = Settings.from_env()
SESSION = requests.Session()  # one per process, its pool sized to the worker's threads like ours
SESSION.mount("http://", HTTPAdapter(pool_maxsize=SETTINGS.worker_concurrency))
SESSION.mount("https://", HTTPAdapter(pool_maxsize=SETTINGS.worker_concurrency))


@app.task(name="bench.noop")
def noop(**kwargs: Any) -> dict[str, Any]:
    """Takes the send's arguments, returns a result of the same kind, does nothing else."""
    return {"order_id": "", "recipients": kwargs.get("recipients"), "credits": 1, "status": "noop"}


@app.task(name="bench.peer_send")
def peer_send(recipients: list[str], message: str, sender: str | None = None, **_: Any) -> dict[str, Any]:
    """What a user writes without this product: POST SENDSMS and return. No validation, no
    order record, no tracking, and a lost answer means a lost or doubled SMS."""
    answer = SESSION.post(SETTINGS.url_for("SENDSMS"), timeout=(SETTINGS.connect_timeout, SETTINGS.read_timeout),
                          data={"login": SETTINGS.login, "password": SETTINGS.password.reveal(), "message_type": "N",
                                "recipient": ",".join(recipients), "message": message, "sender": sender or ""})
    answer.raise_for_status()
    status, order_id, credits = (answer.text.split("|") + ["", ""])[:3]
    return {"order_id": order_id, "recipients": recipients, "credits": credits, "status": status}
