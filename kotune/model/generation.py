"""Batched generation with the run's own template and EOS ids.

Decoder-only models are padded on the left so every row's answer starts right
after its prompt; greedy answers are the same alone or in a batch. Each answer
comes with a ``finish_reason``: ``eos`` (the model stopped), ``stop`` (a stop
sequence), or ``length`` (max_new_tokens ran out).
"""

from __future__ import annotations

from typing import Any, Sequence

from kotune.model.answers import Answer, GenerationSettings, TextPieces, find_stop
from kotune.model.resolve import ModelRef
from kotune.model.resolve import Resolved, load_resolved, resolve
from kotune.model.templates import Template, encode_prompt


def next_token(logits: Any, settings: GenerationSettings, seen: set[int] | None = None, rng: Any = None,
               top_k: int = 0) -> int:
    """One token from one row of logits, as ``generate()``'s processors choose it: repetition
    penalty over ``seen`` (prompt and answer so far), then greedy, or temperature, top-k and
    top-p sampling. Why our own: the continuous batcher decodes rows that joined at
    different steps, which ``generate()`` cannot; this keeps its choices the same as
    :meth:`Generator.generate`'s (greedy answers are identical, tested)."""
    import torch

    row = logits
    if settings.repetition_penalty != 1.0 and seen:
        idx = torch.tensor(sorted(seen), device=row.device)
        got = row[idx]
        row = row.clone()
        row[idx] = torch.where(got < 0, got * settings.repetition_penalty, got / settings.repetition_penalty)
    if settings.temperature <= 0:
        return int(row.argmax())
    row = row / settings.temperature
    if 0 < top_k < row.shape[-1]:
        cut = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < cut, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > settings.top_p  # keeps the smallest set reaching top_p (at least one)
        row = row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(row.softmax(-1), 1, generator=rng)[0])


class Generator:
    """A loaded model (base or base + adapter) that answers with its training template.

    Everything about how to query the model (template, EOS, pad, load options) comes
    from :func:`kotune.model.resolve.resolve`; :meth:`over` wraps a model that is already
    loaded and shared (kotune serve's adapters)."""

    def __init__(self, spec: str, *, template: str | None = None, default_template: Template | None = None,
                 instruct_chat: bool = False, device: str | None = None, log=print):
        resolved = resolve(spec, template=template, default_template=default_template, instruct_chat=instruct_chat,
                           device=device, log=log)
        self._bind(resolved, load_resolved(resolved))

    @classmethod
    def over(cls, resolved: Resolved, model: Any) -> "Generator":
        """A generator over an already-loaded model: the same prompt encoding, batching,
        stop handling and streaming as everywhere else."""
        gen = cls.__new__(cls)
        gen._bind(resolved, model)
        return gen

    def _bind(self, resolved: Resolved, model: Any) -> None:
        self.resolved = resolved
        self.ref: ModelRef = resolved.ref
        self.device = resolved.load.device
        self.tokenizer = resolved.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = resolved.pad_id
        self.model = model
        self.template: Template = resolved.template
        self.eos_ids = list(resolved.eos_ids)

    def prompt(self, question: str, input: str = "", *, category: str = "", context: str | None = None,
               history: list[dict[str, str]] | None = None) -> str:
        return self.template.prompt(question, input, category=category, context=context,
                                    tokenizer=self.tokenizer, history=history)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings | None = None, batch_size: int = 16) -> list[Answer]:
        """Answers for already-rendered prompts, in order."""
        import torch

        settings = settings or GenerationSettings()
        if settings.temperature > 0 and settings.seed is not None:
            torch.manual_seed(settings.seed)
        out: list[Answer] = []
        # Sorting by length keeps batches tight (less left padding).
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, Answer] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids = [encode_prompt(self.tokenizer, prompts[i], self.template) for i in idx]
            width = max(len(x) for x in ids)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.model.device)
            attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.model.device)
            kwargs = self.generate_kwargs(settings, pad)
            if len(idx) > 1:
                # Left-padded rows need a mask anyway; a preallocated cache then saves copying
                # the whole growing cache at every step (~10% of a batched decode on CPU).
                kwargs["cache_implementation"] = "static"
            with torch.no_grad():
                gen = self.model.generate(input_ids=input_ids, attention_mask=attn, **kwargs)
            for row, i in enumerate(idx):
                results[i] = self.decode(gen[row, width:].tolist(), len(ids[row]), settings)
        out = [results[i] for i in range(len(prompts))]
        return out

    def generate_kwargs(self, settings: GenerationSettings, pad: int | None) -> dict[str, Any]:
        """``model.generate``'s arguments for ``settings``: the run's EOS ids, greedy or sampling,
        stop strings (the same for batched and streamed answers)."""
        kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=self.eos_ids,
                                      pad_token_id=pad, repetition_penalty=settings.repetition_penalty)
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if settings.stop:
            kwargs.update(stop_strings=settings.stop, tokenizer=self.tokenizer)
        return kwargs

    def stream(self, prompt: str, settings: GenerationSettings | None = None):
        """Yield text pieces of one answer as they are generated, then the final Answer.

        Pieces are cut by :class:`TextPieces` (never inside a Hangul syllable).
        """
        import queue
        import threading

        import torch
        from transformers.generation.streamers import BaseStreamer

        settings = settings or GenerationSettings()
        ids = encode_prompt(self.tokenizer, prompt, self.template)
        q: queue.Queue[list[int] | None] = queue.Queue()

        class _Collect(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # the prompt itself
                    self.first = False
                    return
                q.put(value.reshape(-1).tolist())

            def end(self):
                q.put(None)

        kwargs = self.generate_kwargs(settings, self.tokenizer.pad_token_id)
        kwargs.update(input_ids=torch.tensor([ids], device=self.model.device), streamer=_Collect(),
                      attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.model.device))
        errors: list[BaseException] = []

        def run():
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as e:  # surfaced in the caller's thread
                errors.append(e)
                q.put(None)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = TextPieces(self.tokenizer, self.eos_ids, settings.stop)
        while not pieces.ended:
            item = q.get()
            if item is None:
                break
            piece = pieces.add(item)
            if piece:
                yield piece
        thread.join()
        if errors:
            raise errors[0]
        answer = self.decode(pieces.tokens, len(ids), settings)
        rest = pieces.rest(answer)
        if rest:
            yield rest
        yield answer

    def decode(self, tokens: list[int], prompt_len: int, settings: GenerationSettings) -> Answer:
        """Generated token ids → the answer: cut at the first EOS id, then at the first stop string."""
        pad = self.tokenizer.pad_token_id
        finish = "length"
        cut = len(tokens)
        for j, t in enumerate(tokens):
            if t in self.eos_ids:
                finish, cut = "eos", j
                break
        body = [t for t in tokens[:cut] if t != pad]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        k = find_stop(text, settings.stop)
        if k is not None:
            text, finish = text[:k], "stop"
        return Answer(text.strip(), finish, prompt_len, len(body) + (1 if finish == "eos" else 0), tokens=body)
