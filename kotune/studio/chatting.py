"""The studio's chat: models picked in the browser, opened once and kept
(:func:`kotune.model.access.open_model`, as ``kotune chat`` and ``kotune eval`` open them),
each answering with its own run's template, or asked over an OpenAI-compatible endpoint.

A model is named ``run:PATH`` (a training run under ROOT), ``base:SPEC`` (a base model
that a run under ROOT was trained from, or a builtin), ``openai:URL#MODEL``, or
``llamacpp:PATH.gguf`` (a GGUF export under ROOT, answered by llama.cpp). A base
model asked beside a run gets that run's template, so both see the same prompt.

Retrieval is ``kotune chat``'s (:func:`kotune.model.retrieval.retrieval_for`): a chunks file
picked in the form, for every model; else a grounded run retrieves from the chunks and
``top_k`` it recorded (when that file is under ROOT: the studio reads nothing outside it).
The passages are shown above the answer, and an answer that abstains is marked.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

from kotune.errors import KotuneError
from kotune.model.access import (Answer, GenerationSettings, Model, is_endpoint, is_llamacpp, open_model,
                                 run_template)
from kotune.model.retrieval import Retrieval, abstains, retrieval_for
from kotune.model.templates import ABSTENTION, Template
from kotune.studio.root import MODEL_LOCK, Root

BUILTINS = ("builtin:tiny-ko", "builtin:gemma-3-270m")
MAX_LOADED = 3          # models kept in memory (least recently used one goes first)
LIMITS = {"max_tokens": (1, 1024), "temperature": (0.0, 2.0), "top_p": (0.01, 1.0), "repetition_penalty": (1.0, 2.0)}
MAX_QUESTION_CHARS = 4000


@dataclass
class Loaded:
    model: Model
    lock: threading.Lock
    label: str


def check_question(question: str) -> str:
    """The question, or one line saying why it cannot be asked (before any model loads)."""
    if not question.strip():
        raise KotuneError("ask a question")
    if len(question) > MAX_QUESTION_CHARS:
        raise KotuneError(f"question: at most {MAX_QUESTION_CHARS} characters")
    return question


def settings_from(body: dict[str, Any]) -> GenerationSettings:
    """Generation settings from a request, each checked against its bounds (one line when out)."""
    def num(key: str, default: float) -> float:
        value = body.get(key, default)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise KotuneError(f"{key}: a number, got {value!r}") from None
        lo, hi = LIMITS[key]
        if not lo <= value <= hi:
            raise KotuneError(f"{key}: between {lo:g} and {hi:g}, got {value:g}")
        return value

    raw_stop = body.get("stop") or []
    if isinstance(raw_stop, str):
        raw_stop = raw_stop.splitlines()
    stop = [str(s) for s in raw_stop if str(s)][:4]
    if any(len(s) > 64 for s in stop):
        raise KotuneError("stop: each stop string at most 64 characters")
    return GenerationSettings(max_new_tokens=int(num("max_tokens", 128)), temperature=num("temperature", 0.0),
                              top_p=num("top_p", 1.0), repetition_penalty=num("repetition_penalty", 1.0),
                              stop=[s.replace("\\n", "\n") for s in stop])


MAX_TOP_K = 10


def chat_retrieval(root: Root, loaded: "Loaded", context_file: str, top_k: Any) -> Retrieval | None:
    """How the studio's chat asks ``loaded`` (module docstring): the form's chunks file (``context_file``,
    relative to ROOT; "" for none) and ``top_k`` (None or "" when not given)."""
    given = None
    if top_k not in (None, ""):
        try:
            given = max(1, min(int(top_k), MAX_TOP_K))
        except (TypeError, ValueError):
            raise KotuneError(f"top_k: a whole number, got {top_k!r}") from None
    run = loaded.model.run
    remedy = "pick a context (chunks) file"
    if context_file:
        return retrieval_for(run, name=loaded.label, context=root.path(context_file), top_k=given, remedy=remedy)
    if run is not None and run.retrieval is not None and run.retrieval.chunks and not root.inside(run.retrieval.chunks):
        raise KotuneError(f"model {loaded.label}: a grounded run whose chunks file is outside the studio root; {remedy}")
    return retrieval_for(run, name=loaded.label, top_k=given, remedy=remedy)


def answer_abstains(loaded: "Loaded", text: str) -> bool:
    """Whether ``text`` declines to answer (the run's own sentence, else the default one, or a refusal)."""
    run = loaded.model.run
    return abstains(text, run.abstention if run is not None and run.abstention else ABSTENTION)


class ChatModels:
    def __init__(self, root: Root):
        self.root = root
        self._loaded: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self, outputs: list[Any]) -> list[dict[str, str]]:
        """What the chat page offers: the base models runs under ROOT came from, every finished
        run (its own template), then the GGUF files under ROOT (``kotune export --format gguf``,
        answered by llama.cpp; a LoRA adapter file kept apart is not a model of its own)."""
        bases, runs = [], []
        for o in outputs:
            for m in o.models:
                if m.status != "finished" or m.info is None:
                    continue
                runs.append({"id": f"run:{m.rel}", "label": m.rel, "template": m.info.template.name if m.info.template else ""})
                if m.info.base_model and m.info.base_model not in bases:
                    bases.append(m.info.base_model)
        ggufs = [{"id": f"llamacpp:{rel}", "label": f"{rel} (llama.cpp)", "template": ""}
                 for rel in self.root.files("*.gguf") if not rel.endswith(".lora.gguf")]
        return [{"id": f"base:{b}", "label": b, "template": ""} for b in bases] + runs + ggufs

    def _allowed_bases(self) -> set[str]:
        bases = set(BUILTINS)
        for o in self.root.scan():
            bases.update(m.info.base_model for m in o.models if m.info and m.info.base_model)
        return bases

    def _template_of(self, run_id: str) -> Template | None:
        """The template of the run ``run:PATH`` names: what a base asked beside it answers in."""
        if not run_id.startswith("run:"):
            return None
        return run_template(str(self.root.path(run_id[4:])))

    def get(self, model_id: str, template_from: str = "") -> Loaded:
        """The model named ``model_id``, loaded (or opened) once and cached."""
        key = (model_id, template_from if model_id.startswith("base:") else "")
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        with MODEL_LOCK:
            loaded = self._open(model_id, template_from)
        with self._lock:
            self._loaded[key] = loaded
            while len(self._loaded) > MAX_LOADED:
                self._loaded.popitem(last=False)
        return loaded

    def _open(self, model_id: str, template_from: str) -> Loaded:
        quiet = lambda *_: None  # noqa: E731
        if model_id.startswith("run:"):  # open_model refuses a run still training, failed or killed
            folder = self.root.path(model_id[4:])
            return Loaded(open_model(str(folder), log=quiet), threading.Lock(), model_id[4:])
        if model_id.startswith("base:"):
            spec = model_id[5:]
            if spec not in self._allowed_bases():
                raise KotuneError(f"{spec}: not a base model of a run under the studio root")
            return Loaded(open_model(spec, default_template=self._template_of(template_from), log=quiet),
                          threading.Lock(), spec)
        if is_endpoint(model_id):
            return Loaded(open_model(model_id, default_template=self._template_of(template_from)), threading.Lock(),
                          model_id)
        if is_llamacpp(model_id):  # a GGUF file under ROOT (the studio reads nothing outside it)
            rel, sep, mode = model_id[len("llamacpp:"):].partition("?")
            spec = f"llamacpp:{self.root.path(rel)}{sep}{mode}"
            return Loaded(open_model(spec, default_template=self._template_of(template_from)), threading.Lock(),
                          model_id)
        raise KotuneError(f"{model_id}: pick a model (run:PATH, base:MODEL, openai:URL#MODEL or llamacpp:PATH.gguf)")

    def answer(self, loaded: Loaded, question: str, settings: GenerationSettings, context: str | None) -> Iterator[str | Answer]:
        """Pieces of the answer as they come (a local model's, or an endpoint's ``stream: true``
        events), then the Answer."""
        check_question(question)
        model = loaded.model
        prompt = model.prompt(question, context=context)
        with loaded.lock:  # one answer at a time per model; different models answer together
            yield from model.stream(prompt, settings)
