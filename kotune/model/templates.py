"""Prompt templates, shared by training and every inference path.

The template is chosen once at training time, saved in ``OUT/kotune.json`` and
read back (through :mod:`kotune.model.resolve`) by eval, chat, serve and export, so the model is never queried in a
format it was not trained on. ``encode_example`` is the only place where a
training sample is tokenized: prompt tokens get label -100, the answer is
followed by EOS, and EOS is in the labels.

Templates are a registry (:data:`TEMPLATES`, name → :class:`Format`). A
:class:`Template` (name, system prompts; what the run record saves) takes its
behaviour from the format registered under its name; callers ask
``Template.is_chat``, ``Template.needs_context`` and ``Template.chat_template``,
never the name. Adding a template is one ``@register("name")`` class here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kotune.errors import KotuneError

IGNORE_INDEX = -100

ABSTENTION = "문서에 해당 내용이 없습니다."
"""The sentence a model says when the documents do not hold the answer: the default of
``--abstention`` (``kotune train`` records it in the run, ``kotune eval`` recognises it), and
the sentence the ``rag`` template's instruction names (quoted there without its full stop)."""
RAG_INSTRUCTION = (
    "아래 제공된 [참고 문서]를 참고하여 사용자의 질문에 답변하세요. 문서에 명시된 내용에 근거하여 답변해야 하며, "
    f"문서에 없는 내용은 추측하지 말고 '{ABSTENTION.removesuffix('.')}'라고 답변하세요."
)
DEFAULT_SYSTEM = "당신은 한국어로 정확하고 간결하게 답하는 도우미입니다."


@dataclass
class Template:
    """How a record becomes a prompt (the answer follows it directly).

    This is the value saved in the run record (``to_dict``, ``from_dict``) and handed
    to every caller. Its behaviour comes from the :class:`Format` registered under
    ``name`` in :data:`TEMPLATES`; callers ask its properties (``is_chat``,
    ``needs_context``, ``chat_template``), never its name.
    """

    name: str
    system_prompts: dict[str, str] = field(default_factory=dict)  # per category (chat template)
    default_system: str = ""

    @property
    def format(self) -> "Format":
        """The registered format behind this template (the unknown-template error if none)."""
        return format_of(self.name)

    @property
    def is_chat(self) -> bool:
        """The tokenizer's own chat template renders the prompt: multi-turn, and prompts
        are encoded without adding special tokens (the chat template writes its own)."""
        return self.format.is_chat

    @property
    def needs_context(self) -> bool:
        """Every record (``input``) and question (``context``) must carry passages."""
        return self.format.needs_context

    def chat_template(self, tokenizer: Any) -> str | None:
        """The Jinja chat template that renders this template's prompt for a conversation's
        last user message, byte for byte (what export writes, so vLLM's chat endpoint
        prompts as training did); None where no chat template can."""
        return self.format.chat_template(self, tokenizer)

    def prompt(self, instruction: str, input: str = "", *, category: str = "", context: str | None = None,
               tokenizer: Any = None, history: list[dict[str, str]] | None = None) -> str:
        """The text the model sees before its answer. ``context`` overrides ``input`` (RAG)."""
        body = input if context is None else context
        return self.format.prompt(self, instruction, body, category=category, tokenizer=tokenizer, history=history)

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
        asked (with ``context``, if any). A chat template keeps the whole conversation;
        ``context`` joins the last user message as in :meth:`messages`, and the
        category's system prompt is added unless the client sent its own."""
        return self.format.chat_prompt(self, messages, category=category, context=context, tokenizer=tokenizer)

    def completion(self, output: str) -> str:
        """An answer as training supervises it (before EOS)."""
        return self.format.completion(output)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "system_prompts": self.system_prompts, "default_system": self.default_system}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> "Template":
        if isinstance(d, str):
            return get_template(d)
        return cls(name=d["name"], system_prompts=dict(d.get("system_prompts") or {}), default_system=d.get("default_system", ""))


# ---------------------------------------------------------------- the registry
class Format:
    """What a template does. A template is this class's attributes plus, for an
    instruction format, :meth:`render`; register a subclass under its name with
    ``@register("name")`` and every path (training, eval, chat, serve, export) uses it.

    The defaults describe an instruction format: one question (instruction, plus the
    passages or input as ``body``) becomes one prompt string, encoded with the
    tokenizer's special tokens, asked with the last user message of a conversation.
    """

    name: ClassVar[str] = ""            # set by register()
    is_chat: ClassVar[bool] = False      # see Template.is_chat
    needs_context: ClassVar[bool] = False  # see Template.needs_context
    default_system: ClassVar[str] = ""   # get_template's default system prompt
    answer_prefix: ClassVar[str] = ""    # what precedes the answer text (KoAlpaca's space after "### 답변:")

    def render(self, instruction: str, body: str) -> str:
        """The prompt for one question; ``body`` is the input or the passages ("" for none)."""
        raise NotImplementedError(f"template {self.name!r} renders no instruction prompt")

    def prompt(self, template: Template, instruction: str, body: str, *, category: str = "", tokenizer: Any = None,
               history: list[dict[str, str]] | None = None) -> str:
        return self.render(instruction, body)

    def chat_prompt(self, template: Template, messages: list[dict[str, str]], *, category: str = "",
                    context: str | None = None, tokenizer: Any = None) -> str:
        return template.prompt(_last_user(messages)[1], category=category, context=context, tokenizer=tokenizer)

    def completion(self, output: str) -> str:
        return self.answer_prefix + output

    def chat_template(self, template: Template, tokenizer: Any) -> str | None:
        """:meth:`render` as Jinja: the last user message is the question (system and
        earlier messages are ignored, as in :meth:`chat_prompt`); the passages, if any,
        come as ``documents`` (transformers' ``apply_chat_template(documents=...)``,
        vLLM's ``documents`` request field): each document's ``text`` verbatim, a blank
        line between them, as kotune's retrieval joins passages. Without documents the
        prompt is the one for a question without input. The tokenizer's BOS is written
        where its encoding adds one, so the rendered text tokenized without special
        tokens (as vLLM does) is exactly the training prompt's ids."""
        without = _as_jinja(self.render(_Q, ""), {_Q: "{{ ns.q }}"})
        if without is None:
            return None  # the question is not copied verbatim: no exact Jinja form
        with_docs = _as_jinja(self.render(_Q, _D), {_Q: "{{ ns.q }}", _D: _DOCUMENTS})
        if with_docs is None:  # the passages are not copied verbatim: questions only
            return _LAST_USER + _bos(tokenizer) + without
        return (_LAST_USER + _bos(tokenizer) + "{%- if documents -%}" + with_docs + "{%- else -%}" + without
                + "{%- endif -%}")


TEMPLATES: dict[str, Format] = {}
"""The registry: template name → format, in registration order (the order ``--template``
lists them). ``tuple(TEMPLATES)`` are the names."""


def register(name: str):
    """Class decorator: register a :class:`Format` subclass under ``name``."""
    def deco(cls: type[Format]) -> type[Format]:
        if name in TEMPLATES:
            raise ValueError(f"template {name!r} is already registered")
        cls.name = name
        TEMPLATES[name] = cls()
        return cls
    return deco


def unregister(name: str) -> None:
    """Remove a registered template (tests, plug-ins)."""
    TEMPLATES.pop(name, None)


def format_of(name: str) -> Format:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KotuneError(f"unknown template {name!r}; one of {', '.join(TEMPLATES)}") from None


# Markers the chat-template builder renders a format with, then replaces by Jinja.
_Q, _D = "\u0000QUESTION\u0000", "\u0000DOCUMENTS\u0000"
_LAST_USER = ("{%- set ns = namespace(q='') -%}"
              "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.q = m['content'] -%}{%- endif -%}"
              "{%- endfor -%}")
_DOCUMENTS = "{%- for d in documents -%}{%- if not loop.first -%}{{ '\\n\\n' }}{%- endif -%}{{ d['text'] }}{%- endfor -%}"


def _quoted(s: str) -> str:
    """``s`` as a Jinja string literal that Python's jinja2 (transformers, vLLM) and llama.cpp's
    own Jinja engine (GGUF chat templates, which rejects ``\\u`` escapes) both read back as ``s``:
    Hangul stays as it is; only quote, backslash, newline, tab and carriage return are escaped."""
    bad = [c for c in s if ord(c) < 32 and c not in "\n\t\r"]
    if bad:
        raise KotuneError(f"a template text holds a control character ({ord(bad[0]):#04x}) no chat template can quote")
    return json.dumps(s, ensure_ascii=False)


def _lit(s: str) -> str:
    """A Jinja expression printing ``s`` (a string literal, so no text is read as Jinja syntax)."""
    return "{{ " + _quoted(s) + " }}" if s else ""


def _as_jinja(text: str, slots: dict[str, str]) -> str | None:
    """``text`` as Jinja, each marker in ``slots`` replaced by its expression; None when a
    marker is missing (the format does not copy that value verbatim)."""
    pieces: list[tuple[bool, str]] = [(False, text)]
    for marker, expr in slots.items():
        if marker not in text:
            return None
        out: list[tuple[bool, str]] = []
        for is_expr, piece in pieces:
            if is_expr:
                out.append((True, piece))
                continue
            for i, part in enumerate(piece.split(marker)):
                if i:
                    out.append((True, expr))
                out.append((False, part))
        pieces = out
    return "".join(piece if is_expr else _lit(piece) for is_expr, piece in pieces)


def _bos(tokenizer: Any) -> str:
    """``{{ bos_token }}`` where the tokenizer's encoding starts with BOS, else ""."""
    with_special = tokenizer("가", add_special_tokens=True)["input_ids"]
    without = tokenizer("가", add_special_tokens=False)["input_ids"]
    adds_bos = (len(with_special) > len(without) and tokenizer.bos_token_id is not None
                and with_special[0] == tokenizer.bos_token_id)
    return "{{ bos_token }}" if adds_bos else ""


def _last_user(messages: list[dict[str, str]]) -> tuple[int, str]:
    i = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return i, messages[i]["content"]


def _needs_chat_template(tokenizer: Any) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise KotuneError("the chat template needs a tokenizer with a chat_template")


@register("kotune")
class KotuneFormat(Format):
    """kotune's own (the insurance seed's): Korean section headers."""

    def render(self, instruction: str, body: str) -> str:
        sections = [f"### 지시\n{instruction}"] + ([f"### 입력\n{body}"] if body else [])
        return "\n\n".join(sections) + "\n\n### 출력\n"


@register("alpaca")
class AlpacaFormat(Format):
    def render(self, instruction: str, body: str) -> str:
        if body:
            return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                    "Write a response that appropriately completes the request.\n\n"
                    f"### Instruction:\n{instruction}\n\n### Input:\n{body}\n\n### Response:\n")
        return ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Response:\n")


@register("koalpaca")
class KoAlpacaFormat(Format):
    answer_prefix = " "  # KoAlpaca puts a space after "### 답변:"; the others start on a new line

    def render(self, instruction: str, body: str) -> str:
        question = f"{instruction}\n{body}" if body else instruction
        return f"### 질문: {question}\n\n### 답변:"


@register("rag")
class RagFormat(Format):
    """Grounded QA: the passages (``input`` / ``context``) then the question. Its chat
    template takes the passages as ``documents`` (see :meth:`Format.chat_template`)."""

    needs_context = True

    def render(self, instruction: str, body: str) -> str:
        return f"### 지시\n{RAG_INSTRUCTION}\n\n### 입력\n[참고 문서]\n{body}\n\n질문: {instruction}\n\n### 출력\n"


@register("chat")
class ChatFormat(Format):
    """The tokenizer's own chat template, with the category's system prompt."""

    is_chat = True
    default_system = DEFAULT_SYSTEM

    def prompt(self, template: Template, instruction: str, body: str, *, category: str = "", tokenizer: Any = None,
               history: list[dict[str, str]] | None = None) -> str:
        _needs_chat_template(tokenizer)
        return tokenizer.apply_chat_template(template.messages(instruction, body, category=category, history=history),
                                             tokenize=False, add_generation_prompt=True)

    def chat_prompt(self, template: Template, messages: list[dict[str, str]], *, category: str = "",
                    context: str | None = None, tokenizer: Any = None) -> str:
        _needs_chat_template(tokenizer)
        last_user, question = _last_user(messages)
        msgs = [dict(m) for m in messages]
        if context:
            msgs[last_user]["content"] = f"{question}\n\n{context}"
        system = template.system_prompts.get(category) or template.default_system
        if system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def chat_template(self, template: Template, tokenizer: Any) -> str | None:
        """The tokenizer's own chat template, with the template's default system prompt
        put first when the conversation has no system message (as :meth:`chat_prompt`
        does; per-category system prompts cannot be chosen from a conversation)."""
        own = getattr(tokenizer, "chat_template", None)
        if not isinstance(own, str) or not own:
            return None
        if not template.default_system:
            return own
        system = '{"role": "system", "content": ' + _quoted(template.default_system) + "}"
        return ("{%- set ns_kotune = namespace(system=false) -%}"
                "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns_kotune.system = true -%}{%- endif -%}"
                "{%- endfor -%}"
                "{%- if not ns_kotune.system -%}{%- set messages = [" + system + "] + messages -%}{%- endif -%}" + own)


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
    fmt = format_of(name)
    if default_system is None:
        default_system = fmt.default_system
    return Template(name, dict(system_prompts or {}), default_system)


def encode_prompt(tokenizer: Any, prompt: str, template: Template) -> list[int]:
    """Prompt token ids, exactly as training saw them (BOS added by the tokenizer
    where it adds one, except for chat templates, which write their own)."""
    ids = tokenizer(prompt, add_special_tokens=not template.is_chat)["input_ids"]
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
