"""The per-process Runtime: owned by the app of a worker or beat process, one per process
(a forked child builds its own), and what every task of that app reaches."""

from __future__ import annotations

from mobyt_worker.config import Settings
from mobyt_worker.runtime import WorkerApp, create_worker_app


def test_a_worker_app_owns_one_runtime_per_process(monkeypatch):
    app = WorkerApp(Settings.from_env({}, dotenv=False))
    first = app.runtime
    assert app.runtime is first and first.app is app
    monkeypatch.setattr("os.getpid", lambda: -1)  # as seen from a forked child
    child = app.runtime
    assert child is not first and child.app is app and app.runtime is child


def test_every_task_reaches_the_runtime_of_its_app():
    from mobyt_worker.tasks import poll_due, send_sms
    from mobyt_worker.worker import app

    assert send_sms.runtime is poll_due.runtime is app.runtime


def test_a_worker_app_is_configured_like_the_workers():
    app = create_worker_app(Settings.from_env({"MOBYT_BROKER_KEY_PREFIX": "acme:"}, dotenv=False))
    assert app.conf.task_default_queue == "mobyt" and app.conf.task_acks_late
    assert app.conf.broker_transport_options["global_keyprefix"] == "acme:"
