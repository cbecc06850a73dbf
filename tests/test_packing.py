"""Padding-free batches: each packed sample attends only to itself, and the loss and
gradients equal those of an ordinary padded batch of the same samples."""

from __future__ import annotations

import json

import pytest

from conftest import call_cli

KEYS = ("input_ids", "attention_mask", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
        "max_length_q", "max_length_k")


@pytest.fixture(scope="module")
def batches(tiny_model, sample_split):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kotune.model.loading import load_tokenizer
    from kotune.records import read_records
    from kotune.model.templates import encode_example, get_template

    tok = load_tokenizer(str(tiny_model))
    rows = [encode_example(tok, get_template("kotune"), r, 1024) for r in read_records(sample_split[0])[:8]]
    for r in rows:
        r.pop("truncated")
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(rows)
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows)
    assert packed["input_ids"].shape[0] == 1 and padded["input_ids"].shape[0] == 8
    return packed, padded


def _loss_and_grad(model, batch):
    model.zero_grad()
    out = model(**{k: v for k, v in batch.items() if k in KEYS}, use_cache=False)
    out.loss.backward()
    grad = model.gpt_neox.layers[0].attention.query_key_value.weight.grad.clone()
    return out.loss.item(), grad


def test_varlen_attention_matches_a_padded_batch(tiny_model, batches):
    import torch

    from kotune.model.loading import load_causal_lm
    from kotune.train.packing import NAME, padding_free_attention

    packed, padded = batches
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_model), device="cpu").train()
    model.config.attention_dropout = 0.0
    want_loss, want_grad = _loss_and_grad(model, padded)
    with padding_free_attention(model, "cpu") as name:
        assert name == NAME and model.config._attn_implementation == NAME
        loss, grad = _loss_and_grad(model, packed)
    assert model.config._attn_implementation == "sdpa"  # restored
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert torch.allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    # Without keeping samples apart (one causal sequence over the packed row) the loss differs.
    one_row = {k: v for k, v in packed.items() if k in ("input_ids", "labels")}
    with padding_free_attention(model, "cpu"):
        leaked = model(**one_row, use_cache=False).loss.item()
    assert abs(leaked - want_loss) > 1e-3


def test_varlen_attention_refuses_padded_batches(tiny_model, batches):
    from kotune.model.loading import load_causal_lm
    from kotune.train.packing import padding_free_attention

    _, padded = batches
    model = load_causal_lm(str(tiny_model), device="cpu")
    with padding_free_attention(model, "cpu"), pytest.raises(RuntimeError, match="one packed row"):
        model(**{k: v for k, v in padded.items() if k in KEYS}, use_cache=False)


def test_training_uses_padding_free_batches_and_saves_a_plain_config(sample_split, tmp_path, tiny_model):
    out = tmp_path / "full"
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", out, "--method", "full", "--max-steps", "3",
                    "--report-to", "none"])
    assert res.code == 0, res.err
    run = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert run["batching"] == "padding_free" and run["attention"] == "kotune_varlen"
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert "kotune_varlen" not in json.dumps(config)


def test_answer_only_head_loss_equals_the_full_logits_loss(tiny_model, batches, tmp_path):
    # kotune's compute_loss scores only the trained positions; the value must equal the
    # model's own loss over full logits, for padding-free rows and for padded batches.
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kotune.model.loading import load_causal_lm, load_tokenizer
    from kotune.train.packing import padding_free_attention
    from kotune.train.sft import answer_only_head

    packed, padded = batches
    model = load_causal_lm(str(tiny_model), device="cpu").eval()
    tok = load_tokenizer(str(tiny_model))
    ds = Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}])
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=None)
    trainer = answer_only_head(SFTTrainer)(model=model, args=args, train_dataset=ds, processing_class=tok)
    with torch.no_grad():
        for batch in (padded, packed):
            inputs = {k: v for k, v in batch.items() if k in KEYS}
            with padding_free_attention(model, "cpu") if batch is packed else torch.no_grad():
                want = model(**inputs, use_cache=False).loss.item()
                got = trainer.compute_loss(model, dict(inputs)).item()
            assert got == pytest.approx(want, rel=1e-5)
    assert trainer._metrics["eval"]["mean_token_accuracy"]


@pytest.mark.parametrize("window", [None, 4, 64])
def test_varlen_attention_keeps_a_local_layers_sliding_window(window):
    """Gemma-style local layers pass ``sliding_window``: a packed sample longer than it
    attends only to its last ``window`` tokens, exactly as transformers' own mask does."""
    import torch
    import torch.nn.functional as F

    from kotune.train.packing import varlen_sdpa

    torch.manual_seed(0)
    sizes = [9, 3, 12]
    q, k, v = (torch.randn(1, 2, sum(sizes), 8) for _ in range(3))
    module = torch.nn.Module().eval()
    cu = torch.tensor([0, 9, 12, 24])
    got, _ = varlen_sdpa(module, q, k, v, None, cu_seq_lens_q=cu, sliding_window=window)
    want = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        i = torch.arange(e - s)
        mask = i[None, :] <= i[:, None]
        if window:
            mask &= i[None, :] > i[:, None] - window   # transformers.masking_utils.sliding_window_overlay
        want.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], attn_mask=mask))
    want = torch.cat(want, dim=2).transpose(1, 2)
    assert torch.allclose(got, want, atol=1e-6)
    if window == 4:   # the band changed something: a 12-token sample's last token ignores its first
        full, _ = varlen_sdpa(module, q, k, v, None, cu_seq_lens_q=cu)
        assert not torch.allclose(full, got, atol=1e-4)
