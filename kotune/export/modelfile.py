"""The Ollama ``Modelfile`` of a GGUF export: the run's prompt, stop strings and system prompt.

Ollama renders prompts with its own Go-template ``TEMPLATE``, not the GGUF's Jinja chat
template, so the Modelfile must say the same prompt again in Ollama's language (where
exported models go wrong in practice: a different template or missing stop strings). It
is derived, not written by hand: kotune's own prompt function is rendered with marker
strings in place of the question and the system prompt, and the markers become
``{{ .Prompt }}`` and ``{{ .System }}``. The TEMPLATE uses only Ollama's single-turn
variables (``.System``, ``.Prompt``, ``.Response``) and ``if``/``else``, the form every
Ollama version renders the same way; a conversation is rendered turn by turn.

The BOS token is left out of the TEMPLATE: llama.cpp (under Ollama) adds it when it
tokenizes the prompt, as the GGUF's ``tokenizer.ggml.add_bos_token`` says.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kotune.errors import KotuneError
from kotune.model.templates import Template

_Q, _S = "\u0000PROMPT\u0000", "\u0000SYSTEM\u0000"


def _go_text(text: str) -> str:
    if "{{" in text or '"""' in text:
        raise KotuneError("the prompt template holds '{{' or '\"\"\"', which an Ollama TEMPLATE cannot quote")
    return text


def _strip_bos(text: str, tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text


def _around(text: str, *markers: str) -> list[str]:
    """``text`` split at each marker in turn (each must occur exactly once, in this order)."""
    parts, rest = [], text
    for m in markers:
        if rest.count(m) != 1:
            raise KotuneError("the chat template does not copy the system prompt and the question verbatim once each; "
                              "write the Ollama TEMPLATE by hand")
        before, rest = rest.split(m)
        parts.append(before)
    return parts + [rest]


def ollama_template(template: Template, tokenizer: Any) -> str:
    """The Go TEMPLATE rendering the prompt ``template`` renders (module docstring)."""
    if not template.is_chat:
        # Instruction formats were trained on one question and no system prompt.
        pre, post = _around(_strip_bos(template.prompt(_Q, tokenizer=tokenizer), tokenizer), _Q)
        return f"{_go_text(pre)}{{{{ .Prompt }}}}{_go_text(post)}{{{{ .Response }}}}"
    if not getattr(tokenizer, "chat_template", None):
        raise KotuneError("the chat template needs a tokenizer with a chat_template")
    render = lambda msgs: _strip_bos(tokenizer.apply_chat_template(  # noqa: E731
        msgs, tokenize=False, add_generation_prompt=True), tokenizer)
    a, b, c = _around(render([{"role": "system", "content": _S}, {"role": "user", "content": _Q}]), _S, _Q)
    d, e = _around(render([{"role": "user", "content": _Q}]), _Q)
    return (f"{{{{ if .System }}}}{_go_text(a)}{{{{ .System }}}}{_go_text(b)}{{{{ .Prompt }}}}{_go_text(c)}"
            f"{{{{ else }}}}{_go_text(d)}{{{{ .Prompt }}}}{_go_text(e)}{{{{ end }}}}{{{{ .Response }}}}")


def stop_strings(tokenizer: Any, eos_ids: list[int]) -> list[str]:
    """The text of every trained stop token (Ollama stops on ``PARAMETER stop`` strings)."""
    out: list[str] = []
    for i in eos_ids:
        tok = tokenizer.convert_ids_to_tokens(int(i))
        if tok and tok not in out:
            out.append(tok)
    return out


def ollama_name(stem: str) -> str:
    """A model name ``ollama create`` accepts (lowercase letters, digits, ``-_.``)."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", stem.lower()).strip("-.")
    return name or "kotune-model"


def modelfile(gguf_file: str, template: Template, tokenizer: Any, eos_ids: list[int], *,
              context_length: int | None = None, adapter: str | None = None) -> str:
    """The Modelfile text: ``FROM`` the GGUF (a path relative to the Modelfile), ``ADAPTER`` the
    LoRA GGUF when it is kept apart, the TEMPLATE, one ``PARAMETER stop`` per trained stop string,
    ``num_ctx`` and the default system prompt."""
    lines = ["# Written by kotune export: the prompt, stop strings and system prompt the model was trained with.",
             f"FROM ./{gguf_file}"] + ([f"ADAPTER ./{adapter}"] if adapter else []) + [
             "", f'TEMPLATE """{ollama_template(template, tokenizer)}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stop_strings(tokenizer, eos_ids)]
    if context_length:
        lines.append(f"PARAMETER num_ctx {int(context_length)}")
    if template.is_chat and template.default_system:
        lines += ["", f'SYSTEM """{_go_text(template.default_system)}"""']
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """The ``FROM``, ``ADAPTER``, ``TEMPLATE``, ``SYSTEM`` and ``PARAMETER`` values of a Modelfile kotune wrote."""
    out: dict[str, Any] = {"parameters": []}
    for m in re.finditer(r'^(FROM|ADAPTER|TEMPLATE|SYSTEM|PARAMETER)[ \t]+("""(.*?)"""|[^\n]*)$', text, re.M | re.S):
        key, raw, quoted = m.group(1), m.group(2), m.group(3)
        value = quoted if quoted is not None else raw.strip()
        if key == "PARAMETER":
            pname, _, pval = value.partition(" ")
            out["parameters"].append((pname, json.loads(pval) if pval.startswith('"') else pval))
        else:
            out[key.lower()] = value
    return out


__all__ = ["modelfile", "ollama_name", "ollama_template", "parse_modelfile", "stop_strings"]
