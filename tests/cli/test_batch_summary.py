"""`mobyt batch` / `mobyt order BATCH_ID` count every recipient of the batch, including those
of chunks the provider has not accepted yet (queued or sending: no status rows so far)."""

from __future__ import annotations

import argparse
import json
import time

import redis

from mobyt_worker.cli.orders import _show_batch
from mobyt_worker.config import Settings
from mobyt_worker.store.intents import Intents
from mobyt_worker.runtime import Runtime
from mobyt_worker.store.orders import OrderStore


def test_a_batch_counts_the_recipients_of_chunks_not_accepted_yet(redis_client: redis.Redis, capsys):
    store = OrderStore(redis_client, "mobyt")
    meta = {"message_type": "N", "sender": "ACME", "batch_id": "BULK2", "task_id": "t", "parts": 1}
    store.claim_send("CHUNK0", {**meta, "recipient_count": 1}, lock_seconds=5)
    store.mark_accepted("CHUNK0", scheduled=False, recipients=["+33612345670"], first_poll_at=time.time() + 60)
    store.claim_send("CHUNK1", {**meta, "recipient_count": 2}, lock_seconds=5)  # SENDSMS still in flight
    Intents(redis_client, "mobyt", ttl=3600, replay_after=120).record(
        "CHUNK2", "t2", {"recipients": ["+33612345671", "+33612345672"], "batch_id": "BULK2"})  # not claimed
    store.record_batch("BULK2", ["CHUNK0", "CHUNK1", "CHUNK2"])
    rt = Runtime(Settings.from_env({}, dotenv=False))
    rt.__dict__["store"] = store

    _show_batch(argparse.Namespace(json=False), rt, "BULK2")
    summary = capsys.readouterr().out.split("\n\n")[0]
    assert summary == "batch BULK2: 3 orders, 5 recipients; accepted 1, queued 1, sending 1; pending 5"
    _show_batch(argparse.Namespace(json=True), rt, "BULK2")
    data = json.loads(capsys.readouterr().out)
    assert data["statuses"] == {"pending": 5}
    assert [o["recipient_count"] for o in data["orders"]] == [1, 2, 2]
