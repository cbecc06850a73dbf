"""Closed-book vs grounded on an unseen document: which answers can a user trust?

Both modes run as users run them, one ``python -m kotune`` process per step, on the
held-out documents in ``benchmarks/data/heldout/`` (fictional, never trained on):

* **closed-book**: ``prepare`` the held-out document (marine litter plan) → ``generate``
  with the rule teacher → ``validate`` → ``train`` with kotune's defaults → ``eval`` on
  its 20 questions (15 answerable, 5 whose answer the document does not state) without
  passages. The model has to have learned the facts.
* **grounded**: ``prepare`` the *training* document (``recipes/data/policy/policy_plan.txt``)
  → ``generate --grounded --grounded-k 3 --unanswerable-share 0.2`` → ``validate`` →
  ``train --template rag`` → ``eval`` on the same 20 held-out questions with
  ``--context <held-out chunks> --top-k 3``: it never saw the held-out document, it reads
  the passages retrieved for each question and cites them, or abstains.

Both models (and the base, as a reference) are also asked the 5 questions about *another*
document (the library plan): closed-book without passages, grounded with the marine
plan's chunks retrieved. None of them can be answered from what the model is given, so
each is marked ``"answerable": false`` and the right answer is the abstention sentence.

    python benchmarks/bench_grounded.py --write benchmarks/RESULTS.md          # builtin:gemma-3-270m
    python benchmarks/bench_grounded.py --base-model builtin:tiny-ko           # smoke run (~10 min on 2 cores)
    python benchmarks/bench_grounded.py --closed-train-args "--epochs 8" --grounded-train-args "--epochs 2"

A value that is a single flag needs ``=`` (``--train-args=--lora-mlp``): argparse reads a lone
``--lora-mlp`` as an option of its own. Train-time settings are flags (``--train-args`` for both runs, ``--closed-train-args`` and
``--grounded-train-args`` for one; later flags win over the script's own, so
``--grounded-train-args "--epochs 2"`` replaces its 1) because the settings are what is being
compared: the table records the exact command lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, load1, publish, table_cell, timed_process  # noqa: E402

HELDOUT = ROOT / "benchmarks" / "data" / "heldout"
TRAIN_DOC = ROOT / "recipes" / "data" / "policy" / "policy_plan.txt"
ABSTENTION = "문서에 해당 내용이 없습니다."
# The grounded variant's settings, as recipes/policy-qa.yaml's grounded profile has them: chunks of
# ~300 characters (3 passages: ~700 Gemma tokens a record, so 10 minutes of CPU hold a useful run),
# 2 facts x 2 phrasings a chunk, one pass with 2 records a step, attention-only LoRA (the default
# for grounded data). Both documents are prepared the same way: retrieval at inference reads chunks
# the size the model was trained on.
GROUNDED_PREPARE = ["--chunk-chars", "300", "--overlap", "0"]
GROUNDED_GENERATE = ["--grounded", "--grounded-k", "3", "--unanswerable-share", "0.2", "--per-chunk", "4",
                     "--phrasings", "2"]
GROUNDED_TRAIN = ["--template", "rag", "--max-length", "1024", "--batch-size", "2", "--epochs", "1",
                  "--learning-rate", "3e-4"]
SECTION = "bench_grounded"
OTHER = "다른 문서"   # the category of the other document's questions


class Steps:
    """Runs ``python -m kotune ARGS`` steps, timed, each logged to WORK/logs/; with ``reuse`` a
    step whose output already exists is skipped (a cut-off benchmark continues)."""

    def __init__(self, work: Path, reuse: bool):
        self.work, self.reuse = work, reuse
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "TOKENIZERS_PARALLELISM": "false"}
        self.env.pop("KOTUNE_DEBUG", None)
        self.seconds: dict[str, float] = {}
        self.commands: dict[str, str] = {}

    def __call__(self, label: str, args: list[str], output: Path) -> None:
        self.commands[label] = "kotune " + shlex.join(_short(a) for a in args if a != "--overwrite")
        if self.reuse and _done(output):
            print(f"{label}: reused {output}", flush=True)
            return
        cmd = [sys.executable, "-m", "kotune", *args]
        wall, _ = timed_process(cmd, self.env, self.logs / f"{label}.log")
        self.seconds[label] = wall
        print(f"{label}: {wall:.0f} s  ({self.commands[label]})", flush=True)


def _done(output: Path) -> bool:
    if output.name == "kotune.json":  # a finished training run, not one that was cut off
        try:
            return json.loads(output.read_text(encoding="utf-8")).get("status") == "complete"
        except (OSError, ValueError):
            return False
    return output.exists()


def _short(arg: str) -> str:
    """A path in a printed command relative to the repository."""
    return arg[len(str(ROOT)) + 1:] if arg.startswith(str(ROOT) + "/") else arg


def _count(path: Path, pred=lambda r: True) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and pred(json.loads(line)))


def other_document_questions(src: Path, dest: Path) -> None:
    """The other document's questions, unanswerable here: asked with the held-out document's
    chunks (or nothing), the model is given nothing that answers them."""
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(dest, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**r, "output": ABSTENTION, "keywords": [], "category": OTHER,
                                "answerable": False}, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="builtin:gemma-3-270m",
                    help="base model of both runs (builtin:tiny-ko for a quick smoke run)")
    ap.add_argument("--train-args", default="", help='extra `kotune train` flags for both runs, e.g. "--epochs 3 --lora-mlp"')
    ap.add_argument("--closed-train-args", default="", help="extra `kotune train` flags for the closed-book run only")
    ap.add_argument("--grounded-train-args", default="",
                    help=f"extra `kotune train` flags for the grounded run only (after its own: {shlex.join(GROUNDED_TRAIN)})")
    ap.add_argument("--generate-args", default="", help='extra `kotune generate` flags for both runs, e.g. "--per-chunk 12"')
    ap.add_argument("--eval-args", default="", help='extra `kotune eval` flags for every eval, e.g. "--max-new-tokens 96"')
    ap.add_argument("--modes", default="closed-book,grounded", help="closed-book, grounded or both (comma-separated)")
    ap.add_argument("--work", type=Path, help="work folder (kept; default: a temporary one, removed unless --keep)")
    ap.add_argument("--reuse", action="store_true", help="skip steps whose output is already in --work")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file (RESULTS.md)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"closed-book", "grounded"}
    if unknown or not modes:
        ap.error(f"--modes: closed-book and/or grounded, got {args.modes!r}")
    if args.reuse and not args.work:
        ap.error("--reuse needs --work (the folder of an earlier run)")
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="kotune-grounded-"))
    work.mkdir(parents=True, exist_ok=True)
    fresh = [] if args.reuse else ["--overwrite"]
    base = args.base_model
    load_before, started = load1(), time.time()
    run = Steps(work, args.reuse)
    results: dict[str, Any] = {"counts": {}, "train": {}}
    try:
        heldout_chunks = work / "heldout-chunks.jsonl"
        run("prepare-heldout", ["prepare", str(HELDOUT / "marine_litter_plan.txt"), "-o", str(heldout_chunks)],
            heldout_chunks)
        heldout_small = work / "heldout-chunks-300.jsonl"
        if "grounded" in modes:
            run("prepare-heldout-grounded", ["prepare", str(HELDOUT / "marine_litter_plan.txt"), "-o", str(heldout_small),
                                             *GROUNDED_PREPARE], heldout_small)
        other = work / "other-questions.jsonl"
        other_document_questions(HELDOUT / "other_questions.jsonl", other)
        questions = HELDOUT / "questions.jsonl"
        evals = shlex.split(args.eval_args)
        for mode in modes:
            d = work / mode
            d.mkdir(exist_ok=True)
            if mode == "closed-book":
                chunks, gen_extra, train_extra, ctx, name = heldout_chunks, [], [], [], "closed-book"
            else:
                chunks, gen_extra, train_extra, name = d / "chunks.jsonl", GROUNDED_GENERATE, GROUNDED_TRAIN, "grounded"
                ctx = ["--context", str(heldout_small), "--top-k", "3"]
                run(f"{mode}-prepare", ["prepare", str(TRAIN_DOC), "-o", str(chunks), *GROUNDED_PREPARE], chunks)
            qa, clean, model = d / "qa.jsonl", d / "clean.jsonl", d / "model"
            run(f"{mode}-generate", ["generate", str(chunks), "-o", str(qa), *gen_extra, *shlex.split(args.generate_args),
                                     *fresh], qa)
            run(f"{mode}-validate", ["validate", str(qa), "-o", str(clean), "--chunks", str(chunks),
                                     "--report", str(d / "validation.json")], clean)
            mode_args = args.closed_train_args if mode == "closed-book" else args.grounded_train_args
            run(f"{mode}-train", ["train", "--base-model", base, "--data", str(clean), "--output-dir", str(model),
                                  *train_extra, *shlex.split(args.train_args), *shlex.split(mode_args), *fresh],
                model / "kotune.json")
            models = ["--models", f"base={base}", "--models", f"{name}={model}"]
            run(f"{mode}-eval", ["eval", "--questions", str(questions), "-o", str(d / "eval"), *ctx, *models, *evals],
                d / "eval" / "metrics.json")
            run(f"{mode}-eval-other", ["eval", "--questions", str(other), "-o", str(d / "eval-other"), *ctx, *models,
                                       *evals], d / "eval-other" / "metrics.json")
            info = json.loads((model / "kotune.json").read_text(encoding="utf-8"))
            results["train"][mode] = {"seconds": info["final"]["seconds"], "steps": info["final"]["steps"],
                                      "device": info.get("device"),
                                      "records": _count(clean),
                                      "unanswerable": _count(clean, lambda r: r.get("answerable") is False),
                                      "chunks": _count(chunks)}
        results["heldout_chunks"] = _count(heldout_chunks)
        body = section(work, modes, base, results, run, started, load_before, args)
    finally:
        if args.work or args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    publish(body, args.write, SECTION)


def _metrics(path: Path) -> dict[str, Any]:
    return json.loads((path / "metrics.json").read_text(encoding="utf-8"))["models"]


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if pct else f"{value:.2f}"


def section(work: Path, modes: list[str], base: str, results: dict, run: Steps, started: float, load_before: float,
            args: argparse.Namespace) -> str:
    lines = [*header(f"Closed-book vs grounded on an unseen document ({base})", started, load_before)]
    try:
        import torch

        if torch.cuda.is_available():
            lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    t = results["train"]
    lines += [f"- Held-out document: `benchmarks/data/heldout/marine_litter_plan.txt` (fictional, {results['heldout_chunks']} "
              "chunks); questions: `questions.jsonl` (15 answerable, 5 not stated in the document) and the 5 questions of "
              "`other_questions.jsonl` (another document), asked as unanswerable"]
    if "closed-book" in t:
        c = t["closed-book"]
        lines.append(f"- closed-book: trained on the held-out document itself ({c['records']} rule-teacher records from "
                     f"{c['chunks']} chunks), asked without passages")
    if "grounded" in t:
        g = t["grounded"]
        lines.append(f"- grounded: trained on `recipes/data/policy/policy_plan.txt` only ({g['records']} records from "
                     f"{g['chunks']} chunks, {g['unanswerable']} of them unanswerable), asked with the held-out chunks "
                     "retrieved (BM25, top 3)")
    lines += ["", "| model | passages | key facts present (15 answerable) | unsupported_rate | abstain_rate (5 not in "
              "the document) | abstain_rate (5 about another document) | false_abstain_rate | eos_rate | "
              "citation_accuracy | train time |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    samples: dict[str, dict[str, Any]] = {}
    for mode in modes:
        d = work / mode
        main, other = _metrics(d / "eval"), _metrics(d / "eval-other")
        passages = "retrieved top 3" if mode == "grounded" else "none"
        for name in main:
            o, oo = main[name]["overall"], (other.get(name) or {}).get("overall", {})
            tuned = name != "base"
            train = t[mode]
            when = f"{train['seconds']:.0f} s ({train['steps']} steps, {train['device']})" if tuned else "–"
            lines.append(f"| {'base' if not tuned else name} ({base}) | {passages} | {_fmt(o.get('keyword_coverage'))} | "
                         f"{_fmt(o.get('unsupported_rate'))} | {_fmt(o.get('abstain_rate'))} | "
                         f"{_fmt(oo.get('abstain_rate'))} | {_fmt(o.get('false_abstain_rate'))} | "
                         f"{_fmt(o.get('eos_rate'))} | {_fmt(o.get('citation_accuracy'))} | {when} |")
        for folder in ("eval", "eval-other"):
            for line in (d / folder / "responses.jsonl").read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                s = samples.setdefault(r["question"], {"reference": r.get("reference") or "",
                                                       "category": r.get("category") or "",
                                                       "answerable": r.get("answerable", True)})
                for name, a in r["answers"].items():
                    if name != "base":
                        s[name] = a["text"]
    lines += ["", "key facts present: `keyword_coverage` over the answerable questions (the question's key fact, e.g. "
              "`1조 2,400억 원`, matched on Kiwi morphemes); abstain_rate: answers that are the abstention sentence, over "
              "the unanswerable questions; false_abstain_rate: the same over the answerable ones; citation_accuracy: "
              "cited `[문서 n]` passages that hold the answer. Base rows: the base model asked the same way (no "
              "passages / the retrieved passages, in the tuned run's template). Train time: `trainer.train` "
              "(`final.seconds` in `model/kotune.json`).", "", "Commands (paths relative to the repository; WORK is the "
              "work folder; WORK/other-questions.jsonl is `other_questions.jsonl` marked unanswerable):", ""]
    lines += [f"- `{_short_work(cmd, work)}`" for cmd in run.commands.values()]
    picks = _pick(samples)
    if picks:
        names = [n for n in ("closed-book", "grounded") if n in modes]
        lines += ["", "Answers side by side (greedy; cut at 100 characters):", "",
                  "| question | reference | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for q, s in picks:
            lines.append(f"| {table_cell(q, 50)} | {table_cell(s['reference'], 60)} | "
                         + " | ".join(table_cell(s.get(n, ''), 100) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _short_work(cmd: str, work: Path) -> str:
    return cmd.replace(str(work) + "/", "WORK/")


def _pick(samples: dict[str, dict]) -> list[tuple[str, dict]]:
    """Three answerable questions, two not in the document and one about the other document."""
    items = list(samples.items())
    answerable = [i for i in items if i[1]["answerable"]][:3]
    not_in_doc = [i for i in items if not i[1]["answerable"] and i[1]["category"] != OTHER][:2]
    other = [i for i in items if i[1]["category"] == OTHER][:1]
    return answerable + not_in_doc + other


if __name__ == "__main__":
    main()
