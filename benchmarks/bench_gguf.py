"""GGUF export proved by running it: a tuned Gemma-3-270M run vs its GGUF files in llama.cpp.

Takes a finished ``recipes/policy-qa.yaml --profile gemma`` output (``--run``; by default
the recipe is run into a fresh folder first, as ``make demo`` does), exports its model with
``kotune export --format gguf`` at each ``--quants`` type (``QUANT+lora``: the base at QUANT
with the LoRA adapter as its own file, ``--no-merge``), then measures, in one run:

- **prompt fidelity**: for 20 of the run's questions, the prompt llama.cpp's chat endpoint
  renders from the GGUF's chat template equals kotune's, token for token;
- **quality**: one ``kotune eval`` of the PyTorch run and its GGUF files side by side
  (``llamacpp:FILE.gguf``) on the recipe's test questions: ROUGE-L, key facts, eos_rate;
- **greedy agreement**: the share of test questions whose first 32 answer tokens in
  llama.cpp equal kotune's, and of kotune's answers that stop at EOS, the share that
  stop in llama.cpp too;
- **speed**: completion tokens/s of llama.cpp serving each file vs ``kotune serve`` serving
  the run, the test prompts sent 4 at a time to each server's ``/v1/completions``.

    python benchmarks/bench_gguf.py --run /tmp/demo-g --write benchmarks/RESULTS.md
    python benchmarks/bench_gguf.py --write benchmarks/RESULTS.md        # runs the recipe first
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, kotune_serve, load1, publish, timed_process as timed  # noqa: E402

CONCURRENCY = 4
MAX_TOKENS = 128
AGREE_TOKENS = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a finished policy-qa recipe output (model/, test.jsonl, clean.jsonl)")
    ap.add_argument("--quants", default="q8_0,q4_k_m,q4_k_m+lora",
                    help="comma-separated --quant types to export; QUANT+lora: the base at QUANT and the LoRA adapter "
                         "kept apart (--no-merge)")
    ap.add_argument("--work", type=Path, help="where the GGUF files and the eval go (default: a temporary folder)")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("KOTUNE_DEBUG", None)
    load_before, started = load1(), time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="kotune-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    run = args.run
    if run is None:
        run = work / "policy-qa"
        times["recipe"], _ = timed([sys.executable, "-m", "kotune", "run", "recipes/policy-qa.yaml", "-o", str(run),
                                    "--profile", "gemma"], env, work / "recipe.log")
    model = run / "model"
    files: dict[str, Path] = {}
    for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
        base_quant, _, kept = quant.partition("+")
        files[quant] = work / f"policy.{base_quant}{'-lora' if kept else ''}.gguf"
        times[f"export {quant}"], _ = timed([sys.executable, "-m", "kotune", "export", "--model", str(model),
                                             "--format", "gguf", "--quant", base_quant, "-o", str(files[quant]),
                                             "--overwrite", *(["--no-merge"] if kept else [])],
                                            env, work / f"export-{quant}.log")
    fidelity = _fidelity(files, model, run)
    eval_dir = work / "eval"
    times["eval"], _ = timed([sys.executable, "-m", "kotune", "eval", "--models", f"kotune={model}",
                              *[f"{q}=llamacpp:{f}" for q, f in files.items()], "--questions", str(run / "test.jsonl"),
                              "-o", str(eval_dir)], env, work / "eval.log")
    speed = _speed(files, model, run / "test.jsonl", work)
    publish(section(run, files, fidelity, eval_dir, speed, times, started, load_before), args.write, "gguf")


def _questions(path: Path, n: int | None = None) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r.get("instruction") or r["question"] for r in rows][:n]


def _fidelity(files: dict[str, Path], model: Path, run: Path) -> dict[str, tuple[int, int, int]]:
    from kotune.export.to_gguf import prompt_fidelity

    source = run / "clean.jsonl" if (run / "clean.jsonl").exists() else run / "test.jsonl"
    questions = _questions(source, 20)
    out = {}
    for quant, f in files.items():
        checks = prompt_fidelity(f, model, questions)
        out[quant] = (sum(c["same_text"] for c in checks), sum(c["same_tokens"] for c in checks), len(checks))
    return out


# ---------------------------------------------------------------- speed
async def _tokens_per_second(url: str, model: str, prompts: list[str]) -> tuple[float, int, float]:
    import httpx

    gate = asyncio.Semaphore(CONCURRENCY)
    counts: list[int] = []

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        async with gate:
            r = await client.post(url + "/v1/completions", json={"model": model, "prompt": prompt,
                                                                 "max_tokens": MAX_TOKENS, "temperature": 0})
            r.raise_for_status()
            counts.append(int(r.json()["usage"]["completion_tokens"]))

    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, prompts[0])  # warm-up (not timed)
        counts.clear()
        t0 = time.monotonic()
        await asyncio.gather(*(one(client, p) for p in prompts))
        wall = time.monotonic() - t0
    return sum(counts) / wall, sum(counts), wall


def _speed(files: dict[str, Path], model: Path, test: Path, work: Path) -> dict[str, tuple[float, int, float]]:
    from kotune.model.llamacpp import start_server
    from kotune.model.resolve import resolve

    resolved = resolve(str(model), device="cpu", log=lambda *_: None)
    prompts = [resolved.template.prompt(q, tokenizer=resolved.tokenizer) for q in _questions(test)]
    out = {}
    for quant, f in files.items():
        server = start_server(f, parallel=CONCURRENCY)
        try:
            out[f"llama.cpp {quant}"] = asyncio.run(_tokens_per_second(server.listening_address, "kotune", prompts))
        finally:
            del server
    with kotune_serve(["--model", str(model)], work / "serve.log", timeout=300) as url:
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            name = json.load(r)["data"][0]["id"]
        out["kotune serve"] = asyncio.run(_tokens_per_second(url, name, prompts))
    return out


# ---------------------------------------------------------------- the section
def _agreement(eval_dir: Path, tokenizer, names: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """Per GGUF model: (first 32 tokens equal, questions, stops where kotune stops, kotune stops)."""
    rows = [json.loads(line) for line in (eval_dir / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    out = {}
    for name in names:
        same = stops = ours_stop = 0
        for r in rows:
            ours, theirs = r["answers"]["kotune"], r["answers"][name]
            a = tokenizer(ours["text"], add_special_tokens=False)["input_ids"][:AGREE_TOKENS]
            b = tokenizer(theirs["text"], add_special_tokens=False)["input_ids"][:AGREE_TOKENS]
            same += a == b
            if ours["finish_reason"] == "eos":
                ours_stop += 1
                stops += theirs["finish_reason"] == "eos"
        out[name] = (same, len(rows), stops, ours_stop)
    return out


def section(run: Path, files: dict[str, Path], fidelity: dict, eval_dir: Path, speed: dict, times: dict,
            started: float, load_before: float) -> str:
    from kotune.model.resolve import resolve

    resolved = resolve(str(run / "model"), device="cpu", log=lambda *_: None)
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))["models"]
    agree = _agreement(eval_dir, resolved.tokenizer, list(files))
    lines = header("GGUF export: the tuned Gemma run in llama.cpp", started, load_before)
    lines += [f"- Run: `{run}` (recipes/policy-qa.yaml --profile gemma; template {resolved.template.name}, "
              f"EOS ids {resolved.eos_ids}); llama.cpp from the xllamacpp wheel, {os.cpu_count()} threads",
              "- Steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), "",
              "| model | file | prompt text / tokens equal (20) | first 32 tokens equal | stops where kotune stops "
              "| ROUGE-L | key facts | eos_rate | unsupported |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    o = metrics["kotune"]["overall"]
    lines.append(f"| kotune (PyTorch, fp32) | – | – | – | – | {o['rougeL']:.2f} | {o['keyword_coverage']:.2f} | "
                 f"{o['eos_rate']:.2f} | {o['unsupported_rate']:.3f} |")
    for q, f in files.items():
        o = metrics[q]["overall"]
        text, toks, n = fidelity[q]
        same, total, stops, ours_stop = agree[q]
        size = f.stat().st_size + sum(a.stat().st_size for a in [f.with_name(f"{f.stem}.lora.gguf")] if a.exists())
        lines.append(f"| llama.cpp {q} | {size / 2**20:.0f} MiB | {text}/{n} / {toks}/{n} | "
                     f"{same}/{total} ({same / total:.0%}) | {stops}/{ours_stop} | {o['rougeL']:.2f} | "
                     f"{o['keyword_coverage']:.2f} | {o['eos_rate']:.2f} | {o['unsupported_rate']:.3f} |")
    lines += ["", f"Speed: the {len(_questions(run / 'test.jsonl'))} test prompts, {CONCURRENCY} at a time, "
              f"at most {MAX_TOKENS} tokens each, greedy, after one warm-up request.", "",
              "| server | completion tokens | wall | tokens/s |", "| --- | ---: | ---: | ---: |"]
    for name, (tps, n, wall) in speed.items():
        lines.append(f"| {name} | {n} | {wall:.1f} s | {tps:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
