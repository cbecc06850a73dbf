"""Korean-correct answer metrics: ROUGE/BLEU/chrF, keyword coverage, EOS, repetition,
grounding and error types.

Everything here is a pure function of strings (and row dicts for ``score_rows``).

Why not the usual English tooling as is: google's ``rouge_score`` default tokenizer
keeps only ``[a-z0-9]``, so every Hangul character vanishes (two identical Korean
answers score 0, and two answers that share only their digits score high).
BLEU's ``13a`` tokenizer splits on spaces, so 계획을/계획이 never match. kotune
therefore scores ROUGE and BLEU on **Kiwi morphemes** (:func:`tokenize`), reports
that tokenization (:data:`TOKENIZATION`, ``bleu_signature``), and matches keywords,
numbers and organisation names on morphemes too. chrF works on characters and
handles Hangul as is, so it runs on the raw text.

Scales: ``rouge1 rouge2 rougeL bleu chrf`` are 0–100; ``keyword_coverage eos_rate
repetition unsupported_rate abstain_rate false_abstain_rate citation_accuracy cited_rate``
are 0–1. :data:`CATALOGUE` is the one list of every metric's label, scale, direction and
meaning; the report and recipes read it.

Abstention (:func:`abstains`): a question may be marked ``answerable: false`` (the
documents do not hold the answer); every answer is marked ``abstained`` or not, and
``abstain_rate`` / ``false_abstain_rate`` say how often a model declined the questions it
should decline, and the ones it should have answered.

Citations (:func:`check_citations`): a grounded model answers from passages numbered
``[문서 1]``..``[문서 k]`` and cites the one it used ("… 4,500억 원입니다 [문서 2]");
``citation_accuracy`` is the share of cited passages that hold the reference answer's key
facts, ``cited_rate`` the share of answers that cite at all.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from kotune import korean
from kotune.model.retrieval import CITATION, REFUSALS, abstains, refusal  # noqa: F401  (abstention: kotune.model.retrieval)
from kotune.model.templates import ABSTENTION

TOKENIZATION = "kiwi-morphemes"
"""Name of the tokenization used for ROUGE and BLEU, written into every output."""

REFERENCE_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf")
ROW_METRICS = ("keyword_coverage", "eos_rate", "repetition", "unsupported_rate")
ABSTAIN_METRICS = ("abstain_rate", "false_abstain_rate")
CITATION_METRICS = ("citation_accuracy", "cited_rate")


@dataclass(frozen=True)
class MetricInfo:
    """How to show one metric: its label, scale, direction and a one-line meaning."""

    key: str
    label: str
    vmax: float  # top of the scale: 100.0 or 1.0
    higher_is_better: bool
    description: str

    @property
    def scale(self) -> str:
        return "0–100" if self.vmax > 1 else "0–1"

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


# Every metric this module computes, in the order reports show them.
CATALOGUE: tuple[MetricInfo, ...] = (
    MetricInfo("rouge1", "ROUGE-1", 100.0, True, "unigram overlap with the reference (Kiwi morphemes), F1"),
    MetricInfo("rouge2", "ROUGE-2", 100.0, True, "bigram overlap with the reference (Kiwi morphemes), F1"),
    MetricInfo("rougeL", "ROUGE-L", 100.0, True, "longest common subsequence with the reference (Kiwi morphemes), F1"),
    MetricInfo("bleu", "BLEU", 100.0, True, "corpus BLEU on Kiwi morphemes"),
    MetricInfo("chrf", "chrF", 100.0, True, "corpus chrF on characters"),
    MetricInfo("keyword_coverage", "keyword coverage", 1.0, True,
               "share of expected keywords the answer contains (morpheme match)"),
    MetricInfo("eos_rate", "EOS rate", 1.0, True,
               "share of answers that ended on their own (not cut at the length limit)"),
    MetricInfo("repetition", "repetition", 1.0, False, "share of repeated n-grams in the answer"),
    MetricInfo("unsupported_rate", "unsupported rate", 1.0, False,
               "share of answer content not found in reference or context"),
    MetricInfo("abstain_rate", "abstain rate", 1.0, True,
               "share of unanswerable questions (answerable: false) the model declined to answer"),
    MetricInfo("false_abstain_rate", "false abstain rate", 1.0, False,
               "share of answerable questions the model declined to answer"),
    MetricInfo("citation_accuracy", "citation accuracy", 1.0, True,
               "share of cited passages ([문서 n]) that hold the reference answer's key facts"),
    MetricInfo("cited_rate", "cited rate", 1.0, True,
               "share of answers that cite a passage (answered, answerable questions with numbered passages)"),
)

ERR_MISSING = "정보 누락"
ERR_NUMBER = "수치 오류"
ERR_AGENCY = "기관 오용"
ERR_LOOP = "반복·미종료"
ERR_UNSUPPORTED = "근거 없음"
ERR_ANSWERED_UNANSWERABLE = "근거 없이 답함"   # answered a question marked answerable: false
ERR_FALSE_ABSTAIN = "잘못 거절"               # abstained although the question is answerable
ERROR_TYPES = (ERR_MISSING, ERR_NUMBER, ERR_AGENCY, ERR_LOOP, ERR_UNSUPPORTED, ERR_ANSWERED_UNANSWERABLE,
               ERR_FALSE_ABSTAIN)

NO_CATEGORY = "(none)"

# --------------------------------------------------------------------------- morphemes

# Punctuation/symbol tags (Sejong): final/pause/quote/bracket/ellipsis/other/symbol/list
# marker. Numbers (SN), Latin (SL) and Hanja (SH) are words and stay.
_PUNCT_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB"})


class _Tok(NamedTuple):
    form: str
    tag: str
    start: int
    end: int


@functools.lru_cache(maxsize=8192)
def _analyse(text: str) -> tuple[_Tok, ...]:
    """Kiwi tokens of ``text`` with character offsets (cached: rows are scored by
    several metrics). Whitespace inside a form (Kiwi keeps "네이버 클라우드" as one
    proper noun) is removed so a form is always one space-free token."""
    if not text or not text.strip():
        return ()
    toks = korean.tokenize(text)
    out = []
    for t in toks:
        form = "".join(t.form.split())
        if form:
            out.append(_Tok(form, t.tag, t.start, t.start + t.len))
    return tuple(out)


def _is_list_marker(tok: _Tok, text: str) -> bool:
    """"2." / "3)" at the start of a line: Kiwi tags "1." as a list marker (SB) but
    later items as numbers (SN); they are numbering, not quantities."""
    if tok.tag == "SB":
        return True
    if tok.tag != "SN" or not tok.form.endswith((".", ")")):
        return False
    line_start = text.rfind("\n", 0, tok.start) + 1
    return not text[line_start:tok.start].strip()


def _word_toks(text: str) -> list[_Tok]:
    """Tokens without punctuation, symbols and list markers."""
    return [t for t in _analyse(text) if t.tag not in _PUNCT_TAGS and not _is_list_marker(t, text)]


def tokenize(text: str) -> list[str]:
    """Kiwi morpheme forms of ``text``: the tokens ROUGE and BLEU are computed on.

    - Words split into morphemes, so particles and endings are their own tokens
      (계획을 → 계획 + 을, 수립했다 → 수립 + 하 + 었 + 다) and content words match
      across different particles. Verb/adjective stems come in dictionary form.
    - Whitespace is dropped; punctuation and symbols (. , ( ) ~ % …) and list
      markers ("1.", "2)") are not tokens.
    - Numbers stay whole: "1,200", "2030", "3.5" are single tokens.
    - Latin words and Hanja are kept as written.
    """
    return [t.form for t in _word_toks(text)]


class KiwiTokenizer:
    """Tokenizer object for ``rouge_score.rouge_scorer.RougeScorer(tokenizer=...)``."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def _norm_number(form: str) -> str:
    """Number value as a comparable string: "1,200" → "1200", "2." → "2"."""
    return form.replace(",", "").rstrip(".)")


def _norm(tok: _Tok) -> str:
    return _norm_number(tok.form) if tok.tag == "SN" else tok.form.lower()


def _spaceless(text: str) -> str:
    return "".join(text.split()).lower()


# --------------------------------------------------------------------------- ROUGE


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    p = overlap / max(n_pred, 1)
    r = overlap / max(n_ref, 1)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_prf(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """(precision, recall, F1) on 0–1 for rouge1/rouge2/rougeL over given tokens,
    with rouge_score's conventions (an empty side scores 0)."""
    out = {}
    for n in (1, 2):
        pg, rg = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
        overlap = sum(min(c, pg[g]) for g, c in rg.items())
        out[f"rouge{n}"] = _f1(overlap, sum(pg.values()), sum(rg.values()))
    if pred_tokens and ref_tokens:
        out["rougeL"] = _f1(_lcs_len(pred_tokens, ref_tokens), len(pred_tokens), len(ref_tokens))
    else:
        out["rougeL"] = (0.0, 0.0, 0.0)
    return out


def rouge(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (0–100, unrounded) of ``pred`` against ``ref`` on Kiwi morphemes."""
    prf = rouge_prf(tokenize(pred), tokenize(ref))
    return {k: 100.0 * v[2] for k, v in prf.items()}


# --------------------------------------------------------------------------- BLEU / chrF


def _pretokenized(text: str) -> str:
    return " ".join(tokenize(text))


def _kiwi_signature(sig: str) -> str:
    return sig.replace("tok:none", "tok:none+kiwi") if "tok:none" in sig else f"{sig}|tok:none+kiwi"


def bleu(preds: Sequence[str], refs: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU (0–100) with sacrebleu on space-joined Kiwi morphemes
    (``tokenize="none"``: sacrebleu does not re-tokenize). Returns ``(score,
    signature)``; the signature is sacrebleu's with ``tok:none+kiwi``."""
    from sacrebleu.metrics import BLEU

    if len(preds) != len(refs):
        raise ValueError(f"bleu: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        return 0.0, bleu_signature()
    metric = BLEU(tokenize="none")
    res = metric.corpus_score([_pretokenized(p) for p in preds], [[_pretokenized(r) for r in refs]])
    return float(res.score), _kiwi_signature(str(metric.get_signature()))


def sentence_bleu(pred: str, ref: str) -> float:
    """Sentence BLEU (0–100) on Kiwi morphemes with ``effective_order=True`` (short
    answers without 4-gram matches are not zeroed outright)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="none", effective_order=True)
    return float(metric.sentence_score(_pretokenized(pred), [_pretokenized(ref)]).score)


@functools.lru_cache(maxsize=1)
def bleu_signature() -> str:
    """The corpus-BLEU signature, e.g. ``nrefs:1|case:mixed|eff:no|tok:none+kiwi|smooth:exp|version:2.6.0``."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="none")
    metric.corpus_score(["a"], [["a"]])  # sacrebleu knows nrefs only after scoring
    return _kiwi_signature(str(metric.get_signature()))


def chrf(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (0–100) with sacrebleu's defaults on the raw text (character
    n-grams work on Hangul syllables directly)."""
    from sacrebleu.metrics import CHRF

    if len(preds) != len(refs):
        raise ValueError(f"chrf: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        return 0.0
    return float(CHRF().corpus_score(list(preds), [list(refs)]).score)


@functools.lru_cache(maxsize=1)
def chrf_signature() -> str:
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    metric.corpus_score(["a"], [["a"]])
    return str(metric.get_signature())


# --------------------------------------------------------------------------- keywords

# Morphemes that carry a keyword: everything except particles (J*), endings (E*),
# punctuation, the copula and the verb/adjective-deriving suffixes (하다/되다), so
# "추진하다" matches "추진한다" and "추진을".
_NON_LEXICAL = frozenset({"XSV", "XSA", "XSM", "VCP", "VCN"})


def _lexical(text: str) -> list[str]:
    return [_norm(t) for t in _word_toks(text) if not t.tag.startswith(("J", "E")) and t.tag not in _NON_LEXICAL]


def _contains_seq(hay: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    if not n or n > len(hay):
        return False
    first = needle[0]
    return any(hay[i] == first and list(hay[i:i + n]) == list(needle) for i in range(len(hay) - n + 1))


def split_keywords(value) -> list[str]:
    """Keywords from a list or a "a, b | c; d" string, stripped, empties and repeats dropped.

    The one keyword splitter of kotune (question files, score rows): ``|``, ``;``
    and ``,`` all separate keywords, with no precedence between them; a list's
    items (any iterable's) are taken as they are, not split again; any other value is read as text.
    """
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        items = re.split(r"[,|;]", str(value))
    else:
        items = [str(k) for k in value if k is not None]
    out: list[str] = []
    for k in items:
        k = k.strip()
        if k and k not in out:
            out.append(k)
    return out


def keyword_present(answer: str, keyword: str) -> bool:
    """Whether ``keyword`` occurs in ``answer``: its morpheme sequence appears in the
    answer's (particles and endings ignored: 계획을/계획이 contain 계획), or the
    keyword is a substring of the answer once spaces are removed."""
    kw = _spaceless(keyword)
    if not kw:
        return False
    if kw in _spaceless(answer):
        return True
    needle = _lexical(keyword) or [t.form.lower() for t in _analyse(keyword)]
    return _contains_seq(_lexical(answer), needle)


def keyword_coverage(answer: str, keywords) -> float | None:
    """Share (0–1) of the expected keywords present in ``answer``; None without keywords."""
    kws = split_keywords(keywords)
    if not kws:
        return None
    return sum(keyword_present(answer or "", k) for k in kws) / len(kws)


# --------------------------------------------------------------------------- repetition

_REPETITION_MIN_NGRAMS = 5


def repetition(answer: str, n: int = 3) -> float:
    """Share (0–1) of repeated morpheme n-grams: ``1 - unique/total``. A runaway loop
    ("원,000억 원,000억 원,000억 …") approaches 1; 0 when the answer has fewer than
    5 n-grams."""
    toks = tokenize(answer or "")
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if len(grams) < _REPETITION_MIN_NGRAMS:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


# --------------------------------------------------------------------------- grounding

# Content morphemes checked for support; numbers and proper nouns weigh 3.
GROUNDING_TAGS = frozenset({"NNG", "NNP", "SN", "SL", "VV", "VA"})
_HEAVY_TAGS = frozenset({"SN", "NNP"})
# Stems that any paraphrase uses; they say nothing about support.
_GENERIC_STEMS = frozenset({"있", "없", "되", "하", "않", "위하", "통하", "대하", "따르", "관하", "같", "이", "보", "말하"})
_NUMBER_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def _join_sources(*texts) -> str:
    parts = []
    for t in texts:
        if t is None:
            continue
        if isinstance(t, (list, tuple)):
            parts.extend(str(x) for x in t if x)
        elif str(t).strip():
            parts.append(str(t))
    return "\n".join(parts)


class _Sources:
    """What the reference and context contain: morpheme forms, numbers, raw text."""

    def __init__(self, text: str):
        self.text = text
        self.flat = _spaceless(text)
        toks = _analyse(text)
        self.forms = {_norm(t) for t in toks}
        self.numbers = {_norm_number(t.form) for t in toks if t.tag == "SN"}
        self.numbers.update(_norm_number(m) for m in _NUMBER_RE.findall(text))

    def has(self, tok: _Tok) -> bool:
        if tok.tag == "SN":
            return _norm_number(tok.form) in self.numbers
        form = _norm(tok)
        return form in self.forms or (len(form) >= 2 and form in self.flat)


@functools.lru_cache(maxsize=2048)
def _sources(text: str) -> _Sources:
    return _Sources(text)


def _grounding_toks(answer: str) -> list[_Tok]:
    return [t for t in _word_toks(answer) if t.tag in GROUNDING_TAGS and t.form not in _GENERIC_STEMS]


def unsupported_rate(answer: str, reference: str | None, context=None) -> float | None:
    """Weighted share (0–1) of the answer's content morphemes (nouns NNG/NNP, numbers
    SN, Latin SL, verb/adjective stems) found in neither ``reference`` nor
    ``context`` (a string or a list of passages). Numbers and proper nouns weigh 3,
    the rest 1. None when there is neither reference nor context; 0 for an answer
    without content morphemes."""
    src_text = _join_sources(reference, context)
    if not src_text.strip():
        return None
    toks = _grounding_toks(answer or "")
    if not toks:
        return 0.0
    src = _sources(src_text)
    total = unsupported = 0
    for t in toks:
        w = 3 if t.tag in _HEAVY_TAGS else 1
        total += w
        if not src.has(t):
            unsupported += w
    return unsupported / total


# --------------------------------------------------------------------------- numbers and agencies


def _numbers_with_units(text: str) -> list[tuple[str, str | None]]:
    """``(value, unit)`` for every number in ``text`` (list markers excluded); the
    unit is the counter/noun right after it (억, 원, 년, %, 개 …) or None."""
    toks = _analyse(text)
    out = []
    for i, t in enumerate(toks):
        if t.tag != "SN" or _is_list_marker(t, text):
            continue
        unit = None
        if i + 1 < len(toks):
            nxt = toks[i + 1]
            if nxt.tag in {"NR", "NNB", "NNG", "SW"} and nxt.start - t.end <= 1:
                unit = nxt.form
        out.append((_norm_number(t.form), unit))
    return out


def number_errors(answer: str, reference: str | None, context=None) -> list[str]:
    """Numbers in ``answer`` that are wrong: absent from reference and context, or
    (when the reference has a number with the same unit) different from every
    reference number with that unit. Empty without reference and context."""
    src_text = _join_sources(reference, context)
    if not src_text.strip():
        return []
    src = _sources(src_text)
    nums = _numbers_with_units(answer or "")
    bad = [v for v, _ in nums if v not in src.numbers]
    if reference:
        ref_by_unit: dict[str, set[str]] = {}
        for v, u in _numbers_with_units(reference):
            if u:
                ref_by_unit.setdefault(u, set()).add(v)
        ans_by_unit: dict[str, set[str]] = {}
        for v, u in nums:
            if u:
                ans_by_unit.setdefault(u, set()).add(v)
        for u, vals in ans_by_unit.items():
            if u in ref_by_unit and not (vals & ref_by_unit[u]):
                bad.extend(sorted(vals))
    return list(dict.fromkeys(bad))


_RUN_TAGS = frozenset({"NNG", "NNP", "XPN", "XSN", "SL", "SH"})
_ORG_HEADS = ("위원회", "진흥원", "연구소", "센터", "공단", "재단",
              "연구회", "자문회의", "회의소", "협회", "학회", "대학교", "은행")
_ORG_CHARS = ("부", "처", "청", "원")
# People and generic nouns that end like agencies (…원 = member, …부 = part).
_NOT_ORG = frozenset({"공무원", "구성원", "회사원", "교직원", "상담원", "조사원", "사무원", "종사원", "운영부"})
_NOT_ORG_ALONE = frozenset({"연구원", "위원회"})


def _noun_runs(text: str) -> list[list[_Tok]]:
    runs: list[list[_Tok]] = []
    cur: list[_Tok] = []
    for t in _analyse(text):
        if t.tag in _RUN_TAGS and (not cur or cur[-1].end == t.start):
            cur.append(t)
            continue
        if cur:
            runs.append(cur)
        cur = [t] if t.tag in _RUN_TAGS else []
    if cur:
        runs.append(cur)
    return runs


def _is_org(name: str, run: list[_Tok]) -> bool:
    last = run[-1].form
    if last in _NOT_ORG or (len(run) == 1 and last in _NOT_ORG_ALONE):
        return False
    if any(name.endswith(h) and len(name) > len(h) for h in _ORG_HEADS):
        return True
    if len(last) >= 3 and last.endswith(_ORG_CHARS) and run[-1].tag in ("NNG", "NNP"):
        return True
    return last in _ORG_CHARS and len(run) >= 2


def organisations(text: str) -> list[str]:
    """Organisation-like names in ``text``: compound nouns (adjacent noun morphemes,
    common or proper) ending in an agency head: 부/처/청/원 (a 3+ syllable noun such as
    통신부, 국세청, 법제처, 평가원, or 교육+부), 위원회/센터/공단/재단/연구소/진흥원 and
    연구회/자문회의/회의소/협회/학회/대학교/은행 after a name (과학기술정보통신부,
    정보통신산업진흥원, 국가초고성능컴퓨팅센터, 한국에너지공단).

    Heuristic: Kiwi has no named-entity tagger, and a bare proper noun is not taken
    as an organisation because Kiwi tags many loanwords NNP (클러스터, 클라우드,
    메타버스); unsupported proper nouns still weigh 3 in :func:`unsupported_rate`.
    People and generic nouns (공무원, 구성원, a lone 연구원/위원회/센터) are excluded."""
    out = []
    for run in _noun_runs(text or ""):
        if not any(t.tag in ("NNG", "NNP") for t in run):
            continue
        name = "".join(text[run[0].start:run[-1].end].split())
        if _is_org(name, run) and name not in out:
            out.append(name)
    return out


def agency_errors(answer: str, reference: str | None, context=None) -> list[str]:
    """Organisation names in ``answer`` that appear in neither reference nor context."""
    src_text = _join_sources(reference, context)
    if not src_text.strip():
        return []
    flat = _sources(src_text).flat
    return [o for o in organisations(answer or "") if o.lower() not in flat]


# --------------------------------------------------------------------------- citations

# What counts as a citation in an answer: kotune's own form, one passage per bracket
# (``[문서 2]``, :data:`kotune.model.retrieval.CITATION`; several in a row: ``[문서 1][문서 3]``),
# and a list in one bracket (``[문서 1, 3]``, also ``[문서 1,3]``). Not counted: a bare number
# ("[1]", "문서 1" without brackets) and ranges ("[문서 1-3]"): kotune never writes them, and
# guessing what they mean would score answers on a reading of ours.
CITATIONS = re.compile(r"\[문서\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
# A passage in a prompt: its ``[문서 n]`` label at the start of a line, as
# :func:`kotune.model.retrieval.format_context` writes it; a label inside a line is text.
_PASSAGE_LABEL = re.compile(r"^[ \t]*" + CITATION.pattern, re.M)

CITATION_KEY_FACTS = 0.5
"""A cited passage is correct when it holds at least this share of the key facts."""


def citations(answer: str) -> list[int]:
    """The passage numbers ``answer`` cites, in the order first cited, each once:
    "…입니다 [문서 2]" → ``[2]``; "[문서 1][문서 3]" and "[문서 1, 3]" → ``[1, 3]``."""
    out: list[int] = []
    for m in CITATIONS.finditer(answer or ""):
        for n in re.split(r"\s*,\s*", m.group(1)):
            if int(n) not in out:
                out.append(int(n))
    return out


def strip_cited(text: str) -> str:
    """``text`` without its citations (every form :data:`CITATIONS` reads) and the spaces before them."""
    return re.sub(r"\s*" + CITATIONS.pattern, "", text or "").strip()


def numbered_passages(context: str | None) -> dict[int, str]:
    """The passages of a prompt's context, by number: each ``[문서 n]`` label at the start of a
    line opens passage n, which runs to the next label (the label itself left out, its
    breadcrumbs line kept). Text before the first label belongs to no passage; a number
    labelled twice keeps its first passage. A context without labels has no citable passages."""
    context = context or ""
    labels = list(_PASSAGE_LABEL.finditer(context))
    out: dict[int, str] = {}
    for i, m in enumerate(labels):
        end = labels[i + 1].start() if i + 1 < len(labels) else len(context)
        out.setdefault(int(m.group(1)), context[m.end():end].strip())
    return out


def key_facts(keywords=None, reference: str | None = None) -> list[str]:
    """The key facts a correct answer gives: the row's ``keywords`` (what
    :func:`keyword_coverage` checks), else those :func:`kotune.korean.answer_keywords`
    derives from the reference with its citations removed (quantities first, then the
    longest noun phrases; at most 3). Empty when neither yields any."""
    kws = split_keywords(keywords)
    if kws:
        return kws
    return korean.answer_keywords(strip_cited(reference)) if reference and reference.strip() else []


def holds_facts(passage: str, facts: Sequence[str], threshold: float = CITATION_KEY_FACTS) -> bool:
    """Whether ``passage`` holds at least ``threshold`` of ``facts``, each matched as
    :func:`keyword_present` matches a keyword (morphemes, particles and endings ignored)."""
    if not facts:
        return False
    return sum(keyword_present(passage, f) for f in facts) / len(facts) >= threshold


class CitationCheck(NamedTuple):
    """One answer's citations. ``cited_passages[i]`` and ``cited_correct[i]`` belong to
    ``citations[i]``: the passage's text (None when the number is not a passage) and whether it
    holds the key facts (None when not checked)."""

    citations: list[int]
    cited_passages: list[str | None]
    cited_correct: list[bool | None]
    citation_correct: bool | None  # every cited passage correct; None when not checked


def check_citations(answer: str, context: str | None, *, keywords=None, reference: str | None = None,
                    checked: bool = True, threshold: float = CITATION_KEY_FACTS) -> CitationCheck:
    """The citations of ``answer`` against the numbered passages of ``context`` (:func:`numbered_passages`).

    The rule: a cited passage is **correct** when it holds at least ``threshold`` (0.5) of the
    key facts (:func:`key_facts`: the keywords, else the reference's) by :func:`keyword_present`'s
    morpheme match; a citation of a number that is not a passage ("[문서 7]" of 3) is wrong. The
    answer's citation is correct when every passage it cites is.

    Not checked (every correctness None): the answer cites nothing, the context has no
    numbered passages, there are no key facts (no keywords and no reference), or ``checked`` is
    False (the caller's exclusions: an abstaining answer, a question marked unanswerable).
    """
    cited = citations(answer)
    passages = numbered_passages(context)
    texts = [passages.get(n) for n in cited]
    facts = key_facts(keywords, reference) if checked and cited and passages else []
    if not facts:
        return CitationCheck(cited, texts, [None] * len(cited), None)
    correct = [t is not None and holds_facts(t, facts, threshold) for t in texts]
    return CitationCheck(cited, texts, correct, all(correct))


# --------------------------------------------------------------------------- error types


@dataclass(frozen=True)
class Thresholds:
    """When an error type is tagged (see :func:`error_types`)."""

    keyword_coverage: float = 0.5  # 정보 누락: coverage below this
    reference_recall: float = 0.3  # 정보 누락 without keywords: LCS recall of reference content below this
    repetition: float = 0.3  # 반복·미종료: repetition above this
    unsupported: float = 0.4  # 근거 없음: unsupported_rate above this


DEFAULT_THRESHOLDS = Thresholds()
_TRUNCATED = frozenset({"length", "max_tokens"})


def _content(text: str) -> list[str]:
    return [_norm(t) for t in _word_toks(text) if t.tag in korean.CONTENT_TAGS]


def reference_recall(answer: str, reference: str) -> float:
    """LCS recall (0–1) of the reference's content morphemes in the answer's."""
    ref = _content(reference)
    if not ref:
        return 1.0
    return _lcs_len(_content(answer), ref) / len(ref)


_UNSET = object()


def error_types(
    answer: str,
    *,
    reference: str | None = None,
    keywords=None,
    context=None,
    finish_reason: str | None = None,
    rep: float | None = None,
    unsupported=_UNSET,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    answerable: bool = True,
    abstained: bool | None = None,
    abstention: str = ABSTENTION,
) -> list[str]:
    """Error types of one answer, in :data:`ERROR_TYPES` order (zero or more):

    - 정보 누락: keyword coverage < 0.5; without keywords, LCS recall of the
      reference's content morphemes < 0.3.
    - 수치 오류: a number absent from reference and context, or a number whose unit
      matches a reference number but whose value differs (:func:`number_errors`).
    - 기관 오용: an organisation name not in reference or context (:func:`agency_errors`).
    - 반복·미종료: repetition > 0.3, or generation stopped at the length limit.
    - 근거 없음: unsupported_rate > 0.4.
    - 근거 없이 답함: the question is marked unanswerable (``answerable=False``) and the
      answer does not abstain (:func:`abstains`).
    - 잘못 거절: the answer abstains although the question is answerable.

    An abstaining answer, or any answer to an unanswerable question, is judged on abstention
    (and 반복·미종료) only: the content checks compare it with a reference it was not meant
    to give (the abstention sentence, or none). ``abstained`` is computed with
    ``abstention`` (the model's sentence) when not given; ``rep`` and ``unsupported`` may be
    passed when already computed.
    """
    answer = answer or ""
    reference = reference if reference and str(reference).strip() else None
    if abstained is None:
        abstained = abstains(answer, abstention)
    if abstained or not answerable:
        if rep is None:
            rep = repetition(answer)
        loop = rep > thresholds.repetition or (finish_reason or "").lower() in _TRUNCATED
        wrong = ERR_FALSE_ABSTAIN if answerable else (None if abstained else ERR_ANSWERED_UNANSWERABLE)
        return [t for t in ERROR_TYPES if (t == ERR_LOOP and loop) or t == wrong]
    out = []
    cov = keyword_coverage(answer, keywords)
    if cov is not None:
        if cov < thresholds.keyword_coverage:
            out.append(ERR_MISSING)
    elif reference is not None and reference_recall(answer, reference) < thresholds.reference_recall:
        out.append(ERR_MISSING)
    if number_errors(answer, reference, context):
        out.append(ERR_NUMBER)
    if agency_errors(answer, reference, context):
        out.append(ERR_AGENCY)
    if rep is None:
        rep = repetition(answer)
    if rep > thresholds.repetition or (finish_reason or "").lower() in _TRUNCATED:
        out.append(ERR_LOOP)
    if unsupported is _UNSET:
        unsupported = unsupported_rate(answer, reference, context)
    if unsupported is not None and unsupported > thresholds.unsupported:
        out.append(ERR_UNSUPPORTED)
    return out


# --------------------------------------------------------------------------- rows


def is_eos(answer: str, finish_reason: str | None = None) -> bool:
    """Whether the answer ended on its own: ``finish_reason`` other than "length"
    when known; otherwise the answer must end like a Korean sentence (its closing
    citations aside: "…원입니다 [문서 2]" ends on its own)."""
    if finish_reason:
        return finish_reason.lower() not in _TRUNCATED
    return korean.ends_like_sentence(strip_cited(answer or ""))


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        v = "\n".join(str(x) for x in v if x)
    v = str(v)
    return v if v.strip() else None


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def _score_row(row: dict, abstention: str) -> dict:
    answer = _text(row.get("answer")) or ""
    reference = _text(row.get("reference"))
    context = _text(row.get("context"))
    question = _text(row.get("question"))
    # The question may name the agency or year the answer repeats: it counts as a
    # source, but only next to a reference or context (alone it proves nothing).
    grounding = _join_sources(context, question) if (reference or context) else None
    keywords = split_keywords(row.get("keywords"))
    finish = row.get("finish_reason")
    finish = str(finish) if finish else None
    eos = row["eos"] if isinstance(row.get("eos"), bool) else is_eos(answer, finish)

    out: dict = {"category": str(row.get("category") or "").strip() or NO_CATEGORY}
    if reference is not None:
        prf = rouge_prf(tokenize(answer), tokenize(reference))
        out.update({k: 100.0 * v[2] for k, v in prf.items()})
        out["bleu"] = sentence_bleu(answer, reference)
    else:
        out.update({k: None for k in ("rouge1", "rouge2", "rougeL", "bleu")})
    rep = repetition(answer)
    # Only False marks a question unanswerable (missing is answerable); question and
    # prediction files are checked when read (kotune.eval.evaluate.read_answerable).
    answerable = row.get("answerable") is not False
    abstained = abstains(answer, abstention)
    # An abstention states no fact: none of its words are "unsupported content".
    uns = None if abstained else unsupported_rate(answer, reference, grounding)
    out.update({
        "keyword_coverage": keyword_coverage(answer, keywords),
        "repetition": rep,
        "unsupported_rate": uns,
        "eos": bool(eos),
        "finish_reason": finish,
        "answerable": answerable,
        "abstained": abstained,
    })
    out["errors"] = error_types(answer, reference=reference, keywords=keywords, context=grounding,
                                finish_reason=finish, rep=rep, unsupported=uns, answerable=answerable,
                                abstained=abstained)
    # The passages the answer may cite: the prompt's context, else the question's input (what
    # the model was asked with: a context takes the input's place in the prompt).
    passages = context or _text(row.get("input"))
    cit = check_citations(answer, passages, keywords=keywords, reference=reference,
                          checked=answerable and not abstained)
    out.update(cit._asdict())
    out["_citable"] = answerable and not abstained and bool(numbered_passages(passages))
    out["_answer"], out["_reference"] = answer, reference
    return out


def _group(scored: list[dict]) -> dict:
    with_ref = [s for s in scored if s["_reference"] is not None]
    g: dict = {"n": len(scored), "n_reference": len(with_ref)}
    for k in ("rouge1", "rouge2", "rougeL"):
        g[k] = _r(_mean(s[k] for s in with_ref), 2)
    if with_ref:
        preds, refs = [s["_answer"] for s in with_ref], [s["_reference"] for s in with_ref]
        g["bleu"] = _r(bleu(preds, refs)[0], 2)
        g["chrf"] = _r(chrf(preds, refs), 2)
    else:
        g["bleu"] = g["chrf"] = None
    g["keyword_coverage"] = _r(_mean(s["keyword_coverage"] for s in scored), 4)
    g["eos_rate"] = _r(_mean(1.0 if s["eos"] else 0.0 for s in scored), 4)
    g["repetition"] = _r(_mean(s["repetition"] for s in scored), 4)
    g["unsupported_rate"] = _r(_mean(s["unsupported_rate"] for s in scored), 4)
    unanswerable = [s for s in scored if not s["answerable"]]
    answerable = [s for s in scored if s["answerable"]]
    g["unanswerable"], g["answerable"] = len(unanswerable), len(answerable)
    g["abstain_rate"] = _r(_mean(1.0 if s["abstained"] else 0.0 for s in unanswerable), 4)
    g["false_abstain_rate"] = _r(_mean(1.0 if s["abstained"] else 0.0 for s in answerable), 4)
    citable = [s for s in scored if s["_citable"]]
    checked = [c for s in scored if s["citation_correct"] is not None for c in s["cited_correct"]]
    g["n_citable"] = len(citable)
    g["n_citing"] = sum(s["citation_correct"] is not None for s in scored)
    g["n_cited"] = len(checked)
    g["citation_accuracy"] = _r(_mean(1.0 if c else 0.0 for c in checked), 4)
    g["cited_rate"] = _r(_mean(1.0 if s["citations"] else 0.0 for s in citable), 4)
    return g


def _count_errors(scored: list[dict]) -> dict[str, int]:
    counts = {t: 0 for t in ERROR_TYPES}
    for s in scored:
        for e in s["errors"]:
            counts[e] += 1
    return counts


def score_rows(rows: list[dict], *, abstention: str = ABSTENTION) -> dict:
    """Score answers. Each row has ``answer`` and optionally ``reference``,
    ``keywords`` (list or "a, b | c"), ``category``, ``context`` (string or list),
    ``input`` (the question's input; its passages count when there is no context),
    ``question``, ``finish_reason``, ``eos`` and ``answerable`` (``False``: the documents
    do not hold the answer). ``abstention`` is the answering model's abstention sentence
    (:func:`abstains`).

    Returns ``{"overall", "by_category", "error_types", "error_types_by_category",
    "per_row", "skipped", "notes", "n_rows", "tokenization", "bleu_signature",
    "chrf_signature"}``. Group dicts hold ``n``, ``n_reference``, ``rouge1 rouge2
    rougeL`` (mean over rows with a reference), ``bleu chrf`` (corpus scores over
    those rows), all 0–100 rounded to 2 decimals, and ``keyword_coverage eos_rate
    repetition unsupported_rate`` (0–1 means over the rows where defined, 4
    decimals); a metric with no defined row is None. Group dicts also hold the counts
    ``unanswerable`` and ``answerable``, ``abstain_rate`` (share of the unanswerable rows
    whose answer abstained; None without such rows) and ``false_abstain_rate`` (share of
    the answerable rows whose answer abstained); each ``per_row`` entry holds
    ``answerable`` and ``abstained``. An abstaining answer has no ``unsupported_rate``
    (it states no fact) and is tagged by :func:`error_types`' abstention rule.

    Citations (:func:`check_citations`, against the ``[문서 n]`` passages of the row's
    ``context``, else of its ``input``): each ``per_row`` entry holds ``citations`` (the cited
    passage numbers), ``citation_correct`` (True/False, None when not checked),
    ``cited_passages`` (each cited passage's text, None for a number that is not a passage) and
    ``cited_correct`` (each one's check). Group dicts hold ``citation_accuracy``: the share of
    cited passages that are correct, pooled over the answers whose citations were checked
    (answered, answerable, numbered passages, key facts; None when no answer cites), and
    ``cited_rate``: the share of the answered (not abstained) answerable rows with numbered
    passages that cite at all (None when no row has numbered passages); and the counts
    ``n_citable`` (rows under ``cited_rate``), ``n_citing`` (answers checked) and ``n_cited``
    (passages checked).

    Rows without a reference get no reference metrics (an unanswerable question's
    reference is usually the abstention sentence, then they are computed against it, or
    none); when no row has one they are listed in ``skipped`` ({"metric", "reason"}), when
    some lack one ``notes`` says over how many rows they were computed. A missing category
    is "(none)".
    """
    scored = [_score_row(r, abstention) for r in rows]
    by_cat: dict[str, list[dict]] = {}
    for s in scored:
        by_cat.setdefault(s["category"], []).append(s)

    n_ref = sum(s["_reference"] is not None for s in scored)
    skipped: list[dict] = []
    notes: list[str] = []
    if scored and n_ref == 0:
        reason = "no row has a reference answer"
        skipped.extend({"metric": m, "reason": reason} for m in REFERENCE_METRICS)
    elif n_ref < len(scored):
        notes.append(f"{', '.join(REFERENCE_METRICS)} computed on the {n_ref} of {len(scored)} rows "
                     f"that have a reference (rows without one: {len(scored) - n_ref})")
    if scored and all(s["keyword_coverage"] is None for s in scored):
        skipped.append({"metric": "keyword_coverage", "reason": "no row has keywords"})
    if scored and all(s["unsupported_rate"] is None for s in scored):
        why = "every answer abstained" if all(s["abstained"] for s in scored) else "no row has a reference or context"
        skipped.append({"metric": "unsupported_rate", "reason": why})

    per_row = []
    for i, s in enumerate(scored):
        per_row.append({
            "index": i,
            "category": s["category"],
            **{k: _r(s[k], 2) for k in ("rouge1", "rouge2", "rougeL", "bleu")},
            **{k: _r(s[k], 4) for k in ("keyword_coverage", "repetition", "unsupported_rate")},
            "eos": s["eos"],
            "answerable": s["answerable"],
            "abstained": s["abstained"],
            "errors": s["errors"],
            "citations": s["citations"],
            "citation_correct": s["citation_correct"],
            "cited_passages": s["cited_passages"],
            "cited_correct": s["cited_correct"],
        })
    return {
        "overall": _group(scored),
        "by_category": {c: _group(v) for c, v in sorted(by_cat.items())},
        "error_types": _count_errors(scored),
        "error_types_by_category": {c: _count_errors(v) for c, v in sorted(by_cat.items())},
        "per_row": per_row,
        "skipped": skipped,
        "notes": notes,
        "n_rows": len(scored),
        "tokenization": TOKENIZATION,
        "bleu_signature": bleu_signature(),
        "chrf_signature": chrf_signature(),
    }
