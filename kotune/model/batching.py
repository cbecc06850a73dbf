"""Continuous batching: requests join and leave a running batch between decode steps.

Why our own loop: ``model.generate`` runs a fixed batch until its longest answer
is done. A request that arrives a moment later waits for all of it, and rows
that have already stopped keep computing. With a teacher client's workers
(each sends its next request as soon as its last answer is checked) batches
never fill. transformers' own continuous batching (``generate_batch``, paged
attention) was ~5× slower than static batching on CPU when we measured it.
vLLM does this properly on GPUs. This is the small version for ``kotune
serve``: one left-padded KV cache per running batch, with the same model
forward, template and EOS ids as everywhere else.

It is a generator (rows that join at different steps, decoded with the same
:func:`~kotune.model.generation.next_token` as :class:`~kotune.model.generation.Generator`),
so it lives in the model layer; ``kotune serve`` builds it through
:meth:`kotune.model.shared.SharedModel.continuous_batcher`.

- A batch serves one name (base or one adapter), because the active adapter is
  model-wide state. Requests are admitted first-come-first-served. When the
  oldest waiting request is for another name, nothing more joins; the batch
  drains and then switches.
- New requests are prefilled (grouped when their lengths are close, so little
  padding is computed; one arriving alone reuses the prefix it shares with the
  previous prompt). Their cache is then laid beside the running rows: all
  rows right-aligned, padding on the left, masked.
- Each decode step feeds every row its last token at its own position. A row
  leaves at EOS, at a stop string, at ``max_new_tokens``, or when its client
  goes away. Finished rows are compacted away when new rows join, or when a
  quarter of the batch is finished.
- Greedy answers equal ``Generator.generate``'s. Sampling uses the request's
  seed through its own ``torch.Generator``, so the same seed gives the same
  answer whatever else is in the batch.

Full-attention decoders only (GPT-NeoX, Llama, Qwen2, Mistral within its
window, ...). :func:`supports` says when a model has sliding-window or linear
attention layers; ``kotune serve`` then uses static batching.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
from transformers.cache_utils import Cache, DynamicLayer

from kotune.model.answers import Answer, GenerationSettings, find_stop
from kotune.model.generation import Generator, next_token


def _text_config(model: Any) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        return cfg.get_text_config(decoder=True)
    return cfg


def supports(model: Any) -> bool:
    """True when every attention layer of ``model`` is full (causal) attention."""
    text = _text_config(model)
    if text is None:
        return False
    types = getattr(text, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        window = int(text.sliding_window)
        return window >= int(getattr(text, "max_position_embeddings", 0) or 0)
    return getattr(text, "num_hidden_layers", None) is not None


class _Layer(DynamicLayer):
    """A full-attention layer cache with spare room at the end.

    A decode step writes one column in place; ``DynamicLayer`` instead copies
    the whole cache with ``torch.cat`` at every step. Rows can also be rebuilt
    between steps (:meth:`take`)."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.kbuf = self.vbuf = None
        self.length = 0
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.kbuf is None or end > self.kbuf.shape[-2]:
            self._reserve(key_states, value_states, end + max(64, end // 2))
        self.kbuf[:, :, self.length:end] = key_states
        self.vbuf[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.kbuf[:, :, :end], self.vbuf[:, :, :end]
        return self.keys, self.values

    def _reserve(self, k: torch.Tensor, v: torch.Tensor, capacity: int) -> None:
        kb = k.new_zeros(k.shape[0], k.shape[1], capacity, k.shape[3])
        vb = v.new_zeros(v.shape[0], v.shape[1], capacity, v.shape[3])
        if self.kbuf is not None and self.length:
            kb[:, :, :self.length] = self.kbuf[:, :, :self.length]
            vb[:, :, :self.length] = self.vbuf[:, :, :self.length]
        self.kbuf, self.vbuf = kb, vb

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def take(self, rows: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``rows``, the last ``width`` columns, left-padded with zeros when the cache is shorter."""
        cols = slice(max(0, self.length - width), self.length)
        k, v = self.kbuf[rows, :, cols], self.vbuf[rows, :, cols]
        short = width - k.shape[-2]
        if short > 0:
            k = torch.nn.functional.pad(k, (0, 0, short, 0))
            v = torch.nn.functional.pad(v, (0, 0, short, 0))
        return k, v

    def put(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        """Start over from ``keys``/``values``, with room for ``spare`` more columns."""
        self.lazy_initialization(keys, values)
        self._reserve(keys, values, keys.shape[-2] + spare)
        self.update(keys, values)


def _new_cache(n_layers: int) -> Cache:
    return Cache(layers=[_Layer() for _ in range(n_layers)])


@dataclass
class Row:
    """One prompt being answered."""

    name: str
    ids: list[int]
    settings: GenerationSettings
    done: Callable[[Answer | BaseException], None]          # called once, from the batching thread
    on_tokens: Callable[[list[int]], None] | None = None     # streaming: each new token, as it comes
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False
    rng: torch.Generator | None = None
    seen: set[int] = field(default_factory=set)               # for the repetition penalty

    def cancel(self) -> None:
        """The client went away: the row leaves the batch at the next step."""
        self.cancelled = True

    def drop(self) -> None:
        """Finish a cancelled row (nobody reads its answer)."""
        self.finished = True
        self.done(Answer("", "cancelled", len(self.ids), len(self.tokens)))


class ContinuousBatcher:
    """One thread that runs every generation of ``kotune serve``.

    ``view(name)`` gives a name's :class:`Generator` (tokenizer, template, EOS
    ids, the shared model); ``activate(name)`` is a context manager that makes
    its adapter active."""

    def __init__(self, view: Callable[[str], Generator], activate: Callable[[str], ContextManager[Any]], *,
                 max_batch: int = 16, prefill_tokens: int = 4096, min_prefix: int = 16,
                 lock: threading.Lock | None = None):
        self.view, self.activate = view, activate
        self.max_batch = max(1, int(max_batch))
        self.prefill_tokens = max(1, int(prefill_tokens))
        self.lock = lock or threading.Lock()
        self.cond = threading.Condition()
        self.pending: collections.deque[Row] = collections.deque()
        self.closed = False
        self.sizes: collections.deque[int] = collections.deque(maxlen=1000)  # rows per decode step, recent
        self.min_prefix = max(1, int(min_prefix))
        self.prefixes: dict[str, tuple[list[int], Cache]] = {}  # per name: the last prompt prefilled alone
        self.prefix_reused = 0  # prompt tokens not computed again (prefix cache hits)
        self.thread = threading.Thread(target=self._loop, daemon=True, name="kotune-batch")
        self.thread.start()

    # ------------------------------------------------------------ the API
    def submit(self, row: Row) -> Row:
        with self.cond:
            if self.closed:
                raise RuntimeError("the batcher is closed")
            self.pending.append(row)
            self.cond.notify()
        return row

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=30)

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                if self.closed:
                    rows, self.pending = list(self.pending), collections.deque()
                    for r in rows:
                        r.done(RuntimeError("the server is shutting down"))
                    return
                name = self.pending[0].name
            session = None
            try:
                with self.lock, self.activate(name):
                    session = _Session(self, name)
                    session.run()
            except BaseException as e:  # noqa: BLE001 - a failed batch must not end the thread
                if session is None or not session.admitted:
                    with self.cond:  # it failed before taking anything: fail the oldest row, or it fails forever
                        head = self.pending.popleft() if self.pending and self.pending[0].name == name else None
                    if head is not None:
                        head.done(e)

    def _admit(self, name: str, free: int) -> list[Row]:
        """Waiting rows for ``name``, oldest first, while the oldest waiting row is for ``name``."""
        out: list[Row] = []
        budget = self.prefill_tokens
        with self.cond:
            while self.pending and len(out) < free and self.pending[0].name == name:
                row = self.pending[0]
                if out and len(row.ids) > budget:
                    break
                self.pending.popleft()
                if row.cancelled:
                    row.drop()
                    continue
                budget -= len(row.ids)
                out.append(row)
        return out

    def _waiting_other(self, name: str) -> bool:
        with self.cond:
            return bool(self.pending) and self.pending[0].name != name


class _Session:
    """A running batch for one name, until it drains."""

    def __init__(self, owner: ContinuousBatcher, name: str):
        self.owner, self.name = owner, name
        self.gen = owner.view(name)
        self.model = self.gen.model
        self.n_layers = int(_text_config(self.model).num_hidden_layers)
        self.device = self.model.device if hasattr(self.model, "device") else torch.device("cpu")
        self.eos = set(self.gen.eos_ids)
        self.pad = self.gen.resolved.pad_id  # the resolver's decision (pad, else EOS for generation only)
        gc = getattr(self.model, "generation_config", None)
        self.top_k = int(getattr(gc, "top_k", 0) or 0)  # what model.generate samples with (transformers' default 50)
        self.rows: list[Row] = []
        self.admitted = 0
        self.cache: Cache | None = None
        self.pos = torch.zeros(0, dtype=torch.long, device=self.device)    # tokens in the cache, per row
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)   # the token each row feeds next

    # ------------------------------------------------------------ steps
    @torch.no_grad()
    def run(self) -> None:
        owner = self.owner
        joining: list[Row] = []
        try:
            while True:
                if owner.closed:  # server shutting down: answer what is running with an error, now
                    raise RuntimeError("the server is shutting down")
                live = sum(not r.finished for r in self.rows)
                joining = [] if owner._waiting_other(self.name) else owner._admit(self.name, owner.max_batch - live)
                if joining:
                    self.admitted += len(joining)
                    self._join(joining)
                elif self.rows and 4 * sum(r.finished for r in self.rows) >= max(4, len(self.rows)):
                    self._compact([])
                joining = []
                if not any(not r.finished for r in self.rows):
                    return
                self._decode()
        except BaseException as e:
            for r in {id(r): r for r in self.rows + joining}.values():
                if not r.finished:
                    r.finished = True
                    r.done(e)
            raise

    def _join(self, new: list[Row]) -> None:
        """Prefill ``new`` (in groups of similar length) and lay them beside the running rows."""
        new.sort(key=lambda r: len(r.ids))
        groups: list[list[Row]] = []
        for r in new:
            g = groups[-1] if groups else None
            # one padded forward while padding stays under a quarter of the computed tokens
            if g and len(r.ids) * (len(g) + 1) <= 1.25 * (sum(len(x.ids) for x in g) + len(r.ids)):
                g.append(r)
            else:
                groups.append([r])
        parts: list[tuple[Cache, list[Row]]] = []
        for g in groups:
            cache, logits = self._prefill(g)
            for r in g:
                r.seen = set(r.ids)
                if r.settings.temperature > 0 and r.settings.seed is not None:
                    r.rng = torch.Generator(device=self.device).manual_seed(int(r.settings.seed))
            parts.append((cache, g))
            self._advance(g, self._choose(logits, g))
        self._compact(parts)

    def _prefill(self, g: list[Row]) -> tuple[Cache, torch.Tensor]:
        """The cache of a group's prompts and each row's last logits.

        A row prefilled alone reuses the cached keys and values of the longest
        prefix it shares with the last such prompt of its name (vLLM's prefix
        caching, for one prompt): a teacher's generation request, or a chat
        template with a system prompt, repeats hundreds of tokens before the
        part that differs."""
        cache = _new_cache(self.n_layers)
        if len(g) == 1:
            r = g[0]
            saved = self.owner.prefixes.get(self.name)
            hit = 0
            if saved is not None:
                limit = min(len(saved[0]), len(r.ids) - 1)  # at least one token computed, for its logits
                while hit < limit and saved[0][hit] == r.ids[hit]:
                    hit += 1
            if hit < self.owner.min_prefix:
                hit = 0
            for li in range(self.n_layers):
                if hit:
                    old = saved[1].layers[li]
                    cache.layers[li].put(old.kbuf[:, :, :hit], old.vbuf[:, :, :hit], len(r.ids) - hit + 64)
            out = self.model(input_ids=torch.tensor([r.ids[hit:]], device=self.device),
                             attention_mask=torch.ones(1, len(r.ids), dtype=torch.long, device=self.device),
                             position_ids=torch.arange(hit, len(r.ids), device=self.device)[None],
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            self.owner.prefix_reused += hit
            self.owner.prefixes[self.name] = (r.ids, cache)  # read-only from here on (compaction copies)
            return cache, out.logits[:, -1, :].float()
        width = max(len(r.ids) for r in g)
        ids = torch.tensor([[self.pad] * (width - len(r.ids)) + r.ids for r in g], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in g], device=self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1, :].float()

    def _compact(self, parts: list[tuple[Cache, list[Row]]]) -> None:
        """Rebuild the batch: running rows that are not finished, then the new ``parts``."""
        keep = [i for i, r in enumerate(self.rows) if not r.finished]
        groups: list[tuple[Cache, list[int], list[Row]]] = []
        if keep:
            groups.append((self.cache, keep, [self.rows[i] for i in keep]))
        for cache, g in parts:
            live = [i for i, r in enumerate(g) if not r.finished]
            if live:
                groups.append((cache, live, [g[i] for i in live]))
        rows = [r for *_, rs in groups for r in rs]
        if not rows:
            self.rows, self.cache = [], None
            self.pos = self.last = torch.zeros(0, dtype=torch.long, device=self.device)
            return
        width = max(len(r.ids) + len(r.tokens) - 1 for r in rows)  # tokens already in a cache (the last is not)
        spare = 64 + max(r.settings.max_new_tokens - len(r.tokens) for r in rows)
        cache = _new_cache(self.n_layers)
        for li in range(self.n_layers):
            ks, vs = [], []
            for c, idx, _ in groups:
                k, v = c.layers[li].take(torch.tensor(idx, device=self.device), width)
                ks.append(k)
                vs.append(v)
            cache.layers[li].put(torch.cat(ks), torch.cat(vs), min(spare, 1024))
        self.rows, self.cache = rows, cache
        self.pos = torch.tensor([len(r.ids) + len(r.tokens) - 1 for r in rows], dtype=torch.long, device=self.device)
        self.last = torch.tensor([r.tokens[-1] for r in rows], dtype=torch.long, device=self.device)

    def _decode(self) -> None:
        width = self.cache.layers[0].length
        cols = torch.arange(width + 1, device=self.device)
        mask = (cols[None, :] >= (width - self.pos)[:, None]).long()
        out = self.model(input_ids=self.last[:, None], attention_mask=mask, position_ids=self.pos[:, None],
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.pos = self.pos + 1
        self.owner.sizes.append(sum(not r.finished for r in self.rows))
        nxt = self._choose(out.logits[:, -1, :].float(), self.rows)
        self.last = nxt
        self._advance(self.rows, nxt)

    # ------------------------------------------------------------ tokens
    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        """The next token of each row (:func:`kotune.model.generation.next_token`; plain argmax for greedy rows)."""
        picked = logits.argmax(-1)
        for i, r in enumerate(rows):
            s = r.settings
            if r.finished or (s.temperature <= 0 and s.repetition_penalty == 1.0):
                continue
            picked[i] = next_token(logits[i], s, r.seen, r.rng, self.top_k)
        return picked

    def _advance(self, rows: list[Row], tokens: torch.Tensor) -> None:
        for r, t in zip(rows, tokens.tolist()):
            if r.finished:
                continue
            if r.cancelled:
                r.drop()
                continue
            r.tokens.append(t)
            r.seen.add(t)
            if r.on_tokens is not None:
                r.on_tokens([t])
            s = r.settings
            stop = t in self.eos or len(r.tokens) >= s.max_new_tokens
            if not stop and s.stop:
                tail = self.gen.tokenizer.decode(r.tokens[-(4 * max(len(x) for x in s.stop) + 4):],
                                                 skip_special_tokens=True)
                stop = find_stop(tail, s.stop) is not None
            if stop:
                r.finished = True
                r.done(self.gen.decode(r.tokens, len(r.ids), s))


__all__ = ["ContinuousBatcher", "Row", "supports"]
