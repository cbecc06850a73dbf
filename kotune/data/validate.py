"""Quality filters, grounding check and deduplication for QA records.

``validate_records`` gives every record either a place in ``kept`` or exactly one
drop reason — the first check it fails, in this order:

0. ``category_not_selected``  not one of ``categories``, when some are given
                       (the civil-law seed's ``--categories``: train on a few only);
1. ``missing_fields``  instruction or output empty after stripping;
2. ``too_short``       answer shorter than ``min_answer_chars`` (seed: 10);
3. ``incomplete``      answer does not end like a Korean sentence (cut off);
4. ``evasive``         answer is a "the document does not say" non-answer;
5. ``ungrounded``      too few of the answer's content morphemes occur in its
                       source chunk (``chunks[chunk_id]``, else ``input``);
6. ``duplicate``       same question+answer as an earlier kept record, or the
                       same question (and same input) with another answer;
7. ``near_duplicate``  MinHash estimate of character-trigram Jaccard with an
                       earlier kept record at or above the threshold (the rule teacher's
                       fact records of one chunk, ``extra["fact"]``, are exempt from each
                       other: a fact's phrasings are paraphrases on purpose, and two facts
                       of one sentence share their answer).

Cheap string checks run first, Kiwi (grounding) only on survivors, dedup last
and in input order, so merging files in the same order is deterministic: the
first occurrence is always the one kept.

Grounded records (``kotune generate --grounded``, :mod:`kotune.data.grounded`):

* an answer's ``[문서 n]`` citations are not words of the answer: checks 2, 3 and 5
  and the duplicate checks read the answer without them
  (:func:`kotune.model.retrieval.strip_citations`), so "…다졌다. [문서 2]" is complete
  and as grounded as "…다졌다.";
* an **abstention record** — marked ``"answerable": false`` and answering with an
  abstention (:func:`is_abstention_record`) — says "not in the documents" on purpose:
  checks 2 (too short), 4 (evasive) and 5 (grounding: there is nothing to ground) do not
  apply to it; 1, 3 and 6 do, 7 does not (its answer is the same sentence in every such
  record, so two different questions would look alike; the same question twice is 6).
  A record marked ``"answerable": false`` whose output is more than that (a real answer,
  several sentences) is checked like any other.

The thresholds and switches are ``kotune validate``'s options
(:class:`kotune.options.ValidateOptions`, their one owner); the MinHash shape and the
evasive phrases are this module's own keyword arguments.

Checks 1–4 (``text_problem``) and 5 (``grounding_problem``) are also how the
LLM teachers accept an answer (``kotune.data.qa.answer_problem``): one
implementation for both.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from kotune.errors import KotuneError
from kotune.korean import content_morphemes, ends_like_sentence, split_sentences
from kotune.model.retrieval import CITATION, says_as_a_clause, strip_citations
from kotune.model.templates import ABSTENTION
from kotune.options import ValidateOptions
from kotune.records import Record

REASONS = ("category_not_selected", "missing_fields", "duplicate", "near_duplicate", "too_short", "incomplete", "evasive", "ungrounded")
REASON_LABELS = {
    "category_not_selected": "선택하지 않은 범주",
    "missing_fields": "필수 필드 누락",
    "duplicate": "중복",
    "near_duplicate": "유사 중복",
    "too_short": "너무 짧은 답변",
    "incomplete": "불완전(잘림)",
    "evasive": "회피성 답변",
    "ungrounded": "근거 불충분",
}

# Non-answers a teacher model gives when the chunk does not hold the answer
# (the seed's "명시되어 있지 않습니다" filter). Matched with all whitespace
# removed, so "명시되어있지 않습니다" and "명시되어 있지  않" both hit.
DEFAULT_EVASIVE_PHRASES: tuple[str, ...] = (
    "명시되어 있지 않",
    "언급되어 있지 않",
    "해당 내용이 없",
    "해당 내용은 없",
    "관련 내용이 없",
    "알 수 없습니다",
    "정보가 없습니다",
    "정보가 제공되지 않",
    "제공된 문서에는",
    "주어진 문서에는",
    "제공된 정보로는",
    "주어진 정보로는",
    "답변할 수 없",
    "답변드릴 수 없",
    "확인할 수 없습니다",
)

_WS = re.compile(r"\s+")
_EXAMPLES_PER_REASON = 3
_SNIPPET = 80
_NO_VALUE = "(none)"


@dataclass(frozen=True)
class MinHashShape:
    """How near-duplicates are sketched (not options: fixed, so runs are reproducible)."""

    ngram: int = 3                      # character n-grams of question + answer
    num_perm: int = 128
    seed: int = 1                       # permutation seed

    def check(self) -> None:
        if self.ngram < 1:
            raise KotuneError(f"ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 16:
            raise KotuneError(f"num_perm must be >= 16, got {self.num_perm}")


def selected_categories(options: ValidateOptions) -> tuple[str, ...]:
    """``--categories`` values, comma-separated or repeated, as one tuple of names."""
    return tuple(dict.fromkeys(c.strip() for v in options.categories for c in v.split(",") if c.strip()))


def normalize_text(text: str) -> str:
    """Whitespace collapsed to single spaces and stripped."""
    return _WS.sub(" ", text or "").strip()


def _squash(text: str) -> str:
    return _WS.sub("", text or "")


@dataclass
class ValidationResult:
    kept: list[Record]
    dropped: list[tuple[Record, str]]
    grounding_checked: int = 0
    grounding_unchecked: int = 0
    options: ValidateOptions = field(default_factory=ValidateOptions)
    minhash: MinHashShape = field(default_factory=MinHashShape)
    evasive_phrases: tuple[str, ...] = DEFAULT_EVASIVE_PHRASES

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.dropped)

    def counts(self) -> dict[str, int]:
        """reason → number dropped, every reason present (0 allowed), in ``REASONS`` order."""
        c = Counter(reason for _, reason in self.dropped)
        return {r: c.get(r, 0) for r in REASONS}

    def report(self) -> dict[str, Any]:
        total = self.total
        kept = len(self.kept)
        scores = [r.extra["grounding"] for r in self.kept if isinstance(r.extra.get("grounding"), (int, float))]
        rep: dict[str, Any] = {
            "total": total,
            "kept": kept,
            "dropped": len(self.dropped),
            "pass_rate": round(kept / total, 4) if total else 0.0,
            "dropped_by_reason": self.counts(),
            "reason_labels": dict(REASON_LABELS),
            "kept_by_category": _distribution(r.category for r in self.kept),
            "kept_by_difficulty": _distribution(r.difficulty for r in self.kept),
            "grounding_checked": self.grounding_checked,
            "grounding_unchecked": self.grounding_unchecked,
            "grounding_mean": round(sum(scores) / len(scores), 3) if scores else None,
        }
        files = self._by_file()
        if files:
            rep["by_file"] = files
        rep["examples"] = self._examples()
        rep["config"] = {**self.options.model_dump(), "categories": list(selected_categories(self.options)),
                         "ngram": self.minhash.ngram, "num_perm": self.minhash.num_perm, "seed": self.minhash.seed,
                         "evasive_phrases": list(self.evasive_phrases)}
        return rep

    def _by_file(self) -> dict[str, Any]:
        if not any("_file" in r.extra for r in self.kept) and not any("_file" in r.extra for r, _ in self.dropped):
            return {}
        out: dict[str, dict[str, Any]] = {}

        def slot(rec: Record) -> dict[str, Any]:
            name = str(rec.extra.get("_file", _NO_VALUE))
            return out.setdefault(name, {"total": 0, "kept": 0, "dropped": {}})

        # Walk in original order where possible: kept and dropped each keep input order.
        for rec in self.kept:
            s = slot(rec)
            s["total"] += 1
            s["kept"] += 1
        for rec, reason in self.dropped:
            s = slot(rec)
            s["total"] += 1
            s["dropped"][reason] = s["dropped"].get(reason, 0) + 1
        for s in out.values():
            s["dropped"] = {r: s["dropped"][r] for r in REASONS if r in s["dropped"]}
        return out

    def _examples(self) -> dict[str, list[dict[str, Any]]]:
        ex: dict[str, list[dict[str, Any]]] = {}
        for rec, reason in self.dropped:
            bucket = ex.setdefault(reason, [])
            if len(bucket) >= _EXAMPLES_PER_REASON:
                continue
            item: dict[str, Any] = {
                "id": rec.id,
                "instruction": _snippet(rec.instruction),
                "output": _snippet(rec.output),
            }
            for key in ("grounding", "duplicate_of", "similarity", "_file", "_line"):
                if key in rec.extra:
                    item[key.lstrip("_")] = rec.extra[key]
            bucket.append(item)
        return {r: ex[r] for r in REASONS if r in ex}


def _snippet(text: str, n: int = _SNIPPET) -> str:
    text = normalize_text(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _distribution(values: Iterable[str]) -> dict[str, dict[str, Any]]:
    """value → {"count", "share"} sorted by count (desc) then value; share in percent of the kept records."""
    c = Counter((v or "").strip() or _NO_VALUE for v in values)
    total = sum(c.values())
    return {
        k: {"count": n, "share": round(100.0 * n / total, 1) if total else 0.0}
        for k, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    }


# --------------------------------------------------------------------------- checks

def squash_phrases(phrases: Iterable[str]) -> tuple[str, ...]:
    """Evasive phrases with all whitespace removed (the form ``text_problem`` matches), empty ones dropped."""
    return tuple(q for q in (_squash(p) for p in phrases) if q)


DEFAULT_EVASIVE_SQUASHED = squash_phrases(DEFAULT_EVASIVE_PHRASES)
# A phrase that ends in an open predicate ("명시되어 있지 않", "해당 내용이 없") is evasive only as a
# clause of its own ("…않습니다", "…없으며"): terms and laws state facts with it ("약관에 명시되어 있지
# 않은 사항은 관계 법령에 따릅니다", "해당 내용이 없는 서류는 반려됩니다"), which a substring test dropped.
_OPEN_PREDICATES = ("않", "없")


def text_problem(instruction: str, output: str, *, min_answer_chars: int = 10,
                 evasive: tuple[str, ...] = DEFAULT_EVASIVE_SQUASHED) -> str | None:
    """The per-answer string checks 1–4, in order: ``missing_fields``, ``too_short``,
    ``incomplete`` (does not end like a sentence), ``evasive``; None when all pass.

    The one implementation ``validate_records`` and the LLM teachers' answer
    acceptance (``kotune.data.qa.answer_problem``) share. ``evasive`` holds phrases
    already squashed (``squash_phrases``).
    """
    instruction = (instruction or "").strip()
    output = (output or "").strip()
    if not instruction or not output:
        return "missing_fields"
    if len(output) < min_answer_chars:
        return "too_short"
    if not ends_like_sentence(output):
        return "incomplete"
    squashed = _squash(output)
    if any(p and p in squashed and (not p.endswith(_OPEN_PREDICATES) or says_as_a_clause(output, p)) for p in evasive):
        return "evasive"
    return None


def is_abstention_record(rec: Record) -> bool:
    """Whether ``rec`` is an abstention record: marked ``"answerable": false`` and answering
    exactly with an abstention, that is :data:`kotune.model.templates.ABSTENTION` (whitespace
    aside) or, for a sentence of the user's own (``kotune generate --abstention``), one
    sentence without a citation. (``kotune.model.retrieval.abstains`` recognises abstentions in a
    model's answers; a record's own output is the sentence itself, so data needs no more.)"""
    if rec.answerable:
        return False
    output = (rec.output or "").strip()
    if not output:
        return False
    if _squash(output) == _squash(ABSTENTION):
        return True
    return CITATION.search(output) is None and len(split_sentences(output)) == 1


class MorphemeCache:
    """Unique content morphemes per text; each source chunk is tokenised once."""

    def __init__(self) -> None:
        self._cache: dict[str, frozenset[str]] = {}

    def get(self, text: str) -> frozenset[str]:
        hit = self._cache.get(text)
        if hit is None:
            hit = frozenset(m.lower() for m in content_morphemes(text))
            self._cache[text] = hit
        return hit


def grounding_score(answer: str, source: str, cache: MorphemeCache | None = None) -> float | None:
    """Share of the answer's *unique* content morphemes (set, not multiset) that occur in ``source``.

    A set is used so that an answer repeating one grounded noun cannot hide an
    invented one. Returns None when the answer has no content morphemes.
    """
    cache = cache or MorphemeCache()
    ans = cache.get(answer)
    if not ans:
        return None
    src = cache.get(source)
    return len(ans & src) / len(ans)


def grounding_problem(answer: str, source: str, *, min_grounding: float = 0.5, cache: MorphemeCache | None = None,
                      require_score: bool = False) -> tuple[str | None, float | None]:
    """Check 5: ``("ungrounded", score)`` when the answer's grounding in ``source`` is under
    ``min_grounding``, else ``(None, score)``.

    An answer without content morphemes has no score (None): ``validate_records``
    lets it pass unchecked, a teacher (``require_score``) must be able to check
    its answers and calls it ``ungrounded``.
    """
    score = grounding_score(answer, source, cache)
    if score is None:
        return ("ungrounded" if require_score else None), None
    return ("ungrounded" if score < min_grounding else None), score


def _shingles(text: str, n: int) -> list[bytes]:
    if len(text) < n:
        return [text.encode("utf-8")]
    return sorted({text[i : i + n].encode("utf-8") for i in range(len(text) - n + 1)})


def validate_records(
    records: list[Record],
    chunks: dict[str, str] | None = None,
    options: ValidateOptions | None = None,
    *,
    evasive_phrases: tuple[str, ...] = DEFAULT_EVASIVE_PHRASES,
    minhash: MinHashShape | None = None,
) -> ValidationResult:
    """Filter, ground-check and deduplicate ``records`` (kept in input order) with ``kotune
    validate``'s options (``ValidateOptions``: thresholds, switches, categories)."""
    from datasketch import MinHash, MinHashLSH

    cfg = options or ValidateOptions()
    shape = minhash or MinHashShape()
    shape.check()
    chunks = chunks or {}
    evasive = squash_phrases(evasive_phrases)

    reason_of: dict[int, str] = {}

    # 0: the categories asked for; one that no record has is a typo, not an empty selection.
    selected = set(selected_categories(cfg))
    if selected:
        present = Counter((r.category or "").strip() for r in records)
        missing = sorted(c for c in selected if c not in present)
        if missing:
            have = ", ".join(f"{c} ({n})" for c, n in sorted(present.items(), key=lambda kv: (-kv[1], kv[0])) if c)
            raise KotuneError(f"--categories: no record has category {', '.join(repr(c) for c in missing)}; "
                              f"the data has {have or 'no categories'}")
        for i, rec in enumerate(records):
            if (rec.category or "").strip() not in selected:
                reason_of[i] = "category_not_selected"

    # 1–4: cheap per-record string checks, on answers without their [문서 n] citations;
    # an abstention record is short and "evasive" on purpose.
    answers = [strip_citations(rec.output) for rec in records]
    abstaining = {i for i, rec in enumerate(records) if i not in reason_of and is_abstention_record(rec)}
    for i, rec in enumerate(records):
        if i in reason_of:
            continue
        if i in abstaining:
            reason = text_problem(rec.instruction, answers[i], min_answer_chars=0, evasive=())
        else:
            reason = text_problem(rec.instruction, answers[i], min_answer_chars=cfg.min_answer_chars, evasive=evasive)
        if reason:
            reason_of[i] = reason

    # 5: grounding (Kiwi) only for survivors.
    checked = unchecked = 0
    if cfg.grounding:
        cache = MorphemeCache()
        for i, rec in enumerate(records):
            if i in reason_of or i in abstaining:  # an abstention has nothing to ground
                continue
            source = chunks.get(rec.chunk_id, "") if rec.chunk_id else ""
            if not source.strip():
                source = rec.input or ""
            if not source.strip():
                unchecked += 1
                continue
            reason, score = grounding_problem(answers[i], source, min_grounding=cfg.min_grounding, cache=cache)
            if score is None:
                unchecked += 1
                continue
            checked += 1
            rec.extra["grounding"] = round(score, 3)
            if reason:
                reason_of[i] = reason

    # 6–7: dedup against records already kept, in input order.
    seen_pair: dict[tuple[str, str], str] = {}
    seen_question: dict[tuple[str, str], str] = {}
    # LSH only proposes candidates; its threshold sits a little below the cut
    # (fewer missed pairs, and datasketch rejects thresholds near 1.0), and
    # each candidate is confirmed with the MinHash estimate itself.
    lsh = MinHashLSH(threshold=min(0.9, max(0.05, cfg.near_dup_threshold - 0.1)), num_perm=shape.num_perm)
    sketches: dict[str, Any] = {}
    for i, rec in enumerate(records):
        if i in reason_of:
            continue
        q = normalize_text(rec.instruction)
        a = normalize_text(answers[i])
        ctx = normalize_text(rec.input)
        # Several references per input (question generation): only the same prompt with
        # the same answer is a duplicate. Otherwise the same prompt twice is one too.
        pair = (q, a) if cfg.one_answer_per_prompt else (q + "\n" + ctx, a)
        first = seen_pair.get(pair) or (seen_question.get((q, ctx)) if cfg.one_answer_per_prompt else None)
        if first is not None:
            reason_of[i] = "duplicate"
            rec.extra["duplicate_of"] = first
            continue
        if i in abstaining:
            # Its answer is the same sentence in every abstention record, so question + answer
            # would make "X 자원의 비율은?" and "Y 자원의 비율은?" near-duplicates; the same
            # question twice is still a duplicate (above).
            seen_pair[pair] = rec.id
            seen_question[(q, ctx)] = rec.id
            continue
        m = MinHash(num_perm=shape.num_perm, seed=shape.seed)
        m.update_batch(_shingles(q + "\n" + a, shape.ngram))
        best_key, best = None, -1.0
        fact = rec.extra.get("fact")
        for key in sorted(lsh.query(m)):  # candidates; confirm with the estimate itself
            other = records[int(key)]
            if fact and other.extra.get("fact") and other.chunk_id == rec.chunk_id:
                # The rule teacher's questions about one chunk: the phrasings of a fact are
                # paraphrases by design, and two facts of one sentence share their answer.
                continue
            sim = m.jaccard(sketches[key])
            if sim > best:
                best_key, best = key, sim
        if best_key is not None and best >= cfg.near_dup_threshold:
            reason_of[i] = "near_duplicate"
            rec.extra["duplicate_of"] = records[int(best_key)].id
            rec.extra["similarity"] = round(best, 3)
            continue
        key = str(i)
        lsh.insert(key, m)
        sketches[key] = m
        seen_pair[pair] = rec.id
        seen_question[(q, ctx)] = rec.id

    kept = [rec for i, rec in enumerate(records) if i not in reason_of]
    dropped = [(rec, reason_of[i]) for i, rec in enumerate(records) if i in reason_of]
    return ValidationResult(kept, dropped, grounding_checked=checked, grounding_unchecked=unchecked, options=cfg,
                            minhash=shape, evasive_phrases=tuple(evasive_phrases))


# --------------------------------------------------------------------------- display

def render_table(result: ValidationResult):
    """Drop reasons: English key + Korean label, count, share of all records."""
    from rich.table import Table

    total = result.total
    counts = result.counts()
    table = Table(title=f"검증 결과 (Validation): {len(result.kept):,} / {total:,} kept", title_justify="left")
    table.add_column("reason")
    table.add_column("사유")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for reason in REASONS:
        if reason == "category_not_selected" and not selected_categories(result.options):
            continue
        n = counts[reason]
        table.add_row(reason, REASON_LABELS[reason], f"{n:,}", _pct(n, total))
    table.add_section()
    table.add_row("kept", "통과", f"{len(result.kept):,}", _pct(len(result.kept), total), style="bold")
    return table


def render_distribution_table(result: ValidationResult):
    """Kept records by category and by difficulty (the seed's 유형별 분포)."""
    from rich.table import Table

    rep_cat = _distribution(r.category for r in result.kept)
    rep_diff = _distribution(r.difficulty for r in result.kept)
    table = Table(title="유형별 분포 (kept)", title_justify="left")
    table.add_column("field")
    table.add_column("value")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for name, dist in (("category", rep_cat), ("difficulty", rep_diff)):
        for value, d in dist.items():
            table.add_row(name, value, f"{d['count']:,}", f"{d['share']:.1f}%")
        table.add_section()
    return table


def render_tables(result: ValidationResult) -> list:
    return [render_table(result), render_distribution_table(result)]


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "0.0%"
