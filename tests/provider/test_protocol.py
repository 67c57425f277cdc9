"""The wire format: the seed document's own examples, refusals, broken bodies, round trips."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobyt_worker.provider import protocol
from mobyt_worker.errors import (
    ProviderBadResponse,
    ProviderEmptyResponse,
    ProviderRejected,
    ProviderUnavailable,
)
from mobyt_worker.provider.protocol import (
    CreditRow,
    HistoryRow,
    InboundMessage,
    RecipientStatus,
    SendReceipt,
    Status,
)

PARIS = ZoneInfo("Europe/Paris")

# The example answers of seed/mobyt-http-api.fr.txt, verbatim.
SEED_SENDSMS = "OK|1F11FEADCB6A4|1"
SEED_SMSSTATUS = "OK;%2B336061234567|DLVRD|20090309120636;%2B336106543210|ERROR|;%2B341234567|UNKNRCPT|;"
SEED_REMOVE_DELAYED = "OK;"
SEED_SMSHISTORY = (
    "OK;|20090217164232|GS||2|20090219164153;1F11FEAD08FE0|20090309113910|GP|test|1;"
    "|20090309120139|N|eXpEdItEuR|2|"
)
SEED_CREDITS = "OK;N|IT|37;N|IT|37;N|IT|37;L|ES|56;L|ES|56;L|ES|100;EE||81"
SEED_INBOX = "OK;12345678|%2B336061234567|%2B336107654321|hello+world|20090309113910|;"


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def assert_paris(value: datetime | None) -> None:
    assert value is not None and value.tzinfo is PARIS


# --- the seed's examples ---------------------------------------------------------------


def test_seed_sendsms():
    assert protocol.decode_send(SEED_SENDSMS) == SendReceipt(order_id="1F11FEADCB6A4", count=1)


def test_seed_smsstatus():
    rows = protocol.decode_status(SEED_SMSSTATUS, PARIS)
    assert rows == [
        RecipientStatus("+336061234567", Status.DLVRD, paris(2009, 3, 9, 12, 6, 36)),
        RecipientStatus("+336106543210", Status.ERROR, None),
        RecipientStatus("+341234567", Status.UNKNRCPT, None),
    ]
    assert_paris(rows[0].delivered_at)
    assert rows[0].delivered_at.utcoffset() == timedelta(hours=1)  # CET in March before DST
    assert [r.status.is_final for r in rows] == [True, True, True]


def test_seed_remove_delayed():
    assert protocol.decode_ok(SEED_REMOVE_DELAYED) is None
    assert protocol.decode_ok("OK") is None


def test_seed_smshistory_with_five_column_row_and_empty_order_ids():
    rows = protocol.decode_history(SEED_SMSHISTORY, PARIS)
    assert rows == [
        HistoryRow("", paris(2009, 2, 17, 16, 42, 32), "GS", "", 2, paris(2009, 2, 19, 16, 41, 53)),
        HistoryRow("1F11FEAD08FE0", paris(2009, 3, 9, 11, 39, 10), "GP", "test", 1, None),
        HistoryRow("", paris(2009, 3, 9, 12, 1, 39), "N", "eXpEdItEuR", 2, None),
    ]
    for row in rows:
        assert_paris(row.created_at)
    assert_paris(rows[0].scheduled_at)


def test_seed_credits():
    rows = protocol.decode_credits(SEED_CREDITS)
    assert rows == [
        CreditRow("N", "IT", 37),
        CreditRow("N", "IT", 37),
        CreditRow("N", "IT", 37),
        CreditRow("L", "ES", 56),
        CreditRow("L", "ES", 56),
        CreditRow("L", "ES", 100),
        CreditRow("EE", "", 81),
    ]


def test_seed_inbox():
    rows = protocol.decode_inbox(SEED_INBOX, PARIS)
    assert rows == [
        InboundMessage(
            id=12345678,
            receiver="+336061234567",
            sender="+336107654321",
            text="hello world",
            received_at=paris(2009, 3, 9, 11, 39, 10),
            keyword="",
        )
    ]
    assert_paris(rows[0].received_at)


def test_dates_follow_daylight_saving_time():
    (row,) = protocol.decode_inbox("OK;1|a|b|c|20090709113910|;", PARIS)
    assert row.received_at.utcoffset() == timedelta(hours=2)
    assert protocol.format_date(datetime(2009, 7, 9, 9, 39, 10, tzinfo=timezone.utc), PARIS) == "20090709113910"


def test_format_date_refuses_naive_datetimes():
    with pytest.raises(ValueError):
        protocol.format_date(datetime(2009, 7, 9), PARIS)


def test_empty_tables():
    assert protocol.decode_status("OK;", PARIS) == []
    assert protocol.decode_history("OK;", PARIS) == []
    assert protocol.decode_credits("OK;") == []
    assert protocol.decode_inbox("OK;", PARIS) == []
    assert protocol.decode_inbox("OK", PARIS) == []


def test_unknown_status_is_reported_as_unknown():
    (row,) = protocol.decode_status("OK;%2B33600000000|SOMETHINGNEW|;", PARIS)
    assert row.status is Status.UNKNOWN


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decode",
    [
        protocol.decode_send,
        protocol.decode_ok,
        protocol.decode_credits,
        lambda body: protocol.decode_status(body, PARIS),
        lambda body: protocol.decode_history(body, PARIS),
        lambda body: protocol.decode_inbox(body, PARIS),
    ],
)
def test_ko_becomes_provider_rejected_with_code_and_message(decode):
    with pytest.raises(ProviderRejected) as info:
        decode("KO|12|Invalid login or password")
    assert info.value.code == "12"
    assert info.value.message == "Invalid login or password"
    assert not info.value.retryable


def test_ko_message_may_contain_pipes():
    with pytest.raises(ProviderRejected) as info:
        protocol.decode_send("KO|7|bad recipient | +33 | see docs\n")
    assert info.value.code == "7"
    assert info.value.message == "bad recipient | +33 | see docs"
    assert "[7]" in str(info.value)


def test_ko_without_message():
    with pytest.raises(ProviderRejected) as info:
        protocol.decode_send("KO|99")
    assert info.value.code == "99"
    assert info.value.message


# --- bodies that are not the protocol ----------------------------------------------------

DECODERS = {
    "send": protocol.decode_send,
    "ok": protocol.decode_ok,
    "status": lambda body: protocol.decode_status(body, PARIS),
    "history": lambda body: protocol.decode_history(body, PARIS),
    "credits": protocol.decode_credits,
    "inbox": lambda body: protocol.decode_inbox(body, PARIS),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("body", ["", "   ", "\r\n"])
def test_empty_body(name, body):
    with pytest.raises(ProviderEmptyResponse):
        DECODERS[name](body)


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize(
    "body",
    [
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        "<!DOCTYPE html><html>OK;</html>",
        "\x00\x01garbage\xff",
        "Service temporarily unavailable",
        "KOALA",
    ],
)
def test_non_protocol_body_is_a_bad_response(name, body):
    with pytest.raises(ProviderBadResponse) as info:
        DECODERS[name](body)
    assert isinstance(info.value, ProviderUnavailable)
    assert not isinstance(info.value, ProviderEmptyResponse)


@pytest.mark.parametrize(
    "name, body",
    [
        ("send", "OK|1F11FEADCB6A4"),  # truncated before the count
        ("send", "OK||1"),  # no order id
        ("send", "OK|1F11FEADCB6A4|one"),
        ("status", "OK;%2B336061234567|DLVRD|20090309120636;%2B3361065"),  # row cut off
        ("status", "OK;%2B336061234567|DLVRD|2009030912"),  # date cut off
        ("status", "OK;%2B336061234567|DLVRD|20090309120636|extra|;"),
        ("history", "OK;1F11FEAD08FE0|20090309113910|GP|test"),
        ("history", "OK;1F11FEAD08FE0|20090309113910|GP|test|many|"),
        ("history", "OK;1F11FEAD08FE0|2009-03-09|GP|test|1|"),
        ("credits", "OK;N|IT|37;N|IT"),
        ("credits", "OK;N|IT|lots"),
        ("inbox", "OK;12345678|%2B336061234567|%2B336107654321|hello+world|2009030911;"),
        ("inbox", "OK;12345678|%2B336061234567|%2B336107654321;"),
        ("inbox", "OK;abc|%2B336061234567|%2B336107654321|hi|20090309113910|;"),
        ("ok", "OK;something"),
        ("status", "OK|1F11FEADCB6A4|1"),  # a SENDSMS answer where a table is expected
    ],
)
def test_truncated_or_malformed_rows_are_bad_responses(name, body):
    with pytest.raises(ProviderBadResponse) as info:
        DECODERS[name](body)
    assert not isinstance(info.value, ProviderEmptyResponse)


@pytest.mark.parametrize("body", ["OK;%2B336061234567|", "OK;%2B336061234567||;"])
def test_status_row_cut_before_its_status_is_a_bad_response(body):
    """Every SMSSTATUS row has a status: an empty one means the answer was cut off."""
    with pytest.raises(ProviderBadResponse):
        protocol.decode_status(body, PARIS)


def test_bad_response_message_is_a_short_preview():
    with pytest.raises(ProviderBadResponse) as info:
        protocol.decode_credits("<html>" + "x" * 5000 + "</html>")
    assert len(str(info.value)) < 200


# --- round trips -------------------------------------------------------------------------

# Text that stresses the separators and the URL encoding: | ; + % spaces, accents, emoji.
tricky = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("|;+%&= ,.\t\n#?/€éèçàÉ^{}[]~\\😀🇫🇷")),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=40,
)
# Whole seconds, aware, in the provider's zone, away from the autumn fold (see
# test_ambiguous_autumn_hour: local time without an offset cannot carry fold=1).
dates = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2099, 12, 31),
    timezones=st.just(PARIS),
    allow_imaginary=False,
).map(lambda d: d.replace(microsecond=0, fold=0))
optional_dates = st.none() | dates
codes = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", max_size=32)

status_rows = st.builds(RecipientStatus, recipient=tricky, status=st.sampled_from(Status), delivered_at=optional_dates)
history_rows = st.builds(
    HistoryRow,
    order_id=codes,
    created_at=optional_dates,
    message_type=st.sampled_from(["N", "L", "GS", "GP"]),
    sender=tricky,
    recipients=st.integers(min_value=0, max_value=10**6),
    scheduled_at=optional_dates,
)
inbox_rows = st.builds(
    InboundMessage,
    id=st.integers(min_value=1, max_value=2**53),
    receiver=tricky,
    sender=tricky,
    text=tricky,
    received_at=optional_dates,
    keyword=tricky,
)


def same_instants(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b and a.astimezone(timezone.utc) == b.astimezone(timezone.utc)


@settings(max_examples=200)
@given(st.lists(status_rows, max_size=5))
def test_status_round_trip(rows):
    decoded = protocol.decode_status(protocol.encode_status(rows, PARIS), PARIS)
    assert decoded == rows
    assert all(same_instants(a.delivered_at, b.delivered_at) for a, b in zip(decoded, rows))


@settings(max_examples=200)
@given(st.lists(history_rows, max_size=5))
def test_history_round_trip(rows):
    decoded = protocol.decode_history(protocol.encode_history(rows, PARIS), PARIS)
    assert decoded == rows
    for a, b in zip(decoded, rows):
        assert same_instants(a.created_at, b.created_at) and same_instants(a.scheduled_at, b.scheduled_at)


@settings(max_examples=200)
@given(st.lists(inbox_rows, max_size=5))
def test_inbox_round_trip(rows):
    decoded = protocol.decode_inbox(protocol.encode_inbox(rows, PARIS), PARIS)
    assert decoded == rows
    assert all(same_instants(a.received_at, b.received_at) for a, b in zip(decoded, rows))


@given(st.lists(st.builds(CreditRow, st.sampled_from(["N", "L", "EE"]), st.sampled_from(["", "IT", "FR"]), st.integers(0, 10**9)), max_size=6))
def test_credits_round_trip(rows):
    assert protocol.decode_credits(protocol.encode_credits(rows)) == rows


@given(codes.filter(bool), st.integers(min_value=0, max_value=10**6))
def test_send_round_trip(order_id, count):
    receipt = SendReceipt(order_id, count)
    assert protocol.decode_send(protocol.encode_send(receipt)) == receipt


@given(
    code=st.text(alphabet="0123456789", min_size=1, max_size=4),
    message=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1).filter(
        lambda m: m.strip() == m
    ),
)
def test_ko_round_trip(code, message):
    with pytest.raises(ProviderRejected) as info:
        protocol.decode_send(protocol.encode_ko(code, message))
    assert (info.value.code, info.value.message) == (code, message)


@given(st.datetimes(timezones=st.just(timezone.utc), min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)))
def test_dates_from_any_zone_keep_their_instant(value):
    """An aware UTC date sent to the provider comes back as the same instant (outside the fold)."""
    value = value.replace(microsecond=0)
    local = value.astimezone(PARIS)
    back = protocol.parse_date(protocol.format_date(value, PARIS), PARIS)
    if local.fold == 0 and local.replace(fold=1).utcoffset() == local.utcoffset():
        assert back.astimezone(timezone.utc) == value


def test_ambiguous_autumn_hour():
    """The wire carries local time without an offset: 02:30 on the autumn change is read as
    the first (summer-time) occurrence. A documented limit of the provider's format."""
    second = datetime(2024, 10, 27, 1, 30, tzinfo=timezone.utc)  # 02:30 CET, fold=1
    raw = protocol.format_date(second, PARIS)
    assert raw == "20241027023000"
    back = protocol.parse_date(raw, PARIS)
    assert back.astimezone(timezone.utc) == datetime(2024, 10, 27, 0, 30, tzinfo=timezone.utc)


def test_the_local_hour_the_autumn_clock_change_repeats_is_told_apart():
    """A read that touches it may be answered for the other occurrence: sweeps and cancels
    never take such an answer as proof of absence."""
    fall_back = 1761440400  # 2025-10-26 01:00 UTC: 03:00 CEST -> 02:00 CET

    def repeated(start: int, end: int) -> bool:
        return protocol.repeated_local_time(datetime.fromtimestamp(start, timezone.utc),
                                            datetime.fromtimestamp(end, timezone.utc), PARIS)

    assert repeated(fall_back - 3600, fall_back)  # 02:00-03:00 CEST, which 02:00-03:00 CET repeats
    assert repeated(fall_back + 600, fall_back + 1200)  # inside its second occurrence
    assert repeated(fall_back - 7200 - 60, fall_back + 3600 + 60)  # across it
    assert not repeated(fall_back - 7200 - 60, fall_back - 3600 - 1)  # the hour before
    assert not repeated(1743296400 - 1800, 1743296400 + 1800)  # spring: local times skip, none repeats
