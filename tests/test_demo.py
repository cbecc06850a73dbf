"""`make demo-fast`'s job (scripts/demo.sh → recipes/policy-qa.yaml without a profile):
the bundled sample through the dataset stage, LoRA on builtin:tiny-ko, a clean doctor
report and a tuned model that beats the base, as real processes. (`make demo` is the
same script with --profile gemma; its time is measured by benchmarks/bench_recipes.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_jsonl

DEMO_FILES = ("chunks.jsonl", "qa.jsonl", "clean.jsonl", "train.jsonl", "test.jsonl", "validation.json")


def _kotune_executable() -> str:
    """The ``kotune`` script of this interpreter's environment (demo.sh runs "$KOTUNE" as one word)."""
    beside = Path(sys.executable).with_name("kotune")
    found = str(beside) if beside.is_file() else shutil.which("kotune")
    if not found:
        pytest.fail("no kotune executable: install the package (pip install -e .) first")
    return found


@pytest.mark.slow
def test_demo_builds_the_dataset_and_trains(tmp_path: Path, tiny_model) -> None:
    out = tmp_path / "demo"
    env = dict(os.environ, KOTUNE=_kotune_executable())
    env.pop("KOTUNE_DEBUG", None)

    proc = subprocess.run(["bash", "scripts/demo.sh", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in DEMO_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES + ("model", "eval", "eval-train", "dropped.jsonl",
                                                                         "eval-train-questions.jsonl", "run.json"))
    for ev in ("eval", "eval-train"):
        assert {p.name for p in (out / ev).iterdir()} == {"responses.jsonl", "metrics.json", "report.md", "report.html"}
    for ev in ("eval", "eval-train"):  # held-out questions and the training distribution
        m = json.loads((out / ev / "metrics.json").read_text(encoding="utf-8"))["models"]
        assert m["tuned"]["overall"]["rougeL"] > m["base"]["overall"]["rougeL"], ev
        assert m["tuned"]["overall"]["eos_rate"] > m["base"]["overall"]["eos_rate"], ev
    assert "headline rougeL" in proc.stderr and "tuned is better" in proc.stderr
    run = json.loads((out / "model" / "kotune.json").read_text(encoding="utf-8"))
    assert run["status"] == "complete" and (out / "model" / "adapter_model.safetensors").is_file()
    assert "no pitfalls found" in proc.stderr

    chunks = read_jsonl(out / "chunks.jsonl")
    qa = read_jsonl(out / "qa.jsonl")
    clean = read_jsonl(out / "clean.jsonl")
    train = read_jsonl(out / "train.jsonl")
    test = read_jsonl(out / "test.jsonl")
    report = json.loads((out / "validation.json").read_text(encoding="utf-8"))

    assert len(chunks) >= 5
    assert len(qa) >= 50
    assert report["total"] == len(qa) and report["kept"] == len(clean)
    assert len(train) + len(test) == len(clean)
    assert sorted(r["id"] for r in train + test) == sorted(r["id"] for r in clean)
    assert 0 < len(test) < len(train)
    assert {r["chunk_id"] for r in clean} <= {c["chunk_id"] for c in chunks}
    assert "demo: done in" in proc.stdout
