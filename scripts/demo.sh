#!/usr/bin/env bash
# The main job: recipes/policy-qa.yaml — the bundled policy document → chunks → QA →
# validated train/test split → LoRA → pitfall check (doctor) → base-vs-tuned
# evaluation with an HTML report. `make demo` runs it on a real pretrained model
# (--profile gemma: builtin:gemma-3-270m, converted from its GGUF on first use);
# `make demo-fast` on builtin:tiny-ko (no extra arguments).
# Running it again does no work; a killed run resumes where it stopped.
#   scripts/demo.sh OUT [kotune run options...]
set -euo pipefail
OUT=${1:-runs/demo}
shift || true
KOTUNE=${KOTUNE:-.venv/bin/kotune}
start=$(date +%s)
"$KOTUNE" run recipes/policy-qa.yaml -o "$OUT" "$@"
echo "demo: done in $(( $(date +%s) - start )) s; adapter in $OUT/model; report in $OUT/eval/report.html"
