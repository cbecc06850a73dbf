"""Padding-free training without flash-attn: each packed sequence attends only to itself.

Padding-free batches (TRL's ``DataCollatorForLanguageModeling(padding_free=True)``)
put a batch's samples end to end in one row, with ``position_ids`` restarting at 0
and ``cu_seq_lens_q`` marking where each sample starts. flash-attn reads
``cu_seq_lens``; without it (every CPU, GPUs without the flash-attn package)
transformers builds a block-diagonal mask over the whole packed row and SDPA then
scores every token against every other token of the row: for 8 samples of ~250
tokens that is 8× the attention work that matters, plus a T×T mask in memory. On
the benchmark model it made attention ~45% of a padding-free step on CPU
(benchmarks/RESULTS.md).

:func:`varlen_sdpa` runs ``scaled_dot_product_attention(is_causal=True)`` on each
sample's slice instead: Σ len² scores, no mask, the same numbers. It is registered
with transformers' ``AttentionInterface`` as ``"kotune_varlen"``, so any model that
dispatches attention through it (GPT-NeoX, Llama, Gemma, Qwen, ...) can use it, and
is only set for training on padding-free batches (:func:`padding_free_attention`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

NAME = "kotune_varlen"
_registered = False


def _boundaries(query: Any, kwargs: dict[str, Any]) -> list[int]:
    """Start offsets of the packed samples plus the row length: ``[0, 250, 480, ..., T]``."""
    import torch

    length = query.shape[2]
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        starts = [int(x) for x in cu.tolist()]
    else:
        pos = kwargs.get("position_ids")
        if pos is None:
            return [0, length]
        starts = torch.nonzero(pos[0] == 0).flatten().tolist() + [length]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    if starts[-1] != length:
        starts.append(length)
    return starts


def varlen_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Causal SDPA per packed sample. ``query``: [1, heads, T, dim]; returns [1, T, heads, dim]."""
    import torch
    import torch.nn.functional as F

    if query.shape[0] != 1 or attention_mask is not None:
        raise RuntimeError(f"{NAME} attention takes one packed row without a mask (padding-free batches); got batch "
                           f"{query.shape[0]}{' and a mask' if attention_mask is not None else ''}")
    gqa = key.shape[1] != query.shape[1]
    bounds = _boundaries(query, kwargs)
    sizes = [e - s for s, e in zip(bounds, bounds[1:]) if e > s]
    # A local layer (Gemma 2/3, Mistral, Qwen2 with use_sliding_window) sees only the last
    # ``sliding_window`` tokens, as in pretraining and at inference; a sample longer than
    # the window needs that band, or training attends where the model never does (Gemma-3-
    # 270M on ~800-token grounded records: initial loss 5.2 and answers copying the passages'
    # headings, where the banded mask gives the pretrained model's own attention).
    window = kwargs.get("sliding_window")
    drop = dropout if module.training else 0.0

    def one(q: Any, k: Any, v: Any) -> Any:
        n = q.shape[2]
        if window and n > window:
            i = torch.arange(n, device=q.device)
            band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=band, scale=scaling, dropout_p=drop,
                                                  enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=drop, enable_gqa=gqa)

    # split (not slicing per sample): its backward is one concatenation, where each
    # slice's backward would zero-fill a whole-row gradient.
    outs = [one(q, k, v) for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, varlen_sdpa)
        _registered = True


def supports(model: Any) -> bool:
    """Whether the model dispatches attention through transformers' AttentionInterface."""
    can = getattr(model, "_can_set_attn_implementation", None)
    try:
        return bool(can()) if callable(can) else False
    except Exception:  # noqa: BLE001 - an exotic model: keep its own attention
        return False


def has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def padding_free_attention(model: Any, device: str) -> Iterator[str]:
    """Give ``model`` an attention that keeps packed samples apart, for the block:
    flash-attn on a GPU that has it, else :data:`NAME`. Yields the implementation in
    use. The original one is restored afterwards, so a saved config and later
    generation (padded batches) never see it."""
    original = model.config._attn_implementation
    if not supports(model):  # transformers' own block-diagonal mask keeps it correct, only slower
        yield original
        return
    name = "flash_attention_2" if device == "cuda" and has_flash_attn() else NAME
    if name == NAME:
        register()
    model.set_attn_implementation(name)
    try:
        yield name
    finally:
        model.set_attn_implementation(original)
