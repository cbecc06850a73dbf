"""One resolver: a model argument → everything needed to query it as it was trained.

:func:`resolve` takes a model spec (HF id, folder, kotune output, ``.gguf`` file,
builtin) plus any explicit override and decides, once, the model reference,
the whole template (system prompts included), the EOS ids, the pad id,
``trust_remote_code`` and the load options. Eval, chat, serve, export, doctor
and the ``hf:`` teacher all call it; none of them decides any of these itself.
:func:`load_model` is the one loader of "base + resized embeddings + adapters".

The template rule (documented in ``kotune chat/eval/serve --help``): a tuned run
answers in the template it was trained with. ``--template`` naming another one
is refused with one line — answering in a format the model was not trained on
is exactly the seeds' train/inference mismatch. ``--template`` applies to
models without a run of their own (plain base models).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.model.loading import (BUILTINS, GGUF_MARKER, gguf_dir, is_gguf, load_causal_lm, load_tokenizer, pick_device,
                                  pick_dtype, resolve_base)
from kotune.model.runinfo import RunInfo
from kotune.model.templates import FALLBACK_CHAT_TEMPLATE, Template, eos_ids, get_template


@dataclass
class ModelRef:
    """What a model argument points at."""

    spec: str                # as the user wrote it
    base: str                # HF id or local folder of the base weights
    adapter: str | None      # folder holding a PEFT adapter, if any
    run: RunInfo | None = None  # the run record of a kotune output


def run_base(run: RunInfo, log=print) -> str:
    """The base folder of a finished run. A GGUF base is found by the hash its record
    names, so a run keeps loading after its .gguf file moves or the cwd changes."""
    sha = run.gguf_sha256
    if sha and (gguf_dir(sha) / GGUF_MARKER).exists():
        return str(gguf_dir(sha))
    return resolve_base(run.base_model, log)


def adapter_base(folder: str | Path, log=print) -> str:
    """The base model a PEFT adapter folder names (``base_model_name_or_path``)."""
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    return resolve_base(cfg.get("base_model_name_or_path") or "", log)


def resolve_model(spec: str, log=print, *, require_finished: bool = False) -> ModelRef:
    """A HF id, a local model folder, a kotune output (base + adapter), a ``.gguf`` file or a builtin.

    ``require_finished``: a kotune output whose training has not finished (running, failed,
    killed) is refused in one line; everything that answers with a model asks for this
    (the doctor and the studio's data page read unfinished runs too)."""
    path = Path(spec)
    if spec.startswith("builtin:") or is_gguf(spec):
        return ModelRef(spec, resolve_base(spec, log), None)
    if path.exists():
        if not path.is_dir():
            raise KotuneError("a model must be a folder, a .gguf file, a Hugging Face id or a builtin: "
                              f"{', '.join(BUILTINS)}", path=spec)
        run = RunInfo.read(path)
        if run is not None:
            if require_finished:
                run = RunInfo.finished(path)
            adapter = str(path) if (path / "adapter_config.json").exists() else None
            if adapter is None and run.is_full_weights:
                return ModelRef(spec, str(path), None, run)
            if not run.base_model and adapter:  # an older record without base: the adapter names it
                return ModelRef(spec, adapter_base(path, log), adapter, run)
            return ModelRef(spec, run_base(run, log), adapter, run)
        if (path / "adapter_config.json").exists():
            return ModelRef(spec, adapter_base(path, log), str(path))
        if not (path / "config.json").exists():
            raise KotuneError("folder holds no model (no config.json, adapter_config.json or kotune.json)", path=spec)
        return ModelRef(spec, str(path), None)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise KotuneError("no such model folder", path=spec)
    return ModelRef(spec, spec, None)  # a Hugging Face id


@dataclass(frozen=True)
class LoadOptions:
    """How the weights are loaded: device, dtype and whether the model's own code may run."""

    device: str
    dtype: Any
    trust_remote_code: bool = False


@dataclass
class Resolved:
    """A model argument, decided: what to load and how to query it."""

    ref: ModelRef
    template: Template
    eos_ids: list[int]
    pad_id: int
    load: LoadOptions
    tokenizer: Any = field(repr=False)  # loaded (cheap): every user needs it

    @property
    def spec(self) -> str:
        return self.ref.spec

    @property
    def run(self) -> RunInfo | None:
        return self.ref.run

    @property
    def trust_remote_code(self) -> bool:
        return self.load.trust_remote_code


def decide_template(run: RunInfo | None, override: str | None, *, default: Template | None = None,
                    spec: str = "the model") -> Template:
    """The template rule (module docstring): the run's own, else ``--template``, else
    ``default`` (eval's compared run), else kotune's."""
    own = run.own_template if run else None
    if own is not None:
        if override is not None and override != own.name:
            raise KotuneError(f"--template {override}: {spec} was trained with template {own.name!r} and answers in "
                              "it; drop --template (it applies to plain base models only)")
        return own
    if override:  # the compared run's whole template when it is the one named
        return default if default is not None and default.name == override else get_template(override)
    return default or get_template("kotune")


def run_template(spec: str | Path) -> Template | None:
    """The template a kotune output folder was trained with (None for anything else): what a
    plain base asked beside it answers in (the default-template rule: the first run's)."""
    info = RunInfo.read(spec) if spec and Path(spec).is_dir() else None
    return info.own_template if info else None


def resolve(spec: str, *, template: str | None = None, default_template: Template | None = None,
            instruct_chat: bool = False, device: str | None = None, log: Callable[[str], None] = print,
            require_finished: bool = False, ref: ModelRef | None = None) -> Resolved:
    """Decide everything about ``spec`` (see the module docstring). Loads only the tokenizer.

    ``default_template``: the template of a model without a run and without
    ``--template`` (eval passes the compared run's, so base and tuned see
    byte-identical prompts). ``instruct_chat``: such a model that ships its own chat
    template is queried through it (the ``hf:`` teacher talking to an instruct model).
    """
    ref = ref or resolve_model(spec, log=log, require_finished=require_finished)
    run = ref.run
    tmpl = decide_template(run, template, default=default_template, spec=spec)  # refused before anything loads
    trust = run.trust_remote_code if run else False
    tokenizer = load_tokenizer(ref.adapter or ref.base, trust)
    if (instruct_chat and run is None and template is None and not spec.startswith("builtin:")
            and tokenizer.chat_template != FALLBACK_CHAT_TEMPLATE):
        tmpl = get_template("chat")
    eos = list(run.eos_token_ids) if run and run.eos_token_ids else eos_ids(tokenizer)
    # A tokenizer without pad (plain base models) is padded with EOS for generation only:
    # left padding is masked there. The tokenizer itself is not changed (export saves it).
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    dev = device or pick_device()
    return Resolved(ref, tmpl, eos, pad, LoadOptions(dev, pick_dtype(dev), trust), tokenizer)


def source_gguf(ref: ModelRef) -> Path | None:
    """The GGUF file a model's base was converted from (still there), else None: an export to
    GGUF copies its tokenizer from it, exactly as llama.cpp already reads it."""
    marker = Path(ref.base) / GGUF_MARKER
    if not marker.exists():
        return None
    source = Path(json.loads(marker.read_text(encoding="utf-8")).get("source") or "")
    return source if source.is_file() else None


def load_resolved(resolved: Resolved):
    """The model a resolved argument names: its base with its own adapter (if any) attached,
    embeddings sized to its tokenizer. What Generator and the general-ability check load."""
    adapters = [("default", resolved.ref.adapter)] if resolved.ref.adapter else []
    return load_model(resolved.ref.base, resolved.load, adapters=adapters, vocab=len(resolved.tokenizer))


def load_model(base: str, load: LoadOptions, *, adapters: list[tuple[str, str]] = (), vocab: int | None = None,
               dtype: Any = None):
    """The base weights, embeddings resized to the run's tokenizer (``vocab``: training
    added a pad token) and every ``(name, folder)`` adapter attached under ``name``.

    Why not ``AutoPeftModelForCausalLM``: it neither resizes embeddings for an added
    pad token nor loads a GGUF base from kotune's converted folder, and serve needs
    several adapters over one base.
    """
    model = load_causal_lm(base, device=load.device, trust_remote_code=load.trust_remote_code,
                           dtype=dtype if dtype is not None else load.dtype)
    if adapters:
        if vocab is not None and vocab != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(vocab)
        from peft import PeftModel

        for i, (name, folder) in enumerate(adapters):
            if i == 0:
                model = PeftModel.from_pretrained(model, folder, adapter_name=name)
            else:
                model.load_adapter(folder, adapter_name=name)
    return model.eval()
