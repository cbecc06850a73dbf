"""kotune.records: every QA format kotune accepts becomes the same Record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import leftover_temp_files, read_jsonl
from kotune.errors import KotuneError
from kotune.records import FIELDS, Record, normalize, parse_mapping, parse_template_text, read_records, write_records

# Civil-law QA (민법), as the seed project stored it.
CIVIL_QA = [
    ("임대차 계약이 끝나면 임차인은 보증금을 언제 돌려받을 수 있나요?",
     "임대차가 종료되면 임대인은 보증금을 반환해야 하며, 이 의무는 임차인의 주택 인도 의무와 동시이행 관계에 있습니다.",
     "임대차", "중"),
    ("미성년자가 법정대리인의 동의 없이 한 계약은 어떻게 되나요?",
     "미성년자가 법정대리인의 동의 없이 한 법률행위는 미성년자 본인이나 법정대리인이 취소할 수 있습니다.",
     "총칙", "하"),
    ("채무자가 빌린 돈을 갚지 않으면 소멸시효는 몇 년인가요?",
     "일반 민사채권의 소멸시효는 10년이며, 상인 간의 상행위로 생긴 채권은 5년입니다.",
     "채권", "상"),
]


def write_civil_csv(path: Path, encoding: str) -> Path:
    with open(path, "w", encoding=encoding, newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "category", "difficulty"])
        w.writerows(CIVIL_QA)
    return path


def qa_tuples(records: list[Record]) -> list[tuple[str, str, str, str]]:
    return [(r.instruction, r.output, r.category, r.difficulty) for r in records]


def test_record_schema_jsonl_keeps_every_field(tmp_path: Path) -> None:
    row = {
        "id": "pol-001", "instruction": "국가센터의 주력 시스템은 언제 교체되나요?", "input": "",
        "output": "정부는 2027년까지 300페타플롭스급 국가 플래그십 초고성능컴퓨터를 국가센터에 도입한다.",
        "category": "수치", "difficulty": "중급", "source": "policy_plan.txt", "chunk_id": "0914e4df20feba3c",
    }
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n\n", encoding="utf-8")  # blank line is skipped

    [rec] = read_records(path)

    assert {k: getattr(rec, k) for k in FIELDS} == row


def test_civil_law_csv_question_answer_columns(tmp_path: Path) -> None:
    records = read_records(write_civil_csv(tmp_path / "civil.csv", "utf-8"))

    assert qa_tuples(records) == CIVIL_QA
    assert [r.input for r in records] == ["", "", ""]


@pytest.mark.parametrize("encoding", ["cp949", "euc-kr", "utf-8-sig"])
def test_legacy_korean_csv_encodings_read_the_same(tmp_path: Path, encoding: str) -> None:
    utf8 = read_records(write_civil_csv(tmp_path / "utf8.csv", "utf-8"))
    legacy_path = write_civil_csv(tmp_path / "legacy.csv", encoding)
    if encoding != "utf-8-sig":
        with pytest.raises(UnicodeDecodeError):  # the bytes really are not UTF-8
            legacy_path.read_bytes().decode("utf-8")

    legacy = read_records(legacy_path)

    assert qa_tuples(legacy) == qa_tuples(utf8) == CIVIL_QA
    assert [r.id for r in legacy] == [r.id for r in utf8]


def test_alpaca_json_list(tmp_path: Path) -> None:
    items = [
        {"instruction": "다음 조항을 쉬운 말로 풀어 주세요.",
         "input": "임차인은 임대인의 동의 없이 그 권리를 양도하거나 임차물을 전대하지 못한다.",
         "output": "집을 빌린 사람은 집주인의 허락 없이 임차권을 넘기거나 다른 사람에게 다시 빌려줄 수 없다는 뜻입니다."},
        {"instruction": "점유취득시효의 요건을 설명하세요.", "input": "",
         "output": "20년간 소유의 의사로 평온·공연하게 부동산을 점유하면 등기함으로써 소유권을 취득합니다."},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")

    records = read_records(path)

    assert [(r.instruction, r.input, r.output) for r in records] == [(i["instruction"], i["input"], i["output"]) for i in items]


def test_insurance_template_text_is_parsed_and_eos_removed(tmp_path: Path) -> None:
    text = (
        "### 지시\n암 진단금은 언제 지급되나요?\n"
        "### 입력\n제12조(보험금의 지급사유) 회사는 피보험자가 보험기간 중 암으로 진단 확정된 경우 암진단보험금을 지급합니다.\n"
        "### 출력\n피보험자가 보험기간 중에 암으로 진단이 확정되면 회사가 암진단보험금을 지급합니다.<|end_of_text|>"
    )
    path = tmp_path / "insurance.jsonl"
    path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")

    [rec] = read_records(path)

    assert rec.instruction == "암 진단금은 언제 지급되나요?"
    assert rec.input.startswith("제12조(보험금의 지급사유) 회사는")
    assert rec.output == "피보험자가 보험기간 중에 암으로 진단이 확정되면 회사가 암진단보험금을 지급합니다."
    assert "<|end_of_text|>" not in json.dumps(rec.to_dict(), ensure_ascii=False)
    assert "text" not in rec.extra


def test_template_text_without_output_is_not_a_record() -> None:
    assert parse_template_text("### 지시\n질문만 있고 답이 없습니다.") is None
    assert parse_template_text("그냥 평범한 문장입니다.") is None


def test_chat_messages_become_instruction_and_output_with_system_kept(tmp_path: Path) -> None:
    row = {"messages": [
        {"role": "system", "content": "당신은 한국 민법을 쉽게 설명하는 상담사입니다."},
        {"role": "user", "content": "전세 보증금을 지키려면 무엇을 해야 하나요?"},
        {"role": "assistant", "content": "전입신고를 하고 확정일자를 받으면 대항력과 우선변제권을 갖춰 보증금을 보호받을 수 있습니다."},
    ], "category": "임대차"}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")

    [rec] = read_records(path)

    assert rec.instruction == "전세 보증금을 지키려면 무엇을 해야 하나요?"
    assert rec.output.startswith("전입신고를 하고 확정일자를 받으면")
    assert rec.category == "임대차"
    assert rec.extra["system"] == "당신은 한국 민법을 쉽게 설명하는 상담사입니다."
    out = tmp_path / "out.jsonl"
    write_records(out, [rec])
    assert read_jsonl(out)[0]["system"] == "당신은 한국 민법을 쉽게 설명하는 상담사입니다."


def test_multi_turn_chat_uses_last_exchange_and_keeps_history() -> None:
    rec = normalize({"messages": [
        {"role": "user", "content": "상속 포기는 언제까지 해야 하나요?"},
        {"role": "assistant", "content": "상속 개시를 안 날부터 3개월 안에 가정법원에 신고해야 합니다."},
        {"role": "user", "content": "그 기간이 지나면 어떻게 되나요?"},
        {"role": "assistant", "content": "기간이 지나면 단순승인한 것으로 보아 빚까지 모두 상속하게 됩니다."},
    ]})

    assert rec is not None
    assert rec.instruction == "그 기간이 지나면 어떻게 되나요?"
    assert rec.output == "기간이 지나면 단순승인한 것으로 보아 빚까지 모두 상속하게 됩니다."
    assert [m["content"] for m in rec.extra["history"]] == ["상속 포기는 언제까지 해야 하나요?",
                                                           "상속 개시를 안 날부터 3개월 안에 가정법원에 신고해야 합니다."]


def test_korean_columns_mapped_through_validate_cli(tmp_path: Path, cli) -> None:
    path = tmp_path / "상담.csv"
    with open(path, "w", encoding="cp949", newline="") as f:
        w = csv.writer(f)
        w.writerow(["질문", "답변", "분야"])
        for q, a, cat, _ in CIVIL_QA:
            w.writerow([q, a, cat])
    out = tmp_path / "clean.jsonl"

    res = cli(["validate", path, "-o", out, "--map", "질문=instruction", "--map", "답변=output", "--map", "분야=category"])

    assert res.code == 0, res.err
    rows = read_jsonl(out)
    assert [(r["instruction"], r["output"], r["category"]) for r in rows] == [(q, a, c) for q, a, c, _ in CIVIL_QA]
    assert not any(k in r for r in rows for k in ("질문", "답변", "분야"))


def test_unmapped_korean_columns_are_a_one_line_error_suggesting_map(tmp_path: Path, cli) -> None:
    path = tmp_path / "상담.csv"
    path.write_text("질문,답변\n계약금은 돌려받을 수 있나요?,계약금 포기로 계약을 해제할 수 있습니다.\n", encoding="utf-8")
    out = tmp_path / "clean.jsonl"

    res = cli(["validate", path, "-o", out])

    assert res.code == 2
    assert len(res.err_lines) == 1
    assert res.err_lines[0].startswith("error:") and "상담.csv" in res.err_lines[0] and "--map" in res.err_lines[0]
    assert not out.exists()


def test_parse_mapping_rejects_bad_items() -> None:
    assert parse_mapping(["질문=instruction", " 답변 = output "]) == {"질문": "instruction", "답변": "output"}
    with pytest.raises(KotuneError, match="SOURCE=FIELD"):
        parse_mapping(["질문"])
    with pytest.raises(KotuneError, match="unknown field"):
        parse_mapping(["질문=question_text"])


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_written_records_read_back_identically(tmp_path: Path, suffix: str) -> None:
    records = [Record(instruction=q, output=a, category=c, difficulty=d, source="civil.csv") for q, a, c, d in CIVIL_QA]
    path = tmp_path / f"records{suffix}"

    assert write_records(path, records) == 3
    back = read_records(path)

    assert [(r.id, r.instruction, r.output, r.category, r.difficulty, r.source) for r in back] == \
           [(r.id, r.instruction, r.output, r.category, r.difficulty, r.source) for r in records]
    assert leftover_temp_files(tmp_path) == []


def test_record_id_is_a_content_hash_and_variants_share_a_group() -> None:
    a = Record(instruction="질문입니다?", output="답변입니다.")
    b = Record(instruction="질문입니다?", output="답변입니다.")
    c = Record(instruction="질문입니다?", output="다른 답변입니다.")
    assert a.id == b.id != c.id
    assert Record(instruction="q", output="a", id="abc#a2").group == "abc"
    # ids from other tools that merely contain '#' are their own groups
    assert Record(instruction="q", output="a", id="doc#12").group == "doc#12"
    assert Record(instruction="q", output="a", id="doc#13").group != Record(instruction="q", output="a", id="doc#12").group


def test_rows_without_qa_fields_name_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text('{"제목": "민법", "본문": "사람은 생존한 동안 권리와 의무의 주체가 된다."}\n', encoding="utf-8")
    with pytest.raises(KotuneError, match="제목") as e:
        read_records(path)
    assert "odd.jsonl" in str(e.value) and "--map" in str(e.value)
