"""Models behind an OpenAI-compatible server (vLLM, kotune serve, hosted APIs), queried as local ones are.

A model argument ``openai:URL#MODEL`` (optionally ``openai:URL#MODEL@RUN``, RUN
being the kotune run or export folder the server serves, and ``?mode=completions``
or ``?mode=chat`` to force the mode) is an endpoint model. It gets the same prompt
a local model would:

- **completions** mode: the template is rendered here and sent to
  ``/v1/completions`` when the endpoint serves a kotune run with an instruction
  template — named by ``@RUN`` (a merged ``kotune export`` under vLLM), or
  announced by kotune serve in ``/v1/models``. A plain base behind kotune serve
  is asked in the compared run's template, exactly as a local base is.
- **chat** mode: other models (hosted APIs, instruct models, chat-template
  runs) get ``/v1/chat/completions`` with the template's system prompt and
  messages.

The mode is decided once per model (:func:`endpoint_model`) and recorded in
``metrics.json``. Answers are journaled as they arrive (``OUT/.answers-NAME.jsonl``,
fsynced), so a killed evaluation of thousands of questions resumes without
asking again. Requests go through the one client, :class:`kotune.model.openai_client.OpenAIClient`
(workers, API keys from environment variables, per-key rate limits, retries
honouring ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from kotune.errors import KotuneError
from kotune.model.answers import Answer, GenerationSettings
from kotune.model.journal import answer_key, open_journal, read_journal, write_answer
from kotune.model.openai_client import OpenAIClient, RequestFailed
from kotune.model.resolve import decide_template
from kotune.model.runinfo import RunInfo
from kotune.model.templates import Template

PREFIX = "openai:"
MODES = ("completions", "chat")


@dataclass(frozen=True)
class EndpointSpec:
    url: str
    model: str
    run: str | None = None   # the kotune run (or export) folder the endpoint serves
    mode: str | None = None  # forced: "completions" (e.g. a base model behind vLLM) or "chat"

    @classmethod
    def parse(cls, spec: str) -> "EndpointSpec | None":
        """``openai:URL#MODEL[@RUN][?mode=completions|chat]`` → the spec; None for anything else."""
        if not spec.startswith(PREFIX):
            return None
        url, sep, rest = spec[len(PREFIX):].rpartition("#")
        if not sep or not url or not rest:
            raise KotuneError(f"{spec}: an endpoint model is openai:URL#MODEL (e.g. openai:http://127.0.0.1:8000/v1#policy)")
        rest, _, query = rest.partition("?mode=")
        model, _, run = rest.partition("@")
        if not re.match(r"^https?://", url):
            raise KotuneError(f"{spec}: the endpoint URL must start with http:// or https://")
        if query and query not in MODES:
            raise KotuneError(f"{spec}: unknown mode {query!r}; one of {', '.join(MODES)}")
        return cls(url, model, run or None, query or None)

    def __str__(self) -> str:
        return (f"{PREFIX}{self.url}#{self.model}" + (f"@{self.run}" if self.run else "")
                + (f"?mode={self.mode}" if self.mode else ""))


def is_endpoint(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass
class EndpointModel:
    """One endpoint model, decided: where to ask, in which mode, with which template."""

    name: str
    spec: EndpointSpec
    mode: str
    template: Template
    run: RunInfo | None
    own_template: bool = False  # the template is the served run's (@RUN or announced), not the caller's
    api_keys: list[str] = field(default_factory=list)
    workers: int = 8
    rpm: float | None = None
    requests: int = 0          # requests sent by the last answer() (resumed answers are not asked again)

    # ------------------------------------------------------------ prompts
    def prompt(self, question: str, input: str = "", *, category: str = "", context: str | None = None,
               history: list[dict[str, str]] | None = None) -> Any:
        """What is sent: the rendered prompt (completions) or the messages (chat, with ``history``)."""
        if self.mode == "completions":
            return self.template.prompt(question, input, category=category, context=context)
        return self.template.messages(question, input, category=category, context=context, history=history)

    @property
    def multi_turn(self) -> bool:
        """Chat mode keeps the conversation (the server's chat template sees every turn)."""
        return self.mode == "chat"

    # ------------------------------------------------------------ answers
    def answer(self, prompts: list[Any], settings: GenerationSettings, *, journal: Path | None = None,
               on_done: Callable[[int], None] | None = None) -> list[Answer]:
        """Every prompt's answer, in order, ``workers`` requests at a time; answers already in
        ``journal`` are not asked again and new ones are appended as they arrive."""
        done = read_journal(journal)
        keys = [answer_key(p, settings) for p in prompts]
        todo = [(i, p) for i, (p, k) in enumerate(zip(prompts, keys)) if k not in done]
        if on_done and len(prompts) > len(todo):
            on_done(len(prompts) - len(todo))
        if todo:
            f = open_journal(journal) if journal is not None else None
            try:
                asyncio.run(self._ask_all(todo, keys, settings, f, done, on_done))
            finally:
                if f is not None:
                    f.close()
        self.requests = len(todo)
        return [done[k] for k in keys]

    async def _ask_all(self, todo, keys, settings: GenerationSettings, f, done: dict[str, Answer],
                       on_done: Callable[[int], None] | None) -> None:
        client = self._client()
        gate = asyncio.Semaphore(self.workers)

        async def one(i: int, prompt: Any) -> None:
            async with gate:
                answer = await self._ask(client, prompt, settings)
            done[keys[i]] = answer
            if f is not None:
                write_answer(f, keys[i], answer)
            if on_done:
                on_done(1)

        async with client:
            try:
                await asyncio.gather(*(one(i, p) for i, p in todo))
            except RequestFailed as e:
                raise KotuneError(f"model {self.name} ({self.spec}): {e}") from None

    def stream(self, prompt: Any, settings: GenerationSettings) -> Iterator[str | Answer]:
        """One answer's pieces as the server streams them, then the Answer (kotune studio's chat),
        as :meth:`kotune.model.generation.Generator.stream` yields a local model's."""
        pieces: queue.Queue = queue.Queue()
        endpoint, body = self._request(prompt, settings)

        async def run() -> None:
            async with self._client() as client:
                async for event in client.stream(endpoint, {**body, "stream_options": {"include_usage": True}}):
                    pieces.put(event)

        def work() -> None:
            try:
                asyncio.run(run())
            except RequestFailed as e:
                pieces.put(KotuneError(f"model {self.name} ({self.spec}): {e}"))
            except BaseException as e:  # noqa: BLE001 - surfaced in the caller's thread
                pieces.put(e)
            pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        text: list[str] = []
        finish, usage = None, {}
        while (event := pieces.get()) is not None:
            if isinstance(event, BaseException):
                raise event
            choice = (event.get("choices") or [{}])[0]
            piece = choice.get("text") if self.mode == "completions" else (choice.get("delta") or {}).get("content")
            if piece:
                text.append(piece)
                yield piece
            finish = choice.get("finish_reason") or finish
            usage = event.get("usage") or usage
        yield self._answer("".join(text), finish, usage, settings)

    def _request(self, prompt: Any, settings: GenerationSettings) -> tuple[str, dict[str, Any]]:
        """The endpoint and body that ask for ``prompt`` with ``settings``."""
        body: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
        if settings.temperature > 0:
            body["top_p"] = settings.top_p
            if settings.seed is not None:
                body["seed"] = settings.seed
        if settings.stop:
            body["stop"] = list(settings.stop)
        if settings.repetition_penalty != 1.0:
            body["repetition_penalty"] = settings.repetition_penalty  # vLLM's extension of the API
        if self.mode == "completions":
            return "completions", {**body, "prompt": prompt}
        return "chat/completions", {**body, "messages": prompt}

    async def _ask(self, client: OpenAIClient, prompt: Any, settings: GenerationSettings) -> Answer:
        endpoint, body = self._request(prompt, settings)
        data = await client.post(endpoint, body)
        if self.mode == "completions":
            text = data["choices"][0].get("text") or ""
        else:
            text = data["choices"][0]["message"].get("content") or ""
        return self._answer(text, data["choices"][0].get("finish_reason"), data.get("usage") or {}, settings)

    @staticmethod
    def _answer(text: Any, finish: str | None, usage: dict[str, Any], settings: GenerationSettings) -> Answer:
        # OpenAI says "stop" for EOS and for a stop string alike; without stop strings it is EOS.
        finish = finish or "stop"
        reason = "length" if finish == "length" else ("stop" if settings.stop else "eos")
        return Answer(str(text).strip(), reason, int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0))

    def _client(self) -> OpenAIClient:
        return OpenAIClient(self.spec.url, self.spec.model, api_keys=self.api_keys, rpm=self.rpm,
                            max_connections=self.workers, name=f"model {self.name}:")

    def close(self) -> None:
        """Nothing is held between requests (every answer opens its own connections)."""

    def describe(self) -> dict[str, Any]:
        """How the model was asked (metrics.json ``models.NAME.endpoint``)."""
        return {"url": self.spec.url, "model": self.spec.model, "run": self.spec.run, "mode": self.mode,
                "template": self.template.name, "requests": self.requests}


@dataclass
class Probed:
    """An endpoint checked (reachable, key accepted, model served) and what it says of itself:
    the kotune run behind it (``@RUN``, or announced by kotune serve in ``/v1/models``)."""

    name: str
    spec: EndpointSpec
    run: RunInfo | None              # the record named by @RUN
    own: RunInfo | None              # the run whose template the endpoint answers in (@RUN or announced)
    announced: bool

    @property
    def own_template(self) -> Template | None:
        return self.own.own_template if self.own else None


def probe_endpoint(name: str, spec: EndpointSpec, *, api_keys: list[str] | None = None) -> Probed:
    """Check the endpoint before any generation: else one error line naming the model."""
    run = None
    if spec.run:
        run = RunInfo.read(spec.run)
        if run is None:
            raise KotuneError(f"model {name}: {spec.run} is not a kotune run or export (no kotune.json)")
    client = OpenAIClient(spec.url, spec.model, api_keys=list(api_keys or []), name=f"model {name}:")

    async def listed() -> list[dict[str, Any]]:
        async with client:
            return await client.list_models()

    models = asyncio.run(listed())
    entry = next((m for m in models if m["id"] == spec.model), None)
    if entry is None:
        served = ", ".join(m["id"] for m in models) or "nothing"
        raise KotuneError(f"model {name}: {spec.url} does not serve {spec.model!r} (it serves: {served})")
    announced = entry.get("kotune") if isinstance(entry.get("kotune"), dict) else None
    own = run if run is not None else (RunInfo(template=announced["template"])  # a run behind kotune serve
                                       if announced and announced.get("template") else None)
    return Probed(name, spec, run, own, announced is not None)


def endpoint_model(probed: Probed, *, template: str | None, default_template: Template | None,
                   api_keys: list[str] | None = None, workers: int = 8, rpm: float | None = None) -> EndpointModel:
    """The endpoint's mode and template, decided once (module docstring)."""
    spec, name = probed.spec, probed.name
    tmpl = decide_template(probed.own, template, default=default_template, spec=str(spec))
    # The prompt is rendered here only for a server that serves it as trained: a run named
    # by @RUN, or kotune serve (which announces itself); chat templates need the server's tokenizer.
    served_as_trained = probed.run is not None or probed.announced
    mode = spec.mode or ("completions" if served_as_trained and not tmpl.is_chat else "chat")
    if mode == "completions" and tmpl.is_chat:
        raise KotuneError(f"model {name}: the chat template is rendered by the server's tokenizer: use ?mode=chat")
    return EndpointModel(name, spec, mode, tmpl, probed.run, probed.own is not None, list(api_keys or []),
                         max(1, workers), rpm)


__all__ = ["EndpointModel", "EndpointSpec", "MODES", "PREFIX", "Probed", "endpoint_model", "is_endpoint",
           "probe_endpoint"]
