"""Korean text primitives on Kiwi morphemes, shared by chunking, validation and metrics.

Whitespace or regex tokenisation breaks on Korean: particles and endings glue
onto words (계획을/계획이/계획은), so matching works on Kiwi morphemes instead.
"""

from __future__ import annotations

import functools
import re
import threading

# Content parts of speech (Kiwi/Sejong tags): nouns, verb and adjective stems,
# roots, numbers, foreign words and Hanja. Particles and endings are left out.
CONTENT_TAGS = frozenset({"NNG", "NNP", "NNB", "NR", "NP", "VV", "VA", "XR", "SN", "SL", "SH", "MAG"})
# One Kiwi instance serves every thread (teacher workers validate answers in threads);
# every call into it goes through this lock.
KIWI_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def kiwi():
    """The process-wide Kiwi instance (it takes ~1 s and ~100 MB to build)."""
    from kiwipiepy import Kiwi

    return Kiwi()


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` in order, whitespace-trimmed, never empty."""
    text = text.strip()
    if not text:
        return []
    with KIWI_LOCK:
        sents = kiwi().split_into_sents(text)
    return [s.text.strip() for s in sents if s.text.strip()]


def tokenize(text: str) -> list:
    """Kiwi's tokens of ``text`` (form, tag, start, len), taken under the lock."""
    with KIWI_LOCK:
        return list(kiwi().tokenize(text))


def morphemes(text: str) -> list[tuple[str, str]]:
    """``(form, tag)`` pairs; verb/adjective stems are their dictionary form."""
    if not text.strip():
        return []
    return [(t.form, t.tag) for t in tokenize(text)]


def content_morphemes(text: str) -> list[str]:
    """Content morphemes (nouns, stems, numbers, foreign words), in order."""
    return [form for form, tag in morphemes(text) if tag in CONTENT_TAGS]


# A complete Korean answer ends in a sentence-final ending or punctuation,
# optionally followed by closing quotes/brackets (the insurance seed's rule).
_COMPLETE_END = re.compile(r"(?:[다요죠음임함됨]|[.?!。…])[\s\"'”’)\]」』]*$")


def ends_like_sentence(text: str) -> bool:
    return bool(_COMPLETE_END.search(text.strip()))


HANGUL = re.compile(r"[\uac00-\ud7a3]")


def has_hangul(text: str) -> bool:
    return bool(HANGUL.search(text))
