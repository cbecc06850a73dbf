#!/usr/bin/env bash
# The main job on the built-in default: the bundled policy document → dataset →
# LoRA on builtin:tiny-ko → pitfall check. Evaluation and serving join this chain
# as they land (see README); nothing here stands in for a stage that does not exist.
set -euo pipefail
OUT=${1:-runs/demo}
KOTUNE=${KOTUNE:-.venv/bin/kotune}
DOC=recipes/data/policy/policy_plan.txt
mkdir -p "$OUT"
start=$(date +%s)
"$KOTUNE" prepare "$DOC" -o "$OUT/chunks.jsonl"
"$KOTUNE" generate "$OUT/chunks.jsonl" -o "$OUT/qa.jsonl" --overwrite
"$KOTUNE" validate "$OUT/qa.jsonl" --chunks "$OUT/chunks.jsonl" -o "$OUT/clean.jsonl" --report "$OUT/validation.json"
"$KOTUNE" split "$OUT/clean.jsonl" --train "$OUT/train.jsonl" --test "$OUT/test.jsonl" --test-size 0.15
data_s=$(( $(date +%s) - start ))
echo "demo: dataset ready in $data_s s: chunks.jsonl qa.jsonl clean.jsonl train.jsonl test.jsonl validation.json"
"$KOTUNE" train --base-model builtin:tiny-ko --data "$OUT/train.jsonl" --output-dir "$OUT/model" --overwrite
"$KOTUNE" doctor "$OUT/model"
echo "demo: dataset $data_s s, total $(( $(date +%s) - start )) s; tuned adapter in $OUT/model"
