"""Korean text primitives, shared by chunking, generation, validation and metrics.

Kiwi morphemes (``tokenize``, ``morphemes``, ``content_morphemes``, ``noun_runs``),
sentences (``split_sentences``, ``ends_like_sentence``), particles chosen by the
final consonant (``has_batchim``, ``josa``) and an answer's expected keywords
(``answer_keywords``).

Whitespace or regex tokenisation breaks on Korean: particles and endings glue
onto words (계획을/계획이/계획은), so matching works on Kiwi morphemes instead.
Every Kiwi call goes through ``tokenize``/``split_sentences``, under ``KIWI_LOCK``.
This module imports nothing from kotune, so any layer can use it.
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
    """Whether ``text`` ends like a complete Korean sentence (not cut off): a final
    ending (다/요/죠/음/임/함/됨) or sentence punctuation, then at most closing quotes
    or brackets. The one rule validation, the LLM teachers and the EOS metric share."""
    return bool(_COMPLETE_END.search(text.strip()))


HANGUL = re.compile(r"[\uac00-\ud7a3]")


def has_hangul(text: str) -> bool:
    return bool(HANGUL.search(text))


# ---------------------------------------------------------------- particles (josa)
def has_batchim(word: str) -> bool:
    """Whether the last syllable has a final consonant (decides 은/는, 이/가 ...)."""
    word = re.sub(r"[\s)\]」』'\"”’]+$", "", word)
    if not word:
        return False
    ch = word[-1]
    if "가" <= ch <= "힣":
        return (ord(ch) - 0xAC00) % 28 != 0
    if ch.isdigit():
        return ch in "013678"  # 영, 일, 삼, 육, 칠, 팔 end in a consonant
    return ch.lower() in "lmnr"


def josa(word: str, pair: str) -> str:
    """``josa("계획", "은/는")`` → ``"계획은"``."""
    with_b, without_b = pair.split("/")
    return word + (with_b if has_batchim(word) else without_b)


# ---------------------------------------------------------------- noun phrases and keywords
# Tags that make up a noun phrase: common/proper nouns, noun prefix/suffix, foreign words, Hanja.
NOUN_TAGS = frozenset({"NNG", "NNP", "XPN", "XSN", "SL", "SH"})
# Nouns too generic to be what a sentence is about, or to be a keyword.
ROUTINE_NOUNS = frozenset({"정부", "이상", "이하", "계획", "추진", "수준", "위", "등", "것", "바", "수", "기반", "기준",
                           "문제", "경우", "결과", "이후", "현재", "전체", "절반", "기존"})
# A quantity: a number with a unit (plain numbers such as "제5조" or "3월" are not quantities).
QUANTITY = re.compile(r"\d[\d,.]*\s*(?:%|퍼센트|명|억|조|만|개|곳|건|대|배|회|시간|페타플롭스|엑사플롭스|PF|EF|년까지|위)")


def noun_runs(sentence: str) -> list[tuple[str, str, str]]:
    """``(phrase, next_tag, next_form)`` for each run of nouns (Kiwi), e.g. "국가 인공지능 컴퓨팅 센터"."""
    tokens = tokenize(sentence)  # teacher workers call this from threads: under Kiwi's lock
    runs: list[tuple[str, str, str]] = []
    i = 0
    while i < len(tokens):
        if tokens[i].tag not in NOUN_TAGS:
            i += 1
            continue
        j = i
        while j + 1 < len(tokens) and tokens[j + 1].tag in NOUN_TAGS and tokens[j + 1].start - (tokens[j].start + tokens[j].len) <= 1:
            j += 1
        phrase = sentence[tokens[i].start: tokens[j].start + tokens[j].len].strip()
        nxt = tokens[j + 1] if j + 1 < len(tokens) else None
        runs.append((phrase, nxt.tag if nxt else "", nxt.form if nxt else ""))
        i = j + 1
    return runs


def answer_keywords(answer: str, limit: int = 3) -> list[str]:
    """Expected keywords for evaluation (the policy seed's 키워드 반영률): quantities
    first ("2030년", "600페타플롭스"), then the longest noun phrases of the answer."""
    found: list[str] = []
    for m in QUANTITY.finditer(answer):
        q = m.group(0).strip()
        if q not in found:
            found.append(q)
    phrases = sorted({p for p, _, _ in noun_runs(answer) if len(p) >= 3 and p not in ROUTINE_NOUNS},
                     key=lambda p: (-len(p), answer.find(p)))
    for p in phrases:
        if all(p not in f and f not in p for f in found):
            found.append(p)
    return found[:limit]
