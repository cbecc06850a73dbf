#!/usr/bin/env bash
# The whole suite in a few pytest processes, one per group of test files, so memory the
# model-heavy files leave behind in a process (the torch allocator, threads' malloc arenas)
# does not add up over ~500 tests: one process for everything was OOM-killed at 24 GB on a
# 24 GB machine. Every group runs; the exit code is the first failure's.
set -uo pipefail
PY=${PYTHON:-.venv/bin/python}
status=0
for group in "tests/test_[a-f]*.py" "tests/test_g*.py" "tests/test_[h-q]*.py" "tests/test_r*.py" "tests/test_[s-z]*.py"; do
    # shellcheck disable=SC2086 - the glob is meant to expand
    files=$(ls $group 2>/dev/null)
    [ -z "$files" ] && continue
    echo "== pytest $group"
    # shellcheck disable=SC2086
    "$PY" -m pytest -q $files "$@" || { rc=$?; [ "$status" -eq 0 ] && status=$rc; }
done
exit "$status"
