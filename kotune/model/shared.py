"""One loaded base serving several named adapters: the model side of ``kotune serve``.

The base model is loaded once (:func:`kotune.model.resolve.load_model`); every
``(NAME, OUT)`` adapter (a kotune output) is attached to it as a named PEFT
adapter, and :meth:`SharedModel.active` switches between them. Each served name
answers in its own run's template and stops at its own EOS ids, as decided by
:func:`kotune.model.resolve.resolve` — the same prompts ``kotune eval`` and
``kotune chat`` build, through the same :class:`~kotune.model.generation.Generator`.

Why here and not in serve: loading, attaching adapters and choosing the generator
are how a model is reached, which only the model layer does
(:func:`kotune.model.access.open_shared` opens one). What a request sees — names
that do not exist, prompts too long, the lock every generation holds, the
batchers an event loop talks to — stays in :mod:`kotune.serve.engine`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from kotune.errors import KotuneError
from kotune.model.answers import Answer, GenerationSettings
from kotune.model.generation import Generator
from kotune.model.resolve import LoadOptions, Resolved, load_model, resolve, run_template
from kotune.model.templates import encode_prompt

if TYPE_CHECKING:
    from kotune.model.batching import ContinuousBatcher, Row

BASE_ALIAS = "base"


@dataclass
class Served:
    """One name the model answers to: the shared model with one adapter (or none) active."""

    name: str
    adapter: str | None          # internal PEFT adapter name; None = adapters disabled
    generator: Generator         # shares the one model; own tokenizer, template and EOS ids
    source: str                  # what the user passed (path or id), for /v1/models
    created: int = field(default_factory=lambda: int(time.time()))


def _same_model(a: str, b: str) -> bool:
    """The same HF id, or the same folder however it was written."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class SharedModel:
    """The loaded model and its served names (the base as ``model_spec`` and every adapter's name).

    Every name is decided by :func:`kotune.model.resolve.resolve` (template, EOS, pad,
    trust_remote_code), exactly as eval and chat decide it; the weights are loaded
    once by :func:`kotune.model.resolve.load_model` with every adapter attached."""

    def __init__(self, model_spec: str, adapters: Sequence[tuple[str, str]] | None = None, *,
                 template: str | None = None, device: str | None = None, log: Callable[[str], None] = print):
        adapters = list(adapters or [])
        # --template is for the --model entry when it is a plain base (refused for a run, before loading);
        # without it, a plain base answers in the first adapter's template (the format it will be
        # compared with), else kotune's: the same rule as kotune eval's (kotune.model.access.open_models).
        first = next((t for t in (run_template(p) for _, p in adapters) if t is not None), None)
        main = resolve(model_spec, template=template, default_template=first, device=device, log=log,
                       require_finished=True)
        self.device = main.load.device
        base_path = main.ref.base
        if main.ref.adapter is None and main.run and main.run.method == "merged" and (Path(model_spec) / "config.json").exists():
            base_path = str(model_spec)  # a `kotune export` folder: its own (merged) weights
        entries: list[tuple[str, Resolved]] = [(model_spec, main)]
        names = {model_spec, BASE_ALIAS}
        for name, path in adapters:
            if name in names:
                raise KotuneError(f"adapter name {name!r} is taken (the base is served as {model_spec!r} and {BASE_ALIAS!r}; "
                                  "names must be unique)")
            names.add(name)
            if not Path(path).is_dir():
                raise KotuneError("no such adapter folder", path=path)
            sub = resolve(path, device=self.device, log=log, require_finished=True)
            if sub.ref.adapter is None:
                raise KotuneError("not a LoRA adapter (a full or merged model); serve it with --model", path=path)
            if not _same_model(sub.ref.base, base_path):
                raise KotuneError(f"adapter was trained on {(sub.run.base_model if sub.run else '') or sub.ref.base}, "
                                  f"not on {model_spec}", path=path)
            entries.append((name, sub))

        log(f"loading {model_spec} on {self.device} ...")
        internal = {name: f"a{i}" for i, (name, r) in enumerate(entries) if r.ref.adapter}  # PEFT names: no dots/colons
        trust = any(r.trust_remote_code for _, r in entries)
        load = LoadOptions(self.device, main.load.dtype, trust)
        model = load_model(base_path, load, adapters=[(internal[n], r.ref.adapter) for n, r in entries if n in internal],
                           vocab=max(len(r.tokenizer) for _, r in entries))
        for name, r in entries:
            if name in internal:
                log(f"adapter {name} ← {r.ref.adapter}")
        self.model = model
        self.is_peft = bool(internal)  # then self.model is a PeftModel
        self.served: dict[str, Served] = {
            name: Served(name, internal.get(name), Generator.over(r, self.model), r.spec) for name, r in entries}
        self.base_name = model_spec
        cfg = getattr(self.model, "config", None)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None

    @contextlib.contextmanager
    def active(self, served: Served) -> Iterator[None]:
        """``served``'s adapter active (or adapters disabled for the base) while generating. The
        active adapter is model-wide state: hold the caller's lock around it."""
        if not self.is_peft:
            yield
        elif served.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(served.adapter)
            yield

    # ------------------------------------------------------------ continuous batching
    def supports_continuous(self) -> bool:
        """True when the model can be batched continuously (:func:`kotune.model.batching.supports`)."""
        from kotune.model.batching import supports  # torch at import: loaded with the model, not with the CLI

        return supports(self.model)

    def continuous_batcher(self, max_batch: int, lock: threading.Lock) -> "ContinuousBatcher":
        """The batching thread over every served name, holding ``lock`` around each running batch."""
        from kotune.model.batching import ContinuousBatcher

        return ContinuousBatcher(lambda name: self.served[name].generator, lambda name: self.active(self.served[name]),
                                 max_batch=max_batch, lock=lock)

    def row(self, name: str, prompt: str, settings: GenerationSettings, done: Callable[[Answer | BaseException], None],
            on_tokens: Callable[[list[int]], None] | None = None) -> "Row":
        """``prompt`` for ``name`` as a batcher row: encoded as ``name``'s generator encodes it."""
        from kotune.model.batching import Row

        gen = self.served[name].generator
        return Row(name, encode_prompt(gen.tokenizer, prompt, gen.template), settings, done, on_tokens)


__all__ = ["BASE_ALIAS", "Served", "SharedModel"]
