"""End to end: wall time of `make demo` and of every bundled recipe on this machine.

Each recipe runs as a real process (`python -m kotune run recipes/NAME.yaml -o WORK/NAME`)
into a fresh folder; the table gives its wall time, peak memory, each step's time
from ``run.json``, the recipe's headline metric for base and tuned, and the time of
a second run, which must find every step up to date. `make demo` is
`scripts/demo.sh` (the policy-qa recipe) with an empty ``KOTUNE_HOME``, so it
includes building ``builtin:tiny-ko``; the recipes share one warm cache.

    python benchmarks/bench_recipes.py --write benchmarks/RESULTS.md
    python benchmarks/bench_recipes.py --recipes policy-qa,civil-law-qa
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
from common import ROOT, header, load1, publish  # noqa: E402

sys.path.insert(0, str(ROOT))
from kotune.recipe import headline, load_recipe  # noqa: E402

RECIPES = ("policy-qa", "insurance-rag-qlora", "civil-law-qa", "dialogue-summary", "question-generation")
LIMIT_S = 360  # the budget per recipe on 2 cores


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one process tree's main process."""
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); log {log}:\n{tail}")
    return wall, usage.ru_maxrss / 1024 / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    ap.add_argument("--no-demo", action="store_true", help="skip the cold `make demo` run")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    kotune = [sys.executable, "-m", "kotune"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("KOTUNE_DEBUG", None)
    work = Path(tempfile.mkdtemp(prefix="kotune-recipes-"))
    load_before, started = load1(), time.time()
    rows, demo = [], None
    try:
        if not args.no_demo:
            home = work / "home"
            demo_env = {**env, "KOTUNE_HOME": str(home), "KOTUNE": f"{sys.executable} -m kotune"}
            # scripts/demo.sh runs "$KOTUNE" as one word: give it a wrapper script.
            wrapper = work / "kotune"
            wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m kotune \"$@\"\n", encoding="utf-8")
            wrapper.chmod(0o755)
            demo_env["KOTUNE"] = str(wrapper)
            wall, rss = timed(["bash", "scripts/demo.sh", str(work / "demo")], demo_env, work / "demo.log")
            demo = (wall, rss)
            print(f"make demo (cold KOTUNE_HOME): {wall:.0f} s, {rss:.2f} GB", flush=True)
        subprocess.run([*kotune, "eval", "--help"], cwd=ROOT, env=env, capture_output=True)  # warm imports
        for name in names:
            out = work / name
            wall, rss = timed([*kotune, "run", f"recipes/{name}.yaml", "-o", str(out)], env, work / f"{name}.log")
            again, _ = timed([*kotune, "run", f"recipes/{name}.yaml", "-o", str(out)], env, work / f"{name}-2.log")
            up_to_date = "nothing to do" in (work / f"{name}-2.log").read_text(encoding="utf-8")
            steps = json.loads((out / "run.json").read_text(encoding="utf-8"))["steps"]
            h = headline(load_recipe(ROOT / "recipes" / f"{name}.yaml"), out)
            rows.append({"name": name, "wall": wall, "rss": rss, "again": again, "up_to_date": up_to_date,
                         "steps": {k: v.get("seconds") for k, v in steps.items()}, **h})
            print(f"{name}: {wall:.0f} s, {rss:.2f} GB, {h['metric']} base {h['values']['base']} → tuned "
                  f"{h['values']['tuned']}; "
                  f"rerun {again:.1f} s ({'up to date' if up_to_date else 'DID WORK'})", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    lines = [*header("End to end: `make demo` and every recipe on this machine", started, load_before),
             "- Model: `builtin:tiny-ko` (GPT-NeoX, 3.4M parameters); one process per run, fresh output folder; "
             "the recipes share a warm `KOTUNE_HOME`, `make demo` starts from an empty one (builds tiny-ko first)",
             ""]
    if demo:
        lines += [f"`make demo` (after `pip install`; `scripts/demo.sh`, policy-qa recipe, cold model cache): "
                  f"**{demo[0]:.0f} s**, peak RSS {demo[1]:.2f} GB (target ≤ 300 s).", ""]
    lines += ["| recipe | wall | within 6 min | peak RSS | prepare…split | train | eval | headline metric | base | tuned | "
              "tuned better | second run |",
              "| --- | ---: | :---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | :---: | ---: |"]
    for r in rows:
        s = r["steps"]
        data = sum(s.get(k) or 0 for k in ("prepare", "generate", "validate", "split"))
        ev = sum(s.get(k) or 0 for k in ("eval", "eval-train"))
        lines.append(f"| {r['name']} | {r['wall']:.0f} s | {'yes' if r['wall'] <= LIMIT_S else '**no**'} | "
                     f"{r['rss']:.2f} GB | {data:.0f} s | {s.get('train') or 0:.0f} s | {ev:.0f} s | {r['metric']}"
                     f"{' (lower is better)' if r['lower_is_better'] else ''} | {r['values']['base']} | "
                     f"{r['values']['tuned']} | {'yes' if r['tuned_better'] else '**no**'} | {r['again']:.1f} s"
                     f"{'' if r['up_to_date'] else ' (**did work**)'} |")
    body = "\n".join(lines) + "\n"
    publish(body, args.write, "bench_recipes")


if __name__ == "__main__":
    main()
