#!/usr/bin/env python
"""What a DPO step costs against an SFT step, per answer token, on Gemma-3-270M (CPU).

One process, one set of preference pairs, the trainers built side by side, their
optimizer steps interleaved (a, b, c, d, a, b, c, d, ...) so background load hits
each alike; the median over the timed rounds is reported:

  a  kotune SFT as ``kotune train`` builds it (padding-free, LM head on answer tokens)
  b  TRL's DPOTrainer with DPOConfig's defaults (fp32 instead of bf16, as on every CPU)
  c  kotune DPO before completion_head: TRL's fused head on the padded batch, the
     reference scored on every step
  d  kotune DPO as ``kotune train --method dpo`` builds it now (kotune.train.preference)
  e, f  ORPO with TRL's forward (every padded position through the head) and kotune's
  g, h  SimPO (CPO's trainer) the same two ways

Pairs: the policy-qa Gemma run's training records (``--run``, default /tmp/demo-g,
any ``kotune run recipes/policy-qa.yaml --profile gemma`` output), each question with
its chunk as context (the run's template, ``kotune``: ~600-token sequences, as the insurance seed's
DPO pairs), chosen = its answer, rejected = another record's answer; SFT trains twice as many of those
records' prompts with their chosen answers (as many sequences per step). Every variant
continues the run's LoRA adapter (``--from``), so DPO's reference is TRL's "ref"
adapter copy.

"Per answer token" = seconds per optimizer step / answer tokens the step trains
(DPO: chosen + rejected, EOS included; SFT: the answers). (d) precomputes the
reference log-probabilities once, before training; that one pass is reported
separately, per answer token of one epoch (a run of E epochs pays it once).

    python benchmarks/bench_dpo_cost.py --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import header, load1, publish  # noqa: E402

VARIANTS = {
    "a": "kotune SFT (padding-free, head on answers)",
    "b": "TRL DPOTrainer defaults (fp32)",
    "c": "kotune DPO before (TRL's fused head, padded, reference every step)",
    "d": "kotune DPO now (completion head, packed, reference precomputed)",
    "e": "ORPO, TRL's head (every position of the padded batch)",
    "f": "ORPO, kotune's head (completion positions)",
    "g": "SimPO, TRL's head (every position of the padded batch)",
    "h": "SimPO, kotune's head (completion positions)",
}
TARGET = 1.5


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e9


class PeakRSS:
    """Highest resident memory while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.before = self.peak = rss_gb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_gb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gb())


def pairs_from_run(run: Path, n: int, seed: int) -> list[dict]:
    """``n`` grounded pairs: question + its chunk, chosen = its answer, rejected = another answer."""
    chunks = {c["chunk_id"]: c["text"] for c in map(json.loads, (run / "chunks.jsonl").open(encoding="utf-8"))}
    records = [r for r in map(json.loads, (run / "train.jsonl").open(encoding="utf-8")) if r.get("chunk_id") in chunks]
    rng = random.Random(seed)
    rng.shuffle(records)
    out = []
    for i, r in enumerate(records[:n]):
        other = next(o for o in records[i + 1:] + records[:i] if o["output"] != r["output"])
        out.append({"instruction": r["instruction"], "input": chunks[r["chunk_id"]], "chosen": r["output"],
                    "rejected": other["output"]})
    if len(out) < n:
        raise SystemExit(f"{run}: {len(out)} records with chunks, {n} wanted")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("/tmp/demo-g"), help="a policy-qa Gemma run (model/, train.jsonl, chunks.jsonl)")
    ap.add_argument("--pairs-per-step", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (median)")
    ap.add_argument("--variants", default="abcdefgh")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    load_before, started = load1(), time.time()

    import datasets
    import torch
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from kotune.data.preferences import read_preferences
    from kotune.model.loading import ensure_gemma, ensure_pad_token, load_causal_lm, load_tokenizer
    from kotune.model.templates import get_template
    from kotune.records import Record
    from kotune.train.packing import padding_free_attention
    from kotune.train.preference import _method_arguments, _trainer_class, encode_records
    from kotune.train.sft import TrainConfig, answer_only_head, tokenize_records

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    base = str(ensure_gemma(log=lambda *_: None))
    adapter = args.run / "model"
    rounds = args.warmup + args.rounds
    n_pairs = args.pairs_per_step * rounds
    raw = pairs_from_run(args.run, 2 * n_pairs, seed=0)  # SFT takes two records per pair a DPO step takes
    tmp = Path(f"/tmp/bench-dpo-cost-{int(started)}")
    tmp.mkdir(parents=True, exist_ok=True)
    pairs_file = tmp / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in raw[:n_pairs]), encoding="utf-8")
    tokenizer = load_tokenizer(str(adapter))
    template = get_template("kotune", {})  # the --from run's own template, as kotune keeps it
    pref_ds, _ = encode_records(read_preferences(pairs_file), tokenizer, template, 1024)
    sft_ds, _ = tokenize_records([Record(instruction=r["instruction"], input=r["input"], output=r["chosen"]) for r in raw],
                                 tokenizer, template, 1024)

    def policy():
        model = load_causal_lm(base, device="cpu")
        ensure_pad_token(tokenizer, model)
        model.config.pad_token_id = tokenizer.pad_token_id
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)

    batch = args.pairs_per_step
    kotune = TrainConfig(base_model=base, data=str(pairs_file), output_dir=str(tmp), method="dpo").resolved()
    # What every variant shares; kotune's own trainer arguments for a, c and d.
    shared = dict(learning_rate=5e-5, report_to=[], use_cpu=True, bf16=False,
                  logging_steps=10**6, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    cpu = dict(gradient_checkpointing=False, include_num_input_tokens_seen="no")
    attention = {}  # variant -> the attention it trains with
    trainers, precompute_s = {}, 0.0

    class Before(DPOTrainer):  # kotune's DPO trainer before completion_head: only kotune's tokens
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    for v in args.variants:
        model = policy()
        if v in "ad":  # padding-free rows, as kotune.train.sft.train and train_preference switch them
            attention[v] = padding_free_attention(model, "cpu").__enter__()
        else:
            attention[v] = model.config._attn_implementation
        out = str(tmp / v)
        if v == "a":
            # One record per sequence: as many sequences per forward as a DPO step.
            cfg = SFTConfig(output_dir=out, **shared, **cpu, per_device_train_batch_size=2 * batch, max_length=None,
                            padding_free=True, prediction_loss_only=True)
            trainers[v] = answer_only_head(SFTTrainer)(model=model, args=cfg, train_dataset=sft_ds,
                                                       processing_class=tokenizer)
        elif v == "b":
            cfg = DPOConfig(output_dir=out, **shared, per_device_train_batch_size=batch, remove_unused_columns=False)
            trainers[v] = Before(model=model, args=cfg, train_dataset=pref_ds, processing_class=tokenizer)
        elif v == "c":
            method = {**_method_arguments(kotune), "precompute_ref_log_probs": False, "prediction_loss_only": False}
            cfg = DPOConfig(output_dir=out, **shared, **cpu, **method, per_device_train_batch_size=batch,
                            remove_unused_columns=False)
            trainers[v] = Before(model=model, args=cfg, train_dataset=pref_ds, processing_class=tokenizer)
        elif v in "efgh":
            method = "orpo" if v in "ef" else "simpo"
            cls, config_cls = _trainer_class(method)
            if v in "eg":  # the same trainer with TRL's own forward (every position through the head)
                cls = type(f"TRL{cls.__name__}", (cls,), {"concatenated_forward": cls.__mro__[1].concatenated_forward})
            m = TrainConfig(base_model=base, data=str(pairs_file), output_dir=str(tmp), method=method).resolved()
            cfg = config_cls(output_dir=out, **shared, **cpu, **_method_arguments(m), per_device_train_batch_size=batch,
                             remove_unused_columns=False)
            trainers[v] = cls(model=model, args=cfg, train_dataset=pref_ds, processing_class=tokenizer)
        else:
            cls, config_cls = _trainer_class("dpo")
            cfg = config_cls(output_dir=out, **shared, **cpu, **_method_arguments(kotune), per_device_train_batch_size=batch,
                             remove_unused_columns=False)
            t0 = time.perf_counter()
            trainers[v] = cls(model=model, args=cfg, train_dataset=pref_ds, processing_class=tokenizer)
            precompute_s = time.perf_counter() - t0  # the reference pass over every pair, once
        t = trainers[v]
        if t.args.gradient_checkpointing:  # as Trainer.train() turns it on
            t.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=t.args.gradient_checkpointing_kwargs)
        t.create_optimizer()
        t.current_gradient_accumulation_steps = 1  # what Trainer's loop sets for each step

    def answer_tokens(v: str, rows: list[dict]) -> int:
        if v == "a":
            return sum(sum(1 for x in r["labels"] if x != -100) for r in rows)
        if v in "efgh":  # ORPO/CPO rows: labels mask the prompt
            return sum(sum(1 for x in r[f"{k}_labels"] if x != -100) for r in rows for k in ("chosen", "rejected"))
        return sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)

    times = {v: [] for v in args.variants}
    peaks = {v: 0.0 for v in args.variants}
    grown = {v: 0.0 for v in args.variants}  # peak above the resident memory the step started with
    tokens = {v: [] for v in args.variants}
    losses = {v: [] for v in args.variants}
    for r in range(rounds):
        for v in args.variants:
            t = trainers[v]
            size = 2 * batch if v == "a" else batch
            rows = [t.train_dataset[i] for i in range(r * size, (r + 1) * size)]
            inputs = t._prepare_inputs(t.data_collator(rows))
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                loss = t.training_step(t.model, inputs)
                t.optimizer.step()
                t.optimizer.zero_grad(set_to_none=True)
                spent = time.perf_counter() - t0
            print(f"round {r} {v}: {spent:.1f} s, loss {loss.item():.4f}, peak RSS {mem.peak:.2f} GB", flush=True)
            if r >= args.warmup:
                times[v].append(spent)
                tokens[v].append(answer_tokens(v, rows))
                losses[v].append(loss.item())
            peaks[v] = max(peaks[v], mem.peak)
            grown[v] = max(grown[v], mem.peak - mem.before)
    publish(section(args, times, tokens, peaks, grown, precompute_s, pref_ds, sft_ds, attention, started, load_before),
            args.write, "bench_dpo_cost")


def section(args, times, tokens, peaks, grown, precompute_s, pref_ds, sft_ds, attention, started, load_before) -> str:
    per_token = {v: statistics.median(s / n for s, n in zip(times[v], tokens[v])) for v in times}
    sft = per_token.get("a")
    seq = [len(r["prompt_ids"]) + len(r[k]) for r in pref_ds for k in ("chosen_ids", "rejected_ids")]
    answers = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in pref_ds)
    lines = header("What a DPO step costs against an SFT step on Gemma-3-270M (CPU)", started, load_before)
    lines += [
        f"- Model: `builtin:gemma-3-270m` (fp32), continuing the LoRA adapter of `{args.run}/model` (policy-qa, "
        "`--profile gemma`); DPO's reference is TRL's \"ref\" copy of it, as with `kotune train --method dpo --from`",
        f"- Data: {len(pref_ds)} pairs from that run's training records, each question with its chunk as context "
        f"(the run's template `kotune`), chosen = its answer, rejected = another record's; sequences (prompt + one answer) "
        f"median {statistics.median(seq):.0f} tokens, max {max(seq)}; {answers} answer tokens incl. EOS",
        f"- Steps: {args.pairs_per_step} pairs per DPO step, {2 * args.pairs_per_step} records per SFT step (the same "
        f"number of sequences per forward); {args.warmup} untimed round, then the median of {args.rounds} timed rounds, "
        "variants interleaved in one process",
        "",
        "| variant | attention | s / step (median) | answer tokens / step | ms / answer token | vs SFT (a) | step memory | peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in times:
        ratio = f"{per_token[v] / sft:.2f}×" if sft else "–"
        lines.append(f"| ({v}) {VARIANTS[v]} | {attention[v]} | {statistics.median(times[v]):.1f} | "
                     f"{statistics.median(tokens[v]):.0f} | {per_token[v] * 1000:.1f} | {ratio} | {grown[v]:.2f} GB | {peaks[v]:.2f} GB |")
    lines.append("")
    if "d" in times:
        pre = precompute_s / max(answers, 1)
        lines.append(f"- (d)'s reference pass, once before training (with TRL's model hash): {precompute_s:.1f} s for "
                     f"{len(pref_ds)} pairs, {pre * 1000:.1f} ms per answer token of one epoch; counted into a "
                     f"one-epoch run, (d) costs {(per_token['d'] + pre) / sft:.2f}× SFT" if sft else "")
    if sft and "d" in times:
        met = per_token["d"] / sft <= TARGET
        lines.append(f"- Target: kotune DPO ≤ {TARGET}× an SFT step per answer token: **{per_token['d'] / sft:.2f}×** "
                     f"({'met' if met else 'missed'})" + (f"; before {per_token['c'] / sft:.2f}×" if "c" in times else "")
                     + (f", TRL's defaults {per_token['b'] / sft:.2f}×" if "b" in times else ""))
    lines.append("- Step memory: the most resident memory a step of that variant added over what the process held "
                 "when it started (activations, logits, gradients; memory an earlier step freed is reused, so it "
                 "understates); peak RSS: the process's highest during that "
                 "variant's steps, with every variant's model (~1.7 GB each) and optimizer loaded in the one process")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
