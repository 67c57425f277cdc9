"""Which inbound SMS ask to opt out: the first word, compared without case, accents or
punctuation (``Stop.``, ``arrêt svp``, ``ＳＴＯＰ`` and ``opt-out`` all count).

Mobyt documents one keyword, ``STOP``: a recipient who sends it to the short number is
blacklisted (the seed, SENDSMS). People also answer in their own words, so the French
and English opt-out words that carriers' required lists share count too (AWS End User
Messaging's required keywords: ARRET, OPTOUT, STOP, UNSUBSCRIBE; Twilio's and Braze's
STOPALL), with ``STOPSMS`` and the French désabonner / désinscrire words, which mean
nothing else. Words that also answer a transactional SMS (CANCEL an appointment, END,
QUIT, REMOVE) are left out: a false STOP would silence someone's codes and reminders.
"""

from __future__ import annotations

import unicodedata

#: Folded (see :func:`fold`): lower case, no accents, letters and digits only.
STOP_WORDS = frozenset({
    "stop", "stopsms", "stopall", "arret", "unsubscribe", "optout",
    "desabonner", "desabonnement", "desinscrire", "desinscription",
})


def fold(word: str) -> str:
    """``word``'s letters and digits, compatibility-decomposed (NFKD), without their
    accents, case-folded: ``Arrêt!`` -> ``arret``, ``ＳＴＯＰ`` -> ``stop``."""
    return "".join(c for c in unicodedata.normalize("NFKD", word) if c.isalnum()).casefold()


def first_folded_word(text: str) -> str:
    """The first word of ``text`` that has a letter or a digit, folded."""
    return next((folded for folded in map(fold, text.split()) if folded), "")


def is_stop(keyword: str, text: str) -> bool:
    """An opt-out: the provider's keyword field (the text's first word) or the text's
    own first word is a stop word."""
    return fold(keyword) in STOP_WORDS or first_folded_word(text) in STOP_WORDS
