"""The insurance seed's third round on a real model: SFT → kotune pairs → DPO → base/SFT/DPO eval.

Runs ``recipes/insurance-rag-qlora.yaml`` (with ``--profile gemma``: Gemma-3-270M)
as one real process into ``--out`` (a fresh folder by default; an existing
recipe output resumes, its up-to-date steps skipped) and writes a section with
the three models' ROUGE-L, unsupported_rate, repetition and eos_rate, the mined
pairs per failure type, the preference run's held-out margin and each step's
time. The target (issue): DPO's unsupported_rate below the SFT model's, with
ROUGE-L no more than 1 point lower.

    python benchmarks/bench_preference.py --profile gemma --write benchmarks/RESULTS.md
    python benchmarks/bench_preference.py --out /tmp/ins-gemma --profile gemma --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, load1, publish, timed_process as timed  # noqa: E402

RECIPE = "insurance-rag-qlora"
KEYS = (("rougeL", "ROUGE-L", 2), ("unsupported_rate", "unsupported_rate", 4), ("repetition", "repetition", 4),
        ("eos_rate", "eos_rate", 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None, help="the recipe's profile (gemma: the real model)")
    ap.add_argument("--out", type=Path, help="recipe output folder (default: a fresh temporary one)")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="kotune-preference-")) / RECIPE
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("KOTUNE_DEBUG", None)
    load_before, started = load1(), time.time()
    cmd = [sys.executable, "-m", "kotune", "run", f"recipes/{RECIPE}.yaml", "-o", str(out),
           *(["--profile", args.profile] if args.profile else [])]
    out.mkdir(parents=True, exist_ok=True)
    wall, rss = timed(cmd, env, out.parent / f"{RECIPE}.log")
    publish(section(out, wall, rss, args.profile, started, load_before), args.write,
            f"preference-{args.profile or 'tiny'}")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def section(out: Path, wall: float, rss: float, profile: str | None, started: float, load_before: float) -> str:
    metrics = _load(out / "eval" / "metrics.json")["models"]
    state = _load(out / "run.json")["steps"]
    summary = _load(out / "pairs.summary.json")
    pref = _load(out / "model-dpo" / "kotune.json")
    sft = _load(out / "model" / "kotune.json")
    model = sft["base_model"]
    lines = header(f"Preference tuning on {model}: the insurance seed's third round (SFT → pairs → DPO)", started,
                   load_before)
    ran = [k for k, v in state.items() if v.get("status") == "done" and "seconds" in v]
    lines += [f"- This run: {wall:.0f} s wall, peak RSS {rss:.2f} GB (steps already up to date are skipped; the step "
              f"times below are those of the run that did them)", "",
              "| model | " + " | ".join(label for _, label, _ in KEYS) + " | error types (of "
              f"{next(iter(metrics.values()))['overall']['n']} questions) |",
              "| --- | " + " | ".join("---:" for _ in KEYS) + " | --- |"]
    for name, m in metrics.items():
        o = m["overall"]
        errors = ", ".join(f"{k} {v}" for k, v in m.get("error_types", {}).items() if v) or "none"
        lines.append(f"| {name} | " + " | ".join("–" if o.get(k) is None else f"{o[k]:.{d}f}" for k, _, d in KEYS)
                     + f" | {errors} |")
    s, d = metrics["tuned"]["overall"], metrics["dpo"]["overall"]
    met = d["unsupported_rate"] < s["unsupported_rate"] and d["rougeL"] >= s["rougeL"] - 1.0
    p = pref["preference"]
    lines += ["",
              f"- Target: DPO's unsupported_rate below SFT's with ROUGE-L at most 1 point lower: "
              f"unsupported_rate {s['unsupported_rate']:.4f} → {d['unsupported_rate']:.4f}, ROUGE-L "
              f"{s['rougeL']:.2f} → {d['rougeL']:.2f}: **{'met' if met else 'missed'}**.",
              f"- Pairs (`kotune pairs`, {summary['samples']} samples per train question): {summary['pairs']} of "
              f"{summary['questions']} questions; rejected answers' failures: "
              + ", ".join(f"{k} {v}" for k, v in summary["rejected_error_types"].items() if v)
              + "; skipped: " + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()) + ".",
              f"- DPO ({p['method']}, beta {p['beta']}, chosen NLL weight {p.get('sft_weight')}, from the "
              f"{p['from_method']} SFT run, {pref['method']} weights): {pref['final']['steps']} steps in "
              f"{pref['final']['seconds']} s; held-out pairs' mean log-prob margin (chosen − rejected) "
              f"{p.get('eval_margin_before')} → {p.get('eval_margin_after')}, TRL's reward accuracy "
              f"{p.get('eval_reward_accuracy')}.",
              "- Step times: " + ", ".join(f"{k} {state[k]['seconds']:.0f} s" for k in ran) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
