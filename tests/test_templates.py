"""Training samples are correct by construction: prompt masked, EOS trained, pad != eos."""

from __future__ import annotations

import pytest

from kotune.errors import KotuneError
from kotune.model.loading import train_tokenizer, corpus_texts, ensure_pad_token
from kotune.records import Record
from kotune.model.templates import (IGNORE_INDEX, TEMPLATES, Format, Template, encode_example, encode_prompt,
                                    get_template, register, unregister)

BUILTIN = tuple(TEMPLATES)


@pytest.fixture(scope="module")
def tokenizer():
    # The builtin model's tokenizer, trained the same way (fast: no model weights).
    return train_tokenizer(corpus_texts(), vocab_size=4096)


RECORDS = [
    Record(instruction="국가센터란 무엇인가요?", output="국가센터란 초고성능컴퓨팅 자원을 총괄하는 기관을 말한다.", category="정의"),
    Record(instruction="다음 약관에서 보험금 지급 사유를 알려 주세요.", input="제3조(보험금의 지급사유) 회사는 피보험자가 입원하면 입원급여금을 지급합니다.",
           output="피보험자가 입원하면 회사는 입원급여금을 지급합니다.", category="약관"),
]


@pytest.mark.parametrize("name", BUILTIN)
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


def test_pad_equal_to_eos_is_replaced_by_the_vocabularys_pad_token(tokenizer):
    tok = train_tokenizer(corpus_texts()[:1], vocab_size=512)
    size = len(tok)
    tok.pad_token = tok.eos_token  # the seed projects' setup: pad = eos, so EOS gets masked
    # The vocabulary has <|pad|>: it becomes the pad token, and no token is added (no embedding resize).
    assert ensure_pad_token(tok) is False
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id and len(tok) == size


def test_pad_equal_to_eos_is_added_when_the_vocabulary_has_none():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<unk>": 1, "가": 2}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token="<unk>")
    assert ensure_pad_token(tok) is True
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 3 and len(tok) == 4


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
    assert get_template("koalpaca").completion("민법은 ...") == " 민법은 ..."  # KoAlpaca's space after "### 답변:"
    assert get_template("kotune").completion("보장 내용은 ...") == "보장 내용은 ..."


def test_chat_template_uses_category_system_prompt(tokenizer):
    t = get_template("chat", system_prompts={"전세사기": "당신은 전세사기 상담 전문가입니다."})
    p = t.prompt("보증금을 못 받았어요.", category="전세사기", tokenizer=tokenizer)
    assert "당신은 전세사기 상담 전문가입니다." in p
    assert p.endswith("### 어시스턴트\n")
    default = t.prompt("질문입니다.", category="기타", tokenizer=tokenizer)
    assert "한국어로 정확하고 간결하게" in default


def test_unknown_template_is_a_user_error():
    message = "unknown template 'vicuna'; one of kotune, alpaca, koalpaca, rag, chat"
    with pytest.raises(KotuneError) as e:
        get_template("vicuna")
    assert str(e.value) == message
    with pytest.raises(KotuneError) as e:  # a run record naming a template this kotune does not know
        Template.from_dict({"name": "vicuna"}).prompt("질문")
    assert str(e.value) == message


# ---------------------------------------------------------------- the registry: one template, every path
QUESTION = "보험금 지급 사유는 무엇인가요?"
PASSAGES = ["[문서 1] (제3조 보험금의 지급사유)\n회사는 피보험자가 입원하면 입원급여금을 지급합니다.",
            "[문서 2]\n보험료는 매월 자동이체로 납입합니다."]
ANSWER = "피보험자가 입원하면 입원급여금을 지급합니다."


@pytest.fixture(scope="module", params=["no-bos", "bos"])
def any_tokenizer(request, tokenizer):
    """The builtin tokenizer as it is, and one that starts every encoding with BOS (as Gemma's does)."""
    if request.param == "no-bos":
        return tokenizer
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert tok("가")["input_ids"][0] == tok.bos_token_id
    return tok


def _round_trip(tok, template: Template, with_passages: bool) -> None:
    """The prompt training tokenizes = eval's prompt = serve's chat prompt = the exported
    chat template rendered for the same question (token for token)."""
    context = "\n\n".join(PASSAGES) if with_passages else ""
    ex = encode_example(tok, template, Record(instruction=QUESTION, input=context, output=ANSWER), max_length=1024)
    n_prompt = ex["labels"].count(IGNORE_INDEX)
    trained = ex["input_ids"][:n_prompt]
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt and IGNORE_INDEX not in ex["labels"][n_prompt:]

    eval_prompt = template.prompt(QUESTION, context, tokenizer=tok)
    assert encode_prompt(tok, eval_prompt, template) == trained
    served = template.chat_prompt([{"role": "user", "content": QUESTION}], context=context or None, tokenizer=tok)
    assert served == eval_prompt

    jinja = template.chat_template(tok)
    if jinja is None:
        return
    if template.is_chat:  # a chat template's passages join the user message (Template.messages)
        messages, documents = [{"role": "user", "content": f"{QUESTION}\n\n{context}" if context else QUESTION}], None
    else:  # an instruction template's come as documents, one per passage
        messages, documents = [{"role": "user", "content": QUESTION}], [{"text": p} for p in PASSAGES] if context else None
    rendered = tok.apply_chat_template(messages, chat_template=jinja, documents=documents, tokenize=False,
                                       add_generation_prompt=True)
    assert tok(rendered, add_special_tokens=False)["input_ids"] == trained  # what vLLM feeds the model


@pytest.mark.parametrize("name, with_passages", [
    pytest.param(n, w, id=f"{n}-{'passages' if w else 'question'}")
    for n in BUILTIN for w in (False, True) if w or not get_template(n).needs_context])  # rag: always passages
def test_every_template_round_trips_through_train_eval_serve_and_export(any_tokenizer, name, with_passages):
    template = get_template(name, system_prompts={"약관": "당신은 보험 약관 전문가입니다."})
    assert template.chat_template(any_tokenizer) is not None  # every built-in template exports its prompt
    _round_trip(any_tokenizer, template, with_passages)


@pytest.mark.parametrize("name", BUILTIN)
def test_a_conversation_is_asked_as_the_template_was_trained(tokenizer, name):
    """Instruction templates ask the last user message (system and earlier turns ignored); the
    chat template keeps the conversation, and a client's system message replaces the default."""
    template = get_template(name)
    context = "\n\n".join(PASSAGES) if template.needs_context else None
    documents = [{"text": p} for p in PASSAGES] if context else None
    conversation = [{"role": "system", "content": "당신은 해적입니다."}, {"role": "user", "content": "안녕하세요?"},
                    {"role": "assistant", "content": "안녕하세요."}, {"role": "user", "content": QUESTION}]
    served = template.chat_prompt(conversation, context=context, tokenizer=tokenizer)
    rendered = tokenizer.apply_chat_template(conversation, chat_template=template.chat_template(tokenizer),
                                             documents=documents, tokenize=False, add_generation_prompt=True)
    assert rendered == served
    if template.is_chat:
        assert served == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert template.default_system not in served
    else:
        assert served == template.prompt(QUESTION, context=context)


def test_template_kinds_come_from_the_registry():
    assert BUILTIN == ("kotune", "alpaca", "koalpaca", "rag", "chat")
    assert [n for n in BUILTIN if get_template(n).is_chat] == ["chat"]
    assert [n for n in BUILTIN if get_template(n).needs_context] == ["rag"]
    assert [n for n in BUILTIN if get_template(n).default_system] == ["chat"]


def test_a_new_template_is_one_registered_class(tokenizer):
    @register("qna")
    class QnaFormat(Format):
        answer_prefix = " "

        def render(self, instruction: str, body: str) -> str:
            return f"Q: {instruction}\n" + (f"Context: {body}\n" if body else "") + "A:"

    try:
        assert tuple(TEMPLATES) == BUILTIN + ("qna",)
        template = get_template("qna")
        assert Template.from_dict(template.to_dict()) == template and template.format is TEMPLATES["qna"]
        assert not template.is_chat and not template.needs_context
        for with_passages in (False, True):
            _round_trip(tokenizer, template, with_passages)
        ex = encode_example(tokenizer, template, Record(instruction=QUESTION, output=ANSWER), max_length=256)
        assert tokenizer.decode(ex["labels"][ex["labels"].count(IGNORE_INDEX):-1]) == " " + ANSWER
        with pytest.raises(ValueError, match="already registered"):
            register("qna")(QnaFormat)
    finally:
        unregister("qna")
    assert tuple(TEMPLATES) == BUILTIN
    with pytest.raises(KotuneError, match="unknown template 'qna'"):
        get_template("qna")
