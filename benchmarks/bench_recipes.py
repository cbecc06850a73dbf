"""End to end: wall time of `make demo` and of every bundled recipe on this machine.

Each recipe runs as a real process (`python -m kotune run recipes/NAME.yaml -o WORK/NAME`)
into a fresh folder; the table gives its wall time, peak memory, each step's time
from ``run.json``, the recipe's headline metric for base and tuned, and the time of
a second run, which must find every step up to date. `make demo` is
`scripts/demo.sh` (the policy-qa recipe) with an empty ``KOTUNE_HOME``, so it
includes building ``builtin:tiny-ko``; the recipes share one warm cache.

    python benchmarks/bench_recipes.py --write benchmarks/RESULTS.md
    python benchmarks/bench_recipes.py --recipes policy-qa,civil-law-qa
    python benchmarks/bench_recipes.py --profile gemma --write benchmarks/RESULTS.md   # the real model

``--profile gemma`` runs every recipe with its ``profiles.gemma`` (builtin:gemma-3-270m,
google/gemma-3-270m, with the settings the recipe declares for it) into its own
section, adding eos_rate, repetition, unsupported_rate and three answers side by side;
its `make demo` row is `scripts/demo.sh` itself (the Gemma demo) from an empty cache.
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
from common import ROOT, header, load1, publish, table_cell, timed_process as timed  # noqa: E402

sys.path.insert(0, str(ROOT))
from kotune.recipe.plan import headline, load_recipe  # noqa: E402

RECIPES = ("policy-qa", "insurance-rag-qlora", "civil-law-qa", "dialogue-summary", "question-generation")
LIMIT_S = 360  # the budget per recipe on 2 cores (tiny-ko)
DEMO_LIMIT_S = {None: 300, "gemma": 600}  # make demo's budget: tiny-ko, and the real model including conversion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    ap.add_argument("--no-demo", action="store_true", help="skip the cold `make demo` run")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--profile", default=None, help="run each recipe with this profile (e.g. gemma: the real model)")
    args = ap.parse_args()
    profile = ["--profile", args.profile] if args.profile else []
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    kotune = [sys.executable, "-m", "kotune"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("KOTUNE_DEBUG", None)
    work = Path(tempfile.mkdtemp(prefix="kotune-recipes-"))
    load_before, started = load1(), time.time()
    rows, demo, failed = [], None, []
    try:
        if not args.no_demo:
            home = work / "home"
            demo_env = {**env, "KOTUNE_HOME": str(home)}
            # scripts/demo.sh runs "$KOTUNE" as one word: give it a wrapper script.
            wrapper = work / "kotune"
            wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m kotune \"$@\"\n", encoding="utf-8")
            wrapper.chmod(0o755)
            demo_env["KOTUNE"] = str(wrapper)
            # `make demo` is the policy-qa recipe with --profile gemma; `make demo-fast` without it.
            wall, rss = timed(["bash", "scripts/demo.sh", str(work / "demo"), *profile], demo_env, work / "demo.log")
            demo = (wall, rss)
            print(f"make demo{'' if args.profile else '-fast'} (cold KOTUNE_HOME): {wall:.0f} s, {rss:.2f} GB",
                  flush=True)
        subprocess.run([*kotune, "eval", "--help"], cwd=ROOT, env=env, capture_output=True)  # warm imports
        for name in names:
            out = work / name
            cmd = [*kotune, "run", f"recipes/{name}.yaml", "-o", str(out), *profile]
            try:
                wall, rss = timed(cmd, env, work / f"{name}.log")
            except SystemExit as e:  # one broken recipe is reported, the others still run
                print(e, file=sys.stderr, flush=True)
                failed.append((name, str(e).splitlines()[-1] if str(e) else "failed"))
                continue
            again, _ = timed(cmd, env, work / f"{name}-2.log")
            up_to_date = "nothing to do" in (work / f"{name}-2.log").read_text(encoding="utf-8")
            steps = json.loads((out / "run.json").read_text(encoding="utf-8"))["steps"]
            h = headline(load_recipe(ROOT / "recipes" / f"{name}.yaml", profile=args.profile), out)
            rows.append({"name": name, "wall": wall, "rss": rss, "again": again, "up_to_date": up_to_date,
                         "steps": {k: v.get("seconds") for k, v in steps.items()}, **h, **quality(out)})
            print(f"{name}: {wall:.0f} s, {rss:.2f} GB, {h['metric']} base {h['values']['base']} → tuned "
                  f"{h['values']['tuned']}; "
                  f"rerun {again:.1f} s ({'up to date' if up_to_date else 'DID WORK'})", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    if args.profile:
        body = real_model_section(rows, demo, args.profile, started, load_before)
        body += "".join(f"\n**{name} failed**: `{why}`\n" for name, why in failed)
        publish(body, args.write, f"bench_recipes_{args.profile}")
        return
    lines = [*header("End to end: `make demo-fast` and every recipe on this machine", started, load_before),
             "- Model: `builtin:tiny-ko` (GPT-NeoX, 3.4M parameters); one process per run, fresh output folder; "
             "the recipes share a warm `KOTUNE_HOME`, `make demo-fast` starts from an empty one (builds tiny-ko first)",
             ""]
    if demo:
        lines += [f"`make demo-fast` (after `pip install`; `scripts/demo.sh` on builtin:tiny-ko, policy-qa recipe, "
                  f"cold model cache): **{demo[0]:.0f} s**, peak RSS {demo[1]:.2f} GB (target ≤ {DEMO_LIMIT_S[None]} s).",
                  ""]
    lines += ["| recipe | wall | within 6 min | peak RSS | prepare…split | train | train estimate / measured | eval | "
              "headline metric | base | tuned | tuned better | second run |",
              "| --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | :---: | ---: |"]
    for r in rows:
        s = r["steps"]
        data = sum(s.get(k) or 0 for k in ("prepare", "generate", "validate", "split"))
        ev = sum(s.get(k) or 0 for k in ("eval", "eval-train"))
        lines.append(f"| {r['name']} | {r['wall']:.0f} s | {'yes' if r['wall'] <= LIMIT_S else '**no**'} | "
                     f"{r['rss']:.2f} GB | {data:.0f} s | {s.get('train') or 0:.0f} s | {_estimate(r)} | {ev:.0f} s | "
                     f"{r['metric']}"
                     f"{' (lower is better)' if r['lower_is_better'] else ''} | {r['values']['base']} | "
                     f"{r['values']['tuned']} | {'yes' if r['tuned_better'] else '**no**'} | {r['again']:.1f} s"
                     f"{'' if r['up_to_date'] else ' (**did work**)'} |")
    body = "\n".join(lines) + "\n"
    publish(body, args.write, "bench_recipes")


def _estimate(r: dict) -> str:
    e = r["estimate"]
    return f"{e['estimated']:.0f} s / {e['measured']:.0f} s ({e['estimated'] / e['measured']:.2f})" if e["estimated"] else "–"


def quality(out: Path) -> dict:
    """eos_rate, repetition and unsupported_rate per model, and 3 held-out answers side by side."""
    ev = out / "eval"
    metrics = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))["models"]
    overall = {m: metrics[m]["overall"] for m in ("base", "tuned") if m in metrics}
    rows = [json.loads(line) for line in (ev / "responses.jsonl").read_text(encoding="utf-8").splitlines() if line]
    samples = [{"question": r["question"], "reference": r.get("reference") or "",
                **{m: r["answers"][m]["text"] for m in ("base", "tuned") if m in r["answers"]}} for r in rows[:3]]
    run = json.loads((out / "model" / "kotune.json").read_text(encoding="utf-8"))
    estimate = {"estimated": (run.get("estimate") or {}).get("seconds"), "measured": run["final"]["seconds"],
                "steps": run["final"]["steps"]}
    return {"overall": overall, "samples": samples, "estimate": estimate}


def real_model_section(rows: list[dict], demo, profile: str, started: float, load_before: float) -> str:
    lines = [*header(f"End to end on a real model: every recipe with `--profile {profile}`", started, load_before),
             "- Model: `builtin:gemma-3-270m` (google/gemma-3-270m, Q4_K_M GGUF dequantized to fp32, 268M parameters); "
             "settings from each recipe's `profiles." + profile + "`; one process per run, fresh output folder, warm "
             "`KOTUNE_HOME` (the model converted once)", ""]
    if demo:
        lines += [f"`make demo` (`scripts/demo.sh`: policy-qa on builtin:gemma-3-270m, empty `KOTUNE_HOME`, so it "
                  f"includes assembling and converting the GGUF): **{demo[0]:.0f} s**, peak RSS {demo[1]:.2f} GB "
                  f"(target ≤ {DEMO_LIMIT_S['gemma']} s).", ""]
    lines += ["| recipe | wall | peak RSS | train (steps) | estimate / measured | eval | headline | base | tuned | "
              "eos_rate base → tuned | repetition base → tuned | unsupported_rate base → tuned | second run |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        s, o = r["steps"], r["overall"]
        ev = sum(s.get(k) or 0 for k in ("eval", "eval-train"))
        pair = lambda k: f"{o['base'][k]} → {o['tuned'][k]}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['wall']:.0f} s | {r['rss']:.2f} GB | {s.get('train') or 0:.0f} s "
                     f"({r['estimate']['steps']}) | {_estimate(r)} | {ev:.0f} s | {r['metric']}{' (lower is better)' if r['lower_is_better'] else ''} | "
                     f"{r['values']['base']} | {r['values']['tuned']}{'' if r['tuned_better'] else ' (**not better**)'} | "
                     f"{pair('eos_rate')} | {pair('repetition')} | {pair('unsupported_rate')} | {r['again']:.1f} s"
                     f"{'' if r['up_to_date'] else ' (**did work**)'} |")
    lines += ["", "estimate / measured: the training time `kotune train` predicted before its first step "
              "(`estimate.seconds` in `model/kotune.json`) against `trainer.train`'s measured time (target: within "
              "±30%, a ratio of 0.70–1.30).", "", "Three held-out answers per recipe (greedy; cut at 110 characters):", ""]
    for r in rows:
        lines += [f"**{r['name']}**", "", "| question | reference | base | tuned |", "| --- | --- | --- | --- |"]
        for smp in r["samples"]:
            lines.append(f"| {table_cell(smp['question'], 60)} | {table_cell(smp['reference'], 110)} | {table_cell(smp.get('base', ''), 110)} | "
                         f"{table_cell(smp.get('tuned', ''), 110)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
