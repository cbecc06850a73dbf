"""Training samples are correct by construction: prompt masked, EOS trained, pad != eos."""

from __future__ import annotations

import pytest

from kotune.errors import KotuneError
from kotune.model.loading import train_tokenizer, corpus_texts, ensure_pad_token
from kotune.records import Record
from kotune.model.templates import IGNORE_INDEX, TEMPLATES, encode_example, encode_prompt, get_template


@pytest.fixture(scope="module")
def tokenizer():
    # The builtin model's tokenizer, trained the same way (fast: no model weights).
    return train_tokenizer(corpus_texts(), vocab_size=4096)


RECORDS = [
    Record(instruction="국가센터란 무엇인가요?", output="국가센터란 초고성능컴퓨팅 자원을 총괄하는 기관을 말한다.", category="정의"),
    Record(instruction="다음 약관에서 보험금 지급 사유를 알려 주세요.", input="제3조(보험금의 지급사유) 회사는 피보험자가 입원하면 입원급여금을 지급합니다.",
           output="피보험자가 입원하면 회사는 입원급여금을 지급합니다.", category="약관"),
]


@pytest.mark.parametrize("name", TEMPLATES)
def test_prompt_tokens_are_masked_and_eos_is_trained(tokenizer, name):
    template = get_template(name, system_prompts={"정의": "당신은 정책 용어를 설명하는 전문가입니다."})
    for rec in RECORDS:
        ex = encode_example(tokenizer, template, rec, max_length=512)
        prompt = template.prompt(rec.instruction, rec.input, category=rec.category, tokenizer=tokenizer)
        n_prompt = len(encode_prompt(tokenizer, prompt, template))
        assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert all(t != IGNORE_INDEX for t in ex["labels"][n_prompt:])
        assert ex["labels"][-1] == tokenizer.eos_token_id
        assert ex["input_ids"][-1] == tokenizer.eos_token_id
        # The supervised tokens decode back to exactly the answer.
        answer = tokenizer.decode(ex["labels"][n_prompt:-1])
        assert answer.strip() == rec.output
        assert ex["truncated"] is False


def test_builtin_tokenizer_pad_is_not_eos(tokenizer):
    assert tokenizer.pad_token_id is not None
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert ensure_pad_token(tokenizer) is False


def test_pad_token_is_added_when_it_equals_eos(tokenizer):
    tok = train_tokenizer(corpus_texts()[:1], vocab_size=512)
    tok.pad_token = tok.eos_token  # the seed projects' setup: pad = eos, so EOS gets masked
    assert ensure_pad_token(tok) is False or tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token_id != tok.eos_token_id


def test_truncation_keeps_answer_end_and_eos(tokenizer):
    rec = Record(instruction="긴 문서 " * 300 + "요약해 주세요.", output="핵심은 인프라 확충과 인재 양성이다.")
    ex = encode_example(tokenizer, get_template("kotune"), rec, max_length=64)
    assert ex["truncated"] is True
    assert len(ex["input_ids"]) <= 64
    assert ex["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX][:-1]).strip() == rec.output


def test_kotune_template_matches_insurance_seed_format():
    p = get_template("kotune").prompt("보장 내용은?", "제3조 ...")
    assert p == "### 지시\n보장 내용은?\n\n### 입력\n제3조 ...\n\n### 출력\n"
    assert get_template("koalpaca").prompt("민법이란?") == "### 질문: 민법이란?\n\n### 답변:"


def test_chat_template_uses_category_system_prompt(tokenizer):
    t = get_template("chat", system_prompts={"전세사기": "당신은 전세사기 상담 전문가입니다."})
    p = t.prompt("보증금을 못 받았어요.", category="전세사기", tokenizer=tokenizer)
    assert "당신은 전세사기 상담 전문가입니다." in p
    assert p.endswith("### 어시스턴트\n")
    default = t.prompt("질문입니다.", category="기타", tokenizer=tokenizer)
    assert "한국어로 정확하고 간결하게" in default


def test_unknown_template_is_a_user_error():
    with pytest.raises(KotuneError, match="unknown template"):
        get_template("vicuna")
