#!/usr/bin/env bash
# The main job on the built-in default: the bundled policy document through the
# dataset stage. Training, evaluation and serving are added to this chain as
# they land (see README); nothing here stands in for a stage that does not exist.
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
echo "demo: dataset ready in $OUT ($(( $(date +%s) - start )) s): chunks.jsonl qa.jsonl clean.jsonl train.jsonl test.jsonl validation.json"
