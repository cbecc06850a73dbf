"""``kotune chat``: an interactive terminal chat that streams answers.

Multi-turn history is kept for chat templates (the tokenizer's template sees
the previous turns); instruction templates answer each question on its own.
``--model openai:URL#MODEL`` chats with a model behind an OpenAI-compatible server,
asked as ``kotune eval`` asks it (:mod:`kotune.model.endpoint`), answer by answer.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from kotune.model.endpoint import EndpointSpec, open_endpoint
from kotune.model.generation import GenerationSettings, Generator
from kotune.model.openai_client import read_api_keys

HELP = "commands: /reset (forget the conversation), /context on|off, /settings, /exit"


def run_chat(model: str, *, context: str | None = None, top_k: int = 3, template: str | None = None, category: str = "",
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             stop: list[str] | None = None, api_key_env: str | None = None, stdin: TextIO | None = None,
             stdout: TextIO | None = None) -> None:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    endpoint = EndpointSpec.parse(model)
    if endpoint is not None:  # a model behind an OpenAI-compatible server: asked as eval asks it
        gen: Any = open_endpoint(model, endpoint, template=template, default_template=None,
                                 api_keys=read_api_keys(api_key_env) if api_key_env else None)
    else:
        gen = Generator(model, template=template, log=lambda m: print(m, file=sys.stderr))
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  repetition_penalty=repetition_penalty, stop=list(stop or []))
    retriever = None
    if context:
        from kotune.model.retrieval import Retriever, format_context

        retriever = Retriever.from_file(context)
    use_context = retriever is not None
    history: list[dict[str, str]] = []
    multi_turn = gen.template.name == "chat" or getattr(gen, "mode", None) == "chat"
    print(f"kotune chat — {model} (template {gen.template.name}{', multi-turn' if multi_turn else ''}). {HELP}", file=stdout)
    while True:
        print("\n> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history.clear()
            print("(conversation reset)", file=stdout)
            continue
        if line.startswith("/context"):
            arg = line.split()[1:] or [""]
            if retriever is None:
                print("(no --context chunks were given)", file=stdout)
            elif arg[0] in ("on", "off"):
                use_context = arg[0] == "on"
                print(f"(context {'on' if use_context else 'off'})", file=stdout)
            else:
                print("usage: /context on|off", file=stdout)
            continue
        if line == "/settings":
            print(f"template={gen.template.name} max_new_tokens={settings.max_new_tokens} temperature={settings.temperature} "
                  f"top_p={settings.top_p} repetition_penalty={settings.repetition_penalty} stop={settings.stop} "
                  f"context={'on' if use_context else 'off'} "
                  + (f"endpoint={gen.spec} mode={gen.mode}" if endpoint else f"eos_ids={gen.eos_ids}"), file=stdout)
            continue
        if line.startswith("/"):
            print(HELP, file=stdout)
            continue
        ctx = None
        if use_context and retriever is not None:
            hits = retriever.search(line, k=top_k)
            ctx = format_context(hits)
            print(f"(retrieved: {', '.join(h[0]['chunk_id'] for h in hits)})", file=stdout)
        prompt = gen.prompt(line, category=category, context=ctx, history=history if multi_turn else None)
        answer = None
        if endpoint is not None:
            answer = gen.ask(prompt, settings)
            print(answer.text, end="", file=stdout, flush=True)
        else:
            for piece in gen.stream(prompt, settings):
                if isinstance(piece, str):
                    print(piece, end="", file=stdout, flush=True)
                else:
                    answer = piece
        print(f"\n[{answer.finish_reason}, {answer.completion_tokens} tokens]", file=stdout)
        if multi_turn:
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer.text}]
