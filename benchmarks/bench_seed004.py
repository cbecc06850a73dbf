"""The seed-004 replication: why "the model did not learn", and the same data trained kotune's way.

The question-generation seed fine-tuned gemma-3-1b-it with LoRA (r8/α16, dropout
0.05 on q/k/v/o_proj) on 140 paragraph → question samples and reported that the
model did not learn. This script trains google/gemma-3-270m (``builtin:gemma-3-270m``)
on the question-generation recipe's data twice, with the same LoRA, epochs, learning
rate and batch size:

- **seed way**: transformers ``Trainer`` on strings padded to a fixed length,
  ``labels = input_ids`` (prompt and padding scored), no EOS appended,
  ``pad_token = eos_token``;
- **kotune way**: ``kotune train`` (prompt masked, EOS appended and trained, pad ≠ eos,
  padding-free batches);

then evaluates base, seed-way and kotune-way models with ``kotune eval`` on the same
held-out paragraphs (paragraphs never seen in training) and writes ROUGE-L,
eos_rate, repetition and sample outputs.

    python benchmarks/bench_seed004.py --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, load1, publish, table_cell, timed_process  # noqa: E402

GEMMA = "builtin:gemma-3-270m"
DATA = ROOT / "recipes" / "data" / "question-generation" / "paragraphs.jsonl"


def seed_way(train: Path, out: Path, *, epochs: float, lr: float, batch: int, pad_to: int) -> None:
    """The seed notebook's training, as it is commonly written (child process)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from kotune.model.loading import resolve_base
    from kotune.records import read_records
    from kotune.model.templates import get_template

    base = resolve_base(GEMMA, log=lambda *_: None)
    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = tok.eos_token                       # pad = eos
    template = get_template("kotune")                   # the same prompt text as the kotune run
    texts = [template.prompt(r.instruction, r.input) + r.output for r in read_records(train)]  # no EOS appended
    enc = tok(texts, padding="max_length", truncation=True, max_length=pad_to)
    longest = max(len(tok(t)["input_ids"]) for t in texts)
    assert longest <= pad_to, f"a sample has {longest} tokens > pad length {pad_to}: raise --pad-to"
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "labels": [list(ids) for ids in enc["input_ids"]]})  # labels = input_ids, pads scored
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    args = TrainingArguments(output_dir=str(out / "checkpoints"), num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=batch, logging_steps=5, save_strategy="no", report_to=[],
                             use_cpu=True, bf16=False, seed=42, disable_tqdm=True)
    t0 = time.time()
    result = Trainer(model=model, args=args, train_dataset=ds).train()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "seed_way.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1),
                                                   "train_loss": round(result.training_loss, 4),
                                                   "steps": result.global_step, "pad_to": pad_to,
                                                   "longest": longest}), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--learning-rate", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pad-to", type=int, default=256, help="the seed way's fixed padding length")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "seed":
        seed_way(args.train, args.out, epochs=args.epochs, lr=args.learning_rate, batch=args.batch_size,
                 pad_to=args.pad_to)
        return

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("KOTUNE_DEBUG", None)
    kotune = [sys.executable, "-m", "kotune"]
    work = Path(tempfile.mkdtemp(prefix="kotune-seed004-"))
    started, load_before = time.time(), load1()
    try:
        # The recipe's data steps: validated pairs, split by paragraph (test paragraphs are unseen).
        clean, train, test = work / "clean.jsonl", work / "train.jsonl", work / "test.jsonl"
        timed_process([*kotune, "validate", str(DATA), "-o", str(clean), "--min-answer-chars", "8", "--min-grounding", "0.5",
               "--many-answers-per-prompt"], env, work / "validate.log")
        timed_process([*kotune, "split", str(clean), "--train", str(train), "--test", str(test), "--test-size", "0.15",
               "--stratify", "category", "--group-by", "input"], env, work / "split.log")
        subprocess.run([*kotune, "eval", "--help"], cwd=ROOT, env=env, capture_output=True)
        n_train = sum(1 for line in train.read_text(encoding="utf-8").splitlines() if line.strip())
        n_test = sum(1 for line in test.read_text(encoding="utf-8").splitlines() if line.strip())
        seed_out, kt_out = work / "seed", work / "kotune"
        common = ["--epochs", str(args.epochs), "--learning-rate", str(args.learning_rate),
                  "--batch-size", str(args.batch_size)]
        seed_wall, seed_rss = timed_process([sys.executable, __file__, "--child", "seed", "--train", str(train),
                                     "--out", str(seed_out), *common, "--pad-to", str(args.pad_to)],
                                    env, work / "seed.log")
        seed_info = json.loads((seed_out / "seed_way.json").read_text(encoding="utf-8"))
        print(f"seed way: {seed_wall:.0f} s, {seed_rss:.2f} GB, {seed_info}", flush=True)
        kt_wall, kt_rss = timed_process([*kotune, "train", "--base-model", GEMMA, "--data", str(train), "--output-dir",
                                 str(kt_out), "--template", "kotune", "--lora-r", "8", "--lora-alpha", "16",
                                 "--lora-dropout", "0.05", *common, "--report-to", "none"], env, work / "kotune.log")
        kt_info = json.loads((kt_out / "kotune.json").read_text(encoding="utf-8"))
        print(f"kotune way: {kt_wall:.0f} s, {kt_rss:.2f} GB, steps {kt_info['final']['steps']}", flush=True)
        ev = work / "eval"
        timed_process([*kotune, "eval", "--questions", str(test), "-o", str(ev), "--max-new-tokens", str(args.max_new_tokens),
               "--models", f"base={GEMMA}", f"seed={seed_out}", f"kotune={kt_out}"], env, work / "eval.log")
        metrics = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))["models"]
        responses = [json.loads(line) for line in (ev / "responses.jsonl").read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        paragraphs = [json.loads(line)["input"] for line in test.read_text(encoding="utf-8").splitlines()
                      if line.strip()]  # responses.jsonl keeps the questions' order
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    names = {"base": "base (no tuning)", "seed": "seed way", "kotune": "kotune way"}
    lines = [*header("The seed-004 replication: question generation on Gemma-3-270M, the seed's way vs kotune's",
                     started, load_before),
             f"- Model: `{GEMMA}` (google/gemma-3-270m; the seed used gemma-3-1b-it, which no package ships)",
             f"- Data: `recipes/data/question-generation/paragraphs.jsonl` through the recipe's validate and split "
             f"(by paragraph): {n_train} training pairs (the seed had 140), {n_test} held-out questions on unseen "
             "paragraphs",
             f"- Both: LoRA r8/α16/dropout 0.05 on q/k/v/o_proj, {args.epochs:g} epochs, learning rate "
             f"{args.learning_rate:g}, batch {args.batch_size}, fp32 on CPU, the same `kotune` prompt text",
             f"- Seed way: `Trainer`, padded to {args.pad_to} tokens, `labels = input_ids` (prompt and padding scored), "
             "no EOS appended, `pad_token = eos_token`. kotune way: `kotune train` (prompt masked, EOS appended and "
             "trained, pad ≠ eos, padding-free)",
             f"- Eval: `kotune eval` of all three on the held-out questions, greedy, max_new_tokens {args.max_new_tokens}",
             "",
             "| model | training | peak RSS | ROUGE-L | BLEU | eos_rate | repetition | unsupported_rate |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    train_cells = {"base": ("–", "–"), "seed": (f"{seed_info['seconds']:.0f} s, {seed_info['steps']} steps",
                                                 f"{seed_rss:.2f} GB"),
                   "kotune": (f"{kt_info['final']['seconds']:.0f} s, {kt_info['final']['steps']} steps",
                              f"{kt_rss:.2f} GB")}
    for m in ("base", "seed", "kotune"):
        o = metrics[m]["overall"]
        lines.append(f"| {names[m]} | {train_cells[m][0]} | {train_cells[m][1]} | {o['rougeL']} | {o['bleu']} | "
                     f"{o['eos_rate']} | {o['repetition']} | {o['unsupported_rate']} |")
    lines += ["", "Sample outputs (held-out paragraphs; cut at 90 characters):", "",
              "| paragraph | reference | base | seed way | kotune way |", "| --- | --- | --- | --- | --- |"]
    for r, para in list(zip(responses, paragraphs))[:4]:
        a = r["answers"]
        lines.append(f"| {table_cell(para, 50)} | {table_cell(r.get('reference', ''), 90)} | {table_cell(a['base']['text'], 90)} | "
                     f"{table_cell(a['seed']['text'], 90)} | {table_cell(a['kotune']['text'], 90)} |")
    publish("\n".join(lines) + "\n", args.write, "bench_seed004")


if __name__ == "__main__":
    main()
