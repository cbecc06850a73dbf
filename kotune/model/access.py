"""One way to reach a model: a model argument → a :class:`Model` that renders the prompt it
will see, answers a batch (journaled), and streams.

Every consumer of "a model answering prompts" (``kotune eval``, ``pairs``, ``chat``, the
studio's chat, the general-ability check, the ``hf:`` teacher) opens models here and
nowhere else. ``kotune serve``'s engine opens its model here too (:func:`open_shared`: one
loaded base serving several named adapters, :class:`~kotune.model.shared.SharedModel`,
through the same resolver and generator). What is decided here, once:

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

from kotune.errors import KotuneError
from kotune.model.endpoint import EndpointModel, EndpointSpec, endpoint_model, is_endpoint, probe_endpoint
from kotune.model.answers import Answer, GenerationSettings
from kotune.model.generation import Generator
from kotune.model.journal import answer_key, open_journal, read_journal, write_answer
from kotune.model.llamacpp import LlamaCppModel, LlamaCppSpec, is_llamacpp, open_llamacpp
from kotune.model.loading import (base_source, ensure_pad_token, load_causal_lm, load_tokenizer, lora_targets,
                                  module_names, pick_device, resolve_base, training_hints)
from kotune.model.openai_client import OpenAIClient, RequestFailed, read_api_keys
from kotune.model.resolve import Resolved, load_resolved, resolve, resolve_model, run_template
from kotune.model.runinfo import RunInfo
from kotune.model.shared import BASE_ALIAS, Served, SharedModel
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


def endpoint_keys(api_key_env: str | None, option: str = "--api-key-env") -> list[str]:
    """The API keys held by the comma-separated environment variables ``api_key_env`` names
    (``option``: the flag named in the one-line error when one is unset)."""
    return read_api_keys(api_key_env, option=option)


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
        api_keys = endpoint_keys(api_key_env)
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
    api_keys = endpoint_keys(api_key_env)
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


# ---------------------------------------------------------------- serve's shared model
def open_shared(model_spec: str, adapters: Sequence[tuple[str, str]] | None, *, template: str | None = None,
                device: str | None = None, log: Callable[[str], None] = print) -> SharedModel:
    """``kotune serve``'s model: ``model_spec`` loaded once with every ``(name, adapter folder)``
    attached, each name answering in its own run's template (:class:`~kotune.model.shared.SharedModel`).
    Every run is checked finished and every adapter checked against the base before anything loads."""
    return SharedModel(model_spec, adapters, template=template, device=device, log=log)


# ---------------------------------------------------------------- chat clients
def open_chat_client(url: str, model: str | None = None, *, api_keys: list[str] | None = None, name: str = "endpoint",
                     key_option: str = "--api-key-env", **limits: Any) -> OpenAIClient:
    """An OpenAI-protocol chat client for callers that write their own messages and ask them
    concurrently (the HTTP teacher's workers, the judge), where a :class:`Model` renders the
    prompt itself. ``limits``: :class:`~kotune.model.openai_client.OpenAIClient`'s retry, rate,
    timeout and connection settings. Failed requests raise :class:`RequestFailed`."""
    return OpenAIClient(url, model, api_keys=api_keys, name=name, key_option=key_option, **limits)


# ---------------------------------------------------------------- weights to train or inspect
def load_trainable(path: str, *, device: str, quantize_4bit: bool = False, trust_remote_code: bool = False,
                   tokenizer_path: str | None = None) -> tuple[Any, Any, bool]:
    """A base's tokenizer and weights to train (4-bit for QLoRA), with a pad token distinct from
    EOS: ``(tokenizer, model, added_pad)``. ``tokenizer_path``: a run's saved tokenizer (with
    the pad it added) instead of the base's."""
    tokenizer = load_tokenizer(tokenizer_path or path, trust_remote_code)
    model = load_causal_lm(path, device=device, quantize_4bit=quantize_4bit, trust_remote_code=trust_remote_code)
    if quantize_4bit and device == "cpu":
        # bitsandbytes repacks 4-bit weights into an inference-only layout on the first
        # no-grad forward on CPUs with AVX512-BF16 (an eval pass) and never unpacks them,
        # so the next training step fails ("a view of a leaf Variable ... in-place").
        for m in model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) != rows and tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= rows:
        model.resize_token_embeddings(len(tokenizer))  # a run's saved tokenizer with the pad it added
    added_pad = ensure_pad_token(tokenizer, model)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise KotuneError("pad token equals EOS after setup; EOS would be masked out of the loss")
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model, added_pad


__all__ = ["Answer", "BASE_ALIAS", "DEFAULT_BATCH_SIZE", "EndpointModel", "GenerationSettings", "LlamaCppModel", "LocalModel",
           "Model", "RequestFailed", "Served", "SharedModel", "endpoint_keys", "base_source", "is_endpoint", "is_llamacpp",
           "load_trainable", "lora_targets", "module_names", "open_chat_client", "open_model", "open_models", "open_shared",
           "pick_device", "resolve_base", "run_template", "training_hints"]
