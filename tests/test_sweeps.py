"""Evidence about sends in doubt, and the SMSHISTORY sweeps they share: the policy
(doubt.py) and the ledger (sweeps.py) on fakeredis, the provider being the simulator over
HTTP. Each check is asked "as of" a moment a few seconds after the attempts (``later``):
nothing is sent in between, so the provider's history is what it would be then."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator, Mapping

import fakeredis
import pytest

from mobyt_worker import doubt
from mobyt_worker.provider.client import MobytClient
from mobyt_worker.config import Secret, Settings
from mobyt_worker.doubt import Window
from mobyt_worker.errors import ProviderTimeout
from mobyt_worker.sandbox import ProviderSimulator, SimulatorServer
from mobyt_worker.sms import build_send_request
from mobyt_worker.store.orders import OrderStore
from mobyt_worker.sweeps import SWEEP_RETENTION, HistorySweeps, SweepLedger, covers, merge, missing, pages
from mobyt_worker.provider.transport import HttpResponse, HttpTransport

LOGIN, PASSWORD = "acme", "sweep-Pa55word"
NUMBER = "+33612345671"


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    simulator = ProviderSimulator(login=LOGIN, password=PASSWORD, delivery_delay=0.0)
    yield simulator
    simulator.close()


@pytest.fixture
def server(sim: ProviderSimulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
def settings(server: SimulatorServer) -> Settings:
    return Settings(login=LOGIN, password=Secret(PASSWORD), base_url=server.url, connect_timeout=1.0,
                    read_timeout=2.0, doubt_grace=1.0, clock_margin=1.0)


@pytest.fixture
def client(settings: Settings) -> Iterator[MobytClient]:
    with MobytClient(settings, backoff_max=0.05) as made:
        yield made


@pytest.fixture
def store() -> OrderStore:
    return OrderStore(fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True), "mobyt")


@pytest.fixture
def sweeps(client: MobytClient, store: OrderStore, settings: Settings) -> HistorySweeps:
    return HistorySweeps(client, SweepLedger(store.redis, store.keys), store, settings)


def in_doubt(store: OrderStore, order_id: str) -> None:
    """A claimed attempt whose answer never came (the worker saw a timeout)."""
    store.claim_send(order_id, {"message_type": "N"}, lock_seconds=5)
    store.note_ambiguous(order_id, ProviderTimeout("no answer"), next_check=0)


def provider_has(client: MobytClient, order_id: str) -> None:
    """The provider committed ``order_id`` (the answer our worker lost)."""
    client.send_sms(build_send_request(recipients=[NUMBER], message="hi", message_type="N", sender="ACME",
                                       order_id=order_id, tz=client.settings.timezone,
                                       now=datetime.now(timezone.utc)))


def later(store: OrderStore, settings: Settings, *order_ids: str) -> float:
    """A moment at which every window of ``order_ids`` is readable."""
    return max(doubt.window_of(store.require_order(o), settings, time.time()).readable_at for o in order_ids)


def gather(client: MobytClient, sweeps: HistorySweeps, settings: Settings, store: OrderStore, order_id: str,
           now: float | None = None) -> doubt.Evidence:
    return doubt.gather(client, sweeps, settings, store.require_order(order_id), now=now)


# --- the window and the spans ------------------------------------------------------------


def test_the_window_runs_from_the_first_attempt_to_the_last_plus_the_grace_with_the_margin_each_side():
    w = doubt.window(first=1000.4, last=1010.2, grace=30, margin=120)
    assert (w.start, w.end) == (880, 1160)  # floor(1000.4 - 120), floor(1010.2 + 30 + 120)
    assert w.readable_at == 1160 + 1 + 120  # a sweep then counts every second of it as read


def test_spans_merge_cover_and_leave_gaps():
    assert merge([(10, 20), (0, 5), (5, 8), (19, 30)]) == [(0, 8), (10, 30)]
    read = merge([(0, 8), (10, 30)])
    assert covers(read, Window(10, 29, 0)) and not covers(read, Window(7, 12, 0)) and not covers(read, Window(25, 30, 0))
    assert missing(read, [(-5, 40)]) == [(-5, 0), (8, 10), (30, 40)]
    assert missing(read, [(12, 20)]) == []
    assert pages([(0, 7000), (9000, 9001)], size=3600) == [(0, 3600), (3600, 7000), (9000, 9001)]


# --- the ledger ----------------------------------------------------------------------------


def test_the_ledger_answers_from_merged_pieces_and_seen_ids(store: OrderStore):
    ledger, now = SweepLedger(store.redis, store.keys), time.time()
    assert ledger.answer("A", Window(100, 150, 0), now) is None  # nothing read yet
    ledger.record((100, 120), ["SEEN1"], now)
    ledger.record((120, 200), [], now)  # read later, by another sweep: the two join
    assert ledger.answer("A", Window(100, 150, 0), now) is False  # read whole, not listed: absent
    assert ledger.answer("A", Window(90, 150, 0), now) is None  # a second before the pieces: not read
    assert ledger.answer("A", Window(150, 200, 0), now) is None  # the end is excluded
    assert ledger.answer("SEEN1", Window(5000, 6000, 0), now) is True  # seen proves presence, anywhere


def test_a_piece_and_its_ids_are_forgotten_together_and_an_id_seen_again_lives_on(store: OrderStore):
    ledger, then = SweepLedger(store.redis, store.keys), time.time()
    ledger.record((0, 10), ["OLD", "AGAIN"], then)
    ledger.record((10, 20), ["AGAIN"], then + 100)
    after = then + SWEEP_RETENTION + 50
    assert ledger.answer("OLD", Window(0, 9, 0), after) is None  # piece and id gone: not read, never "absent"
    assert ledger.answer("AGAIN", Window(0, 9, 0), after) is True
    ledger.record((30, 40), [], after)  # recording prunes what retention forgot
    assert store.redis.zscore(store.keys.swept_seen, "OLD") is None
    assert store.redis.zrange(store.keys.swept, 0, -1) == ["10:20", "30:40"]


# --- evidence ------------------------------------------------------------------------------


def test_a_ko_from_smsstatus_and_a_history_without_the_order_prove_absence(client, sweeps, settings, store, sim):
    in_doubt(store, "NEVER1")  # the provider refused the request before committing (HTTP 500)
    evidence = gather(client, sweeps, settings, store, "NEVER1", now=later(store, settings, "NEVER1"))
    assert evidence.verdict == doubt.ABSENT
    assert [r.params["order_id"] for r in sim.requests("SMSSTATUS")] == ["NEVER1"]  # it answered KO 40
    assert sim.count("SMSHISTORY") == 1


def test_a_history_that_lists_the_order_proves_presence_even_when_smsstatus_says_ko(client, sweeps, settings, store,
                                                                                   sim):
    in_doubt(store, "LOST1")
    provider_has(client, "LOST1")
    sim.inject_fault("SMSSTATUS", "ko", code="31", message="Order not found")
    evidence = gather(client, sweeps, settings, store, "LOST1", now=later(store, settings, "LOST1"))
    assert evidence.verdict == doubt.ACCEPTED and not evidence.rows


def test_smsstatus_rows_win_over_a_history_read_without_the_order(client, sweeps, settings, store):
    in_doubt(store, "ROWS1")
    provider_has(client, "ROWS1")
    w = doubt.window_of(store.require_order("ROWS1"), settings, time.time())
    sweeps.ledger.record((w.start, w.end + 1), [], time.time())  # a history that (wrongly) omits it
    evidence = gather(client, sweeps, settings, store, "ROWS1", now=w.readable_at)
    assert evidence.verdict == doubt.ACCEPTED and [r.recipient for r in evidence.rows] == [NUMBER]


def test_a_failed_history_read_proves_nothing_and_records_nothing(client, sweeps, settings, store, sim):
    in_doubt(store, "FAIL1")
    sim.inject_fault("SMSHISTORY", "http503", count=4)  # every try of one read
    evidence = gather(client, sweeps, settings, store, "FAIL1", now=later(store, settings, "FAIL1"))
    assert evidence.verdict == doubt.UNCLEAR and type(evidence.error).__name__ == "ProviderServerError"
    assert store.redis.zcard(store.keys.swept) == 0 and not store.redis.exists(store.keys.sweep_lock)
    assert gather(client, sweeps, settings, store, "FAIL1", now=later(store, settings, "FAIL1")).verdict == doubt.ABSENT


def test_within_the_grace_no_history_is_read(client, sweeps, settings, store, sim):
    in_doubt(store, "EARLY1")
    readable = later(store, settings, "EARLY1")
    evidence = gather(client, sweeps, settings, store, "EARLY1", now=readable - 0.5)
    assert evidence.verdict == doubt.UNCLEAR and evidence.early and evidence.ask_after == readable
    assert sim.count("SMSHISTORY") == 0
    assert gather(client, sweeps, settings, store, "EARLY1", now=readable).verdict == doubt.ABSENT


# --- shared sweeps -------------------------------------------------------------------------


def test_one_sweep_serves_every_readable_order_in_doubt(client, sweeps, settings, store, sim):
    """Twelve orders in doubt over more than a second: the first check reads the windows of
    all of them, the others are answered from the ledger."""
    ids = [f"MANY{i}" for i in range(12)]
    for i, oid in enumerate(ids):
        if i == 6:
            time.sleep(1.0)  # the outage's later attempts: windows that end a second later
        in_doubt(store, oid)
    for oid in ids[::3]:
        provider_has(client, oid)
    now = later(store, settings, *ids)
    verdicts = {oid: gather(client, sweeps, settings, store, oid, now=now).verdict for oid in ids}
    assert verdicts == {oid: doubt.ACCEPTED if i % 3 == 0 else doubt.ABSENT for i, oid in enumerate(ids)}
    assert sim.count("SMSHISTORY") == 1  # the first check read for all twelve
    assert sim.stats()["history_rows"] == 4


def test_a_sweep_reads_only_what_no_earlier_sweep_read(client, sweeps, settings, store, sim):
    in_doubt(store, "FIRST1")
    gather(client, sweeps, settings, store, "FIRST1", now=later(store, settings, "FIRST1"))
    first = sim.requests("SMSHISTORY")[-1].params
    time.sleep(1.1)  # the next order's attempts come a second later
    in_doubt(store, "NEXT1")
    assert gather(client, sweeps, settings, store, "NEXT1", now=later(store, settings, "NEXT1")).verdict == doubt.ABSENT
    second = sim.requests("SMSHISTORY")[-1].params
    assert sim.count("SMSHISTORY") == 2 and second["from"] == first["to"]  # it starts where the first ended


def test_while_one_worker_sweeps_another_waits_for_its_answer(client, sweeps, settings, store, sim):
    """Two workers settle different orders at once: one reads, the other reads nothing and
    finds its answer in the ledger once the read is in."""
    in_doubt(store, "W1")
    in_doubt(store, "W2")
    now = later(store, settings, "W1", "W2")
    other = HistorySweeps(client, SweepLedger(store.redis, store.keys), store, settings)  # a second worker
    sim.inject_fault("SMSHISTORY", "slow", delay=1.0)  # answered, a second late
    first = threading.Thread(target=gather, args=(client, sweeps, settings, store, "W1", now))
    first.start()
    wait_until(lambda: sim.count("SMSHISTORY") == 1)
    busy = gather(client, other, settings, store, "W2", now=now)
    assert busy.verdict == doubt.UNCLEAR and busy.ask_after == now + doubt.SWEEP_WAIT and busy.early
    first.join()
    assert gather(client, other, settings, store, "W2", now=now).verdict == doubt.ABSENT
    assert sim.count("SMSHISTORY") == 1


class FailsOnSecondHistory:
    """The provider answers the first SMSHISTORY page, then fails every try of the next."""

    def __init__(self) -> None:
        self.http, self.pages = HttpTransport(4), 0

    def post(self, url: str, data: Mapping[str, str], timeout: tuple[float, float]) -> HttpResponse:
        if url.endswith("/SMSHISTORY"):
            self.pages += 1
            if self.pages > 1:
                return HttpResponse(503, "unavailable")
        return self.http.post(url, data, timeout)


def test_a_sweep_that_fails_half_way_keeps_the_pages_that_answered_and_no_other(settings, store):
    store.claim_send("LONG1", {"message_type": "N"}, lock_seconds=5)
    store.note_ambiguous("LONG1", ProviderTimeout("no answer"), next_check=0)
    record = store.require_order("LONG1")
    store.redis.hset(store.keys.order("LONG1"), "doubt_since", record.ambiguous_at - 5400)  # retried for 1.5 h
    with MobytClient(settings, FailsOnSecondHistory(), backoff_max=0.05) as failing:
        sweeps = HistorySweeps(failing, SweepLedger(store.redis, store.keys), store, settings)
        evidence = gather(failing, sweeps, settings, store, "LONG1", now=later(store, settings, "LONG1"))
    assert evidence.verdict == doubt.UNCLEAR and evidence.error is not None
    [piece] = store.redis.zrange(store.keys.swept, 0, -1)
    start, end = map(int, piece.split(":"))
    assert end - start == 3600  # the first page, whole; the second was never recorded
    assert not store.redis.exists(store.keys.sweep_lock)


def test_an_order_whose_doubt_ended_leaves_the_index(client, store):
    in_doubt(store, "IDX1")
    in_doubt(store, "IDX2")
    assert store.redis.zcard(store.keys.doubt_open) == 2
    store.mark_accepted("IDX1", scheduled=False, recipients=[NUMBER], first_poll_at=0)
    store.mark_failed("IDX2", ProviderTimeout("absent"), allowed=("sending",))
    assert store.redis.zcard(store.keys.doubt_open) == 0


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- a cancel whose REMOVE_DELAYED was refused ----------------------------------------------


def scheduled(client: MobytClient, store: OrderStore, order_id: str) -> None:
    store.claim_send(order_id, {"message_type": "N"}, lock_seconds=5)
    now = datetime.now(timezone.utc)
    client.send_sms(build_send_request(recipients=[NUMBER], message="later", message_type="N", sender="ACME",
                                       order_id=order_id, scheduled_at=(now + timedelta(hours=1)).isoformat(),
                                       tz=client.settings.timezone, now=now))
    store.mark_accepted(order_id, scheduled=True, recipients=[NUMBER], first_poll_at=time.time() + 3600)


def test_a_ko_from_smsstatus_does_not_make_a_scheduled_order_gone(client, store, settings, sim):
    scheduled(client, store, "SCHED1")
    sim.inject_fault("SMSSTATUS", "ko", code="31", message="Order not found")
    assert not doubt.gone(client, store.require_order("SCHED1"), settings.clock_margin)  # the history lists it
    assert sim.count("SMSHISTORY") == 1


def test_an_order_the_provider_removed_is_gone(client, store, settings, sim):
    scheduled(client, store, "SCHED2")
    client.remove_delayed("SCHED2")  # its answer, in real life, lost
    assert doubt.gone(client, store.require_order("SCHED2"), settings.clock_margin)
    sim.inject_fault("SMSHISTORY", "http503", count=4)
    assert not doubt.gone(client, store.require_order("SCHED2"), settings.clock_margin)  # a failed read: not proven


def test_a_claimed_attempt_without_an_outcome_counts_as_in_flight_until_its_lock_runs_out(store, settings):
    """A worker killed mid-send: its request may reach the provider at any moment of its
    lock, so the window (and when it is readable) runs from there."""
    before = time.time()
    store.claim_send("KILLED1", {"message_type": "N"}, lock_seconds=30)
    w = doubt.window_of(store.require_order("KILLED1"), settings, time.time())
    assert w.end >= before + 30 + settings.doubt_grace + settings.clock_margin - 1
    assert store.redis.zscore(store.keys.doubt_open, "KILLED1") >= before + 30
