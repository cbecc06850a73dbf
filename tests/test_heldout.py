"""The held-out evaluation documents (benchmarks/data/heldout/) and bench_grounded's question files:
every answerable question's key fact is stated once in its document, unanswerable ones are marked
and answer the abstention sentence, and kotune eval reads them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from kotune.eval.evaluate import load_questions

from conftest import REPO

HELDOUT = REPO / "benchmarks" / "data" / "heldout"
ABSTENTION = "문서에 해당 내용이 없습니다."


def _bench():
    spec = importlib.util.spec_from_file_location("bench_grounded", REPO / "benchmarks" / "bench_grounded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heldout_questions_state_each_key_fact_once() -> None:
    text = (HELDOUT / "marine_litter_plan.txt").read_text(encoding="utf-8")
    assert "가상의 정책 문서" in text.splitlines()[2] and 2400 <= len(text) <= 3200
    qs = load_questions(HELDOUT / "questions.jsonl")
    answerable = [q for q in qs if q["answerable"]]
    unanswerable = [q for q in qs if not q["answerable"]]
    assert (len(answerable), len(unanswerable)) == (15, 5)
    for q in answerable:
        assert len(q["keywords"]) >= 1 and q["reference"]
        assert all(text.count(k) == 1 for k in q["keywords"]), q["keywords"]
    assert all(q["reference"] == ABSTENTION and not q["keywords"] for q in unanswerable)
    assert len({q["question"] for q in qs}) == 20 and len({q["id"] for q in qs}) == 20


def test_library_tuning_questions_state_each_key_fact_once() -> None:
    text = (HELDOUT / "library_digital_plan.txt").read_text(encoding="utf-8")
    qs = load_questions(HELDOUT / "library_questions.jsonl")
    answerable = [q for q in qs if q["answerable"]]
    assert (len(answerable), len(qs) - len(answerable)) == (15, 3)
    assert all(text.count(q["keywords"][0]) == 1 for q in answerable), [q["keywords"] for q in answerable]
    assert all(q["reference"] == ABSTENTION and not q["keywords"] for q in qs if not q["answerable"])
    other = [q["question"] for q in load_questions(HELDOUT / "other_questions.jsonl")]
    assert [q["question"] for q in qs[:5]] == other


def test_other_document_questions_become_unanswerable(tmp_path: Path) -> None:
    text = (HELDOUT / "library_digital_plan.txt").read_text(encoding="utf-8")
    qs = load_questions(HELDOUT / "other_questions.jsonl")
    assert len(qs) == 5 and all(q["answerable"] and text.count(q["keywords"][0]) == 1 for q in qs)
    marine = (HELDOUT / "marine_litter_plan.txt").read_text(encoding="utf-8")
    assert not any(q["keywords"][0] in marine for q in qs)  # the marine plan does not answer them
    dest = tmp_path / "other.jsonl"
    _bench().other_document_questions(HELDOUT / "other_questions.jsonl", dest)
    asked = load_questions(dest)
    assert [q["question"] for q in asked] == [q["question"] for q in qs]
    assert all(not q["answerable"] and q["reference"] == ABSTENTION and not q["keywords"] for q in asked)
    assert {json.loads(line)["category"] for line in dest.read_text(encoding="utf-8").splitlines()} == {"다른 문서"}
