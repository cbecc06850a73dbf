#!/usr/bin/env python
"""LoRA SFT training throughput on CPU: seed-style baseline vs TRL defaults vs kotune.

One run measures every variant side by side on the same model, data and
hyper-parameters, each in a fresh subprocess (clean peak memory), repeats
interleaved (a, b, c, ... a, b, c, ...) so background load hits every variant
alike, and reports the median of the repeats:

  a  seed-style: plain transformers.Trainer, text padded to max_length=512, pad = eos
  b  TRL SFTTrainer with its defaults (bf16 autocast, gradient checkpointing)
  c  kotune default: kotune.train.sft.train() (padding-free, per-sample attention)
  d  TRL hand-tuned for CPU: fp32, no checkpointing, padding_free=True
  e  TRL hand-tuned for CPU: fp32, no checkpointing, group_by_length
  f  kotune.train.sft.train() with batching=group_by_length (ablation)

Also measured: this machine's fp32 matmul peak (torch.mm, all threads), so each
variant's model-FLOPs utilisation (MFU) is reported against it.

    python benchmarks/bench_train.py --quick                 # smoke run, ~2 min
    python benchmarks/bench_train.py --write benchmarks/RESULTS.md
    python benchmarks/bench_train.py --model gemma --write benchmarks/RESULTS.md   # the real model

``--model gemma`` trains google/gemma-3-270m (``builtin:gemma-3-270m``, 262k-token
vocabulary) on the question-generation recipe's training split with variants a, d
and c, LoRA on q/k/v/o_proj, into its own section.

See benchmarks/README.md for the setup and what each column means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_model, load1, machine, publish, run_script  # noqa: E402

VARIANTS = {
    "a": "seed-style Trainer, pad to 512",
    "b": "TRL SFTTrainer defaults",
    "c": "kotune default (padding-free, per-sample attention)",
    "d": "TRL hand-tuned: fp32, padding_free",
    "e": "TRL hand-tuned: fp32, group_by_length",
    "f": "kotune with group_by_length",
}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["query_key_value"]}
GEMMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SEED = 42


@dataclass
class Setup:
    """What every variant shares; written by --prepare into setup.json."""

    samples: int
    batch_size: int = 8
    learning_rate: float = 2e-4
    seed_max_length: int = 512       # variant a pads/truncates to this, as the seeds did
    hidden: int = 512
    layers: int = 6
    heads: int = 8
    vocab: int = 12288               # model embedding / LM head rows (the tokenizer uses fewer)
    tokenizer_vocab: int = 16384     # asked of the BPE trainer; the corpus caps it lower
    min_total_tokens: int = 60       # synthetic samples are kept within 60-600 tokens
    max_prompt_tokens: int = 520
    max_total_tokens: int = 600
    model: str = "random-gpt-neox"   # or "gemma": builtin:gemma-3-270m on the question-generation recipe's data

    @property
    def targets(self) -> list[str]:
        return GEMMA_TARGETS if self.model == "gemma" else list(LORA["target_modules"])


FULL = dict(hidden=512, layers=6, heads=8, vocab=12288)  # ~31M parameters
QUICK = dict(hidden=128, layers=2, heads=4, vocab=4096, tokenizer_vocab=4096)


# ================================================================ data and model (--prepare)
def sentences(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("※"):
            continue
        out += [s.strip() for s in re.split(r"(?<=[.?!])\s+", line) if len(s.strip()) >= 8]
    return out


QUESTIONS = [
    "{t}에 대해 설명해 주세요.",
    "{t}은(는) 무엇을 뜻하나요?",
    "{t}와(과) 관련된 주요 내용은 무엇인가요?",
    "문서에 따르면 {t}에 관해 어떤 내용이 있나요?",
    "{t}의 요점을 정리해 주세요.",
    "{t}에서 알아 두어야 할 점은 무엇인가요?",
]


def synth_records(n: int, seed: int, tokenizer, template, setup: Setup) -> list[dict]:
    """Korean QA records from the bundled corpus: answer = 1-6 consecutive sentences,
    question about the answer's opening words, half with a context passage around it."""
    from kotune.model.loading import corpus_texts
    from kotune.records import Record
    from kotune.model.templates import encode_example

    rng = random.Random(seed)
    docs = [sentences(t) for t in corpus_texts()]
    docs = [d for d in docs if len(d) >= 12]
    records: list[dict] = []
    while len(records) < n:
        doc = rng.choice(docs)
        k = rng.randint(1, 6)
        i = rng.randrange(0, len(doc) - k)
        answer = " ".join(doc[i:i + k])
        topic = " ".join(re.sub(r"^[A-Z]:\s*", "", doc[i]).split()[: rng.randint(1, 3)]).rstrip(",.?!")
        question = rng.choice(QUESTIONS).format(t=topic)
        context = ""
        if rng.random() < 0.5:  # RAG-style: a passage of 3-14 sentences containing the answer
            before, after = rng.randint(1, 8), rng.randint(0, 6)
            context = " ".join(doc[max(0, i - before): i + k + after])
        rec = Record(instruction=question, input=context, output=answer)
        row = encode_example(tokenizer, template, rec, 4096)
        prompt_len = len(row["input_ids"]) - sum(1 for t in row["labels"] if t != -100)
        if not setup.min_total_tokens <= len(row["input_ids"]) <= setup.max_total_tokens \
                or prompt_len > setup.max_prompt_tokens:
            continue
        records.append({"instruction": question, "input": context, "output": answer})
    return records


def prepare_gemma(work: Path, setup: Setup) -> None:
    """builtin:gemma-3-270m (its converted folder, linked as work/model) + the
    question-generation recipe's training split (validate + split, as the recipe does)."""
    import subprocess

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from kotune.model.loading import resolve_base
    from kotune.records import Record, read_records
    from kotune.model.templates import encode_example, get_template

    (work / "model").symlink_to(resolve_base("builtin:gemma-3-270m", log=lambda *_: None))
    src = ROOT / "recipes" / "data" / "question-generation" / "paragraphs.jsonl"
    kt = [sys.executable, "-m", "kotune"]
    subprocess.run([*kt, "validate", str(src), "-o", str(work / "clean.jsonl"), "--min-answer-chars", "8",
                    "--min-grounding", "0.5", "--many-answers-per-prompt"], check=True, capture_output=True)
    subprocess.run([*kt, "split", str(work / "clean.jsonl"), "--train", str(work / "train.jsonl"), "--test",
                    str(work / "test.jsonl"), "--test-size", "0.15", "--stratify", "category", "--group-by", "input"],
                   check=True, capture_output=True)
    records = [{"instruction": r.instruction, "input": r.input, "output": r.output}
               for r in read_records(work / "train.jsonl")]
    with open(work / "data.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work / "model"))
    template = get_template("kotune")
    rows = [encode_example(tokenizer, template, Record(**r), 4096) for r in records]
    _write_setup(work, setup, model, tokenizer, records, rows)


def _write_setup(work: Path, setup: Setup, model, tokenizer, records: list[dict], rows: list[dict]) -> None:
    lengths = sorted(len(r["input_ids"]) for r in rows)
    info = {
        "setup": asdict(setup),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_size": len(tokenizer),
        "lengths": {"min": lengths[0], "p10": lengths[len(lengths) // 10], "median": lengths[len(lengths) // 2],
                    "p90": lengths[len(lengths) * 9 // 10], "max": lengths[-1], "total": sum(lengths)},
        "answer_tokens": sum(sum(1 for t in r["labels"] if t != -100) for r in rows),
        "with_context": sum(1 for r in records if r["input"]),
        "useful_flops": useful_flops(model, [len(r["input_ids"]) for r in rows],
                                     sum(sum(1 for t in r["labels"] if t != -100) for r in rows)),
        "seed_style_flops": padded_flops(model, len(rows), setup.seed_max_length),
    }
    (work / "setup.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def prepare(work: Path, setup: Setup) -> None:
    """Tokenizer + random-weight GPT-NeoX (saved like a hub model) + data.jsonl."""
    if setup.model == "gemma":
        return prepare_gemma(work, setup)
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kotune.model.loading import train_tokenizer, corpus_texts
    from kotune.records import Record
    from kotune.model.templates import encode_example, get_template

    random.seed(SEED)
    torch.manual_seed(SEED)
    tokenizer = train_tokenizer(corpus_texts(), vocab_size=setup.tokenizer_vocab)
    config = GPTNeoXConfig(
        vocab_size=max(setup.vocab, len(tokenizer)), hidden_size=setup.hidden, num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads, intermediate_size=4 * setup.hidden, max_position_embeddings=2048,
        rotary_pct=0.5, rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_dropout=0.0, attention_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config)  # random weights: throughput does not depend on them
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")

    template = get_template("kotune")
    records = synth_records(setup.samples, SEED, tokenizer, template, setup)
    with open(work / "data.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    rows = [encode_example(tokenizer, template, Record(**r), 4096) for r in records]
    _write_setup(work, setup, model, tokenizer, records, rows)


def layer_matmul_params(model) -> int:
    """Weights of one decoder layer's matrix multiplications (any architecture whose
    backbone keeps its layers in ``.layers``: GPT-NeoX, Llama, Qwen, Gemma, ...)."""
    return sum(p.numel() for p in model.base_model.layers[0].parameters() if p.dim() == 2)


def useful_flops(model, lengths: list[int], supervised: int) -> float:
    """FLOPs one epoch of LoRA SFT needs, whoever runs it: the work on real tokens only.

    Per token, the frozen linear layers cost 2·P forward and 2·P for the input
    gradients (no weight gradients: the base is frozen), P = parameters of the
    transformer layers; the LM head (2·h·V each way) is needed only where a label
    is trained; causal attention costs 2·h·L² forward per layer for a sample of L
    tokens (QKᵀ and AV, half the square) and twice that backward. LoRA's own
    matmuls (<1% here) are left out. A variant that pads, scores the prompt or
    attends across samples does more work than this; MFU counts only this.
    """
    cfg = model.config
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    per_layer = layer_matmul_params(model)
    linear = 4 * per_layer * layers * sum(lengths)
    head = 4 * h * vocab * supervised
    attention = 3 * 2 * h * layers * sum(n * n for n in lengths)
    return float(linear + head + attention)


def padded_flops(model, rows: int, length: int) -> float:
    """FLOPs the seed-style baseline (a) computes: every position of rows padded to
    ``length``, the LM head and loss on all of them, attention over the full padded
    square (a padding mask rules out SDPA's causal shortcut)."""
    cfg = model.config
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    per_layer = layer_matmul_params(model)
    positions = rows * length
    return float(4 * per_layer * layers * positions + 4 * h * vocab * positions + 12 * h * layers * rows * length ** 2)


def matmul_peak(seconds_per_size: float = 2.0) -> float:
    """This machine's fp32 matmul throughput (GFLOP/s): the fastest single torch.mm of
    square matrices from 1024² to 4096², all threads, each size timed for a while
    (a VM's neighbours make any one reading low; the best is the machine's)."""
    import torch

    best = 0.0
    for n in (1024, 2048, 3072, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        end = time.perf_counter() + seconds_per_size
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


# ================================================================ one variant (--child)
class Meter:
    """Counts what the Trainer actually feeds the model, and times Trainer.train."""

    def __init__(self) -> None:
        self.steps = self.positions = self.real = self.supervised = 0
        self.seconds = self.save_seconds = self.cpu_seconds = 0.0
        self.train_loss = float("nan")

    def install(self) -> None:
        from transformers import Trainer

        meter, step, train, save = self, Trainer.training_step, Trainer.train, Trainer._save_checkpoint

        def training_step(trainer, model, inputs, *args, **kwargs):
            ids = inputs["input_ids"]
            meter.steps += 1
            meter.positions += ids.numel()
            mask = inputs.get("attention_mask")
            meter.real += int(mask.sum()) if mask is not None else ids.numel()  # padding-free rows hold no pads
            meter.supervised += int((inputs["labels"] != -100).sum())
            return step(trainer, model, inputs, *args, **kwargs)

        def timed_train(trainer, *args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = train(trainer, *args, **kwargs)
            meter.seconds = time.perf_counter() - t0 - meter.save_seconds
            meter.cpu_seconds = time.process_time() - c0  # all threads; less sensitive to other load
            meter.train_loss = float(out.training_loss)
            return out

        def timed_save(trainer, *args, **kwargs):
            # kotune's path writes one checkpoint at the end (save_strategy="steps"); the
            # other variants save none, so checkpoint time is not counted as training.
            t0 = time.perf_counter()
            out = save(trainer, *args, **kwargs)
            meter.save_seconds += time.perf_counter() - t0
            return out

        Trainer.training_step, Trainer.train, Trainer._save_checkpoint = training_step, timed_train, timed_save


def load_rows(work: Path):
    from kotune.records import Record
    from kotune.model.templates import get_template

    template = get_template("kotune")
    records = [Record(**json.loads(line)) for line in open(work / "data.jsonl", encoding="utf-8")]
    return template, records


def lora_config(setup: Setup):
    from peft import LoraConfig

    return LoraConfig(bias="none", task_type="CAUSAL_LM", **{**LORA, "target_modules": setup.targets})


def run_seed_style(work: Path, setup: Setup, out: Path) -> int:
    """(a) The seeds' recipe: prompt+answer as one text, padded to 512, pad = eos, labels = input_ids."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    template, records = load_rows(work)
    tok = AutoTokenizer.from_pretrained(work / "model")
    tok.pad_token = tok.eos_token
    prompts = [template.prompt(r.instruction, r.input) for r in records]
    answers = [template.completion(r.output) for r in records]
    enc = tok([p + a for p, a in zip(prompts, answers)], padding="max_length", max_length=setup.seed_max_length,
              truncation=True)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    model = get_peft_model(model, lora_config(setup))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=setup.batch_size, num_train_epochs=1,
        learning_rate=setup.learning_rate, use_cpu=True, report_to=[], save_strategy="no", logging_steps=5,
        seed=SEED, disable_tqdm=True,
    )
    # labels = input_ids with pad (= eos) positions set to -100: every real token, prompt included, is trained.
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    # Answer tokens that survived truncation at 512 (the seeds appended no EOS).
    kept = 0
    for p, a in zip(prompts, answers):
        n_prompt = len(tok(p)["input_ids"])
        n_answer = len(tok(p + a)["input_ids"]) - n_prompt
        kept += max(0, min(n_answer, setup.seed_max_length - n_prompt))
    return kept


def run_trl(work: Path, setup: Setup, out: Path, tuned: str | None) -> None:
    """(b) TRL defaults, or TRL hand-tuned for CPU (tuned = padding_free | group_by_length), on prompt/completion data."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    template, records = load_rows(work)
    ds = Dataset.from_list([{"prompt": template.prompt(r.instruction, r.input),
                             "completion": template.completion(r.output)} for r in records])
    common = dict(output_dir=str(out), per_device_train_batch_size=setup.batch_size, num_train_epochs=1,
                  learning_rate=setup.learning_rate, report_to=[], save_strategy="no", seed=SEED, disable_tqdm=True,
                  use_cpu=True)  # TRL's default bf16=True refuses to start on a CPU-only machine without use_cpu
    if tuned == "padding_free":
        # max_length=None: TRL 1.x rejects padding_free without packing while max_length is set.
        args = SFTConfig(**common, bf16=False, gradient_checkpointing=False, padding_free=True, max_length=None)
    elif tuned == "group_by_length":
        args = SFTConfig(**common, bf16=False, gradient_checkpointing=False,
                         train_sampling_strategy="group_by_length")
    else:
        args = SFTConfig(**common)
    # Model as a path, as TRL's docs do: TRL loads it (fp32) and applies the LoRA config itself.
    trainer = SFTTrainer(model=str(work / "model"), args=args, train_dataset=ds, peft_config=lora_config(setup))
    trainer.train()


def run_kotune(work: Path, setup: Setup, out: Path, batching: str) -> None:
    """(c)/(f) kotune's own training entry point."""
    from kotune.train.sft import TrainConfig, train

    config = TrainConfig(
        base_model=str(work / "model"), data=str(work / "data.jsonl"), output_dir=str(out), method="lora",
        epochs=1, learning_rate=setup.learning_rate, batch_size=setup.batch_size, grad_accum=1,
        lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
        lora_targets=setup.targets, eval_split=0.0, min_steps=0, save_steps=10**9, report_to="none",
        batching=batching, seed=SEED,
    )
    train(config, overwrite=True, log=lambda *a, **k: print(*a, **k, file=sys.stderr))


def peak_rss_mb() -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, work: Path, result: Path) -> None:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    setup = Setup(**json.loads((work / "setup.json").read_text())["setup"])
    meter = Meter()
    meter.install()
    out = Path(tempfile.mkdtemp(prefix=f"run-{variant}-", dir=work))
    answer_tokens = note = None
    if variant == "a":
        answer_tokens = run_seed_style(work, setup, out)
    elif variant in ("b", "d", "e"):
        run_trl(work, setup, out, tuned={"b": None, "d": "padding_free", "e": "group_by_length"}[variant])
    elif variant in ("c", "f"):
        run_kotune(work, setup, out, "auto" if variant == "c" else "group_by_length")
    shutil.rmtree(out, ignore_errors=True)
    res = {
        "variant": variant, "seconds": meter.seconds, "steps": meter.steps, "positions": meter.positions,
        "real_tokens": meter.real, "supervised": meter.supervised,
        "answer_tokens": meter.supervised if answer_tokens is None else answer_tokens,
        "save_seconds": meter.save_seconds, "cpu_seconds": meter.cpu_seconds, "peak_rss_mb": peak_rss_mb(), "train_loss": meter.train_loss, "threads": torch.get_num_threads(),
        "note": note,
    }
    result.write_text(json.dumps(res), encoding="utf-8")


# ================================================================ orchestration (no torch here)
def run_sub(args: list[str], log: Path) -> None:
    run_script(__file__, args, log)


def median_row(runs: list[dict]) -> dict:
    m = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "cpu_seconds", "peak_rss_mb", "train_loss")}
    for k in ("steps", "positions", "real_tokens", "supervised", "answer_tokens", "threads"):
        m[k] = runs[0][k]  # identical in every repeat (seeded)
    m["answer_tps"] = m["answer_tokens"] / m["seconds"]
    m["total_tps"] = m["positions"] / m["seconds"]
    m["pad_share"] = 1 - m["real_tokens"] / m["positions"] if m["positions"] else 0.0
    m["spread"] = (min(r["seconds"] for r in runs), max(r["seconds"] for r in runs))
    return m


def report(results: dict[str, list[dict]], info: dict, meta: dict) -> str:
    rows = {v: median_row(r) for v, r in results.items()}
    base = rows.get("a")
    s = info["setup"]
    peak = meta.get("peak_gflops")
    flops = info.get("useful_flops")
    gemma = s.get("model") == "gemma"
    if gemma:
        model_line = (f"- Model: `builtin:gemma-3-270m` (google/gemma-3-270m, fp32, {info['parameters'] / 1e6:.0f}M "
                      f"parameters, vocabulary {info['tokenizer_size']:,}); LoRA r={LORA['r']} alpha={LORA['lora_alpha']} "
                      f"on {', '.join(GEMMA_TARGETS)}")
        data_line = (f"- Data: the question-generation recipe's training split ({s['samples']} paragraph → question "
                     f"records, validated and split by paragraph as the recipe does), ")
    else:
        model_line = (f"- Model: GPT-NeoX, random weights, {info['parameters'] / 1e6:.1f}M parameters (hidden {s['hidden']}, "
                      f"{s['layers']} layers, {s['heads']} heads, vocab {s['vocab']}; tokenizer {info['tokenizer_size']} tokens); "
                      f"LoRA r={LORA['r']} alpha={LORA['lora_alpha']} on query_key_value")
        data_line = f"- Data: {s['samples']} synthetic Korean QA samples ({info['with_context']} with a context passage), "
    lines = [
        f"## Training throughput{' on Gemma-3-270M' if gemma else ''}: seed-style baseline, TRL and kotune"
        f"{' (quick smoke run)' if meta['quick'] else ''}",
        "",
        f"- Command: `{meta['command']}` (took {meta['elapsed'] / 60:.1f} min), {meta['date']}",
        f"- Machine: {machine()}; load average (1 min) {meta['load_before']:.2f} before, {meta['load_after']:.2f} after",
        f"- fp32 matmul peak of this machine (fastest torch.mm from 1024² to 4096², all threads, before and after): "
        f"{f'{peak:.0f} GFLOP/s' if peak else 'not measured'}",
        model_line,
        data_line + f"kotune-tokenized lengths min {info['lengths']['min']} / median {info['lengths']['median']} / "
        f"p90 {info['lengths']['p90']} / max {info['lengths']['max']}, {info['lengths']['total']} tokens, "
        f"{info['answer_tokens']} answer tokens incl. EOS; batch {s['batch_size']}, 1 epoch, lr {s['learning_rate']}",
        f"- Median of {meta['repeats']} repeats, variants interleaved, each in a fresh process",
        "",
        "| variant | answer tok/s | vs (a) | total tok/s (incl. pad) | padded share | MFU | peak RSS | wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, m in rows.items():
        ratio = f"{m['answer_tps'] / base['answer_tps']:.2f}x" if base else "–"
        lo, hi = m["spread"]
        spread = f" ({lo:.1f}–{hi:.1f})" if meta["repeats"] > 1 else ""
        mfu = f"{flops / m['seconds'] / 1e9 / peak:.0%}" if flops and peak else "–"
        lines.append(f"| ({v}) {VARIANTS[v]} | {m['answer_tps']:.0f} | {ratio} | {m['total_tps']:.0f} | "
                     f"{m['pad_share']:.0%} | {mfu} | {m['peak_rss_mb'] / 1024:.2f} GB | {m['seconds']:.1f} s{spread} |")
    lines += [
        "",
        "| variant | steps | positions computed | real tokens | labels trained | answer tokens trained | CPU time | train loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, m in rows.items():
        lines.append(f"| ({v}) | {m['steps']} | {m['positions']} | {m['real_tokens']} | {m['supervised']} | "
                     f"{m['answer_tokens']} | {m['cpu_seconds']:.0f} s | {m['train_loss']:.3f} |")
    if "c" in rows:
        c = rows["c"]
        checks = []
        targets = (("a", 8.0, "the seed-style baseline"),) if gemma else (("a", 3.0, "the seed-style baseline"),
                                                                           ("b", 5.0, "TRL defaults"))
        for v, target, what in targets:
            if v in rows:
                r = c["answer_tps"] / rows[v]["answer_tps"]
                checks.append(f"- kotune vs {what} ({v}): **{r:.2f}×** (target ≥ {target:g}×: "
                              f"{'met' if r >= target else f'missed by {target - r:.2f}×'})")
        tuned = [v for v in ("d", "e") if v in rows]
        if tuned:
            best = max(tuned, key=lambda v: rows[v]["answer_tps"])
            r = c["answer_tps"] / rows[best]["answer_tps"]
            checks.append(f"- kotune vs the best hand-tuned TRL ({best}): **{r:.2f}×** (target ≥ 1.0×: "
                          f"{'met' if r >= 1.0 else 'missed'})")
        if base and gemma:
            r = c["peak_rss_mb"] / base["peak_rss_mb"]
            checks.append(f"- kotune peak RSS {c['peak_rss_mb'] / 1024:.2f} GB vs the baseline's "
                          f"{base['peak_rss_mb'] / 1024:.2f} GB: **{r:.2f}×** (target ≤ 0.5×: "
                          f"{'met' if r <= 0.5 else 'missed'})")
            if meta.get("process"):
                pa, pc = meta["process"].get("a"), meta["process"].get("c")
                if pa and pc:
                    checks.append(f"- Whole process (start to exit, median): kotune {pc:.0f} s vs the baseline's "
                                  f"{pa:.0f} s: **{pa / pc:.2f}×** (target ≥ 6×: {'met' if pa / pc >= 6 else 'missed'})")
        elif base:
            checks.append(f"- kotune peak RSS {c['peak_rss_mb'] / 1024:.2f} GB vs the baseline's "
                          f"{base['peak_rss_mb'] / 1024:.2f} GB (target: no higher: "
                          f"{'met' if c['peak_rss_mb'] <= base['peak_rss_mb'] else 'missed'})")
        if flops and peak and not gemma:
            mfu = flops / c["seconds"] / 1e9 / peak
            checks.append(f"- kotune MFU **{mfu:.0%}** of the measured fp32 peak (target ≥ 40%: "
                          f"{'met' if mfu >= 0.4 else 'missed'})")
        elif flops and peak:
            mfu = flops / c["seconds"] / 1e9 / peak
        seed = info.get("seed_style_flops")
        if seed and flops and peak and base:
            a_util = seed / base["seconds"] / 1e9 / peak
            checks.append(
                f"- Bound: (a) computes {seed / 1e12:.1f} TFLOP (padding to {s['seed_max_length']}, loss on every "
                f"position, full attention squares) against the {flops / 1e12:.1f} TFLOP the epoch needs, "
                f"{seed / flops:.2f}× the work, at {a_util:.0%} of the peak on its own work. Speed-up over (a) is "
                f"that ratio times kotune's efficiency over (a)'s: {seed / flops:.2f} × {mfu:.0%} / {a_util:.0%} = "
                f"{seed / flops * mfu / a_util:.2f}×; at the full fp32 peak it could be at most "
                f"{seed / flops / a_util:.2f}×")
        lines += ["", "Targets:", *checks]
    lines += ["", "MFU counts the FLOPs the epoch needs on real tokens only (frozen linear layers forward and "
              "input-gradient, LM head where a label is trained, causal attention per sample; `useful_flops` in "
              "the script) over wall time and the measured peak; padding, prompt scoring and cross-sample "
              "attention are extra work it does not credit."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None, help="training samples (default 128; 16 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant, median reported (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny model and data: a smoke run of every variant")
    p.add_argument("--variants", default="a,b,c,d,e,f", help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--write", type=Path, help="add the results as a new section to this Markdown file")
    p.add_argument("--keep", action="store_true", help="keep the work folder (model, data, logs)")
    p.add_argument("--model", choices=["random-gpt-neox", "gemma"], default="random-gpt-neox",
                   help="gemma: builtin:gemma-3-270m on the question-generation recipe's data (variants a,d,c)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.peak:
        return a.result.write_text(json.dumps({"gflops": matmul_peak()}))
    if a.prepare:
        return prepare(a.work, Setup(**json.loads(a.result.read_text())))
    if a.child:
        return child(a.child, a.work, a.result)

    if a.model == "gemma" and a.variants == p.get_default("variants"):
        a.variants = "a,d,c"
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    samples = a.samples or (16 if a.quick else 128)
    repeats = a.repeats or (1 if a.quick else 3)
    setup = Setup(samples=samples, model=a.model, **(QUICK if a.quick else FULL))
    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])

    t0 = time.time()
    load_before = load1()
    work = Path(tempfile.mkdtemp(prefix="kotune-bench-"))
    try:
        print(f"work folder {work}; preparing model and {samples} samples ...", flush=True)
        (work / "setup-in.json").write_text(json.dumps(asdict(setup)))
        run_sub(["--prepare", "--work", str(work), "--result", str(work / "setup-in.json")], work / "prepare.log")
        info = json.loads((work / "setup.json").read_text())
        if a.model == "gemma":  # the recipe's split decides the sample count
            info["setup"]["samples"] = sum(1 for _ in open(work / "data.jsonl", encoding="utf-8"))
            (work / "setup.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        run_sub(["--peak", "--result", str(work / "peak.json")], work / "peak.log")
        peak = json.loads((work / "peak.json").read_text())["gflops"]
        print(f"fp32 matmul peak {peak:.0f} GFLOP/s (measured again after the runs)", flush=True)
        print(f"model {info['parameters'] / 1e6:.1f}M parameters; lengths {info['lengths']}", flush=True)
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(repeats):
            for v in variants:
                res, log = work / f"{v}-{rep}.json", work / f"{v}-{rep}.log"
                started = time.perf_counter()
                run_sub(["--child", v, "--work", str(work), "--result", str(res)], log)
                r = json.loads(res.read_text())
                r["process_seconds"] = time.perf_counter() - started  # start to exit: loading, tokenizing, saving
                results[v].append(r)
                print(f"  [{rep + 1}/{repeats}] ({v}) {VARIANTS[v]}: {r['seconds']:.1f} s, "
                      f"{r['answer_tokens'] / r['seconds']:.0f} answer tok/s, {r['peak_rss_mb']:.0f} MB, "
                      f"load {load1():.2f}", flush=True)
        run_sub(["--peak", "--result", str(work / "peak.json")], work / "peak.log")
        peak = max(peak, json.loads((work / "peak.json").read_text())["gflops"])
        meta = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "quick": a.quick,
                "command": command, "elapsed": time.time() - t0, "cpu": cpu_model(), "repeats": repeats,
                "load_before": load_before, "load_after": load1(), "peak_gflops": peak,
                "process": {v: statistics.median(r["process_seconds"] for r in rs) for v, rs in results.items()}}
        section = report(results, info, meta)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    publish(section, a.write, "bench_train_gemma" if a.model == "gemma" else "bench_train")


if __name__ == "__main__":
    main()
