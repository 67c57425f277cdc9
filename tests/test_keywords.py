"""Which inbound SMS are opt-outs: the provider's STOP and the French and English words,
as the first word, whatever the case, accents, punctuation or Unicode form."""

from __future__ import annotations

import pytest

from mobyt_worker.keywords import STOP_WORDS, fold, is_stop


@pytest.mark.parametrize("keyword, text, stop", [
    ("", "STOP", True),
    ("", "stop", True),
    ("", "Stop.", True),
    ("", "STOP!!! plus jamais", True),
    ("", "arrêt svp", True),
    ("", "ARRET", True),
    ("", "Arrêt.", True),
    ("", "arre\u0302t", True),  # the accent as a combining character (NFD): the same word
    ("", "STOPSMS", True),
    ("", "stop-sms", True),
    ("", "STOPALL", True),
    ("", "unsubscribe", True),
    ("", "Unsubscribe me please", True),
    ("", "opt-out", True),
    ("", "Désabonner", True),
    ("", "désinscription svp", True),
    ("", "DESINSCRIRE", True),
    ("", "ＳＴＯＰ", True),  # fullwidth letters (NFKD)
    ("", "\u00a0 ... stop", True),  # the first word that has a letter
    ("", "STOP\u00a0merci", True),
    ("STOP", "something else", True),  # the provider's keyword field
    ("Stop.", "", True),
    ("", "Stopping by later", False),
    ("", "non stop", False),
    ("", "STOP123", False),
    ("", "Cancel my appointment", False),  # a reply to a reminder, not an opt-out
    ("", "end", False),
    ("", "quit", False),
    ("", "merci, stop", False),
    ("PIZZA", "pizza stop", False),
    ("", "", False),
    ("", "   ", False),
])
def test_stop_words(keyword, text, stop):
    assert is_stop(keyword, text) is stop


def test_every_stop_word_is_written_folded():
    assert all(fold(word) == word for word in STOP_WORDS)
