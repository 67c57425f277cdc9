"""The README's key table is what Redis really holds: a worker and a beat run jobs, sends
and an inbound STOP, then every key under the prefix must match a row of that table, and
RedBeat's keys sit under ``P:beat:``."""

from __future__ import annotations

import re
from pathlib import Path

from .producer import bare_client, run
from .support import wait_for

README = Path(__file__).resolve().parent.parent / "README.md"


def documented_patterns(prefix: str) -> list[re.Pattern[str]]:
    """The key cells of the README's "Redis keys" table, as regular expressions."""
    section = README.read_text(encoding="utf-8").split("### Redis keys", 1)[1].split("\n\n", 2)[1]
    patterns = []
    for row in section.splitlines()[2:]:
        for key in re.findall(r"`(P:[^`]+)`", row.split("|")[1]):
            spelled = re.escape(key).replace(r"\*", ".*")
            spelled = re.sub(r"\\\{[a-z_]+\\\}", "[^:]+", spelled)
            patterns.append(re.compile(prefix + spelled[1:] + "$"))
    return patterns


def test_every_key_a_worker_and_a_beat_write_is_in_the_readme_table(simulator, start_process, runtime, redis_url):
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
    patterns = documented_patterns(prefix)
    undocumented = [k for k in keys if not any(p.match(k) for p in patterns)]
    assert not undocumented, undocumented
    beat = [k for k in keys if k.startswith(f"{prefix}:beat:")]
    assert f"{prefix}:beat:lock" in beat and f"{prefix}:beat:poll-due-orders" in beat, beat
    assert not [k for k in keys if k.startswith(f"{prefix}:beat") and not k.startswith(f"{prefix}:beat:")]
