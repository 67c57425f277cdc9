"""``Keys`` spells every key the product writes: a worker and a beat run jobs, sends and
an inbound STOP, then every key under the prefix must be one ``Keys`` names (a fixed name,
a name built by one of its methods, or under one of its prefixes), and RedBeat's keys sit
under ``P:beat:``."""

from __future__ import annotations

import inspect
import re

from mobyt_worker.store.keys import Keys

from ..producer import bare_client, run
from ..support import wait_for

#: Stands for each argument of a ``Keys`` method (an order id, a host, a pid...): no key has it.
PART = "\x00"


def key_patterns(prefix: str) -> list[re.Pattern[str]]:
    """Every key ``Keys(prefix)`` can name, as a regular expression."""
    keys = Keys(prefix)
    patterns = []
    for name, value in vars(keys).items():
        if name != "prefix" and isinstance(value, str):  # a name ending in ':' is a prefix (RedBeat's, inbox ids)
            patterns.append(re.escape(value) + (".+" if value.endswith(":") else ""))
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        if name.startswith("_"):
            continue
        built = method(*[PART] * len(inspect.signature(method).parameters))
        for key in built if isinstance(built, list) else [built]:
            patterns.append(re.escape(key).replace(re.escape(PART), "[^:]+"))
    return [re.compile(p + "$") for p in patterns]


def test_key_patterns_stand_for_the_keys_they_name():
    patterns = key_patterns("P")
    named = ["P:orders", "P:order:ABC123", "P:order:ABC123:rcpt", "P:heartbeat:worker:host.example:4242",
             "P:beat:poll-due-orders", "P:beat::schedule", "P:inbox:msg:17", "P:api:rate:t1:29012345"]
    assert [k for k in named if not any(p.match(k) for p in patterns)] == []
    assert not any(p.match(k) for p in patterns for k in ("P:unknown", "Q:orders", "P:order:A:B", "P:orders:x"))


def test_every_key_a_worker_and_a_beat_write_is_named_by_keys(simulator, start_process, runtime, redis_url):
    prefix = runtime.settings.key_prefix
    start_process("worker")
    start_process("beat")
    client = bare_client(redis_url)
    sent = run(client, "mobyt.send_sms", recipients=["+33612345678"], message="keys")
    simulator.add_inbound("+33612345679", "STOP")
    wait_for(lambda: runtime.redis.hlen(f"{prefix}:optout") == 1, timeout=20, what="the STOP stored")
    wait_for(lambda: runtime.redis.exists(f"{prefix}:credits"), timeout=20, what="credits checked")
    wait_for(lambda: runtime.store.require_order(sent["order_id"]).final, timeout=30, what="the send final")

    keys = sorted(runtime.redis.scan_iter(f"{prefix}:*"))
    patterns = key_patterns(prefix)
    unnamed = [k for k in keys if not any(p.match(k) for p in patterns)]
    assert not unnamed, unnamed
    beat = [k for k in keys if k.startswith(f"{prefix}:beat:")]
    assert f"{prefix}:beat:lock" in beat and f"{prefix}:beat:poll-due-orders" in beat, beat
    assert not [k for k in keys if k.startswith(f"{prefix}:beat") and not k.startswith(f"{prefix}:beat:")]
