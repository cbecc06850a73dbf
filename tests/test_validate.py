"""kotune.data.validate: each filter, grounding, dedup, report, determinism."""

from __future__ import annotations

import json

import pytest

from kotune.data.validate import (
    REASON_LABELS,
    REASONS,
    MinHashShape,
    ValidationResult,
    grounding_score,
    normalize_text,
    render_distribution_table,
    render_table,
    validate_records,
)
from kotune.errors import KotuneError
from kotune.options import ValidateOptions
from kotune.records import Record

CHUNKS = {
    "youth-rent-01": (
        "청년월세 한시 특별지원은 부모와 별도로 거주하는 만 19세부터 34세까지의 무주택 청년을 대상으로 한다. "
        "청년가구 소득이 기준 중위소득 60% 이하이고 원가구 소득이 중위소득 100% 이하인 경우 지원받을 수 있다. "
        "지원 금액은 실제 납부하는 임대료 범위에서 월 최대 20만원이며, 최장 12개월간 지급된다."
    ),
    "ins-terms-07": (
        "회사는 보험금 청구서류를 접수한 날부터 3영업일 이내에 보험금을 지급합니다. "
        "다만, 보험금 지급사유의 조사나 확인이 필요한 경우에는 접수 후 10영업일 이내에 지급합니다. "
        "계약자는 보험기간 중 언제든지 계약을 해지할 수 있으며, 이 경우 회사는 해지환급금을 지급합니다."
    ),
    "smb-digital-03": (
        "정부는 소상공인의 디지털 전환을 지원하기 위해 스마트상점 기술 보급 사업을 추진한다. "
        "선정된 점포에는 키오스크, 서빙로봇 등 스마트기술 도입 비용의 최대 70%를 500만원 한도로 지원한다."
    ),
}

RAG_CONTEXT = (
    "국민취업지원제도 Ⅰ유형 참여자는 구직촉진수당으로 월 50만원씩 최대 6개월간 받을 수 있다. "
    "부양가족이 있으면 1인당 월 10만원이 추가로 지급된다."
)


def R(rid, q, a, chunk="", cat="Fact", diff="중", inp="", file="a.jsonl"):
    return Record(instruction=q, output=a, input=inp, category=cat, difficulty=diff,
                  chunk_id=chunk, id=rid, extra={"_file": file})


def file_a() -> list[Record]:
    return [
        # kept: copied verbatim from its chunk
        R("a01", "청년월세 지원 금액은 얼마이며 몇 개월간 지급되나요?",
          "지원 금액은 실제 납부하는 임대료 범위에서 월 최대 20만원이며, 최장 12개월간 지급된다.",
          "youth-rent-01", "Fact", "하"),
        R("a02", "청년월세 한시 특별지원의 대상은 누구인가요?",
          "부모와 별도로 거주하는 만 19세부터 34세까지의 무주택 청년이 대상입니다.",
          "youth-rent-01", "Fact", "하"),
        R("a03", "보험금은 청구 후 언제 지급되나요?",
          "회사는 보험금 청구서류를 접수한 날부터 3영업일 이내에 보험금을 지급합니다.",
          "ins-terms-07", "Fact", "중"),
        R("a04", "보험기간 중에 계약을 해지하면 어떻게 되나요?",
          "계약자는 보험기간 중 언제든지 계약을 해지할 수 있으며, 이 경우 회사는 해지환급금을 지급합니다.",
          "ins-terms-07", "Scenario", "중"),
        R("a05", "스마트상점 기술 보급 사업의 지원 한도는 얼마인가요?",
          "스마트기술 도입 비용의 최대 70%를 500만원 한도로 지원합니다.",
          "smb-digital-03", "Fact", "상"),
        # ungrounded: invented facts (different nouns and numbers)
        R("a06", "청년월세 지원은 어디에서 신청하나요?",
          "신청은 매년 3월 주민센터 방문 접수로 진행되며 대학생은 학자금 대출 이력이 필요합니다.",
          "youth-rent-01", "Scenario", "중"),
        # evasive
        R("a07", "보험료 납입 유예 기간은 얼마인가요?",
          "해당 내용은 약관에 명시되어 있지 않습니다.",
          "ins-terms-07", "Fact", "중"),
        # incomplete (cut off)
        R("a08", "정부는 소상공인을 위해 무엇을 하고 있나요?",
          "정부는 소상공인의 디지털 전환을 위해 스마트상점 지원을 강화하고 있으며",
          "smb-digital-03", "Scenario", "하"),
        # too short
        R("a09", "보험 계약은 중도에 해지할 수 있나요?", "네.", "ins-terms-07", "Easy", "하"),
        # missing fields
        R("a10", "", "계약자는 언제든지 계약을 해지할 수 있습니다.", "ins-terms-07", "Easy", "하"),
        R("a11", "청년월세 지원의 소득 기준은 무엇인가요?", "   ", "youth-rent-01", "Fact", "중"),
        # no chunk and no input: kept, grounding unchecked
        R("a12", "민법상 성년이 되는 나이는 몇 살인가요?",
          "민법에 따르면 사람은 19세가 되면 성년에 이릅니다.", "", "Easy", "하"),
        # RAG-style: context carried in `input`, answer grounded in it
        R("a13", "구직촉진수당은 얼마나 받을 수 있나요?",
          "구직촉진수당은 월 50만원씩 최대 6개월간 받을 수 있습니다.", "", "Fact", "중", inp=RAG_CONTEXT),
        # near duplicate of a03: only the question mark is gone
        R("a14", "보험금은 청구 후 언제 지급되나요",
          "회사는 보험금 청구서류를 접수한 날부터 3영업일 이내에 보험금을 지급합니다.",
          "ins-terms-07", "Fact", "중"),
        # near duplicate of a02: one particle dropped (특별지원의 → 특별지원)
        R("a15", "청년월세 한시 특별지원 대상은 누구인가요?",
          "부모와 별도로 거주하는 만 19세부터 34세까지의 무주택 청년이 대상입니다.",
          "youth-rent-01", "Fact", "하"),
        # genuinely different QA on the same chunk: kept
        R("a16", "보험금 지급사유 조사가 필요하면 언제까지 지급되나요?",
          "보험금 지급사유의 조사나 확인이 필요한 경우에는 접수 후 10영업일 이내에 지급합니다.",
          "ins-terms-07", "Scenario", "상"),
    ]


def file_b() -> list[Record]:
    return [
        # exact duplicate of a02 (whitespace differs only)
        R("b01", "청년월세 한시 특별지원의  대상은 누구인가요? ",
          "부모와 별도로 거주하는 만 19세부터 34세까지의 무주택 청년이 대상입니다.",
          "youth-rent-01", "Fact", "하", file="b.jsonl"),
        # same question as a05, different answer: the seed's "same question" rule
        R("b02", "스마트상점 기술 보급 사업의 지원 한도는 얼마인가요?",
          "키오스크나 서빙로봇 등 도입 비용의 최대 70%까지, 500만원 한도로 지원합니다.",
          "smb-digital-03", "Fact", "상", file="b.jsonl"),
        # new, kept
        R("b03", "청년월세 지원을 받기 위한 청년가구 소득 기준은 무엇인가요?",
          "청년가구 소득이 기준 중위소득 60% 이하이고 원가구 소득이 중위소득 100% 이하여야 합니다.",
          "youth-rent-01", "Fact", "중", file="b.jsonl"),
    ]


@pytest.fixture(scope="module")
def result() -> ValidationResult:
    return validate_records(file_a() + file_b(), CHUNKS)


def reasons_by_id(res: ValidationResult) -> dict[str, str]:
    return {rec.id: reason for rec, reason in res.dropped}


def test_each_reason_catches_its_case(result):
    dropped = reasons_by_id(result)
    assert dropped == {
        "a06": "ungrounded",
        "a07": "evasive",
        "a08": "incomplete",
        "a09": "too_short",
        "a10": "missing_fields",
        "a11": "missing_fields",
        "a14": "near_duplicate",
        "a15": "near_duplicate",
        "b01": "duplicate",
        "b02": "duplicate",
    }
    assert result.counts() == {
        "category_not_selected": 0, "missing_fields": 2, "duplicate": 2, "near_duplicate": 2, "too_short": 1,
        "incomplete": 1, "evasive": 1, "ungrounded": 1,
    }
    assert [r.id for r in result.kept] == ["a01", "a02", "a03", "a04", "a05", "a12", "a13", "a16", "b03"]


def test_counts_lists_every_reason_in_order():
    res = validate_records([R("x", "질문입니다?", "충분히 긴 답변이 여기에 있습니다.")], {})
    assert list(res.counts()) == list(REASONS)
    assert all(v == 0 for v in res.counts().values())
    assert set(REASON_LABELS) == set(REASONS)


def test_grounding_scores(result):
    kept = {r.id: r for r in result.kept}
    assert kept["a01"].extra["grounding"] >= 0.9          # copied from the chunk
    assert kept["a13"].extra["grounding"] >= 0.9          # grounded in its `input`
    assert "grounding" not in kept["a12"].extra           # nothing to check against
    fabricated = next(rec for rec, reason in result.dropped if rec.id == "a06")
    assert fabricated.extra["grounding"] < 0.5
    assert result.grounding_unchecked == 1
    rep = result.report()
    assert rep["grounding_unchecked"] == 1
    assert rep["grounding_checked"] == result.grounding_checked
    assert 0.9 <= rep["grounding_mean"] <= 1.0


def test_grounding_ignores_particles_and_endings():
    # 지급합니다 / 지급된다, 보험금을 / 보험금은: same content morphemes
    assert grounding_score("보험금은 3영업일 이내 지급된다.", CHUNKS["ins-terms-07"]) == 1.0
    assert grounding_score("!!!", CHUNKS["ins-terms-07"]) is None


def test_grounding_can_be_disabled():
    res = validate_records(file_a(), CHUNKS, ValidateOptions(grounding=False))
    assert "a06" in [r.id for r in res.kept]
    assert res.counts()["ungrounded"] == 0
    assert res.grounding_checked == 0


def test_duplicates_keep_the_first_file_order(result):
    kept = {r.id: r for r in result.kept}
    assert kept["a02"].extra["_file"] == "a.jsonl"
    assert kept["a05"].extra["_file"] == "a.jsonl"
    b = {rec.id: rec for rec, _ in result.dropped}
    assert b["b01"].extra["duplicate_of"] == "a02"
    assert b["b02"].extra["duplicate_of"] == "a05"
    assert b["a14"].extra["duplicate_of"] == "a03"
    assert b["a14"].extra["similarity"] >= 0.85
    # reversed merge order keeps the other copy
    rev = validate_records(file_b() + file_a(), CHUNKS)
    assert reasons_by_id(rev)["a02"] == "duplicate"
    assert "b01" in [r.id for r in rev.kept]


def test_same_question_with_different_context_is_not_a_duplicate():
    q = "구직촉진수당은 얼마나 받을 수 있나요?"
    a1 = "구직촉진수당은 월 50만원씩 최대 6개월간 받을 수 있습니다."
    a2 = "부양가족이 있으면 1인당 월 10만원이 추가로 지급됩니다."
    recs = [
        R("r1", q, a1, inp=RAG_CONTEXT),
        R("r2", q, a2, inp="부양가족 추가 지급: " + RAG_CONTEXT),
        R("r3", q, a2, inp=RAG_CONTEXT),  # same question + same input as r1
    ]
    res = validate_records(recs, {})
    assert [r.id for r in res.kept] == ["r1", "r2"]
    assert reasons_by_id(res) == {"r3": "duplicate"}


def test_report_adds_up(result):
    rep = result.report()
    json.dumps(rep, ensure_ascii=False)  # JSON-able
    assert rep["total"] == 19
    assert rep["kept"] + rep["dropped"] == rep["total"]
    assert rep["kept"] + sum(rep["dropped_by_reason"].values()) == rep["total"]
    assert rep["pass_rate"] == round(9 / 19, 4)
    assert rep["kept_by_category"] == {
        "Fact": {"count": 6, "share": 66.7},
        "Scenario": {"count": 2, "share": 22.2},
        "Easy": {"count": 1, "share": 11.1},
    }
    assert {k: v["count"] for k, v in rep["kept_by_difficulty"].items()} == {"하": 3, "중": 4, "상": 2}
    assert rep["by_file"]["a.jsonl"]["total"] == 16
    assert rep["by_file"]["a.jsonl"]["kept"] == 8
    assert rep["by_file"]["b.jsonl"] == {"total": 3, "kept": 1, "dropped": {"duplicate": 2}}
    ex = rep["examples"]
    assert set(ex) == set(REASONS) - {"category_not_selected"}  # no categories were chosen
    assert ex["evasive"][0]["id"] == "a07"
    for items in ex.values():
        assert 1 <= len(items) <= 3
        assert all(len(i["output"]) <= 80 and len(i["instruction"]) <= 80 for i in items)


def test_report_without_files_or_records():
    rep = validate_records([], {}).report()
    assert rep["total"] == 0 and rep["pass_rate"] == 0.0
    assert "by_file" not in rep
    rep = validate_records([Record("질문은 무엇인가요?", "답변은 다음과 같습니다.")]).report()
    assert "by_file" not in rep
    assert rep["kept_by_category"] == {"(none)": {"count": 1, "share": 100.0}}


def test_evasive_is_whitespace_insensitive_and_configurable():
    recs = [
        R("e1", "가입 연령 제한이 있나요?", "제공된   문서에는 가입 연령에 대한 정보가 없습니다."),
        R("e2", "가입 연령 제한은요?", "해당 내용은 약관에 명시되어있지 않습니다."),
        R("e3", "해지 시 환급금이 있나요?", "해지하는 경우 회사는 해지환급금을 지급합니다."),
    ]
    res = validate_records(recs, {})
    assert reasons_by_id(res) == {"e1": "evasive", "e2": "evasive"}
    res = validate_records(recs, {}, evasive_phrases=("해지환급금",))
    assert reasons_by_id(res) == {"e3": "evasive"}


def test_a_refusal_phrase_inside_a_fact_is_not_evasive():
    """Terms and laws state facts with "명시되어 있지 않은 …" / "해당 내용이 없는 …": kept. The same
    predicate closing its clause (final ending, connective) is a non-answer: dropped."""
    recs = [
        R("f1", "약관에 없는 사항은 어떻게 처리하나요?", "이 약관에 명시되어 있지 않은 사항은 관계 법령에 따릅니다."),
        R("f2", "서류가 부족하면 어떻게 되나요?", "해당 내용이 없는 서류는 접수되지 않고 반려됩니다."),
        R("f3", "규정이 없으면 무엇을 따르나요?", "조례에 명시되어 있지 않으면 시행규칙을 따릅니다."),
        R("n1", "보장 한도는 얼마인가요?", "보장 한도는 문서에 명시되어 있지 않으며, 약관을 확인해야 합니다."),
        R("n2", "가입 연령은요?", "제공된 자료에는 해당 내용이 없습니다."),
    ]
    assert reasons_by_id(validate_records(recs, {})) == {"n1": "evasive", "n2": "evasive"}


def test_first_failing_reason_wins():
    # too short AND incomplete AND evasive-ish → too_short (checked first)
    res = validate_records([R("s", "질문?", "알 수 없음"), R("t", "질문2?", "답")], {})
    assert reasons_by_id(res) == {"s": "too_short", "t": "too_short"}
    res = validate_records([R("u", "질문?", "해당 내용이 없으며 추가 확인이 필요하고")], {})
    assert reasons_by_id(res) == {"u": "incomplete"}


def test_short_texts_and_thresholds():
    recs = [R("p", "가?", "가나다라마바사아자차."), R("q", "가!", "가나다라마바사아자차.")]
    assert len(validate_records(recs, {}, ValidateOptions(near_dup_threshold=1.0)).kept) == 2
    shape = MinHashShape(ngram=50)  # every text shorter than n → one shingle
    res = validate_records([R("s1", "요?", "네, 됩니다."), R("s2", "요?!", "네, 됩니다.")], {},
                           ValidateOptions(min_answer_chars=2), minhash=shape)
    assert len(res.kept) == 2  # different whole-string shingles → Jaccard 0
    with pytest.raises(KotuneError):
        ValidateOptions.check({"near_dup_threshold": 0})  # refused by the options, in one line
    with pytest.raises(KotuneError):
        validate_records([], {}, minhash=MinHashShape(num_perm=8))


def test_deterministic():
    a = validate_records(file_a() + file_b(), CHUNKS)
    b = validate_records(file_a() + file_b(), CHUNKS)
    assert [(r.id, r.extra) for r in a.kept] == [(r.id, r.extra) for r in b.kept]
    assert [(r.id, why) for r, why in a.dropped] == [(r.id, why) for r, why in b.dropped]
    assert json.dumps(a.report(), ensure_ascii=False) == json.dumps(b.report(), ensure_ascii=False)


def test_normalize_text():
    assert normalize_text("  청년\t월세\n 지원 ") == "청년 월세 지원"


def test_tables_render(result):
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(render_table(result))
    console.print(render_distribution_table(result))
    text = console.export_text()
    for reason in REASONS:
        if reason == "category_not_selected":  # a row only when categories were chosen
            assert reason not in text
            continue
        assert reason in text and REASON_LABELS[reason] in text
    assert "Fact" in text and "66.7%" in text


def test_several_references_per_input_are_kept_when_asked():
    # Question generation: one paragraph, several different questions; a repeated one is still a duplicate.
    para = "훈민정음은 세종대왕이 1443년에 창제하고 1446년에 반포한 문자 체계이다. 백성이 쉽게 익혀 쓰도록 만들었다."
    ins = "다음 문단을 읽고 질문을 하나 만드세요."
    recs = [R("q1", ins, "훈민정음을 창제한 사람은 누구인가?", inp=para),
            R("q2", ins, "훈민정음이 반포된 해는 언제인가?", inp=para),
            R("q3", ins, "훈민정음이 반포된 해는 언제인가?", inp=para)]
    many = validate_records(recs, {}, ValidateOptions(min_answer_chars=8, grounding=False, one_answer_per_prompt=False))
    assert [r.id for r in many.kept] == ["q1", "q2"] and reasons_by_id(many) == {"q3": "duplicate"}
    one = validate_records(recs, {}, ValidateOptions(min_answer_chars=8, grounding=False))
    assert [r.id for r in one.kept] == ["q1"]
