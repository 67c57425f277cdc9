"""Credits watch: balances per type and nation with their time, a capped history, and a
low-balance event, against a real Redis, a real worker and the simulator."""

from __future__ import annotations

import json
import logging

import pytest

from mobyt_worker import cli
from mobyt_worker.store.credits import CreditsWatch
from mobyt_worker.provider.protocol import CreditRow, decode_credits

from ..producer import bare_client, run

SEED_CREDITS = "OK;N|IT|37;N|IT|37;N|IT|37;L|ES|56;L|ES|56;L|ES|100;EE||81"


@pytest.fixture
def watch(redis_client):
    return CreditsWatch(redis_client, "t", threshold=50, history_length=3)


def low_events(watch: CreditsWatch) -> list[dict[str, str]]:
    return [f for _, f in watch.redis.xrange(watch.events_key) if f["type"] == "credits_low"]


def test_balance_per_type_and_nation_with_time_and_capped_history(watch):
    result = watch.record(decode_credits(SEED_CREDITS))
    stored = {b.field: b for b in watch.balances()}
    assert {f: b.available for f, b in stored.items()} == {"N|IT": 111, "L|ES": 212, "EE|": 81}
    assert stored["L|ES"].lots == (56, 56, 100) and stored["EE|"].nation == ""
    assert all(b.at == result["at"] for b in stored.values())
    for available in (70, 60, 55, 52):
        watch.record([CreditRow("N", "IT", available)])
    history = watch.history()
    assert [h["balances"]["N|IT"] for h in history] == [52, 55, 60]  # newest first, 3 kept
    assert [b.field for b in watch.balances()] == ["EE|", "L|ES", "N|IT"]  # sorted by type, nation
    assert {b.field: b.available for b in watch.balances()} == {"EE|": 81, "L|ES": 212, "N|IT": 52}
    assert low_events(watch) == []


def test_low_balance_event_once_per_fall_and_a_warning_at_every_check(watch, caplog):
    caplog.set_level(logging.WARNING, logger="mobyt_worker.store.credits")
    watch.record([CreditRow("N", "FR", 100), CreditRow("EE", "", 20)])  # EE first seen under 50
    watch.record([CreditRow("N", "FR", 40), CreditRow("EE", "", 19)])  # N falls
    watch.record([CreditRow("N", "FR", 30), CreditRow("EE", "", 18)])  # both stay low
    watch.record([CreditRow("N", "FR", 500), CreditRow("EE", "", 18)])  # N refilled
    result = watch.record([CreditRow("N", "FR", 10), CreditRow("EE", "", 18)])  # N falls again
    assert result["low"] == ["N|FR", "EE|"] and result["fallen"] == ["N|FR"]
    events = low_events(watch)
    assert [(e["message_type"], e["nation"], e["available"], e["previous"]) for e in events] == [
        ("EE", "", "20", ""), ("N", "FR", "40", "100"), ("N", "FR", "10", "500")]
    assert all(e["threshold"] == "50" and e["at"] for e in events)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 8  # EE at each of 5 checks, N at 3
    assert "N FR has 10 left (threshold 50)" in warnings[-2]


def test_no_alert_when_threshold_is_zero(redis_client):
    watch = CreditsWatch(redis_client, "t")
    assert watch.record([CreditRow("N", "FR", 0)])["low"] == []
    assert low_events(watch) == []


def test_check_credits_task_stores_the_provider_balance_and_alerts(runtime, simulator, start_process, redis_url):
    worker = start_process("worker", env={"MOBYT_CREDIT_THRESHOLD": "5000"})
    client = bare_client(redis_url)
    first = run(client, "mobyt.check_credits")
    assert first["low"] == ["EE|"] and first["fallen"] == ["EE|"]
    watch = runtime.credits
    assert {(b.message_type, b.nation): b.available for b in watch.balances()} == simulator.credits()
    run(client, "mobyt.send_sms", recipients=["+33612345671"], message="Bonjour")
    run(client, "mobyt.check_credits")
    assert {b.field: b.available for b in watch.balances()}["N|FR"] == 9999
    assert [h["balances"]["N|FR"] for h in watch.history()] == [9999, 10000]
    [event] = low_events(watch)
    assert (event["message_type"], event["available"], event["threshold"]) == ("EE", "1000", "5000")
    assert simulator.count("CREDITS") == 2
    assert "WARNING" in worker.output() and "EE (abroad) has 1000 left (threshold 5000)" in worker.output()


def test_cli_shows_the_stored_balance_and_refreshes_it(worker_env, simulator, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["credits", "--stored", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert simulator.count("CREDITS") == 0  # --stored never calls the provider

    assert cli.main(["credits", "--refresh", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["message_type"], r["nation"]): r["available"] for r in rows} == simulator.credits()
    assert simulator.count("CREDITS") == 1

    assert cli.main(["credits"]) == 0  # the stored balance is the default view
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["type", "nation", "available", "at"] and len(out) == 4
    assert simulator.count("CREDITS") == 1
