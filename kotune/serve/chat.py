"""``kotune chat``: an interactive terminal chat that streams answers.

Any model argument works (:func:`kotune.model.access.open_model`): a run answers in its
own template, a plain base in ``--template``; ``openai:URL#MODEL`` is asked as ``kotune
eval`` asks it, and streams too. A run whose training has not finished is refused in one
line. Multi-turn history is kept where the model takes a conversation (chat templates,
endpoints in chat mode); instruction templates answer each question on its own.
With ``--context CHUNKS`` each question is asked with the passages retrieved for it
(:class:`kotune.model.retrieval.Retrieval`, as eval and serve retrieve); without it a grounded
run retrieves from the chunks and ``top_k`` it recorded (:func:`kotune.model.retrieval.retrieval_for`).
An answer that abstains (the run's sentence, or a refusal: :func:`kotune.model.retrieval.abstains`)
is marked so.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from kotune.model.access import Answer, GenerationSettings, open_model
from kotune.model.retrieval import abstains, retrieval_for
from kotune.model.templates import ABSTENTION

if TYPE_CHECKING:
    from kotune.options import ChatOptions

HELP = "commands: /reset (forget the conversation), /context on|off, /settings, /exit"


def run_chat(options: "ChatOptions", *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    model = open_model(options.model, template=options.template, api_key_env=options.api_key_env,
                       log=lambda m: print(m, file=sys.stderr))
    settings = GenerationSettings(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                  top_p=options.top_p, repetition_penalty=options.repetition_penalty,
                                  stop=list(options.stop or []))
    retrieval = retrieval_for(model.run, name=options.model, context=options.context, top_k=options.given("top_k"))
    use_context = retrieval is not None
    sentence = model.run.abstention if model.run and model.run.abstention else ABSTENTION
    history: list[dict[str, str]] = []
    multi_turn = model.multi_turn
    print(f"kotune chat — {options.model} (template {model.template.name}{', multi-turn' if multi_turn else ''}). "
          f"{HELP}", file=stdout)
    if retrieval is not None:
        print(f"(retrieving {retrieval.k} passages per question from {retrieval.source}"
              f"{', as the run was trained' if retrieval.from_run else ''})", file=stdout)
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
            if retrieval is None:
                print("(no --context chunks were given)", file=stdout)
            elif arg[0] in ("on", "off"):
                use_context = arg[0] == "on"
                print(f"(context {'on' if use_context else 'off'})", file=stdout)
            else:
                print("usage: /context on|off", file=stdout)
            continue
        if line == "/settings":
            described = model.describe()
            where = (f"endpoint={described.get('url')}#{described.get('model')} mode={model.mode}" if model.mode != "local"
                     else f"eos_ids={described.get('eos_ids')}")
            print(f"template={model.template.name} max_new_tokens={settings.max_new_tokens} "
                  f"temperature={settings.temperature} top_p={settings.top_p} "
                  f"repetition_penalty={settings.repetition_penalty} stop={settings.stop} "
                  f"context={'on' if use_context else 'off'} {where}", file=stdout)
            continue
        if line.startswith("/"):
            print(HELP, file=stdout)
            continue
        ctx = None
        if use_context and retrieval is not None:
            passages = retrieval.passages(line)
            ctx = passages.text or None
            print(f"(retrieved: {', '.join(passages.chunk_ids)})", file=stdout)
        prompt = model.prompt(line, category=options.category, context=ctx, history=history if multi_turn else None)
        answer: Any = None
        for piece in model.stream(prompt, settings):
            if isinstance(piece, Answer):
                answer = piece
            else:
                print(piece, end="", file=stdout, flush=True)
        declined = ", abstained" if ctx and abstains(answer.text, sentence) else ""
        print(f"\n[{answer.finish_reason}, {answer.completion_tokens} tokens{declined}]", file=stdout)
        if multi_turn:
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer.text}]
