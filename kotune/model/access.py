"""One way to reach a model: a model argument → a :class:`Model` that renders the prompt it
will see, answers a batch (journaled), and streams.

Every consumer of "a model answering prompts" (``kotune eval``, ``pairs``, ``chat``, the
studio's chat, the general-ability check, the ``hf:`` teacher) opens models here and
nowhere else; ``kotune serve``'s engine is the local backend's serving loop and uses the
same resolver and generator underneath. What is decided here, once:

- **which backend**: ``openai:URL#MODEL`` is an :class:`~kotune.model.endpoint.EndpointModel`,
  ``llamacpp:FILE.gguf`` the same over llama.cpp running in this process
  (:class:`~kotune.model.llamacpp.LlamaCppModel`), anything else (HF id, folder, kotune output, ``.gguf`` file, builtin) a :class:`LocalModel`;
- **the finished-run check**: a kotune output whose training is running, failed or was
  killed is refused in one line before anything loads (it would otherwise load the base
  with the run's template and answer as if tuned);
- **the template** (:func:`kotune.model.resolve.decide_template`): a run answers in its own;
  a plain base answers in ``--template``, else in the template of the first run among the
  models opened together (:func:`open_models`: local runs first, then endpoints that serve a
  run), else kotune's — so base and tuned see byte-identical prompts;
- **EOS and pad**: read from the run (:func:`kotune.model.resolve.resolve`), never re-derived;
- **the journal**: every batch of answers can be journaled (:mod:`kotune.model.journal`), so
  a killed job resumes without asking an answered prompt again, local or endpoint alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from kotune.model.endpoint import EndpointModel, EndpointSpec, endpoint_model, is_endpoint, probe_endpoint
from kotune.model.answers import Answer, GenerationSettings
from kotune.model.generation import Generator
from kotune.model.journal import answer_key, open_journal, read_journal, write_answer
from kotune.model.llamacpp import LlamaCppModel, LlamaCppSpec, is_llamacpp, open_llamacpp
from kotune.model.openai_client import read_api_keys
from kotune.model.resolve import Resolved, load_resolved, resolve, resolve_model, run_template
from kotune.model.runinfo import RunInfo
from kotune.model.templates import Template

DEFAULT_BATCH_SIZE = 16


@runtime_checkable
class Model(Protocol):
    """A model that answers prompts, whatever serves it."""

    name: str
    spec: Any            # the model argument (an EndpointSpec for endpoints)
    template: Template
    mode: str            # "local", or an endpoint's "completions" | "chat"
    requests: int        # prompts actually asked by the last answer() (journaled ones are not)

    @property
    def run(self) -> RunInfo | None:
        """The record of the kotune run behind the model (a local run, or an endpoint's ``@RUN``); None for
        a plain base."""

    @property
    def multi_turn(self) -> bool: ...

    def prompt(self, question: str, input: str = "", *, category: str = "", context: str | None = None,
               history: list[dict[str, str]] | None = None) -> Any: ...

    def answer(self, prompts: Sequence[Any], settings: GenerationSettings, *, journal: Path | None = None,
               on_done: Callable[[int], None] | None = None) -> list[Answer]: ...

    def stream(self, prompt: Any, settings: GenerationSettings) -> Iterator[str | Answer]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalModel:
    """A model loaded in this process (base, base + adapter, full or merged run), with the
    template, EOS and pad its run decided. The weights load on the first answer and are
    freed by :meth:`close`; the tokenizer is loaded at once (prompts need it)."""

    mode = "local"

    def __init__(self, name: str, resolved: Resolved, *, batch_size: int = DEFAULT_BATCH_SIZE):
        self.name = name
        self.resolved = resolved
        self.template: Template = resolved.template
        self.batch_size = batch_size
        self.requests = 0
        self._generator: Generator | None = None

    @property
    def spec(self) -> str:
        return self.resolved.spec

    @property
    def run(self) -> RunInfo | None:
        return self.resolved.run

    @property
    def eos_ids(self) -> list[int]:
        return list(self.resolved.eos_ids)

    @property
    def device(self) -> str:
        return self.resolved.load.device

    @property
    def tokenizer(self) -> Any:
        return self.resolved.tokenizer

    @property
    def multi_turn(self) -> bool:
        return self.template.is_chat

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = Generator.over(self.resolved, load_resolved(self.resolved))
        return self._generator

    def prompt(self, question: str, input: str = "", *, category: str = "", context: str | None = None,
               history: list[dict[str, str]] | None = None) -> str:
        return self.template.prompt(question, input, category=category, context=context,
                                    tokenizer=self.resolved.tokenizer, history=history)

    def answer(self, prompts: Sequence[str], settings: GenerationSettings, *, journal: Path | None = None,
               on_done: Callable[[int], None] | None = None) -> list[Answer]:
        """Every prompt's answer, in order, batch by batch; with ``journal``, answers already
        there are not generated again and each batch is appended (fsynced) when it is done."""
        done = read_journal(journal)
        keys = [answer_key(p, settings) for p in prompts]
        todo = [i for i, k in enumerate(keys) if k not in done]
        if on_done and len(prompts) > len(todo):
            on_done(len(prompts) - len(todo))
        self.requests = len(todo)
        if todo:
            f = open_journal(journal) if journal is not None else None
            try:
                # One batch per journal write: a kill loses at most the batch in flight. Sorting
                # by length keeps batches tight; a sampled answer's seed is per call, so a
                # resumed run generates the remaining prompts as a fresh call would.
                todo.sort(key=lambda i: len(prompts[i]))
                for start in range(0, len(todo), self.batch_size):
                    idx = todo[start:start + self.batch_size]
                    answers = self.generator.generate([prompts[i] for i in idx], settings, batch_size=self.batch_size)
                    for i, a in zip(idx, answers):
                        done[keys[i]] = a
                        if f is not None:
                            write_answer(f, keys[i], a)
                    if on_done:
                        on_done(len(idx))
            finally:
                if f is not None:
                    f.close()
        return [done[k] for k in keys]

    def stream(self, prompt: str, settings: GenerationSettings) -> Iterator[str | Answer]:
        return self.generator.stream(prompt, settings)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "template": self.template.name, "eos_ids": self.eos_ids,
                "device": self.device}

    def close(self) -> None:
        self._generator = None


def _keys(api_key_env: str | None) -> list[str]:
    """The API keys held by the comma-separated environment variables ``--api-key-env`` names."""
    return read_api_keys(api_key_env, option="--api-key-env") if api_key_env else []


def open_model(spec: str, *, name: str | None = None, template: str | None = None,
               default_template: Template | None = None, api_key_env: str | None = None, workers: int = 8,
               rpm: float | None = None, instruct_chat: bool = False, device: str | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, log: Callable[[str], None] = print) -> Model:
    """One model argument → its :class:`Model` (module docstring). ``default_template``: the
    template of a plain base without ``--template`` (the compared run's); ``api_key_env``: the
    environment variable(s) holding an endpoint's API keys."""
    name = name or spec
    gguf = LlamaCppSpec.parse(spec)
    if gguf is not None:
        return open_llamacpp(name, gguf, template=template, default_template=default_template, workers=workers)
    endpoint = EndpointSpec.parse(spec)
    if endpoint is not None:
        api_keys = _keys(api_key_env)
        return endpoint_model(probe_endpoint(name, endpoint, api_keys=api_keys), template=template,
                              default_template=default_template, api_keys=api_keys, workers=workers, rpm=rpm)
    resolved = resolve(spec, template=template, default_template=default_template, instruct_chat=instruct_chat,
                       device=device, log=log, require_finished=True)
    return LocalModel(name, resolved, batch_size=batch_size)


def open_models(models: Sequence[tuple[str, str]], *, template: str | None = None, api_key_env: str | None = None,
                workers: int = 8, rpm: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                log: Callable[[str], None] = print) -> dict[str, Model]:
    """Models compared on the same prompts, ``(name, spec)`` each, every one checked before
    any answers (a bad path, an unfinished run, a refused ``--template``, an endpoint that
    cannot answer: one line). A plain base answers in the first run's template (module
    docstring)."""
    api_keys = _keys(api_key_env)
    endpoints = {n: EndpointSpec.parse(s) for n, s in models}
    ggufs = {n: LlamaCppSpec.parse(s) for n, s in models}
    refs = {n: resolve_model(s, log=log, require_finished=True) for n, s in models
            if endpoints[n] is None and ggufs[n] is None}
    probed = {n: probe_endpoint(n, e, api_keys=api_keys) for n, e in endpoints.items() if e is not None}
    owns = [r.run.own_template for r in refs.values() if r.run and r.run.own_template]
    owns += [p.own_template for p in probed.values() if p.own_template]
    shared = owns[0] if owns else None
    opened: dict[str, Model] = {}
    for n, s in models:
        if ggufs[n] is not None:
            opened[n] = open_llamacpp(n, ggufs[n], template=template, default_template=shared, workers=workers)
        elif n in probed:
            opened[n] = endpoint_model(probed[n], template=template, default_template=shared, api_keys=api_keys,
                                       workers=workers, rpm=rpm)
        else:
            opened[n] = LocalModel(n, resolve(s, template=template, default_template=shared, ref=refs[n], log=log),
                                   batch_size=batch_size)
    return opened


__all__ = ["Answer", "DEFAULT_BATCH_SIZE", "EndpointModel", "GenerationSettings", "LlamaCppModel", "LocalModel", "Model",
           "is_endpoint", "is_llamacpp", "open_model", "open_models", "run_template"]
