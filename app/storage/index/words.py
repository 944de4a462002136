"""Words as the keyword indexes see them: the terms of a text, those a query asks for.

Both engines index and query the terms made here, so that they match, count and score the same
words (before, FTS5's `porter unicode61` and PostgreSQL's `english` configuration tokenized and
stemmed differently, dropped different words, and ranked 3 of 10 Cranfield queries' top five
differently). A term is a word (a run of letters and digits, as `unicode61` splits) of the text
folded to lower case with its diacritics removed (`fold`; `unicode61` removes Latin diacritics
by default), then stemmed by the Porter stemmer (Snowball's `porter`, through PyStemmer): the
algorithm FTS5's `porter` tokenizer applied before, so that the default engine ranks much as it
did on collections we never measured (on Cranfield, keyword nDCG@10 0.3693 before, 0.3707 now
on both engines; Snowball's Porter2, `english`, gave 0.3682). Stopwords are kept in the index (a
query made only of them still finds them) and left out of queries that have other words.

A word of more than `MAX_TERM_CHARS` characters (a hash, a run of base64) is no term: left out
of the index and of queries on both engines, so that PostgreSQL's postings key stays within a
B-tree entry's size.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import Stemmer

#: A word: a run of letters and digits (`str.isalnum`), as the `unicode61` tokenizer sees one.
_WORD = re.compile(r"[^\W_]+")
#: Words of a query beyond this many are dropped (each OR-ed term costs a posting-list scan).
MAX_QUERY_TERMS = 64
#: Longer words are not indexed (see the module docstring).
MAX_TERM_CHARS = 100
#: The original Porter algorithm, as FTS5's `porter` tokenizer (see the module docstring).
STEMMER = "porter"
_STOPWORDS = """a about above after again all also am an and any are as at be because been before being
    but by can could did do does doing done during each for from had has have having he her
    here hers him his how i if in into is it its itself may me might more most must my no nor
    not of off on once only or other our ours out over own same shall she should so some such
    than that the their theirs them then there these they this those through to too under until
    up upon very was we were what when where which while who whom why will with would you your
"""
#: English function words left out of keyword queries (they match most rows and weigh ~0).
STOPWORDS = frozenset(_STOPWORDS.split())

# PyStemmer's stemmers are not safe to share between threads (each keeps a cache); writes and
# searches make terms on the event loop, migrations and SQLite's connections on others.
_local = threading.local()


def _stem(words: list[str]) -> list[str]:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer(STEMMER)
    # Porter stems a lone "s" to nothing: a term is never empty, the word stays as it is.
    stems: list[str] = stemmer.stemWords(words)
    return [stem or word for stem, word in zip(stems, words, strict=True)]


def fold(text: str) -> str:
    """`text` in lower case (`casefold`) without diacritics: compatibility forms decomposed
    (full-width letters, ligatures), combining marks removed (the accents of Latin letters, and
    with them every other script's marks: a word is never split at one), composed again."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    marks = {ord(c): None for c in set(decomposed) if unicodedata.category(c).startswith("M")}
    return unicodedata.normalize("NFC", decomposed.translate(marks))


def words(text: str) -> list[str]:
    """The words of `fold(text)`, in order, repeats kept; those longer than `MAX_TERM_CHARS`
    left out."""
    return [w for w in _WORD.findall(fold(text)) if len(w) <= MAX_TERM_CHARS]


def terms(text: str) -> list[str]:
    """The index terms of `text` (stemmed words), in order, repeats kept: what both engines
    store, and whose count is the text's length for BM25."""
    return _stem(words(text))


def query_words(query: str) -> list[str]:
    """The query's distinct words, folded, in order, at most `MAX_QUERY_TERMS`; English
    stopwords left out unless they are all there is (they match most rows and weigh about
    nothing)."""
    found = list(dict.fromkeys(words(query)))
    return ([w for w in found if w not in STOPWORDS] or found)[:MAX_QUERY_TERMS]


def query_terms(query: str) -> list[str]:
    """The distinct terms the query asks for, in order (two words of one stem ask once)."""
    return list(dict.fromkeys(_stem(query_words(query))))
