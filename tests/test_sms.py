"""Tests for mobyt_worker.sms: every bad input is refused naming its public field."""

from __future__ import annotations

import dataclasses
import math
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobyt_worker.errors import InvalidInput
from mobyt_worker.sms import (
    GSM_BASIC,
    GSM_EXTENDED,
    MAX_MESSAGE_UNITS,
    TRANSLITERATIONS,
    MessageLength,
    SendRequest,
    build_send_request,
    estimate_credits,
    mask_number,
    message_length,
    normalize_recipient,
    normalize_recipients,
    validate_message_type,
    validate_order_id,
    validate_scheduled_at,
    validate_sender,
)

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2029, 6, 1, 12, 0, tzinfo=timezone.utc)
GSM = sorted(GSM_BASIC | GSM_EXTENDED)


def refused(field: str, call, *args, **kwargs) -> InvalidInput:
    """Assert ``call`` raises InvalidInput for exactly ``field`` and return the error."""
    with pytest.raises(InvalidInput) as info:
        call(*args, **kwargs)
    assert info.value.field == field, info.value
    return info.value


# --- recipients ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "country", "expected"),
    [
        ("+33612345678", "FR", "+33612345678"),
        ("0033612345678", "FR", "+33612345678"),
        ("0612345678", "FR", "+33612345678"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("06.12.34.56.78", "FR", "+33612345678"),
        ("06-12-34-56-78", "FR", "+33612345678"),
        ("(06) 12 34 56 78", "FR", "+33612345678"),
        ("+33 (0)6 12 34 56 78", "FR", "+33612345678"),
        ("0033 6 12 34 56 78", "FR", "+33612345678"),
        ("  +33612345678  ", "FR", "+33612345678"),
        ("+33 1 42 68 53 00", "FR", "+33142685300"),
        ("+447911123456", "FR", "+447911123456"),
        ("00447911123456", "FR", "+447911123456"),
        ("+32470123456", "FR", "+32470123456"),
        ("0470123456", "BE", "+32470123456"),
        ("0470123456", "be", "+32470123456"),
        ("(202) 555-0123", "US", "+12025550123"),
        ("+12025550123", "FR", "+12025550123"),
        ("0033612345678", "US", "+33612345678"),  # 00 is international whatever the account
    ],
)
def test_normalize_recipient_valid(number: str, country: str, expected: str) -> None:
    assert normalize_recipient(number, country) == expected


@pytest.mark.parametrize(
    ("number", "country"),
    [
        ("", "FR"),
        ("---", "FR"),
        ("hello", "FR"),
        ("+33612", "FR"),  # too short
        ("0612", "FR"),
        ("06123456789012345", "FR"),  # too long
        ("+336061234567", "FR"),  # the seed's own example has one digit too many
        ("+33 6 12 34 56 7a", "FR"),  # letters
        ("1-800-FLOWERS", "US"),  # vanity numbers are refused, not converted
        ("++33612345678", "FR"),
        ("+33612345678 ext 12", "FR"),
        ("+33612345678,", "FR"),
        ("0612345678", "BE"),  # a French mobile is not a Belgian local number
        ("٠٦١٢٣٤٥٦٧٨", "FR"),  # non-ASCII digits
        ("+999123456789", "FR"),  # no such country code
        ("1" * 200, "FR"),
    ],
)
def test_normalize_recipient_invalid(number: str, country: str) -> None:
    error = refused("recipients", normalize_recipient, number, country)
    assert "not a valid phone number" in error.message


def test_invalid_recipient_is_masked_in_the_error() -> None:
    error = refused("recipients", normalize_recipient, "+33 6 06 12 34 567")
    assert "'+336*****67'" in error.message
    assert "6061234567" not in str(error)


def test_unknown_country_is_a_programming_error() -> None:
    with pytest.raises(ValueError) as info:
        normalize_recipient("0612345678", "XX")
    assert not isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+33612345678", ["+33612345678"]),
        (" +33612345678 , ,0612345678,+447911123456 ", ["+33612345678", "+447911123456"]),
        (["+447911123456", "0612345678", "+33612345678"], ["+447911123456", "+33612345678"]),
        (("0612345678", " ", "0033612345679"), ["+33612345678", "+33612345679"]),
        (["06 12 34 56 78", "06.12.34.56.78"], ["+33612345678"]),
    ],
)
def test_normalize_recipients(value, expected: list[str]) -> None:
    assert normalize_recipients(value) == expected


@pytest.mark.parametrize("value", ["", " , ,", [], (), ["", "  "]])
def test_normalize_recipients_empty(value) -> None:
    error = refused("recipients", normalize_recipients, value)
    assert error.message == "at least one recipient is required"


@pytest.mark.parametrize("value", [None, 33612345678, {"to": "+33612345678"}, b"+33612345678"])
def test_normalize_recipients_wrong_type(value) -> None:
    refused("recipients", normalize_recipients, value)


def test_normalize_recipients_names_the_index_of_a_bad_item() -> None:
    error = refused("recipients", normalize_recipients, ["+33612345678", "0612345678", 612345678])
    assert error.message.startswith("recipients[2] ")
    error = refused("recipients", normalize_recipients, "+33612345678, nope")
    assert error.message.startswith("recipients[1]: ")


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+33612345678", "+336*****78"),
        ("+447911123456", "+447*****56"),  # fixed width: the length is not revealed
        ("12345678", "***"),
        ("", "***"),
    ],
)
def test_mask_number(number: str, masked: str) -> None:
    assert mask_number(number) == masked


# --- sender, type, order id ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("Acme", "Acme"),
        ("A", "A"),
        ("Nom2Societe", "Nom2Societe"),  # 11, the seed's example
        ("ACME123", "ACME123"),
        (" Acme ", "Acme"),
        ("0612345678", "+33612345678"),
        ("+33612345678", "+33612345678"),
        ("0033 6 12 34 56 78", "+33612345678"),
        ("38100", "38100"),  # a short code: digits, not a phone number
        ("12345678901", "12345678901"),
    ],
)
def test_validate_sender_valid(sender: str, expected: str) -> None:
    assert validate_sender(sender) == expected


@pytest.mark.parametrize(
    "sender",
    ["", "   ", "Nom2Societe1", "ACME SA", "Société", "acme!", "Acme-Co", "+336",
     "+33612345678901", "123456789012", None, 42],
)
def test_validate_sender_invalid(sender) -> None:
    refused("sender", validate_sender, sender)


def test_sender_error_explains_the_rule() -> None:
    assert "1 to 11 letters or digits" in refused("sender", validate_sender, "Acme Corp").message


@pytest.mark.parametrize(("value", "expected"), [("N", "N"), ("n", "N"), (" l ", "L"), ("L", "L")])
def test_validate_message_type_valid(value: str, expected: str) -> None:
    assert validate_message_type(value) == expected


@pytest.mark.parametrize("value", ["X", "", "NL", "GS", None, 1])
def test_validate_message_type_invalid(value) -> None:
    refused("message_type", validate_message_type, value)


@pytest.mark.parametrize("value", ["abc123", "A" * 32, "123FC75", "1F11FEAD08FE0"])
def test_validate_order_id_valid(value: str) -> None:
    assert validate_order_id(value) == value


@pytest.mark.parametrize("value", ["", "A" * 33, "abc-123", "abc 123", "é", " abc", None, 123])
def test_validate_order_id_invalid(value) -> None:
    refused("order_id", validate_order_id, value)


# --- GSM 03.38 length ---------------------------------------------------------------------


def test_alphabet_tables() -> None:
    assert len(GSM_BASIC) == 127  # 128 code points minus the escape
    assert GSM_EXTENDED == frozenset("^{}\\[~]|€\f")
    assert not GSM_BASIC & GSM_EXTENDED
    assert "\x1b" not in GSM_BASIC | GSM_EXTENDED
    assert {"%", "Ç", "ß", "\n", "\r", "€"} <= GSM_BASIC | GSM_EXTENDED


def test_basic_characters_count_one() -> None:
    text = "".join(sorted(GSM_BASIC))
    assert message_length(text) == MessageLength(units=127, parts=1, text=text)


@pytest.mark.parametrize("char", sorted(GSM_EXTENDED))
def test_extended_characters_count_two(char: str) -> None:
    assert message_length("a" + char).units == 3
    assert message_length("a" + char * 80).units == 161


@pytest.mark.parametrize(
    ("text", "units", "parts"),
    [
        ("a" * 160, 160, 1),
        ("a" * 161, 161, 2),
        ("a" * 306, 306, 2),
        ("a" * 307, 307, 3),
        ("a" * 459, 459, 3),
        ("a" * 460, 460, 4),
        ("€" * 80, 160, 1),
        ("€" * 80 + "a", 161, 2),
        ("a" * 305 + "[", 307, 3),
        ("a" * 1000, 1000, 7),
        ("a" * 998 + "€", 1000, 7),
    ],
)
def test_part_boundaries(text: str, units: int, parts: int) -> None:
    length = message_length(text)
    assert (length.units, length.parts) == (units, parts)


@pytest.mark.parametrize("text", ["a" * 1001, "a" * 999 + "€", "a" * 998 + "…"])
def test_more_than_1000_units_is_refused(text: str) -> None:
    error = refused("message", message_length, text)
    assert error.message.startswith("1001 GSM characters, the maximum is 1000")


def test_huge_message_is_refused_cheaply() -> None:
    assert "maximum is 1000" in refused("message", message_length, "a" * 100_000).message


def test_stop_num_is_counted_as_written() -> None:
    assert message_length("Promo -20% STOP %NUM%").units == 21


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u00a0", "\u200b", "\u200b\u00ad "])
def test_empty_message(text: str) -> None:
    assert refused("message", message_length, text).message == "is empty"


@pytest.mark.parametrize("text", [None, 42, b"hello"])
def test_message_must_be_text(text) -> None:
    refused("message", message_length, text)


def test_unknown_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError) as info:
        message_length("hello", "ucs2")
    assert not isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(
    ("char", "expected"),
    [
        ("’", "'"), ("‘", "'"), ("´", "'"), ("`", "'"), ("“", '"'), ("”", '"'),
        ("«", '"'), ("»", '"'), ("–", "-"), ("—", "-"), ("−", "-"), ("…", "..."),
        ("\u00a0", " "), ("\u202f", " "), ("\u2009", " "), ("\t", " "), ("\u2028", "\n"),
        ("\u200b", ""), ("\u00ad", ""), ("\ufeff", ""),
        ("â", "a"), ("ê", "e"), ("î", "i"), ("ô", "o"), ("û", "u"), ("ë", "e"), ("ï", "i"),
        ("á", "a"), ("í", "i"), ("ó", "o"), ("ú", "u"), ("õ", "o"), ("ã", "a"), ("ÿ", "y"),
        ("Â", "A"), ("Ê", "E"), ("È", "E"), ("À", "A"), ("Ô", "O"), ("Ï", "I"), ("Ÿ", "Y"),
        ("ç", "Ç"), ("œ", "oe"), ("Œ", "OE"), ("ś", "s"), ("Ａ", "A"), ("ﬁ", "fi"),
        ("\u0301", ""),  # a stray combining mark
    ],
)
def test_transliteration(char: str, expected: str) -> None:
    assert message_length(f"x{char}y").text == f"x{expected}y"
    refused("message", message_length, f"x{char}y", "reject")


def test_transliteration_of_a_french_message() -> None:
    length = message_length("L’été « chaud » — 30 € … à bientôt !")
    assert length.text == 'L\'été " chaud " - 30 € ... à bientot !'
    assert length.units == len(length.text) + 1


def test_transliteration_table_only_produces_gsm() -> None:
    for source, target in TRANSLITERATIONS.items():
        assert source not in GSM_BASIC | GSM_EXTENDED
        assert set(target) <= GSM_BASIC | GSM_EXTENDED


@pytest.mark.parametrize("policy", ["transliterate", "reject"])
def test_gsm_accents_and_decomposed_input_are_kept(policy: str) -> None:
    text = "àéèùìòÇßÑñÄäÖöÜüÅåØøÆæÉ ΔΦΓΛΩΠΨΣΘΞ"
    assert message_length(text, policy).text == text
    assert message_length("e\u0301te\u0301", policy).text == "été"  # NFD input


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Hello 😀", "'😀'"),
        ("a¨b", "'¨'"),
        ("Łukasz", "'Ł'"),
        ("你好", "'你', '好'"),
        ("bell\x07", "'\\x07'"),
        ("Привет мир", "'П', 'р', 'и', 'в', 'е' and 2 more"),
    ],
)
@pytest.mark.parametrize("policy", ["transliterate", "reject"])
def test_non_gsm_characters_are_refused_and_listed(text: str, shown: str, policy: str) -> None:
    error = refused("message", message_length, text, policy)
    assert error.message.startswith(f"characters outside the GSM 03.38 alphabet: {shown} (")


def test_reject_policy_refuses_what_transliterate_would_fix() -> None:
    assert message_length("l’été", "transliterate").text == "l'été"
    error = refused("message", message_length, "l’été", "reject")
    assert "'’'" in error.message


gsm_text = st.text(alphabet=GSM, min_size=1, max_size=500).filter(str.strip)


def units_of(text: str) -> int:
    return len(text) + sum(char in GSM_EXTENDED for char in text)


@given(gsm_text, st.sampled_from(["transliterate", "reject"]))
def test_property_gsm_text_is_counted_and_kept(text: str, policy: str) -> None:
    length = message_length(text, policy)
    assert length.text == text
    assert length.units == len(text) + sum(char in GSM_EXTENDED for char in text)
    assert length.parts == (1 if length.units <= 160 else math.ceil(length.units / 153))


@given(st.text(alphabet=GSM, min_size=1, max_size=1100).filter(str.strip))
def test_property_only_more_than_1000_units_raise(text: str) -> None:
    if units_of(text) <= MAX_MESSAGE_UNITS:
        length = message_length(text)
        assert length.units == units_of(text)
        assert 1 <= length.parts <= 7
        if length.parts > 1:
            assert (length.parts - 1) * 153 < length.units <= length.parts * 153
    else:
        assert refused("message", message_length, text).message.startswith(
            f"{units_of(text)} GSM characters"
        )


@given(st.text(max_size=300))
def test_property_any_text_is_sent_as_gsm_or_refused(text: str) -> None:
    try:
        length = message_length(text)
    except InvalidInput as error:
        assert error.field == "message"
    else:
        assert set(length.text) <= GSM_BASIC | GSM_EXTENDED
        assert length.units == units_of(length.text)


@given(st.text(max_size=40))
def test_property_any_recipient_is_e164_or_refused(number: str) -> None:
    try:
        result = normalize_recipient(number)
    except InvalidInput as error:
        assert error.field == "recipients"
    else:
        assert result.startswith("+") and result[1:].isdigit()


@given(st.text(alphabet="0123456789", min_size=9, max_size=15))
def test_property_refused_numbers_are_not_logged_in_full(number: str) -> None:
    try:
        normalize_recipient(number)
    except InvalidInput as error:
        assert number not in str(error)


# --- scheduled_at ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2030-01-01T12:00:00+00:00", datetime(2030, 1, 1, 13, 0)),
        ("2030-01-01T12:00:00Z", datetime(2030, 1, 1, 13, 0)),
        (" 2030-01-01T12:00:00+01:00 ", datetime(2030, 1, 1, 12, 0)),
        ("2030-07-01T12:00:00+00:00", datetime(2030, 7, 1, 14, 0)),  # summer time
        ("2030-01-01T07:00:00-05:00", datetime(2030, 1, 1, 13, 0)),
        (datetime(2030, 1, 1, 12, tzinfo=timezone.utc), datetime(2030, 1, 1, 13, 0)),
        (NOW + timedelta(seconds=1), datetime(2029, 6, 1, 14, 0, 1)),
    ],
)
def test_scheduled_at_is_converted_to_the_provider_zone(value, expected: datetime) -> None:
    result = validate_scheduled_at(value, NOW, PARIS)
    assert result is not None and result.tzinfo is PARIS
    assert result.replace(tzinfo=None) == expected


def test_scheduled_at_none_means_now() -> None:
    assert validate_scheduled_at(None, NOW, PARIS) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2030-01-01T12:00:00", "needs a UTC offset"),
        ("2030-01-01", "needs a UTC offset"),
        (datetime(2030, 1, 1, 12), "needs a UTC offset"),
        ("2020-01-01T00:00:00Z", "is in the past"),
        (NOW, "is in the past"),
        ("2029-06-01T13:59:59+02:00", "is in the past"),
        ("tomorrow", "is not an ISO-8601 date-time"),
        ("", "is not an ISO-8601 date-time"),
        ("2030-13-01T00:00:00Z", "is not an ISO-8601 date-time"),
        ("01/02/2030 10:00", "is not an ISO-8601 date-time"),
        (1893456000, "must be an ISO-8601 string"),
        (date(2030, 1, 1), "must be an ISO-8601 string"),
        ("9999-12-31T23:59:59-12:00", "too far in the future"),
    ],
)
def test_scheduled_at_invalid(value, message: str) -> None:
    assert message in refused("scheduled_at", validate_scheduled_at, value, NOW, PARIS).message


def test_scheduled_at_needs_an_aware_now() -> None:
    with pytest.raises(ValueError):
        validate_scheduled_at("2030-01-01T12:00:00Z", datetime(2029, 1, 1), PARIS)


# --- credits and the whole request ----------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "recipients", "credits"),
    [
        (MessageLength(160, 1, "a" * 160), 3, 3),
        (message_length("a" * 307), 2, 6),
        (message_length("a" * 1000), 10, 70),
        (message_length("hi"), 0, 0),
    ],
)
def test_estimate_credits(length: MessageLength, recipients: int, credits: int) -> None:
    assert estimate_credits(length, recipients) == credits


def test_estimate_credits_negative() -> None:
    with pytest.raises(ValueError):
        estimate_credits(message_length("hi"), -1)


VALID = {
    "recipients": "+33612345678, 0612345679",
    "message": "Votre code : 1234 — à bientôt",
    "message_type": "n",
    "sender": "Acme",
    "order_id": "order42",
    "scheduled_at": "2030-01-01T12:00:00Z",
}
BAD = {
    "recipients": "not a number",
    "message": "😀",
    "message_type": "X",
    "sender": "Acme Corp International",
    "order_id": "order-42",
    "scheduled_at": "2020-01-01T00:00:00Z",
}
ORDER = ["recipients", "message", "message_type", "sender", "order_id", "scheduled_at"]


def build(**overrides) -> SendRequest:
    return build_send_request(**{**VALID, **overrides}, tz=PARIS, now=NOW)


def test_build_send_request() -> None:
    request = build(return_credits=True)
    assert request.recipients == ("+33612345678", "+33612345679")
    assert request.message == "Votre code : 1234 - à bientot"
    assert (request.message_type, request.sender, request.order_id) == ("N", "Acme", "order42")
    assert request.scheduled_at == datetime(2030, 1, 1, 13, 0, tzinfo=PARIS)
    assert request.return_credits is True
    assert request.length == MessageLength(29, 1, request.message)
    assert request.credits == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.sender = "Other"  # type: ignore[misc]


def test_build_send_request_defaults() -> None:
    request = build_send_request(
        recipients=["0612345678"], message="a" * 161, message_type="L", sender=None,
        tz=PARIS, now=NOW,
    )
    assert (request.sender, request.order_id, request.scheduled_at) == (None, None, None)
    assert request.return_credits is False
    assert request.credits == 2


def test_send_request_repr_hides_numbers_and_text() -> None:
    text = repr(build())
    assert "+336*****78" in text and "+33612345678" not in text
    assert "Votre code" not in text and "1234" not in text


@pytest.mark.parametrize("sender", [None, "", "  "])
def test_sender_optional_for_l_required_for_n(sender) -> None:
    assert build(message_type="L", sender=sender).sender is None
    error = refused("sender", build, message_type="N", sender=sender)
    assert error.message == "is required for message_type N"


def test_sender_validated_for_l_when_given() -> None:
    assert build(message_type="L", sender="0612345678").sender == "+33612345678"
    refused("sender", build, message_type="L", sender="Acme Corp International")


@pytest.mark.parametrize("index", range(len(ORDER)))
def test_build_send_request_raises_the_first_bad_field(index: int) -> None:
    bad = {name: BAD[name] for name in ORDER[index:]}
    refused(ORDER[index], build, **bad)


def test_build_send_request_policy_and_return_credits() -> None:
    refused("message", build, message="l’été", non_gsm="reject")
    refused("return_credits", build, return_credits="yes")


@pytest.mark.parametrize("scheduled_at", [None, "2030-01-01T12:00:00Z"])
def test_a_requests_task_kwargs_make_the_same_send_again(scheduled_at) -> None:
    """What an intent, a bulk chunk, a replay or an operator's resend publishes is the
    send that was validated, even under a stricter policy and another clock."""
    request = build(message="l’été… à bientôt", scheduled_at=scheduled_at, return_credits=True)
    kwargs = dict(request.task_kwargs(batch_id="BATCH1"))
    assert kwargs.pop("batch_id") == "BATCH1"
    again = build_send_request(**kwargs, tz=ZoneInfo("UTC"), now=NOW, non_gsm="reject")
    assert again == request and again.scheduled_at == request.scheduled_at
