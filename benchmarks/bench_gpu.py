#!/usr/bin/env python
"""LoRA (bf16) and QLoRA training on a GPU: the seed-style baseline vs kotune, on the
configs of the models Korean teams fine-tune (random weights built from the config,
so no model hub is needed).

Runs, each in a fresh process, median of ``--repeats``:

  polyglot-ko-1.3b   LoRA bf16 and QLoRA, 60-600-token Korean QA: answer tokens/s, MFU, peak memory
  llama-3-open-ko-8b QLoRA on the same data, and QLoRA on ~2048-token samples (batch 1): peak memory

  seed    the seeds' recipe: transformers.Trainer, text padded to 512 (2048 for the long
          samples), labels = input ids, fp32 weights with bf16 autocast; QLoRA as the
          insurance seed: NF4 + double quantization, prepare_model_for_kbit_training
          (gradient checkpointing), paged_adamw_32bit
  kotune  kotune.train.sft.train() with its defaults for the device

MFU counts the FLOPs the epoch needs on real tokens (bench_train.useful_flops) against
the H200's ~790 TFLOP/s dense bf16 and against the bf16 matmul peak measured here.

    python benchmarks/bench_gpu.py --write benchmarks/RESULTS.md        # on a CUDA machine
    python benchmarks/bench_gpu.py --preset tiny --allow-cpu --repeats 1  # every step, small, on CPU

Without a GPU the real presets refuse to start (exit 2). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import header, load1, publish, run_script  # noqa: E402

# Exactly the published configs (only the special-token ids follow our tokenizer).
PRESETS: dict[str, dict] = {
    "polyglot-ko-1.3b": {  # EleutherAI/polyglot-ko-1.3b
        "model_type": "gpt_neox", "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 16,
        "num_hidden_layers": 24, "vocab_size": 30080, "max_position_embeddings": 2048, "rotary_pct": 0.5,
        "rotary_emb_base": 10000, "use_parallel_residual": True, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
        "tie_word_embeddings": False,
    },
    "llama-3-open-ko-8b": {  # beomi/Llama-3-Open-Ko-8B
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False,
    },
    "tiny": {  # the smoke run: every step of the benchmark in a minute on a CPU
        "model_type": "gpt_neox", "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4,
        "num_hidden_layers": 2, "vocab_size": 8192, "max_position_embeddings": 2048, "rotary_pct": 0.5,
        "use_parallel_residual": True, "tie_word_embeddings": False,
    },
}
# Parameter counts from the model cards: the test suite checks the presets against them.
PARAMETERS = {"polyglot-ko-1.3b": 1_331_810_304, "llama-3-open-ko-8b": 8_030_261_248}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}   # the insurance and policy seeds' values
H200_BF16_TFLOPS = 790.0
TARGET_MFU = 0.35           # LoRA on the Polyglot-ko-1.3B config
TARGET_QLORA_GB = 12.0      # QLoRA on the 8B config at 2048 tokens
LONG = 2048


def runs_for(preset: str, long: bool) -> list[tuple[str, str, str]]:
    """(data, method, variant) for one preset: data is "qa" (60-600 tokens) or "long" (~2048)."""
    if preset == "llama-3-open-ko-8b":
        pairs = [("qa", "qlora")] + ([("long", "qlora")] if long else [])
    elif preset == "tiny":  # the smoke run: LoRA and QLoRA, QA and long data, each once
        pairs = [("qa", "lora")] + ([("long", "qlora")] if long else [("qa", "qlora")])
    else:
        pairs = [("qa", "lora"), ("qa", "qlora")]
    return [(d, m, v) for d, m in pairs for v in ("seed", "kotune")]


def model_config(preset: str, tokenizer=None):
    from transformers import AutoConfig

    spec = dict(PRESETS[preset])
    if tokenizer is not None:
        spec.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
        spec["vocab_size"] = max(spec["vocab_size"], len(tokenizer))
    return AutoConfig.for_model(**spec)


def meta_model(preset: str):
    """The preset's model without memory (parameter counts, FLOP counts)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config(preset))


# ================================================================ data and model (--prepare)
def long_records(n: int, tokenizer, template, target: int = LONG) -> list[dict]:
    """QA records of ``target - 200 .. target`` tokens: a long context passage (the insurance
    seed's terms-and-conditions case), a question about one of its sentences, that sentence
    and the next as the answer."""
    import random

    from bench_train import QUESTIONS, sentences
    from kotune.model.loading import corpus_texts
    from kotune.records import Record
    from kotune.model.templates import encode_example

    rng = random.Random(7)
    pool = [s for t in corpus_texts() for s in sentences(t)]
    out: list[dict] = []
    while len(out) < n:
        start = rng.randrange(len(pool))
        answer = " ".join(pool[start:start + 2]) or pool[0]
        question = rng.choice(QUESTIONS).format(t=" ".join(answer.split()[:2]).rstrip(",.?!"))
        context: list[str] = []
        i = rng.randrange(len(pool))
        while True:
            context.append(pool[i % len(pool)])
            i += 1
            rec = Record(instruction=question, input=" ".join(context), output=answer)
            length = len(encode_example(tokenizer, template, rec, 10 * target)["input_ids"])
            if length > target:
                context.pop()
                break
        out.append({"instruction": question, "input": " ".join(context), "output": answer})
    return out


def prepare(work: Path, preset: str, samples: int, long_samples: int, cuda: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from bench_train import SEED, Setup, synth_records
    from kotune.model.loading import train_tokenizer, corpus_texts
    from kotune.model.templates import get_template

    torch.manual_seed(SEED)
    tokenizer = train_tokenizer(corpus_texts(), vocab_size=16384)
    config = model_config(preset, tokenizer)
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device("cuda" if cuda else "cpu"):  # random init on the GPU: seconds, even for 8B
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    del model
    template = get_template("kotune")
    qa = synth_records(samples, SEED, tokenizer, template, Setup(samples=samples))
    long = long_records(long_samples, tokenizer, template) if long_samples else []
    for name, rows in (("qa", qa), ("long", long)):
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def data_info(work: Path, name: str, model) -> dict:
    from bench_train import useful_flops
    from kotune.model.loading import load_tokenizer
    from kotune.records import Record
    from kotune.model.templates import encode_example, get_template

    path = work / f"{name}.jsonl"
    if not path.exists() or not path.stat().st_size:
        return {}
    tok, template = load_tokenizer(str(work / "model")), get_template("kotune")
    rows = [encode_example(tok, template, Record(**json.loads(line)), 10 * LONG) for line in open(path, encoding="utf-8")]
    lengths = [len(r["input_ids"]) for r in rows]
    answer = sum(sum(1 for t in r["labels"] if t != -100) for r in rows)
    return {"samples": len(rows), "min": min(lengths), "median": sorted(lengths)[len(lengths) // 2],
            "max": max(lengths), "tokens": sum(lengths), "answer_tokens": answer,
            "useful_flops": useful_flops(model, lengths, answer)}


# ================================================================ one run (--child)
def seed_style(work: Path, data: str, method: str, cuda: bool, max_length: int, batch: int) -> int:
    """The seeds' recipe (see the module docstring). Returns the answer tokens it trains on."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig,
                              DataCollatorForLanguageModeling, Trainer, TrainingArguments)

    from kotune.model.loading import lora_targets
    from kotune.records import Record
    from kotune.model.templates import get_template

    template = get_template("kotune")
    records = [Record(**json.loads(line)) for line in open(work / f"{data}.jsonl", encoding="utf-8")]
    tok = AutoTokenizer.from_pretrained(work / "model")
    tok.pad_token = tok.eos_token
    prompts = [template.prompt(r.instruction, r.input) for r in records]
    answers = [template.completion(r.output) for r in records]
    enc = tok([p + a for p, a in zip(prompts, answers)], padding="max_length", max_length=max_length, truncation=True)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    if method == "qlora":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(work / "model", quantization_config=bnb,
                                                     device_map={"": 0} if cuda else {"": "cpu"},
                                                     dtype=torch.bfloat16 if cuda else torch.float32)
        model = prepare_model_for_kbit_training(model)  # gradient checkpointing on, as the insurance seed
    else:
        model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)  # the seeds' fp32 load
    model = get_peft_model(model, LoraConfig(bias="none", task_type="CAUSAL_LM", target_modules=lora_targets(model),
                                             **LORA))
    args = TrainingArguments(
        output_dir=str(work / "seed-out"), per_device_train_batch_size=batch, num_train_epochs=1,
        learning_rate=2e-4, bf16=cuda, use_cpu=not cuda, report_to=[], save_strategy="no", logging_steps=10,
        seed=42, disable_tqdm=True, optim="paged_adamw_32bit" if method == "qlora" and cuda else "adamw_torch",
    )
    Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForLanguageModeling(tok, mlm=False)).train()
    kept = 0
    for p, a in zip(prompts, answers):
        n_prompt = len(tok(p)["input_ids"])
        kept += max(0, min(len(tok(p + a)["input_ids"]) - n_prompt, max_length - n_prompt))
    return kept


def kotune_run(work: Path, data: str, method: str, max_length: int, batch: int) -> None:
    from kotune.train.sft import TrainConfig, train

    config = TrainConfig(
        base_model=str(work / "model"), data=str(work / f"{data}.jsonl"), output_dir=str(work / "kotune-out"),
        method=method, epochs=1, learning_rate=2e-4, batch_size=batch, grad_accum=1, lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"], max_length=max_length, eval_split=0.0,
        save_steps=10**9, report_to="none", seed=42,
    )
    train(config, overwrite=True, log=lambda *a, **k: print(*a, **k, file=sys.stderr))


def child(work: Path, data: str, method: str, variant: str, batch: int, result: Path) -> None:
    import torch
    import transformers
    from transformers import Trainer

    from bench_train import Meter, peak_rss_mb

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    meter = Meter()
    meter.install()
    timed = Trainer.train

    def train_from_zero(trainer, *args, **kwargs):  # peak memory of training, not of loading
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return timed(trainer, *args, **kwargs)

    Trainer.train = train_from_zero
    answer = None
    if variant == "seed":  # the seeds padded everything to 512 (2048 for the insurance seed's long contexts)
        answer = seed_style(work, data, method, cuda, LONG if data == "long" else 512, batch)
    else:  # kotune's default max_length (1024) cuts none of the QA samples
        kotune_run(work, data, method, LONG if data == "long" else 1024, batch)
    res = {"seconds": meter.seconds, "steps": meter.steps, "positions": meter.positions,
           "supervised": meter.supervised, "answer_tokens": meter.supervised if answer is None else answer,
           "train_loss": meter.train_loss, "peak_rss_mb": peak_rss_mb(),
           "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
           "reserved_gpu_gb": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}
    result.write_text(json.dumps(res), encoding="utf-8")


def bf16_peak() -> float:
    """Measured dense bf16 matmul TFLOP/s on this GPU (best of 8192³ products)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * 8192 ** 3 / (start.elapsed_time(end) / 1e3) / 1e12)
    return best


def probe(result: Path) -> None:
    import torch

    info: dict = {"cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info.update(gpu=torch.cuda.get_device_name(0), memory_gb=torch.cuda.get_device_properties(0).total_memory / 2**30,
                    peak_tflops=bf16_peak())
        try:
            import bitsandbytes

            info["bitsandbytes"] = bitsandbytes.__version__
        except ImportError:
            info["bitsandbytes"] = None
        from kotune.train.packing import has_flash_attn

        info["flash_attn"] = has_flash_attn()
    else:
        from bench_train import matmul_peak

        info["peak_tflops"] = matmul_peak(0.5) / 1e3  # fp32 on CPU (the smoke run)
    result.write_text(json.dumps(info), encoding="utf-8")


# ================================================================ orchestration
def run_sub(args: list[str], log: Path) -> None:
    run_script(__file__, args, log)


def median(runs: list[dict]) -> dict:
    m = dict(runs[0])
    for k in ("seconds", "peak_rss_mb", "peak_gpu_gb", "reserved_gpu_gb", "train_loss"):
        values = [r[k] for r in runs if r.get(k) is not None]
        m[k] = statistics.median(values) if values else None
    m["answer_tps"] = m["answer_tokens"] / m["seconds"]
    return m


def report(probe_info: dict, presets: dict[str, dict], results: dict, meta: dict) -> str:
    cuda = probe_info["cuda"]
    peak = probe_info["peak_tflops"]
    lines = header(f"GPU training: seed-style baseline vs kotune{'' if cuda else ' (CPU smoke run, not a GPU result)'}",
                   meta["started"], meta["load_before"])
    if cuda:
        lines.append(f"- GPU: {probe_info['gpu']}, {probe_info['memory_gb']:.0f} GiB; measured bf16 matmul peak "
                     f"{peak:.0f} TFLOP/s (8192³); bitsandbytes {probe_info['bitsandbytes']}; flash-attn "
                     f"{'installed' if probe_info['flash_attn'] else 'not installed (kotune uses per-sample SDPA)'}")
    else:
        lines.append(f"- No GPU: fp32 on CPU, measured fp32 matmul peak {peak * 1e3:.0f} GFLOP/s")
    for preset, info in presets.items():
        qa, long = info["qa"], info.get("long") or {}
        size = f"{info['parameters'] / 1e9:.2f}B" if info["parameters"] >= 1e9 else f"{info['parameters'] / 1e6:.1f}M"
        lines.append(f"- `{preset}`: {size} parameters, random weights; LoRA r={LORA['r']} "
                     f"alpha={LORA['lora_alpha']} on {', '.join(info['targets'])}; QA data {qa['samples']} samples, "
                     f"{qa['min']}–{qa['max']} tokens (median {qa['median']}), {qa['answer_tokens']} answer tokens, "
                     f"batch {meta['batch']}" + (f"; long data {long['samples']} samples of {long['min']}–{long['max']} "
                                                 f"tokens, batch 1" if long else ""))
    lines += [f"- Median of {meta['repeats']} runs, each in a fresh process", "",
              "| model | method | data | variant | answer tok/s | vs seed | MFU of 790 TFLOP/s | MFU of measured peak | "
              "peak memory | wall |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    checks = []
    for (preset, data, method, variant), runs in results.items():
        m = median(runs)
        seed = results.get((preset, data, method, "seed"))
        ratio = f"{m['answer_tps'] / median(seed)['answer_tps']:.2f}×" if seed else "–"
        flops = presets[preset][data]["useful_flops"]
        mfu_nominal = flops / m["seconds"] / (H200_BF16_TFLOPS * 1e12)
        mfu = flops / m["seconds"] / (peak * 1e12)
        mem = f"{m['peak_gpu_gb']:.1f} GiB" if m["peak_gpu_gb"] is not None else f"{m['peak_rss_mb'] / 1024:.2f} GB RSS"
        lines.append(f"| {preset} | {method} | {data} | {variant} | {m['answer_tps']:.0f} | {ratio} | "
                     f"{f'{mfu_nominal:.0%}' if cuda else '–'} | {mfu:.0%} | {mem} | {m['seconds']:.1f} s |")
        if variant != "kotune":
            continue
        if preset == "polyglot-ko-1.3b" and method == "lora":
            checks.append(f"- LoRA on the Polyglot-ko-1.3B config: kotune MFU **{mfu_nominal:.0%}** of 790 TFLOP/s "
                          f"(target ≥ {TARGET_MFU:.0%}: {'met' if mfu_nominal >= TARGET_MFU else 'missed'})")
        if preset == "llama-3-open-ko-8b" and data == "long" and m["peak_gpu_gb"] is not None:
            gb = m["peak_gpu_gb"] * 2**30 / 1e9
            checks.append(f"- QLoRA on the 8B config at {LONG} tokens: kotune peak {gb:.1f} GB allocated "
                          f"(target ≤ {TARGET_QLORA_GB:g} GB: {'met' if gb <= TARGET_QLORA_GB else 'missed'})")
    if checks:
        lines += ["", "Targets:", *checks]
    lines += ["", "Peak GPU memory is `torch.cuda.max_memory_allocated()` from the start of `Trainer.train` (model "
              "loading excluded). MFU counts the FLOPs the epoch needs on real tokens only (`bench_train.useful_flops`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=list(PRESETS),
                   help="model config to measure (repeatable; default polyglot-ko-1.3b and llama-3-open-ko-8b)")
    p.add_argument("--samples", type=int, default=None, help="QA samples (default 1024 on a GPU, 32 on CPU)")
    p.add_argument("--long-samples", type=int, default=None, help=f"~{LONG}-token samples for the memory run "
                   "(default 8 on a GPU, 2 on CPU; 0 skips it)")
    p.add_argument("--batch", type=int, default=16,
                   help="per-device batch for the QA data (default 16: the seeds' 4 x 4 accumulation as one batch)")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, median reported (default 3)")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (the tiny preset's smoke run)")
    p.add_argument("--write", type=Path, help="replace this script's section of this Markdown file")
    p.add_argument("--keep", action="store_true", help="keep the work folder (models, data, logs)")
    for hidden in ("--child", "--probe", "--prepare", "--work", "--result", "--data", "--method"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.probe:
        return probe(Path(a.result))
    if a.prepare:
        import torch

        return prepare(Path(a.work), a.prepare, a.samples, a.long_samples, torch.cuda.is_available())
    if a.child:
        return child(Path(a.work), a.data, a.method, a.child, a.batch, Path(a.result))

    started, load_before = time.time(), load1()
    work_root = Path(tempfile.mkdtemp(prefix="kotune-bench-gpu-"))
    try:
        run_sub(["--probe", "1", "--result", str(work_root / "probe.json")], work_root / "probe.log")
        info = json.loads((work_root / "probe.json").read_text())
        presets = a.preset or ["polyglot-ko-1.3b", "llama-3-open-ko-8b"]
        if not info["cuda"] and not (a.allow_cpu and presets == ["tiny"]):
            print("error: no CUDA GPU here; the GPU benchmark needs one (on CPU only `--preset tiny --allow-cpu` "
                  "runs, as a smoke test)", file=sys.stderr)
            raise SystemExit(2)
        samples = a.samples or (1024 if info["cuda"] else 32)
        long_samples = a.long_samples if a.long_samples is not None else (8 if info["cuda"] else 2)
        print(f"{'GPU ' + info['gpu'] if info['cuda'] else 'CPU'}: peak {info['peak_tflops']:.1f} TFLOP/s; "
              f"work folder {work_root}", flush=True)
        preset_info: dict[str, dict] = {}
        results: dict[tuple, list[dict]] = {}
        for preset in presets:
            work = work_root / preset
            work.mkdir()
            print(f"{preset}: building the model and {samples} + {long_samples} samples ...", flush=True)
            run_sub(["--prepare", preset, "--work", str(work), "--samples", str(samples),
                     "--long-samples", str(long_samples)], work / "prepare.log")
            from kotune.model.loading import lora_targets

            meta = meta_model(preset)
            preset_info[preset] = {"parameters": sum(x.numel() for x in meta.parameters()),
                                   "targets": lora_targets(meta), "qa": data_info(work, "qa", meta),
                                   "long": data_info(work, "long", meta)}
            jobs = runs_for(preset, long_samples > 0)
            for rep in range(a.repeats):
                for data, method, variant in jobs:
                    res, log = work / f"{data}-{method}-{variant}-{rep}.json", work / f"{data}-{method}-{variant}-{rep}.log"
                    run_sub(["--child", variant, "--work", str(work), "--data", data, "--method", method,
                             "--batch", str(1 if data == "long" else a.batch), "--result", str(res)], log)
                    r = json.loads(res.read_text())
                    results.setdefault((preset, data, method, variant), []).append(r)
                    mem = f", {r['peak_gpu_gb']:.1f} GiB" if r["peak_gpu_gb"] is not None else ""
                    print(f"  [{rep + 1}/{a.repeats}] {preset} {method} {data} {variant}: {r['seconds']:.1f} s, "
                          f"{r['answer_tokens'] / r['seconds']:.0f} answer tok/s{mem}", flush=True)
            if not a.keep:
                shutil.rmtree(work / "model", ignore_errors=True)  # tens of GB for the 8B config
        section = report(info, preset_info, results, {"started": started, "load_before": load_before,
                                                      "repeats": a.repeats, "batch": a.batch})
    finally:
        if a.keep:
            print(f"kept {work_root}")
        else:
            shutil.rmtree(work_root, ignore_errors=True)
    publish(section, a.write, "bench_gpu")


if __name__ == "__main__":
    main()
