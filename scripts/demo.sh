#!/usr/bin/env bash
# The main job on the built-in default: the bundled policy document → dataset →
# LoRA on builtin:tiny-ko → pitfall check → base-vs-tuned evaluation with a report.
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
# Held-out questions (references and keywords from the test split) and the training
# distribution (first 40 training questions): base and tuned answer the same prompts.
"$KOTUNE" eval --questions "$OUT/test.jsonl" --models base=builtin:tiny-ko tuned="$OUT/model" -o "$OUT/eval" --max-new-tokens 128
head -n 40 "$OUT/train.jsonl" > "$OUT/train_questions.jsonl"
"$KOTUNE" eval --questions "$OUT/train_questions.jsonl" --models base=builtin:tiny-ko tuned="$OUT/model" -o "$OUT/eval-train" --max-new-tokens 128
echo "demo: dataset $data_s s, total $(( $(date +%s) - start )) s; adapter in $OUT/model; reports in $OUT/eval/report.html and $OUT/eval-train/report.html"
