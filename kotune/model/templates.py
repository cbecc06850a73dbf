"""Prompt templates, shared by training and every inference path.

The template is chosen once at training time, saved in ``OUT/kotune.json`` and
read back (through :mod:`kotune.model.resolve`) by eval, chat, serve and export, so the model is never queried in a
format it was not trained on. ``encode_example`` is the only place where a
training sample is tokenized: prompt tokens get label -100, the answer is
followed by EOS, and EOS is in the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kotune.errors import KotuneError

IGNORE_INDEX = -100

RAG_INSTRUCTION = (
    "아래 제공된 [참고 문서]를 참고하여 사용자의 질문에 답변하세요. 문서에 명시된 내용에 근거하여 답변해야 하며, "
    "문서에 없는 내용은 추측하지 말고 '문서에 해당 내용이 없습니다'라고 답변하세요."
)
DEFAULT_SYSTEM = "당신은 한국어로 정확하고 간결하게 답하는 도우미입니다."


@dataclass
class Template:
    """How a record becomes a prompt (the answer follows it directly)."""

    name: str
    system_prompts: dict[str, str] = field(default_factory=dict)  # per category (chat template)
    default_system: str = ""

    def prompt(self, instruction: str, input: str = "", *, category: str = "", context: str | None = None,
               tokenizer: Any = None, history: list[dict[str, str]] | None = None) -> str:
        """The text the model sees before its answer. ``context`` overrides ``input`` (RAG)."""
        if self.name == "kotune":
            body = input if context is None else context
            sections = [f"### 지시\n{instruction}"]
            if body:
                sections.append(f"### 입력\n{body}")
            return "\n\n".join(sections) + "\n\n### 출력\n"
        if self.name == "alpaca":
            body = input if context is None else context
            if body:
                return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                        "Write a response that appropriately completes the request.\n\n"
                        f"### Instruction:\n{instruction}\n\n### Input:\n{body}\n\n### Response:\n")
            return ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                    f"### Instruction:\n{instruction}\n\n### Response:\n")
        if self.name == "koalpaca":
            body = input if context is None else context
            question = f"{instruction}\n{body}" if body else instruction
            return f"### 질문: {question}\n\n### 답변:"
        if self.name == "rag":
            body = input if context is None else context
            return f"### 지시\n{RAG_INSTRUCTION}\n\n### 입력\n[참고 문서]\n{body}\n\n질문: {instruction}\n\n### 출력\n"
        if self.name == "chat":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise KotuneError("the chat template needs a tokenizer with a chat_template")
            return tokenizer.apply_chat_template(
                self.messages(instruction, input, category=category, context=context, history=history),
                tokenize=False, add_generation_prompt=True,
            )
        raise KotuneError(f"unknown template {self.name!r}; one of {', '.join(TEMPLATES)}")

    def messages(self, instruction: str, input: str = "", *, category: str = "", context: str | None = None,
                 history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        system = self.system_prompts.get(category) or self.default_system
        body = input if context is None else context
        user = f"{instruction}\n\n{body}" if body else instruction
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + list(history or []) + [{"role": "user", "content": user}]

    def chat_prompt(self, messages: list[dict[str, str]], *, category: str = "", context: str | None = None,
                    tokenizer: Any = None) -> str:
        """The prompt for an OpenAI-style conversation (kotune serve's chat endpoint).

        Instruction templates were trained on one question: the last user message is
        asked (with ``context``, if any). The chat template keeps the whole conversation;
        ``context`` joins the last user message as in :meth:`messages`, and the
        category's system prompt is added unless the client sent its own."""
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        question = messages[last_user]["content"]
        if self.name != "chat":
            return self.prompt(question, category=category, context=context, tokenizer=tokenizer)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise KotuneError("the chat template needs a tokenizer with a chat_template")
        msgs = [dict(m) for m in messages]
        if context:
            msgs[last_user]["content"] = f"{question}\n\n{context}"
        system = self.system_prompts.get(category) or self.default_system
        if system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def completion(self, output: str) -> str:
        # KoAlpaca puts a space after "### 답변:"; the others start on a new line.
        return (" " + output) if self.name == "koalpaca" else output

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "system_prompts": self.system_prompts, "default_system": self.default_system}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> "Template":
        if isinstance(d, str):
            return get_template(d)
        return cls(name=d["name"], system_prompts=dict(d.get("system_prompts") or {}), default_system=d.get("default_system", ""))


TEMPLATES = ("kotune", "alpaca", "koalpaca", "rag", "chat")

# A chat template for tokenizers that have none (base models): ChatML-like with
# Korean role headers; the assistant turn ends with the tokenizer's EOS.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}### 시스템\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### 사용자\n{{ m['content'] }}\n\n"
    "{% else %}### 어시스턴트\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}### 어시스턴트\n{% endif %}"
)


def get_template(name: str, system_prompts: dict[str, str] | None = None, default_system: str | None = None) -> Template:
    if name not in TEMPLATES:
        raise KotuneError(f"unknown template {name!r}; one of {', '.join(TEMPLATES)}")
    if default_system is None:
        default_system = DEFAULT_SYSTEM if name == "chat" else ""
    return Template(name, dict(system_prompts or {}), default_system)


def encode_prompt(tokenizer: Any, prompt: str, template: Template) -> list[int]:
    """Prompt token ids, exactly as training saw them (BOS added by the tokenizer
    where it adds one, except for chat templates, which write their own)."""
    add_special = template.name != "chat"
    ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    return list(ids)


def eos_ids(tokenizer: Any) -> list[int]:
    """Every id that ends an answer: EOS plus chat end-of-turn tokens the tokenizer knows."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for tok in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end_of_text|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def encode_answer(tokenizer: Any, template: Template, text: str) -> list[int]:
    """An answer's token ids as training supervises them: the template's completion
    form (KoAlpaca's leading space) followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise KotuneError("the tokenizer has no EOS token; set one (tokenizer.eos_token) before training")
    return list(tokenizer(template.completion(text), add_special_tokens=False)["input_ids"]) + [eos]


def _fit(prompt_ids: list[int], answer_ids: list[int], max_length: int, eos: int) -> tuple[list[int], list[int], bool]:
    """Cut a prompt + answer to ``max_length``: the answer keeps its end (EOS) and at most
    half the budget, the prompt loses tokens from the left."""
    truncated = len(prompt_ids) + len(answer_ids) > max_length
    if truncated:
        if len(answer_ids) >= max_length // 2:
            answer_ids = answer_ids[: max_length // 2 - 1] + [eos]
        keep = max_length - len(answer_ids)
        prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    return prompt_ids, answer_ids, truncated


def record_prompt(tokenizer: Any, template: Template, record: Any) -> list[int]:
    """The prompt token ids of a record (instruction, input, category, chat history)."""
    prompt = template.prompt(record.instruction, record.input, category=record.category, tokenizer=tokenizer,
                             history=record.extra.get("history"))
    return encode_prompt(tokenizer, prompt, template)


def encode_example(tokenizer: Any, template: Template, record: Any, max_length: int) -> dict[str, Any]:
    """One training sample: ``input_ids``, ``labels`` (prompt masked, EOS trained), ``truncated``.

    Prompt and answer are tokenized separately and concatenated, so the prompt's
    tokens are exactly those inference will feed (no BPE merge across the seam).
    Over-long samples keep their answer's end (with EOS) and lose prompt tokens
    from the left; an answer that alone exceeds ``max_length`` is cut and still
    ends with EOS.
    """
    prompt_ids, answer_ids, truncated = _fit(record_prompt(tokenizer, template, record),
                                             encode_answer(tokenizer, template, record.output), max_length,
                                             tokenizer.eos_token_id)
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated}


def encode_preference(tokenizer: Any, template: Template, record: Any, max_length: int) -> dict[str, Any]:
    """One preference sample, tokenized as :func:`encode_example` tokenizes an SFT one:
    ``prompt_ids`` (the template's prompt, never supervised) and, for a pair,
    ``chosen_ids``/``rejected_ids``, for a labelled answer (KTO) ``completion_ids`` and
    ``label``; every answer ends with EOS. ``record`` is a
    :class:`kotune.data.preferences.PreferenceRecord`."""
    prompt = record_prompt(tokenizer, template, record)
    eos = tokenizer.eos_token_id
    out: dict[str, Any] = {}
    truncated = False
    sides = (("chosen", record.chosen), ("rejected", record.rejected)) if record.paired else (("completion", record.completion),)
    keep = len(prompt)
    for side, text in sides:
        p, a, cut = _fit(prompt, encode_answer(tokenizer, template, text), max_length, eos)
        out[f"{side}_ids"] = a
        keep = min(keep, len(p))
        truncated |= cut
    out["prompt_ids"] = prompt[len(prompt) - keep:] if keep else []  # one prompt that fits both sides
    if not record.paired:
        out["label"] = bool(record.label)
    out["truncated"] = truncated
    return out
