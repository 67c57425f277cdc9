"""A real worker and beat on a Redis that requires a password: the password (and every
token) is nowhere in what they log or answer to ``celery inspect``, nor in ``mobyt
config``, while the worker still sends."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

from ..producer import bare_client, call
from ..support import ROOT, CELERY, wait_for

NUMBER = "+33612345670"
REDIS_PASSWORD = "redis-Pa55-" + secrets.token_hex(8)
API_TOKEN = "api-" + secrets.token_hex(16)
WEBHOOK_TOKEN = "hook-" + secrets.token_hex(16)
SECRETS = (REDIS_PASSWORD, API_TOKEN, WEBHOOK_TOKEN)


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_no_password_in_inspect_replies_logs_or_mobyt_config(private_redis, worker_env, simulator, start_process):
    server = private_redis(password=REDIS_PASSWORD)
    env = {"REDIS_URL": server.url, "MOBYT_API_TOKEN": API_TOKEN, "MOBYT_WEBHOOK_TOKEN": WEBHOOK_TOKEN}
    worker = start_process("worker", env=env)
    beat = start_process("beat", env=env)

    client = bare_client(server.url)
    reply = call(client, "mobyt.send_sms", recipients=[NUMBER], message="hello", sender="ACME").get(timeout=20)
    assert reply["status"] == "accepted" and simulator.billed_sends(reply["order_id"]) == 1

    inspect = client.control.inspect(destination=[f"w1@{_hostname(worker.output())}"], timeout=5)
    replies = {name: getattr(inspect, name)(**kw) for name, kw in
               (("conf", {}), ("stats", {}), ("registered", {}), ("report", {}))}
    replies["conf_with_defaults"] = inspect.conf(with_defaults=True)
    for name, answer in replies.items():
        assert answer, f"no worker answered inspect {name}"
        assert leaked(json.dumps(answer, default=repr)) == [], name
    [conf] = replies["conf"].values()
    assert conf["redbeat_redis_url"].startswith("redis://127.0.0.1:")  # the setting was there to leak

    full_env = {**worker_env, **env, "PYTHONUNBUFFERED": "1"}
    cli = subprocess.run([CELERY, "-A", "mobyt_worker.worker", "inspect", "conf", "--timeout", "5"],
                         env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "redbeat_redis_url" in cli.stdout, cli.stdout + cli.stderr
    assert leaked(cli.stdout + cli.stderr) == []

    for args in (["config"], ["config", "--json"]):
        shown = subprocess.run([sys.executable, "-m", "mobyt_worker", *args], env=full_env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "redis_url" in shown.stdout, shown.stdout + shown.stderr
        assert leaked(shown.stdout + shown.stderr) == []

    wait_for(lambda: "check_credits" in worker.output(), what="the worker to run a beat job")
    for proc in (worker, beat):
        assert "127.0.0.1" in proc.output()  # the banner names the Redis it uses...
        assert leaked(proc.output()) == []   # ...without its password


def _hostname(log: str) -> str:
    """The ``%h`` of ``-n w1@%h`` as the worker's banner prints it."""
    return log.split("w1@", 1)[1].split()[0]
