"""The serving engine: one shared model, its served names, and the batchers every request goes through.

The model is opened by :func:`kotune.model.access.open_shared`: the base loaded once,
every ``--adapter NAME=OUT`` (a kotune output) attached to it as a named PEFT
adapter and switched per batch, each served name answering in its own run's
template and stopping at its own EOS ids
(:class:`~kotune.model.shared.SharedModel`). What is serving stays here: a
request's model name (404), its length (400), the lock every generation holds,
and the batchers the event loop talks to.

Concurrency: the event loop only parses, validates and answers. Generation
runs in one thread. For full-attention decoders (GPT-NeoX, Llama, Qwen2, ...)
it is :class:`~kotune.model.batching.ContinuousBatcher` (:class:`LiveBatcher` here):
every request, streaming or not, joins the running batch at the next decode
step and leaves it when it is done. Other models use :class:`Batcher`:
requests collected for up to ``batch_wait_ms`` (or until ``max_batch``
prompts) are grouped by model and sampling settings, and each group is one
batched ``generate``; streaming requests then run in their own thread. Every
generation holds the engine's lock, because the active adapter is model-wide
state.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator

from kotune.errors import KotuneError
from kotune.model.access import BASE_ALIAS, Served, SharedModel, open_shared
from kotune.model.answers import Answer, GenerationSettings, TextPieces, find_stop
from kotune.model.templates import encode_prompt
from kotune.serve.protocol import ApiError


def parse_adapter_args(items: list[str] | None) -> list[tuple[str, str]]:
    """``NAME=PATH`` (or a bare PATH, named after its folder) → ``[(name, path)]``."""
    out: list[tuple[str, str]] = []
    for item in items or []:
        for part in item.split():
            name, sep, path = part.partition("=")
            if not sep:
                name, path = Path(part).name, part
            if not name or not path:
                raise KotuneError(f"--adapter takes NAME=PATH, got {part!r}")
            out.append((name, path))
    return out


class Engine:
    """The shared model (:class:`~kotune.model.shared.SharedModel`), its served names, and the
    lock every generation holds."""

    def __init__(self, model_spec: str, adapters: list[tuple[str, str]] | None = None, *, template: str | None = None,
                 device: str | None = None, log=print):
        self.shared: SharedModel = open_shared(model_spec, adapters, template=template, device=device, log=log)
        self.lock = threading.Lock()

    # ------------------------------------------------------------ the shared model
    @property
    def served(self) -> dict[str, Served]:
        return self.shared.served

    @property
    def model(self) -> Any:
        return self.shared.model

    @property
    def max_context(self) -> int | None:
        return self.shared.max_context

    @property
    def base_name(self) -> str:
        return self.shared.base_name

    def supports_continuous(self) -> bool:
        """Whether the model can be batched continuously (then :class:`LiveBatcher`)."""
        return self.shared.supports_continuous()

    def active(self, served: Served) -> ContextManager[None]:
        """``served``'s adapter active (or adapters disabled for the base); hold :attr:`lock` around it."""
        return self.shared.active(served)

    # ------------------------------------------------------------ lookup
    @property
    def names(self) -> list[str]:
        return list(self.served)

    def get(self, name: Any) -> Served:
        if isinstance(name, str):
            if name == BASE_ALIAS and BASE_ALIAS not in self.served:
                return self.served[self.base_name]
            if name in self.served:
                return self.served[name]
        available = ", ".join(self.names + ([BASE_ALIAS] if BASE_ALIAS not in self.served else []))
        raise ApiError(404, f"The model {name!r} does not exist. Available models: {available}",
                       param="model", code="model_not_found")

    # ------------------------------------------------------------ generation (call with nothing held)
    def check_length(self, served: Served, prompt: str, max_new_tokens: int) -> None:
        """400 when prompt + max_tokens cannot fit the model's context (fast tokenizers
        encode concurrently without trouble; nothing here changes tokenizer state)."""
        if self.max_context is None:
            return
        n = len(encode_prompt(served.generator.tokenizer, prompt, served.generator.template))
        if n + max_new_tokens > self.max_context:
            raise ApiError(400, f"This model's maximum context length is {self.max_context} tokens; the prompt has {n} "
                           f"and max_tokens is {max_new_tokens}.", param="messages", code="context_length_exceeded")

    def generate(self, name: str, prompts: list[str], settings: GenerationSettings, batch_size: int = 16) -> list[Answer]:
        """One batched generation with ``name``'s adapter active."""
        served = self.served[name]
        with self.lock, self.active(served):
            return served.generator.generate(prompts, settings, batch_size=batch_size)

    def score(self, name: str, prompts: list[str | list[int]], top: int, max_tokens: int) -> list[dict[str, Any]]:
        """Each prompt's token log-probabilities under ``name`` (OpenAI ``echo`` + ``logprobs``):
        per token its log-prob given the tokens before it (None for the first) and the ``top``
        likeliest tokens there; with ``max_tokens`` 1, one greedy next token after them.
        Text prompts are tokenized as the tokenizer does by default (BOS where it adds one)."""
        import torch

        served = self.served[name]
        tok = served.generator.tokenizer
        out = []
        with self.lock, self.active(served), torch.no_grad():
            for prompt in prompts:
                ids = list(tok(prompt)["input_ids"]) if isinstance(prompt, str) else list(prompt)
                if not ids:
                    raise ApiError(400, "empty prompt", param="prompt")
                if self.max_context is not None and len(ids) + max_tokens > self.max_context:
                    raise ApiError(400, f"This model's maximum context length is {self.max_context} tokens; the prompt "
                                   f"has {len(ids)}.", param="prompt", code="context_length_exceeded")
                if max(ids) >= self.model.get_input_embeddings().weight.shape[0] or min(ids) < 0:
                    raise ApiError(400, "token id out of the model's vocabulary", param="prompt")
                x = torch.tensor([ids], device=self.model.device)
                logp = torch.log_softmax(self.model(input_ids=x).logits[0].float(), dim=-1)
                seq = ids + ([int(logp[-1].argmax())] if max_tokens else [])
                token_logprobs: list[float | None] = [None]
                top_logprobs: list[dict[str, float] | None] = [None]
                for t in range(1, len(seq)):
                    row = logp[t - 1]
                    token_logprobs.append(float(row[seq[t]]))
                    if top:
                        values, idx = row.topk(top)
                        entry: dict[str, float] = {}
                        for v, i in zip(values.tolist(), idx.tolist()):
                            entry.setdefault(tok.decode([i]), v)
                        top_logprobs.append(entry)
                    else:
                        top_logprobs.append(None)
                tokens = [tok.decode([i]) for i in seq]
                offsets, pos = [], 0
                for piece in tokens:
                    offsets.append(pos)
                    pos += len(piece)
                out.append({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                            "text_offset": offsets, "text": "".join(tokens), "prompt_tokens": len(ids)})
        return out

    def logprobs(self, name: str, prompt: str, answer: Answer, settings: GenerationSettings,
                 top: int) -> list[tuple[int, float, list[tuple[int, float]]]]:
        """Each answer token's log-probability under ``name`` given the prompt and the tokens
        before it, with the ``top`` likeliest tokens there: one forward pass over prompt +
        answer, the raw model's distribution (before temperature, top-p and repetition
        penalty). The tokens are the answer's content: up to EOS, and up to the token that
        completes the text before a stop string. Waits for the engine's lock (the adapter)."""
        import torch

        served = self.served[name]
        gen = served.generator
        tokens = content_tokens(gen.tokenizer, answer, settings.stop)
        if not tokens:
            return []
        ids = encode_prompt(gen.tokenizer, prompt, gen.template)
        with self.lock, self.active(served), torch.no_grad():
            x = torch.tensor([ids + tokens], device=self.model.device)
            # logits of the last len(tokens)+1 positions; the last one predicts past the answer
            logits = self.model(input_ids=x, logits_to_keep=len(tokens) + 1).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
            if top:
                values, idx = logp.topk(top, dim=-1)
                tops = [list(zip(i, v)) for i, v in zip(idx.tolist(), values.tolist())]
            else:
                tops = [[] for _ in tokens]
        return [(t, lp, tp) for t, lp, tp in zip(tokens, chosen, tops)]

    def stream(self, name: str, prompt: str, settings: GenerationSettings) -> Iterator[str | Answer]:
        """Text pieces, then the final Answer. Holds the lock until the answer is complete."""
        served = self.served[name]
        with self.lock, self.active(served):
            # Consumed to the end even if nobody listens: Generator.stream's own
            # generate thread must finish before the adapter may change.
            yield from served.generator.stream(prompt, settings)


def content_tokens(tokenizer: Any, answer: Answer, stop: list[str]) -> list[int]:
    """The generated tokens behind ``answer``'s text: before EOS (``answer.tokens``) and, when a
    stop string ended it, the fewest that reach the text shown before the stop string."""
    tokens = list(answer.tokens or [])
    if answer.finish_reason != "stop" or not stop or not tokens:
        return tokens
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    k = find_stop(text, stop)
    if k is None:
        return tokens
    k = len(text[:k].rstrip())  # the answer is stripped: whitespace before the stop string is not shown
    lo, hi = 0, len(tokens)  # the shortest prefix whose text is k characters or more
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(tokens[:mid], skip_special_tokens=True)) >= k:
            hi = mid
        else:
            lo = mid + 1
    return tokens[:lo]


# ---------------------------------------------------------------- batching
@dataclass
class _Job:
    model: str
    prompts: list[str]
    settings: GenerationSettings
    future: asyncio.Future

    @property
    def key(self) -> tuple:
        s = self.settings
        return (self.model, s.max_new_tokens, s.temperature, s.top_p, s.repetition_penalty, tuple(s.stop), s.seed)


class Batcher:
    """Collects concurrent non-streaming requests and answers them in batched generate calls.

    One asyncio task takes the first waiting job, then keeps taking jobs until
    ``wait_s`` has passed since that first one or ``max_batch`` prompts are
    collected; jobs that queued up while the previous batch ran are taken at
    once without waiting. The collected jobs are grouped by (model, settings) and
    each group is one ``Engine.generate`` in a single worker thread, so the event
    loop keeps answering (health checks, errors, new requests) meanwhile.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 16, wait_s: float = 0.01):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_s))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kotune-gen")
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # prompts per generate call (recent), for /health and tests

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, model: str, prompts: list[str], settings: GenerationSettings) -> list[Answer]:
        assert self.queue is not None, "Batcher.start() was not awaited"
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(model, prompts, settings, fut))
        return await fut

    async def _collect(self) -> list[_Job]:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        size = len(jobs[0].prompts)
        deadline = loop.time() + self.wait_s
        while size < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
            jobs.append(job)
            size += len(job.prompts)
        return jobs

    async def stream(self, model: str, prompt: str, settings: GenerationSettings):
        """Engine.stream in its own thread, its items handed to the event loop as they come."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        done = object()

        def hand(item) -> None:
            _to_loop(loop, q.put_nowait, item)

        def work():
            try:
                for item in self.engine.stream(model, prompt, settings):
                    hand(item)
            except BaseException as e:  # noqa: BLE001 - handed to the response
                hand(e)
            hand(done)

        threading.Thread(target=work, daemon=True, name="kotune-stream").start()
        while True:
            item = await q.get()
            if item is done:
                return
            yield item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # the client may have gone away
                    groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                prompts = [p for j in group for p in j.prompts]
                self.batches = (self.batches + [len(prompts)])[-1000:]
                try:
                    results = await loop.run_in_executor(self.executor, self.engine.generate, group[0].model, prompts,
                                                         group[0].settings, self.max_batch)
                except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                at = 0
                for j in group:
                    part = results[at:at + len(j.prompts)]
                    at += len(j.prompts)
                    if not j.future.done():
                        j.future.set_result(part)


class LiveBatcher:
    """The event loop's side of :class:`~kotune.model.batching.ContinuousBatcher`.

    The same ``submit`` as :class:`Batcher`, and ``stream`` for streaming
    requests, which join the running batch like any other. A request whose
    client goes away leaves the batch at the next step."""

    def __init__(self, engine: Engine, *, max_batch: int = 16):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.core = None

    async def start(self) -> None:
        self.core = self.engine.shared.continuous_batcher(self.max_batch, self.engine.lock)

    async def stop(self) -> None:
        if self.core is not None:
            await asyncio.to_thread(self.core.close)

    def _row(self, model: str, prompt: str, settings: GenerationSettings, done, on_tokens=None):
        return self.core.submit(self.engine.shared.row(model, prompt, settings, done, on_tokens))

    async def submit(self, model: str, prompts: list[str], settings: GenerationSettings) -> list[Answer]:
        assert self.core is not None, "LiveBatcher.start() was not awaited"
        loop = asyncio.get_running_loop()
        futures, rows = [], []
        for p in prompts:
            fut = loop.create_future()
            futures.append(fut)
            rows.append(self._row(model, p, settings, lambda a, fut=fut: _settle(loop, fut, a)))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for r in rows:  # no-op for finished rows; a client that went away frees its slots
                r.cancel()

    async def stream(self, model: str, prompt: str, settings: GenerationSettings):
        """Text pieces as the row's tokens come, then the final Answer (or an exception)."""
        assert self.core is not None, "LiveBatcher.start() was not awaited"
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def hand(item) -> None:
            _to_loop(loop, q.put_nowait, item)

        gen = self.engine.served[model].generator
        pieces = TextPieces(gen.tokenizer, gen.eos_ids, settings.stop)
        row = self._row(model, prompt, settings, hand, hand)
        try:
            while True:
                item = await q.get()
                if isinstance(item, list):
                    piece = pieces.add(item)
                    if piece:
                        yield piece
                    continue
                if isinstance(item, Answer):
                    rest = pieces.rest(item)
                    if rest:
                        yield rest
                yield item
                return
        finally:
            row.cancel()


def _to_loop(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """Run ``fn(*args)`` on the event loop, from a generation thread."""
    with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down)
        loop.call_soon_threadsafe(fn, *args)


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result: Answer | BaseException) -> None:
    """Hand a result from the batching thread to a waiting future."""

    def put() -> None:
        if fut.done():
            return
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    _to_loop(loop, put)


__all__ = ["BASE_ALIAS", "Batcher", "Engine", "LiveBatcher", "Served", "content_tokens", "parse_adapter_args"]
