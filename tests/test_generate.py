"""kotune generate: the rule teacher on the bundled sample, determinism, and the
crash-safe journal behind --resume."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import leftover_temp_files, read_jsonl
from kotune.data.generate import generate_file, journal_path, read_journal
from kotune.data.rule_teacher import RuleTeacher
from kotune.data.teacher import Teacher
from kotune.errors import KotuneError
from kotune.korean import josa
from kotune.records import Record, load_chunks

BULLET = re.compile(r"^(?:[○●◦▪■□◆◇※•·\-–*]|\d+\)|[①-⑳])\s*")


def _plain(text: str) -> str:
    """Chunk or answer text without leading bullet markers, whitespace collapsed."""
    lines = (BULLET.sub("", line.strip()) for line in text.split("\n"))
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


@pytest.fixture(scope="module")
def chunks(sample_chunks: Path) -> list[dict]:
    return read_jsonl(sample_chunks)


@pytest.fixture(scope="module")
def records(sample_qa: Path) -> list[dict]:
    return read_jsonl(sample_qa)


# ------------------------------------------------------------------ rule teacher on the sample
def test_rule_teacher_makes_at_least_50_records_from_the_sample(records: list[dict]) -> None:
    assert len(records) >= 50
    # Questions, or requests ("…의 규모를 알려 주세요.").
    assert all(r["instruction"].endswith(("?", "요.")) for r in records)
    # A sentence in two chunks (prepare's overlap) gives its records once.
    assert len({r["id"] for r in records}) == len(records)


def test_every_record_names_an_existing_chunk_and_its_source(records: list[dict], chunks: list[dict]) -> None:
    by_id = {c["chunk_id"]: c for c in chunks}
    for r in records:
        assert r["chunk_id"] in by_id, r
        assert r["source"] == by_id[r["chunk_id"]]["metadata"]["source"] == "policy_plan.txt"
    # records come out in chunk order
    order = [list(by_id).index(r["chunk_id"]) for r in records]
    assert order == sorted(order)


def test_every_answer_is_grounded_in_its_own_chunk(records: list[dict], chunks: list[dict]) -> None:
    """Fact answers are the chunk's clause in polite form ("…추산됩니다.") or its sentence; the
    fact itself is verbatim chunk text, and the answer passes validation's grounding check."""
    from kotune.data.validate import grounding_score

    text = {c["chunk_id"]: _plain(c["text"]) for c in chunks}
    for r in records:
        assert all(k in text[r["chunk_id"]] for k in r["keywords"]), r
        assert grounding_score(r["output"], text[r["chunk_id"]]) >= 0.6, r["output"]


def test_categories_cover_definition_number_agency_and_law(records: list[dict]) -> None:
    cats = Counter(r["category"] for r in records)
    assert {"정의", "수치", "일정", "기관", "법령"} <= set(cats), cats
    by_cat = {c: [r for r in records if r["category"] == c] for c in cats}
    assert all("란 무엇인가요?" in r["instruction"] or "이란 무엇인가요?" in r["instruction"] for r in by_cat["정의"])
    assert all("법" in r["instruction"] and "「" in r["output"] for r in by_cat["법령"])
    assert all(re.search(r"\d+\s*(?:년|개월|주|일|시간)", r["output"]) for r in by_cat["일정"])
    assert all(re.search(r"\d", r["output"]) for r in by_cat["수치"])


def test_generate_twice_gives_identical_output(tmp_path: Path, cli, sample_chunks: Path, sample_qa: Path) -> None:
    out = tmp_path / "qa.jsonl"
    res = cli(["generate", sample_chunks, "-o", out])
    assert res.code == 0, res.err
    assert out.read_bytes() == sample_qa.read_bytes()


def test_per_chunk_caps_records_per_chunk(tmp_path: Path, cli, sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    res = cli(["generate", sample_chunks, "-o", out, "--per-chunk", "2"])
    assert res.code == 0, res.err
    per_chunk = Counter(r["chunk_id"] for r in read_jsonl(out))
    assert max(per_chunk.values()) == 2
    assert len(per_chunk) >= 10


def test_definition_and_law_rules_on_a_statute_like_chunk() -> None:
    chunk = {"chunk_id": "c1", "text": (
        "제2조(정의)\n"
        "이 법에서 \"전세사기피해주택\"이란 임차인이 보증금을 돌려받지 못한 주택을 말한다.\n"
        "국토교통부는 「전세사기피해자 지원 및 주거안정에 관한 특별법」에 따라 피해자 결정 업무를 총괄한다."
    ), "metadata": {"source": "law.txt", "breadcrumbs": "제2조(정의)"}}

    recs = RuleTeacher().generate(chunk, 8)

    cats = {r.category for r in recs}
    assert {"법령", "기관"} <= cats, cats
    law = [r for r in recs if r.category == "법령"]
    assert any(r.instruction.startswith("국토교통부는 어떤 법률에 따라") for r in law), [r.instruction for r in law]
    agency = [r for r in recs if r.category == "기관"]
    assert any(r.instruction.startswith("어느 기관이") and "국토교통부" in r.output for r in agency)
    assert all(r.chunk_id == "c1" and r.source == "law.txt" for r in recs)


def test_a_chunk_without_facts_gets_the_sentence_rules() -> None:
    """No amount, date, law or organisation: the heading question still makes a record."""
    chunk = {"chunk_id": "c2", "text": (
        "1. 추진 방향\n"
        "지역 주민이 일상에서 체감할 수 있는 생활 밀착형 서비스를 우선 발굴한다.\n"
        "현장의 의견을 정기적으로 수렴하여 제도 개선에 반영한다."
    ), "metadata": {"source": "plan.txt", "breadcrumbs": "1. 추진 방향"}}
    recs = RuleTeacher().generate(chunk, 8)
    assert [r.category for r in recs] == ["개요"]
    assert recs[0].instruction == "추진 방향과 관련된 주요 내용은 무엇인가요?"


@pytest.mark.parametrize("word,pair,expected", [
    ("계획", "은/는", "계획은"), ("센터", "은/는", "센터는"), ("위원회", "과/와", "위원회와"),
    ("예산", "이란/란", "예산이란"), ("2030", "과/와", "2030과"), ("2022", "과/와", "2022와"),
])
def test_josa_follows_the_final_consonant(word: str, pair: str, expected: str) -> None:
    assert josa(word, pair) == expected


# ------------------------------------------------------------------ journal and --resume
def _journal_lines_for(reference: list[dict], chunk_ids: list[str]) -> list[str]:
    lines = []
    for cid in chunk_ids:
        recs = [r for r in reference if r["chunk_id"] == cid]
        lines.append(json.dumps({"chunk_id": cid, "records": recs}, ensure_ascii=False))
    return lines


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, cli, sample_chunks: Path, sample_qa: Path) -> None:
    chunk_ids = [c["chunk_id"] for c in read_jsonl(sample_chunks)]
    reference = read_jsonl(sample_qa)
    k = 5
    out = tmp_path / "qa.jsonl"
    finished = _journal_lines_for(reference, chunk_ids[:k])
    torn = _journal_lines_for(reference, [chunk_ids[k]])[0][:37]  # crash in the middle of writing chunk k
    journal_path(out).write_text("\n".join(finished) + "\n" + torn, encoding="utf-8")

    res = cli(["generate", sample_chunks, "-o", out, "--resume"])

    assert res.code == 0, res.err
    assert out.read_bytes() == sample_qa.read_bytes()
    got = read_jsonl(out)
    assert Counter(r["id"] for r in got) == Counter(r["id"] for r in reference)  # each record exactly once
    assert [cid for cid in chunk_ids if cid in {r["chunk_id"] for r in got}] == \
           [cid for cid in chunk_ids if cid in {r["chunk_id"] for r in reference}]
    assert not journal_path(out).exists()
    assert leftover_temp_files(tmp_path) == []


class _Counting(Teacher):
    """The rule teacher, recording which chunks it was asked for; can crash on one."""

    name = "counting"
    default_per_chunk = RuleTeacher.default_per_chunk

    def __init__(self, crash_on: str | None = None) -> None:
        self.inner = RuleTeacher()
        self.calls: list[str] = []
        self.crash_on = crash_on

    def generate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        if chunk["chunk_id"] == self.crash_on:
            raise RuntimeError("simulated crash")
        self.calls.append(chunk["chunk_id"])
        return self.inner.generate(chunk, n)


def test_resume_only_generates_unfinished_chunks(tmp_path: Path, sample_chunks: Path, sample_qa: Path) -> None:
    chunks = load_chunks(sample_chunks)
    ids = [c["chunk_id"] for c in chunks]
    out = tmp_path / "qa.jsonl"

    crashing = _Counting(crash_on=ids[6])
    with pytest.raises(RuntimeError):
        generate_file(chunks, crashing, out)
    assert crashing.calls == ids[:6]
    assert list(read_journal(journal_path(out))) == ids[:6]
    assert not out.exists()

    resumed = _Counting()
    records = generate_file(chunks, resumed, out, resume=True)

    assert resumed.calls == ids[6:]
    assert out.read_bytes() == sample_qa.read_bytes()
    assert len(records) == len(read_jsonl(sample_qa))
    assert not journal_path(out).exists()


def test_a_torn_journal_line_does_not_swallow_the_next_entry(tmp_path: Path, sample_chunks: Path, sample_qa: Path) -> None:
    """Crash, resume, crash again: every chunk finished by either run stays journaled."""
    chunks = load_chunks(sample_chunks)
    ids = [c["chunk_id"] for c in chunks]
    reference = read_jsonl(sample_qa)
    out = tmp_path / "qa.jsonl"
    torn = _journal_lines_for(reference, [ids[3]])[0][:25]
    journal_path(out).write_text("\n".join(_journal_lines_for(reference, ids[:3])) + "\n" + torn, encoding="utf-8")

    with pytest.raises(RuntimeError):
        generate_file(chunks, _Counting(crash_on=ids[6]), out, resume=True)

    assert list(read_journal(journal_path(out))) == ids[:6]
    third = _Counting()
    generate_file(chunks, third, out, resume=True)
    assert third.calls == ids[6:]
    assert out.read_bytes() == sample_qa.read_bytes()


def test_leftover_journal_without_resume_is_an_error(tmp_path: Path, cli, sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    journal = journal_path(out)
    journal.write_text('{"chunk_id": "x", "records": []}\n', encoding="utf-8")

    res = cli(["generate", sample_chunks, "-o", out])

    assert res.code == 2
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error:")
    assert "--resume" in res.err_lines[0] and "qa.jsonl" in res.err_lines[0]
    assert not out.exists()
    assert journal.read_text(encoding="utf-8") == '{"chunk_id": "x", "records": []}\n'  # left for --resume


def test_overwrite_discards_a_leftover_journal(tmp_path: Path, cli, sample_chunks: Path, sample_qa: Path) -> None:
    out = tmp_path / "qa.jsonl"
    journal_path(out).write_text('{"chunk_id": "stale", "records": [{"instruction": "옛 질문?", "output": "옛 답."}]}\n',
                                 encoding="utf-8")

    res = cli(["generate", sample_chunks, "-o", out, "--overwrite"])

    assert res.code == 0, res.err
    assert out.read_bytes() == sample_qa.read_bytes()
    assert not journal_path(out).exists()


def test_journal_is_removed_after_success(tmp_path: Path, sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    generate_file(load_chunks(sample_chunks)[:2], RuleTeacher(), out)
    assert out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl"]


def test_chunks_file_must_hold_chunks(tmp_path: Path) -> None:
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"chunk_id": "a", "text": "정상 청크입니다."}\n{"instruction": "질문?", "output": "답."}\n', encoding="utf-8")
    with pytest.raises(KotuneError, match=r"qa\.jsonl line 2: not a chunk"):
        load_chunks(bad)


def test_unknown_teacher_is_an_error(tmp_path: Path, cli, sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    res = cli(["generate", sample_chunks, "-o", out, "--teacher", "gpt-9"])
    assert res.code == 2 and "unknown teacher" in res.err_lines[0]
    assert not out.exists() and not journal_path(out).exists()


def test_input_context_stores_the_chunk_as_retrieval_formats_it(tmp_path: Path, cli, sample_chunks: Path,
                                                                sample_qa: Path) -> None:
    from kotune.model.retrieval import format_context

    out = tmp_path / "rag.jsonl"
    res = cli(["generate", sample_chunks, "-o", out, "--input-context"])
    assert res.code == 0, res.err
    chunks = {c["chunk_id"]: c for c in read_jsonl(sample_chunks)}
    rows, plain = read_jsonl(out), read_jsonl(sample_qa)
    assert [(r["instruction"], r["output"]) for r in rows] == [(r["instruction"], r["output"]) for r in plain]
    assert all(r["input"] == format_context([(chunks[r["chunk_id"]], 0.0)]) for r in rows)
    assert all(r["input"].startswith("[문서 1]") for r in rows)


def test_every_kiwi_call_holds_the_lock_even_from_teacher_threads(monkeypatch):
    """Teacher workers validate answers in threads; rule questions (noun runs) used to call
    Kiwi without the lock that every other caller takes."""
    import threading

    import kiwipiepy

    from kotune import korean
    from kotune.data.rule_teacher import RuleTeacher

    calls, unlocked, failures = [], [], []
    real_kiwi = kiwipiepy.Kiwi

    class CheckingKiwi:
        def __init__(self, *a, **k):
            self.real = real_kiwi()

        def _check(self):
            lock = getattr(korean, "KIWI_LOCK", None) or getattr(korean, "_LOCK", None)  # (its name before)
            calls.append(1)
            if lock is None or not lock.locked():
                unlocked.append(threading.current_thread().name)

        def tokenize(self, *a, **k):
            self._check()
            return self.real.tokenize(*a, **k)

        def split_into_sents(self, *a, **k):
            self._check()
            return self.real.split_into_sents(*a, **k)

        def join(self, *a, **k):
            self._check()
            return self.real.join(*a, **k)

    def work(chunk):
        try:
            RuleTeacher().generate(chunk, 4)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(repr(e))

    korean.kiwi.cache_clear()
    monkeypatch.setattr(kiwipiepy, "Kiwi", CheckingKiwi)
    try:
        chunk = {"chunk_id": "c1", "text": "국가 인공지능 컴퓨팅 센터는 2030년까지 600페타플롭스 규모의 시스템을 구축한다. "
                                            "과학기술정보통신부는 매년 시행계획을 수립한다.", "metadata": {}}
        threads = [threading.Thread(target=work, args=(chunk,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        korean.kiwi.cache_clear()
    assert not failures and calls
    assert not unlocked
