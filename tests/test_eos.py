"""The test the seed projects failed: after `kotune train` the model stops (EOS),
while the base model, asked the same questions in the same template, does not."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kotune.model.answers import GenerationSettings
from kotune.model.generation import Generator
from kotune.records import read_records


@pytest.fixture(scope="module")
def train_questions(sample_split):
    return read_records(sample_split[0])


def _eos_rate(spec, records, template=None):
    gen = Generator(spec, template=template, log=lambda *_: None)
    answers = gen.generate([gen.prompt(r.instruction, r.input) for r in records], GenerationSettings(max_new_tokens=128))
    counts = Counter(a.finish_reason for a in answers)
    return counts["eos"] / len(answers), answers


def test_tuned_model_stops_with_eos_and_base_does_not(trained_run, train_questions):
    tuned_rate, answers = _eos_rate(str(trained_run), train_questions)
    base_rate, _ = _eos_rate("builtin:tiny-ko", train_questions, template="kotune")
    assert tuned_rate >= 0.9, f"tuned eos_rate {tuned_rate:.2f}"
    assert base_rate <= 0.3, f"base eos_rate {base_rate:.2f}"
    assert all(a.text and "### 지시" not in a.text for a in answers if a.finish_reason == "eos")


def test_default_training_uses_the_balanced_preset_and_records_its_estimate(trained_run):
    # How long it takes is the benchmarks' to report (bench_recipes.py), not a test's to assert.
    info = json.loads((trained_run / "kotune.json").read_text(encoding="utf-8"))
    assert info["config"]["preset"] == "balanced"
    assert info["status"] == "complete" and info["final"]["steps"] > 0
    assert info["estimate"]["steps"] == info["final"]["steps"]


def test_greedy_answers_are_the_same_alone_or_in_a_batch(trained_run, train_questions):
    gen = Generator(str(trained_run), log=lambda *_: None)
    prompts = [gen.prompt(r.instruction) for r in train_questions[:6]]
    batched = gen.generate(prompts, GenerationSettings(max_new_tokens=48), batch_size=6)
    alone = [gen.generate([p], GenerationSettings(max_new_tokens=48))[0] for p in prompts]
    assert [a.text for a in batched] == [a.text for a in alone]
