"""Words as the keyword indexes see them: what a query asks for, how long a text is."""

from __future__ import annotations

import re

#: A word as the `unicode61` tokenizer sees one: a run of letters and digits.
_WORD = re.compile(r"[^\W_]+")
#: Words of a query beyond this many are dropped (each OR-ed term costs a posting-list scan).
MAX_QUERY_TERMS = 64
_STOPWORDS = """a about above after again all also am an and any are as at be because been before being
    but by can could did do does doing done during each for from had has have having he her
    here hers him his how i if in into is it its itself may me might more most must my no nor
    not of off on once only or other our ours out over own same shall she should so some such
    than that the their theirs them then there these they this those through to too under until
    up upon very was we were what when where which while who whom why will with would you your
"""
#: English function words left out of keyword queries (they match most rows and weigh ~0).
STOPWORDS = frozenset(_STOPWORDS.split())


def query_words(query: str) -> list[str]:
    """The query's distinct words, lowercased, in order; English stopwords left out unless
    they are all there is (they match most rows and weigh about nothing)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
    return [w for w in words if w not in STOPWORDS] or words


def word_count(text: str) -> int:
    """How many words `text` has (BM25's document length)."""
    return len(_WORD.findall(text))
