#!/usr/bin/env bash
# The main job on the built-in default: recipes/policy-qa.yaml on builtin:tiny-ko —
# the bundled policy document → chunks → QA → validated train/test split → LoRA →
# pitfall check (doctor) → base-vs-tuned evaluation with an HTML report.
# Running it again does no work; a killed run resumes where it stopped.
set -euo pipefail
OUT=${1:-runs/demo}
KOTUNE=${KOTUNE:-.venv/bin/kotune}
start=$(date +%s)
"$KOTUNE" run recipes/policy-qa.yaml -o "$OUT"
echo "demo: done in $(( $(date +%s) - start )) s; adapter in $OUT/model; reports in $OUT/eval/report.html and $OUT/eval-train/report.html"
