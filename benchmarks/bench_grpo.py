"""GRPO on a real model: from the grounded Gemma SFT run, judged on a document it never saw.

Starts from the grounded run ``bench_grounded.py`` trains (``WORK/grounded/model``: Gemma-3-270M
on grounded records of ``recipes/data/policy/policy_plan.txt``) and runs ``kotune train --method
grpo`` on that run's own training questions (their passages, answerable flags and keywords),
with the default reward mix unless ``--reward`` is given. Then SFT and GRPO are evaluated side by
side on the held-out document's questions (15 answerable, 5 not in it) and on another document's
5 questions (all unanswerable), with the held-out chunks retrieved as bench_grounded does. The
target (issue): GRPO's unsupported_rate below SFT's, with key-fact coverage and ROUGE-L no more
than 1 point (0.01 coverage) below.

    python benchmarks/bench_grounded.py --work /tmp/bg --modes grounded   # first, if WORK has no grounded run
    python benchmarks/bench_grpo.py --work /tmp/bg --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, load1, publish, timed_process  # noqa: E402

SECTION = "bench_grpo"
HELDOUT = ROOT / "benchmarks" / "data" / "heldout"
KEYS = (("rougeL", "ROUGE-L", 2), ("keyword_coverage", "key facts", 2), ("unsupported_rate", "unsupported_rate", 4),
        ("abstain_rate", "abstains (unanswerable)", 2), ("false_abstain_rate", "false abstain", 2),
        ("eos_rate", "eos_rate", 2))


def _kotune(args: list[str], log: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("KOTUNE_DEBUG", None)
    return timed_process([sys.executable, "-m", "kotune", *args], env, log)


def _overall(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["models"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="bench_grounded.py's work folder (WORK/grounded/model)")
    ap.add_argument("--reward", default=None, help="kotune train --reward (default: kotune's document-QA mix)")
    ap.add_argument("--max-steps", type=int, default=16, help="GRPO steps (2 questions x 4 answers each on CPU)")
    ap.add_argument("--train-args", default="", help="extra kotune train flags for the GRPO run")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    args = ap.parse_args()
    work = args.work.resolve()
    sft, questions = work / "grounded" / "model", work / "grounded" / "clean.jsonl"
    chunks, other = work / "heldout-chunks-300.jsonl", work / "other-questions.jsonl"
    for p in (sft / "kotune.json", questions, chunks, other):
        if not p.exists():
            sys.exit(f"error: {p} missing: run benchmarks/bench_grounded.py --work {args.work} --modes grounded first")
    out = work / "grpo"
    load_before, started = load1(), time.time()
    cmd = ["train", "--method", "grpo", "--from", str(sft), "--data", str(questions), "-o", str(out),
           "--max-steps", str(args.max_steps), "--logging-steps", "2", "--overwrite",
           *(["--reward", args.reward] if args.reward else []), *args.train_args.split()]
    wall, rss = _kotune(cmd, work / "grpo.log")
    evals = {}
    for name, q in (("eval", HELDOUT / "questions.jsonl"), ("eval-other", other)):
        dest = work / f"grpo-{name}"
        _kotune(["eval", "--questions", str(q), "-o", str(dest), "--context", str(chunks), "--top-k", "3",
                 "--models", f"sft={sft}", "--models", f"grpo={out}"], work / f"grpo-{name}.log")
        evals[name] = _overall(dest / "metrics.json")
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    lines = header(f"GRPO from the grounded {info['base_model']} run, on a document it never saw", started, load_before)
    g = info["grpo"]
    lines += [f"- SFT run: bench_grounded's grounded run (`WORK/grounded/model`); GRPO questions: its {g['questions']} "
              f"training questions ({g['unanswerable']} unanswerable), passages in their input",
              f"- GRPO: rewards {', '.join(f'{k} {v:g}' for k, v in g['rewards'].items())}; {info['final']['steps']} steps "
              f"of 2 questions x {g['num_generations']} answers (at most {g['max_completion_length']} tokens), "
              f"{info['final']['seconds']:.0f} s training, {wall:.0f} s process wall, peak RSS {rss:.2f} GB; "
              f"estimate before training {info.get('estimate', {}).get('seconds')} s",
              "- Eval: the held-out document's 20 questions (15 answerable, 5 not in it) with its chunks retrieved "
              "(BM25, top 3), and another document's 5 questions (unanswerable), as bench_grounded asks them", "",
              "| model | questions | " + " | ".join(label for _, label, _ in KEYS) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " |"]
    for name in ("sft", "grpo"):
        for ev, label in (("eval", "held-out document"), ("eval-other", "another document")):
            o = evals[ev][name]["overall"]
            lines.append(f"| {name} | {label} | " + " | ".join(
                "–" if o.get(k) is None else f"{o[k]:.{d}f}" for k, _, d in KEYS) + " |")
    s, r = evals["eval"]["sft"]["overall"], evals["eval"]["grpo"]["overall"]
    met = (r["unsupported_rate"] < s["unsupported_rate"] and r["rougeL"] >= s["rougeL"] - 1.0
           and (r["keyword_coverage"] or 0) >= (s["keyword_coverage"] or 0) - 0.01)
    lines += ["", f"- Target: GRPO's unsupported_rate below SFT's with ROUGE-L and key facts at most 1 point lower: "
              f"unsupported_rate {s['unsupported_rate']:.4f} → {r['unsupported_rate']:.4f}, ROUGE-L {s['rougeL']:.2f} → "
              f"{r['rougeL']:.2f}, key facts {s['keyword_coverage']:.2f} → {r['keyword_coverage']:.2f}: "
              f"**{'met' if met else 'missed'}**.",
              "- Reward curve (training batches, logged every 2 steps): " + "; ".join(
                  f"step {p['step']}: {p['reward']:+.2f} (" + ", ".join(
                      f"{k} {p[k]:.2f}" for k in g["rewards"] if k in p) + ")" for p in g["reward_curve"])]
    publish("\n".join(lines) + "\n", args.write, SECTION)


if __name__ == "__main__":
    main()
