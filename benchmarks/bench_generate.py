"""Evaluation throughput: kotune's batched generation vs one question at a time.

Side by side in one run, same model, same 64 questions, same greedy settings:
  (a) the insurance seed's evaluate loop: transformers.pipeline("text-generation"), one prompt per call;
  (b) kotune Generator with batch_size=1;
  (c) kotune Generator batched (left padding, length-sorted batches);
  (d) the same model behind `kotune serve` (continuous batching), asked by `kotune eval`'s
      endpoint client (openai:URL#MODEL, /v1/completions with the same prompts) with 8 workers.
Checks that (b), (c) and (d) give identical greedy answers, and writes a section of
benchmarks/RESULTS.md between markers.

    python benchmarks/bench_generate.py --model builtin:tiny-ko --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import kotune_serve, machine, publish  # noqa: E402


def questions(n: int) -> list[str]:
    """Questions from the bundled sample through kotune's own prepare + rule teacher."""
    from kotune.data.chunk import prepare
    from kotune.data.rule_teacher import RuleTeacher

    chunks = prepare([REPO / "recipes" / "data" / "policy" / "policy_plan.txt"])
    teacher = RuleTeacher()
    qs = [r.instruction for c in chunks for r in teacher.generate(c.to_dict(), 8)]
    return (qs * (n // max(len(qs), 1) + 1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny-ko")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8, help="concurrent requests of the served variant")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()

    from transformers import pipeline

    from kotune.model.answers import GenerationSettings
    from kotune.model.generation import Generator

    gen = Generator(args.model, template="kotune", log=lambda *_: None)
    qs = questions(args.questions)
    prompts = [gen.prompt(q) for q in qs]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    pipe = pipeline("text-generation", model=gen.model, tokenizer=gen.tokenizer, device=-1)

    def seed_loop():
        out = []
        for p in prompts:  # one prompt per call, as the seed's evaluate_v2.py
            r = pipe(p, max_new_tokens=args.max_new_tokens, do_sample=False, return_full_text=False,
                     pad_token_id=gen.tokenizer.pad_token_id, eos_token_id=gen.eos_ids)
            out.append(r[0]["generated_text"])
        return out

    def kotune_alone():
        return [gen.generate([p], settings, batch_size=1)[0].text for p in prompts]

    def kotune_batched():
        return [a.text for a in gen.generate(prompts, settings, batch_size=args.batch_size)]

    stack = contextlib.ExitStack()
    served = stack.enter_context(kotune_serve(["--model", args.model]))
    from kotune.model.access import open_model

    ep = open_model(f"openai:{served}/v1#{args.model}", name="served", template="kotune", workers=args.workers)
    assert ep.mode == "completions", ep.mode
    work = Path(tempfile.mkdtemp(prefix="kotune-bench-gen-"))

    def kotune_served():
        journal = work / "answers.jsonl"
        journal.unlink(missing_ok=True)  # every repeat asks again
        return [a.text for a in ep.answer(prompts, settings, journal=journal)]

    variants = {"seed loop (pipeline, one at a time)": seed_loop, "kotune batch_size=1": kotune_alone,
                f"kotune batched (batch_size={args.batch_size})": kotune_batched,
                f"kotune serve, eval endpoint client ({args.workers} workers)": kotune_served}
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t)
    stack.close()
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["seed loop (pipeline, one at a time)"]
    names = list(variants)
    identical = outputs[names[1]] == outputs[names[2]] == outputs[names[3]]
    cmd = "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])
    lines = [
        "## Evaluation throughput: batched generation vs one question at a time",
        "",
        f"- Command: `{cmd}`",
        f"- Date: {date.today()}; machine: {machine()}",
        f"- Model: `{args.model}`, {len(prompts)} questions, greedy, max_new_tokens {args.max_new_tokens}, median of {args.repeats} runs",
        "",
        "| variant | seconds | answers/s | speed-up vs seed loop |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in names:
        lines.append(f"| {name} | {med[name]:.2f} | {len(prompts) / med[name]:.2f} | {base / med[name]:.2f}× |")
    lines += ["", f"Greedy answers identical between kotune batch_size=1, batched and served: **{identical}**.",
              "The served row is the whole HTTP path `kotune eval` takes for an `openai:URL#MODEL` model (its own",
              "process for the server, JSON over loopback, continuous batching in the server), on the same cores."]
    publish("\n".join(lines) + "\n", args.write, "bench_generate")
    if not identical:
        sys.exit("one-at-a-time, batched and served greedy answers differ")


if __name__ == "__main__":
    main()
