"""3000 status pushes to one order through the push receiver: its Redis keys before and after.

The pushes of tests/web/test_push_bounds.py (a recipient whose status goes back and forth,
recipients the order does not have, a repeated status), sent in-process to the web app on
a private redis-server with the rate limit off; ``MEMORY USAGE`` of the order's three keys.

    .venv/bin/python bench/push_flood.py [--pushes 3000]
"""

from __future__ import annotations

import argparse
from urllib.parse import urlencode

import falcon.testing
from harness import Stack, machine

from mobyt_worker.config import Settings
from mobyt_worker.runtime import Runtime
from mobyt_worker.web.app import create_app
from tests.web.test_push_bounds import accepted, flood, memory
from tests.web.webapp import FORM, WEBHOOK_TOKEN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=3000)
    pushes = parser.parse_args().pushes
    with Stack() as stack:
        url = stack.redis().url
        rt = Runtime(Settings.from_env({"REDIS_URL": url, "MOBYT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
                                        "MOBYT_PUSH_RATE": "0"}))
        stack.callback(rt.close)
        client = falcon.testing.TestClient(create_app(rt))
        accepted(rt.store)
        before = memory(rt, "FLOOD1")
        answers = flood(lambda path, form: client.simulate_post(path, body=urlencode(form), headers=FORM),
                        range(pushes))
        after = memory(rt, "FLOOD1")
        keys = rt.store.keys
        print(machine())
        print(f"{pushes} status pushes to one order: {answers}")
        print(f"order keys (MEMORY USAGE): {before} B before, {after} B after; "
              f"history {rt.redis.llen(keys.history('FLOOD1'))} entries, "
              f"recipients {rt.redis.hlen(keys.recipients('FLOOD1'))}")


if __name__ == "__main__":
    main()
