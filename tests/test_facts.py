"""Fact-level questions (kotune.data.facts, the rule teacher): which facts are found, how
their questions read, and that a fact-dense text yields enough records in ≥ 3 phrasings."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import read_jsonl
from kotune.data.facts import find_facts, value_keyword
from kotune.data.rule_teacher import RuleTeacher
from kotune.data.validate import grounding_score

TITLE = "제4차 국가초고성능컴퓨팅 육성 기본계획(2026~2030)"


def _facts(sentence: str) -> dict[str, list[str]]:
    return {value_keyword(f): f.questions for f in find_facts(sentence, title=TITLE)}


def test_a_count_is_asked_three_ways_with_the_right_question_word() -> None:
    facts = _facts("국내 초고성능컴퓨팅 전문인력은 약 1,200명으로 추산되며, "
                   "병렬 프로그래밍과 시스템 운영을 담당할 핵심 인력은 매년 300명 이상 부족한 실정이다.")
    assert facts["1,200명"] == [
        "국내 초고성능컴퓨팅 전문인력은 몇 명으로 추산되나요?",
        "국내 초고성능컴퓨팅 전문인력 규모는 얼마나 되나요?",
        "국내 초고성능컴퓨팅 전문인력 규모를 알려 주세요.",
    ]
    # The second clause has its own subject; the shortage is not "how many the staff are".
    assert facts["300명"][0] == "병렬 프로그래밍과 시스템 운영을 담당할 핵심 인력은 몇 명 이상 부족한 실정인가요?"
    assert not any("얼마나 되나요" in q for q in facts["300명"])


def test_the_copula_joins_the_question_word_and_ratios_ask_for_percent() -> None:
    facts = _facts("세계 상위 500위 목록에 이름을 올린 국내 시스템은 12대이며, "
                   "전 세계 총 성능 대비 국내 점유율은 약 1.5%에 머물러 있다.")
    assert facts["12대"][0] == "세계 상위 500위 목록에 이름을 올린 국내 시스템은 몇 대인가요?"
    assert facts["1.5%"][0] == "전 세계 총 성능 대비 국내 점유율은 몇 퍼센트에 머물러 있나요?"
    assert "500위" not in facts   # a rank inside the subject is not a fact asked for


def test_a_pointing_subject_becomes_the_title_and_periods_ask_when() -> None:
    facts = _facts("이 계획은 국가초고성능컴퓨팅위원회의 심의·의결을 거쳐 확정되었으며, 2026년부터 2030년까지 5년간 적용된다.")
    assert facts["2026년부터 2030년까지"][0] == "제4차 국가초고성능컴퓨팅 육성 기본계획은 언제부터 언제까지 5년간 적용되나요?"


def test_laws_are_asked_with_a_subject_particle_and_tense_follows_the_sentence() -> None:
    law = _facts("「지능정보화 기본법」은 인공지능 등 지능정보기술의 개발과 활용 기반 조성을 규정하고 있다.")
    assert law["지능정보화 기본법"][0] == "어떤 법률이 인공지능 등 지능정보기술의 개발과 활용 기반 조성을 규정하고 있나요?"
    past = _facts("제3차 기본계획(2021~2025)은 전문센터 10곳을 지정하고 국산 초고성능컴퓨터 개발 사업에 착수하여 기술 자립의 기반을 다졌다.")
    assert past["10곳"][:2] == ["제3차 기본계획(2021~2025)은 전문센터 몇 곳을 지정했나요?",
                               "제3차 기본계획(2021~2025)이 지정한 전문센터는 몇 곳인가요?"]


def test_years_are_not_durations_and_money_asks_how_much() -> None:
    facts = _facts("2025년 기준 국내 공공 부문이 보유한 초고성능컴퓨터의 총 계산 성능은 약 150페타플롭스 수준으로 추산된다.")
    assert list(facts) == ["150페타플롭스"]
    money = _facts("정부는 5년간 총사업비 1조 2,000억 원을 투입한다.")
    assert money["1조 2,000억 원"][0] == "정부는 5년간 총사업비 얼마를 투입하나요?"


def test_an_organisation_and_its_role() -> None:
    facts = _facts("과학기술정보통신부는 기본계획 수립과 부처 간 예산 조정을 총괄한다.")
    assert facts["과학기술정보통신부"] == [
        "어느 기관이 기본계획 수립과 부처 간 예산 조정을 총괄하나요?",
        "기본계획 수립과 부처 간 예산 조정을 총괄하는 기관은 어디입니까?",
        "과학기술정보통신부는 어떤 역할을 맡고 있나요?",
    ]


def test_books_dates_and_a_duration_that_is_the_value() -> None:
    facts = _facts("무인 대출기 한 대에는 책을 최대 500권까지 넣을 수 있으며, 신간을 중심으로 채운다.")
    assert facts["500권"][0] == "무인 대출기 한 대에는 책을 몇 권까지 넣을 수 있나요?"   # 있다 asks like a verb
    assert _facts("지원 대상 도서관은 2027년 2월에 공모로 선정한다.")["2027년 2월"][0] == \
        "지원 대상 도서관은 언제 공모로 선정하나요?"
    loan = _facts("전자책의 대출 기간은 14일이며, 기간이 끝나면 자동으로 반납된다.")
    assert loan["14일"][:2] == ["전자책의 대출 기간은 며칠인가요?", "전자책의 대출 기간은 어떻게 되나요?"]
    assert "한국도서관협회" in _facts("한국도서관협회는 새로 배치되는 사서를 위한 직무 교육을 1년에 두 번 실시한다.")
    # A bare year frames the plan; it is not asked.
    assert "2027년" not in _facts("2027년에 도서관 210곳을 지원한다.")
    # Every kind becomes a record category.
    from kotune.data.facts import KINDS
    from kotune.data.rule_teacher import _FACT_CATEGORY

    assert set(_FACT_CATEGORY) == set(KINDS)
    chunk = {"chunk_id": "c", "text": "지원 대상 도서관은 2027년 2월에 공모로 선정한다.", "metadata": {}}
    assert {r.category for r in RuleTeacher().generate(chunk, 24) if "fact" in r.extra} == {"일정"}


def test_a_clause_without_any_subject_keeps_the_clauses_before_it() -> None:
    facts = _facts("고령층을 위하여 디지털 배움터를 도서관 안에 운영하고, 연간 4만 명에게 교육을 제공한다.")
    assert facts["4만 명"][0] == "고령층을 위하여 디지털 배움터를 도서관 안에 운영하고, 몇 명에게 교육을 제공하나요?"


@pytest.fixture(scope="module")
def policy_records(sample_chunks: Path) -> list:
    teacher = RuleTeacher()
    return [r for c in read_jsonl(sample_chunks) for r in teacher.generate(c, 24)], read_jsonl(sample_chunks)


def test_a_fact_dense_text_gives_five_records_per_400_characters_in_three_phrasings(policy_records) -> None:
    records, chunks = policy_records
    chars = sum(len(c["text"]) for c in chunks)
    facts = [r for r in records if "fact" in r.extra]
    assert len(facts) / chars * 400 >= 5
    phrasings = Counter(r.extra["fact"] for r in facts)
    assert min(phrasings.values()) >= 3, phrasings
    # Different questions, one answer each, grounded in the chunk, holding the fact.
    text = {c["chunk_id"]: c["text"] for c in chunks}
    for r in facts:
        assert r.extra["keywords"][0] in r.output and r.extra["keywords"][0] in text[r.chunk_id]
        assert grounding_score(r.output, text[r.chunk_id]) >= 0.6
    by_fact: dict[str, set[str]] = {}
    for r in facts:
        by_fact.setdefault(r.extra["fact"], set()).add(r.instruction)
    assert all(len(qs) >= 3 for qs in by_fact.values())


def test_validation_keeps_a_facts_phrasings(tmp_path: Path, cli, sample_chunks: Path) -> None:
    """The phrasings of one fact are near-duplicates by design: validate keeps them all."""
    qa, clean = tmp_path / "qa.jsonl", tmp_path / "clean.jsonl"
    assert cli(["generate", sample_chunks, "-o", qa]).code == 0
    assert cli(["validate", qa, "-o", clean, "--chunks", sample_chunks]).code == 0
    kept = read_jsonl(clean)
    per_fact = Counter(r["fact"] for r in kept if r.get("fact"))
    assert sum(1 for n in per_fact.values() if n >= 3) >= 0.8 * len(per_fact)
