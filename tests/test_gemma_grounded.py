"""A grounded (RAFT-style) run on the real model: builtin:gemma-3-270m tuned on retrieved
passages of part of the policy plan, with the grounded recipe's settings (two passages per record
instead of three, to keep the suite's time), answers a question
about its own document from the passages it retrieves (its recorded chunks) and says the
abstention sentence for a question about another document.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, call_cli, read_jsonl
from kotune.model.retrieval import abstains
from kotune.model.templates import ABSTENTION

pytestmark = pytest.mark.slow

GEMMA = "builtin:gemma-3-270m"
N_CHUNKS = 28   # the plan's first ~8,000 characters: ~100 grounded records, ~50 steps of 2
K = 2           # passages per record (the recipe's 3 costs ~40% more tokens; the behaviour tested is the same)
OWN = "국내 초고성능컴퓨팅 전문인력은 몇 명 정도인가요?"
OWN_FACT = "1,200명"
OTHER = "2027년에 디지털 전환 지원을 받는 도서관은 몇 곳이에요?"   # benchmarks/data/heldout/other_questions.jsonl


@pytest.fixture(scope="module")
def grounded_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gemma-grounded")
    every, chunks, qa, clean = (folder / n for n in ("every.jsonl", "chunks.jsonl", "qa.jsonl", "clean.jsonl"))
    steps = [
        ["prepare", REPO / "recipes" / "data" / "policy" / "policy_plan.txt", "-o", every, "--chunk-chars", "300",
         "--overlap", "0"],
        None,
        ["generate", chunks, "-o", qa, "--grounded", "--grounded-k", str(K), "--per-chunk", "4", "--phrasings", "2"],
        ["validate", qa, "--chunks", chunks, "-o", clean],
        ["train", "--base-model", GEMMA, "--data", clean, "--output-dir", folder / "run", "--template", "rag",
         "--chunks", chunks, "--epochs", "1", "--batch-size", "2", "--learning-rate", "3e-4", "--max-length", "1024",
         "--report-to", "none"],
    ]
    for args in steps:
        if args is None:
            chunks.write_text("".join(every.read_text(encoding="utf-8").splitlines(keepends=True)[:N_CHUNKS]),
                              encoding="utf-8")
            continue
        res = call_cli(args)
        assert res.code == 0, res.err
    assert OWN_FACT in chunks.read_text(encoding="utf-8")
    return folder / "run"


def test_a_grounded_gemma_run_answers_its_document_and_abstains_on_another(grounded_run, tmp_path):
    info = json.loads((grounded_run / "kotune.json").read_text(encoding="utf-8"))
    assert info["retrieval"]["top_k"] == K and info["abstention"] == ABSTENTION
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in [
        {"id": "own", "instruction": OWN, "output": f"국내 초고성능컴퓨팅 전문인력은 약 {OWN_FACT}으로 추산됩니다.",
         "keywords": [OWN_FACT]},
        {"id": "other", "instruction": OTHER, "output": ABSTENTION, "answerable": False},
    ]), encoding="utf-8")
    out = tmp_path / "eval"
    # No --context: the run retrieves from the chunks it recorded.
    res = call_cli(["eval", "--questions", questions, "--models", f"grounded={grounded_run}", "-o", out,
                    "--max-new-tokens", "80"])
    assert res.code == 0, res.err
    answers = {r["id"]: r["answers"]["grounded"]["text"] for r in read_jsonl(out / "responses.jsonl")}
    assert OWN_FACT in answers["own"] and "[문서" in answers["own"], answers
    assert abstains(answers["other"], ABSTENTION), answers
