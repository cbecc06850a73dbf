"""Stratified, deterministic train/test split and instruction-template augmentation.

Splitting works on groups (a record and its augmented variants share
``Record.group``), so no paraphrase of a test question ever lands in train.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from kotune.records import Record

# Paraphrased instruction wrappers for QA (question in {q}). The summarization
# seed augmented with five instruction phrasings per sample; kotune does the
# same for any task, choosing the list by what the record is.
QA_TEMPLATES = (
    "{q}",
    "다음 질문에 답해 주세요.\n{q}",
    "{q} 문서 내용을 근거로 설명해 주세요.",
    "질문: {q}",
    "아래 물음에 정확하고 간결하게 답하세요.\n{q}",
    "{q} 핵심만 알려 주세요.",
)
SUMMARY_TEMPLATES = (
    "다음 대화를 요약해주세요.",
    "아래 대화의 핵심 내용을 정리해주세요.",
    "주어진 대화를 간단히 요약하세요.",
    "다음 대화에서 중요한 정보를 추출해 요약하세요.",
    "대화 내용을 한 문단으로 요약해주세요.",
)


def _is_summary(rec: Record) -> bool:
    return bool(rec.input) and ("요약" in rec.instruction or rec.category in ("요약", "summary"))


def augment(records: Sequence[Record], n: int, templates: Sequence[str] | None = None, seed: int = 42) -> list[Record]:
    """Each record plus up to ``n`` variants with a reworded instruction.

    Templates holding ``{q}`` wrap the original instruction; others replace it
    (summaries, where the dialogue is in ``input``). Variants get id ``ID#aK``.
    """
    if n <= 0:
        return list(records)
    rng = random.Random(seed)
    out: list[Record] = []
    for rec in records:
        out.append(rec)
        pool = list(templates) if templates else list(SUMMARY_TEMPLATES if _is_summary(rec) else QA_TEMPLATES)
        variants = []
        for t in pool:
            text = t.replace("{q}", rec.instruction) if "{q}" in t else t
            if text.strip() != rec.instruction.strip() and text not in variants:
                variants.append(text)
        rng.shuffle(variants)
        for k, text in enumerate(variants[:n], start=1):
            out.append(Record(
                instruction=text, output=rec.output, input=rec.input, category=rec.category,
                difficulty=rec.difficulty, source=rec.source, chunk_id=rec.chunk_id,
                id=f"{rec.group}#a{k}", extra={**rec.extra, "augmented_from": rec.group},
            ))
    return out


def stratified_split(
    records: Sequence[Record],
    test_size: float = 0.1,
    stratify: str | None = "category",
    seed: int = 42,
    group_by: str | None = None,
) -> tuple[list[Record], list[Record]]:
    """Split by group, stratified by ``stratify`` (a field or extra key).

    A group is a record and its augmented variants; ``group_by`` (a field or
    extra key, e.g. ``input`` or ``chunk_id``) also keeps records sharing that
    value together, so several questions about one paragraph never straddle
    train and test. Each stratum gives round(test_size × its groups) to test (at
    least one when it has two or more groups), so small categories are still
    evaluated. Output keeps input order within train and test.
    """
    if not 0 < test_size < 1:
        raise ValueError("test_size must be between 0 and 1")

    def group_of(r: Record) -> str:
        if group_by:
            value = getattr(r, group_by, None) or r.extra.get(group_by)
            if value:
                return f"{group_by}={value}"
        return r.group

    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[group_of(r)].append(i)
    strata: dict[str, list[str]] = defaultdict(list)
    for g, idx in groups.items():
        first = records[idx[0]]
        key = ""
        if stratify:
            key = str(getattr(first, stratify, None) or first.extra.get(stratify, "") or "")
        strata[key].append(g)
    rng = random.Random(seed)
    test_groups: set[str] = set()
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        k = min(max(1, round(len(gs) * test_size)), len(gs) - 1)
        test_groups.update(gs[:k])
    if not test_groups and len(groups) > 1:
        # Every stratum has a single group (e.g. one record per category):
        # stratifying cannot place any in test, so draw from all of them.
        gs = sorted(groups)
        rng.shuffle(gs)
        test_groups.update(gs[: min(max(1, round(len(gs) * test_size)), len(gs) - 1)])
    train = [r for r in records if group_of(r) not in test_groups]
    test = [r for r in records if group_of(r) in test_groups]
    return train, test
