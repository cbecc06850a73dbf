"""kotune generate --grounded: RAFT-style records on the bundled sample (rule teacher, no model).

Every answerable record is asked with k retrieved passages, its own chunk among them at the
position its answer cites; a share is unanswerable (no passage from its chunk or holding its
answer, the abstention sentence as answer); reruns are identical; the prompt training sees is
the prompt eval builds; validate and split keep the records and their fields."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import call_cli, read_jsonl
from helpers.cli import one_error_line
from kotune.data.grounded import Grounder
from kotune.data.validate import validate_records
from kotune.korean import split_sentences
from kotune.model.retrieval import Retrieval, Retriever, format_context
from kotune.model.templates import ABSTENTION, get_template
from kotune.options import GenerateOptions
from kotune.records import Record, read_records, write_records

K = GenerateOptions.default("grounded_k")
SHARE = GenerateOptions.default("unanswerable_share")
HEAD = re.compile(r"^\[문서 (\d+)\]", re.M)
CITED = re.compile(r" \[문서 (\d+)\]$")


@pytest.fixture(scope="module")
def chunks(sample_chunks: Path) -> list[dict]:
    return read_jsonl(sample_chunks)


@pytest.fixture(scope="module")
def by_id(chunks: list[dict]) -> dict[str, dict]:
    return {c["chunk_id"]: c for c in chunks}


@pytest.fixture(scope="module")
def grounded(sample_chunks: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grounded") / "qa.jsonl"
    res = call_cli(["generate", sample_chunks, "-o", out, "--grounded"])
    assert res.code == 0, res.err
    return out


@pytest.fixture(scope="module")
def records(grounded: Path) -> list[dict]:
    return read_jsonl(grounded)


@pytest.fixture(scope="module")
def plain(sample_qa: Path) -> dict[str, dict]:
    """The same teacher's records without --grounded, by id."""
    return {r["id"]: r for r in read_jsonl(sample_qa)}


def _passage_bodies(context: str) -> list[tuple[int, str]]:
    """``(n, text)`` of each ``[문서 n] (where)`` block of a context."""
    heads = list(HEAD.finditer(context))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(context)
        block = context[m.start():end].strip()
        out.append((int(m.group(1)), block.split("\n", 1)[1] if "\n" in block else ""))
    return out


# ------------------------------------------------------------------ the records
def test_the_same_questions_in_the_same_order_with_ids_kept(records, plain) -> None:
    assert [r["id"] for r in records] == list(plain)
    for r in records:
        p = plain[r["id"]]
        assert (r["instruction"], r["chunk_id"], r["category"], r["source"]) == \
            (p["instruction"], p["chunk_id"], p["category"], p["source"])
        assert isinstance(r["answerable"], bool) and isinstance(r["passages"], list)


def test_every_answerable_record_has_k_passages_its_chunk_at_the_cited_position(records, by_id, plain) -> None:
    answerable = [r for r in records if r["answerable"]]
    assert len(answerable) >= 50
    for r in answerable:
        blocks = _passage_bodies(r["input"])
        assert [n for n, _ in blocks] == list(range(1, K + 1)), r["input"][:200]
        assert len(r["passages"]) == K == len(set(r["passages"]))
        assert r["input"] == format_context([(by_id[c], 0.0) for c in r["passages"]])
        m = CITED.search(r["output"])
        assert m, r["output"]
        n = int(m.group(1))
        assert r["passages"][n - 1] == r["chunk_id"]
        assert blocks[n - 1][1] == by_id[r["chunk_id"]]["text"].strip()
        assert r["passages"].count(r["chunk_id"]) == 1
        # the answer is the teacher's, with the citation at its very end and nothing else
        assert r["output"] == plain[r["id"]]["output"] + f" [문서 {n}]"


def test_the_source_is_not_always_first(records) -> None:
    positions = Counter(int(CITED.search(r["output"]).group(1)) for r in records if r["answerable"])
    assert set(positions) == set(range(1, K + 1)), positions
    total = sum(positions.values())
    assert all(n / total <= 0.5 for n in positions.values()), positions


def test_distractors_are_the_best_ranked_other_chunks(records, chunks) -> None:
    retriever = Retriever(chunks)
    for r in (r for r in records if r["answerable"]):
        ranked = [c["chunk_id"] for c, _ in retriever.search(r["instruction"], k=K)]
        others = [c for c in r["passages"] if c != r["chunk_id"]]
        expected = [c for c in ranked if c != r["chunk_id"]][:K - 1]
        assert others[:len(expected)] == expected, (r["instruction"], ranked, r["passages"])


def test_about_the_share_is_unanswerable_with_the_abstention_and_without_its_chunk(records, by_id, plain) -> None:
    unanswerable = [r for r in records if not r["answerable"]]
    assert abs(len(unanswerable) / len(records) - SHARE) <= 0.1, len(unanswerable)
    for r in unanswerable:
        assert r["output"] == ABSTENTION
        assert "[문서" not in r["output"] and "keywords" not in r
        assert r["chunk_id"] not in r["passages"] and len(r["passages"]) == K
        assert [n for n, _ in _passage_bodies(r["input"])] == list(range(1, len(r["passages"]) + 1))
        assert r["input"] == format_context([(by_id[c], 0.0) for c in r["passages"]])
        assert by_id[r["chunk_id"]]["text"].strip() not in r["input"]
        # no passage holds the withheld answer (prepare's overlap repeats sentences in the next chunk)
        for sentence in split_sentences(plain[r["id"]]["output"]):
            assert sentence not in r["input"], (r["instruction"], sentence)


def test_the_sample_has_answers_repeated_in_another_chunk_and_none_is_a_false_unanswerable(records, chunks, plain) -> None:
    """The check is not vacuous: some answers appear verbatim in a second chunk (the overlap)."""
    repeated = [p for p in plain.values()
                if any(s in c["text"] for s in split_sentences(p["output"]) for c in chunks if c["chunk_id"] != p["chunk_id"])]
    assert repeated
    grounder = Grounder(chunks)
    for p in repeated:
        rec = Record(instruction=p["instruction"], output=p["output"], chunk_id=p["chunk_id"], id=p["id"])
        passages = grounder.unanswerable_passages(rec, grounder.ranking(rec.instruction))
        assert all(not any(s in by["text"] for s in split_sentences(p["output"]))
                   for by in (c for c in chunks if c["chunk_id"] in passages))


def test_reruns_are_byte_identical(sample_chunks, grounded, tmp_path) -> None:
    again = tmp_path / "qa.jsonl"
    assert call_cli(["generate", sample_chunks, "-o", again, "--grounded"]).code == 0
    assert again.read_bytes() == grounded.read_bytes()


def test_the_options_change_k_share_and_sentence(sample_chunks, tmp_path) -> None:
    out = tmp_path / "qa.jsonl"
    sentence = "주어진 문서에서는 찾을 수 없습니다."
    res = call_cli(["generate", sample_chunks, "-o", out, "--grounded", "--grounded-k", "2",
                    "--unanswerable-share", "0.5", "--abstention", sentence])
    assert res.code == 0, res.err
    rows = read_jsonl(out)
    assert all(len(r["passages"]) == 2 for r in rows)
    unanswerable = [r for r in rows if not r["answerable"]]
    assert abs(len(unanswerable) / len(rows) - 0.5) <= 0.1
    assert {r["output"] for r in unanswerable} == {sentence}
    assert call_cli(["generate", sample_chunks, "-o", out, "--grounded", "--unanswerable-share", "0",
                     "--overwrite"]).code == 0
    assert all(r["answerable"] for r in read_jsonl(out))


# ------------------------------------------------------------------ near-duplicate chunks
def _chunk(cid: str, text: str, crumbs: str = "") -> dict:
    return {"chunk_id": cid, "text": text, "metadata": {"source": "t.txt", "breadcrumbs": crumbs}}


FACT = "국가센터의 총사업비는 4,500억 원이다."


def test_a_chunk_that_repeats_the_answer_is_never_an_unanswerable_distractor() -> None:
    chunks = [_chunk("a", f"{FACT}\n국가센터는 대전에 있다."), _chunk("b", f"국가센터 사업 개요.\n{FACT}"),
              _chunk("c", "국가센터의 인력은 300명이다.\n국가센터는 교육을 맡는다.")]
    rec = Record(instruction="국가센터의 총사업비는 얼마인가요?", output=FACT, chunk_id="a", id="r1")
    grounder = Grounder(chunks, k=2, unanswerable_share=0.9)
    assert grounder.holds(FACT, "b") and not grounder.holds(FACT, "c")
    [out] = grounder.apply([rec])
    assert out.extra["answerable"] is False and out.extra["passages"] == ["c"] and out.output == ABSTENTION
    # with only a near-duplicate left, the record stays answerable
    [out] = Grounder(chunks[:2], k=2, unanswerable_share=0.9).apply([rec])
    assert out.extra["answerable"] is True and "a" in out.extra["passages"]
    assert out.output == FACT + f" [문서 {out.extra['passages'].index('a') + 1}]"


def test_few_matching_chunks_are_topped_up_to_k() -> None:
    chunks = [_chunk("a", FACT), *(_chunk(f"x{i}", f"무관한 문장 {i}번입니다.") for i in range(4))]
    rec = Record(instruction="국가센터의 총사업비는 얼마인가요?", output=FACT, chunk_id="a", id="r1")
    [out] = Grounder(chunks, k=3, unanswerable_share=0.0).apply([rec])
    assert len(out.extra["passages"]) == 3 and "a" in out.extra["passages"]


# ------------------------------------------------------------------ training prompt = inference prompt
def test_the_training_prompt_is_the_prompt_eval_builds(records, sample_chunks, grounded) -> None:
    from kotune.eval.evaluate import load_questions

    rag = get_template("rag")
    retrieval = Retrieval(sample_chunks, K)
    top_ranked = 0
    for r in (r for r in records if r["answerable"]):
        retrieved = retrieval.passages(r["instruction"])
        if retrieved.chunk_ids == r["passages"]:  # the source sits where BM25 ranked it
            top_ranked += 1
            assert r["input"] == retrieved.text
            assert rag.prompt(r["instruction"], r["input"]) == rag.prompt(r["instruction"], "", context=retrieved.text)
    assert top_ranked >= 5
    # kotune eval --questions (a grounded test split) without --context asks with the record's own passages
    questions = load_questions(grounded)
    contexts = Retrieval().for_questions(questions)
    for q, ctx, r in zip(questions, contexts, records):
        assert q["answerable"] is r["answerable"]
        assert rag.prompt(q["question"], q["input"], context=ctx.text or None) == rag.prompt(r["instruction"], r["input"])
    # ... and with --context CHUNKS every question is retrieved again, from the question alone (as in use)
    live = retrieval.for_questions(questions)
    assert all(ctx.chunk_ids == retrieval.passages(q["question"]).chunk_ids for q, ctx in zip(questions, live))


# ------------------------------------------------------------------ validate, split, the record file
def test_validate_keeps_abstention_records_and_cited_answers(grounded, sample_chunks, tmp_path) -> None:
    clean, dropped = tmp_path / "clean.jsonl", tmp_path / "dropped.jsonl"
    res = call_cli(["validate", grounded, "--chunks", sample_chunks, "-o", clean, "--dropped", dropped])
    assert res.code == 0, res.err
    before, kept = read_jsonl(grounded), read_jsonl(clean)
    assert sum(not r["answerable"] for r in kept) == sum(not r["answerable"] for r in before)
    assert not any(r["drop_reason"] in ("evasive", "incomplete", "ungrounded", "too_short")
                   for r in (read_jsonl(dropped) if dropped.exists() else []))
    by_id = {r["id"]: r for r in before}
    for r in kept:  # kept as generated (validate adds the grounding score of answers it checked)
        assert {k: v for k, v in r.items() if k != "grounding"} == by_id[r["id"]]
        assert ("grounding" in r) is r["answerable"]


def _rec(output: str, **extra) -> Record:
    return Record(instruction="국가센터의 총사업비는 얼마인가요?", output=output, chunk_id="a", extra=extra)


def test_validate_exempts_only_marked_abstentions() -> None:
    chunks = {"a": FACT}
    cases = {
        "marked abstention": (_rec(ABSTENTION, answerable=False), None),
        "own sentence, marked": (_rec("모릅니다.", answerable=False), None),
        "abstention without the mark": (_rec(ABSTENTION), "evasive"),
        "marked, but more than an abstention": (_rec("해당 내용이 없습니다. 다만 국가센터는 4,500억 원을 씁니다.", answerable=False),
                                              "evasive"),
        "cited answer": (_rec(FACT + " [문서 2]", answerable=True), None),
        "cited answer not in its chunk": (_rec("지방 정부는 사업을 모두 중단하기로 결정하였다. [문서 1]", answerable=True), "ungrounded"),
    }
    for name, (rec, reason) in cases.items():
        result = validate_records([rec], chunks)
        got = result.dropped[0][1] if result.dropped else None
        assert got == reason, name


def test_validate_keeps_abstentions_to_different_questions() -> None:
    recs = [Record(instruction=f"{w} 자원의 비율은 어느 정도인가요?", output=ABSTENTION, chunk_id="a", id=w,
                   extra={"answerable": False}) for w in ("가속기", "전략", "계산")]
    recs.append(Record(instruction="가속기 자원의 비율은 어느 정도인가요?", output=ABSTENTION, chunk_id="a", id="again",
                       extra={"answerable": False}))
    result = validate_records(recs, {"a": FACT})
    assert [r.id for r in result.kept] == ["가속기", "전략", "계산"]
    assert [(r.id, why) for r, why in result.dropped] == [("again", "duplicate")]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_answerable_and_passages_survive_the_record_files(tmp_path, suffix) -> None:
    recs = [_rec(ABSTENTION, answerable=False, passages=["b", "c"]), _rec(FACT + " [문서 1]", answerable=True, passages=["a"])]
    path = tmp_path / f"qa{suffix}"
    write_records(path, recs)
    back = read_records(path)
    assert [(r.answerable, r.extra["passages"]) for r in back] == [(False, ["b", "c"]), (True, ["a"])]
    assert [r.extra["answerable"] for r in back] == [False, True]


def test_files_without_the_fields_are_unchanged(tmp_path) -> None:
    path = tmp_path / "qa.csv"
    write_records(path, [_rec(FACT)])
    assert path.read_text(encoding="utf-8").splitlines()[0] == "id,instruction,input,output,category,difficulty,source,chunk_id"
    assert read_records(path)[0].answerable is True


def test_split_keeps_the_fields(grounded, tmp_path) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    assert call_cli(["split", grounded, "--train", train, "--test", test]).code == 0
    before = {r["id"]: r for r in read_jsonl(grounded)}
    after = read_jsonl(train) + read_jsonl(test)
    assert len(after) == len(before)
    for r in after:
        assert (r["answerable"], r["passages"], r["input"], r["output"]) == \
            tuple(before[r["id"]][k] for k in ("answerable", "passages", "input", "output"))


# ------------------------------------------------------------------ bad input
def test_one_chunk_is_refused(tmp_path) -> None:
    one = tmp_path / "chunks.jsonl"
    one.write_text(json.dumps(_chunk("a", FACT), ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "qa.jsonl"
    one_error_line(call_cli(["generate", one, "-o", out, "--grounded"]),
                   f"error: {one}: --grounded needs at least 2 chunks (got 1)")
    assert not out.exists() and list(tmp_path.iterdir()) == [one]


@pytest.mark.parametrize("args,needle", [
    (["--input-context"], "--grounded and --input-context"),
    (["--grounded-k", "0"], "--grounded-k must be >= 1, got 0"),
    (["--unanswerable-share", "0.95"], "--unanswerable-share must be in [0, 0.9], got 0.95"),
    (["--unanswerable-share", "-0.1"], "--unanswerable-share must be in [0, 0.9], got -0.1"),
    (["--abstention", " . "], "--abstention"),
])
def test_bad_options_are_one_line_and_write_nothing(sample_chunks, tmp_path, args, needle) -> None:
    out = tmp_path / "qa.jsonl"
    one_error_line(call_cli(["generate", sample_chunks, "-o", out, "--grounded", *args]), needle)
    assert list(tmp_path.iterdir()) == []
