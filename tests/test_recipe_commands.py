"""A recipe step and its printed command line do the same thing: the command line,
parsed by the CLI, calls the same step function with the same options and files as the
recipe calls it directly (every bundled recipe, every profile)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import kotune.recipe.steps
from kotune.options import (DoctorOptions, EvalOptions, GenerateOptions, PairsOptions, PrepareOptions, SplitOptions,
                            TrainOptions, ValidateOptions)
from kotune.recipe.plan import load_recipe

from conftest import REPO, call_cli

OPTIONS = {"prepare": PrepareOptions, "generate": GenerateOptions, "validate": ValidateOptions, "split": SplitOptions,
           "train": TrainOptions, "doctor": DoctorOptions, "evaluate": EvalOptions, "pairs": PairsOptions}
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _normal(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _capture(monkeypatch) -> list[tuple[str, dict]]:
    seen: list[tuple[str, dict]] = []
    for name in ("prepare", "generate", "validate", "split", "train", "doctor", "pairs", "evaluate"):
        signature = inspect.signature(getattr(kotune.recipe.steps, name))

        def fake(*args, _name=name, _sig=signature, **kwargs):
            bound = _sig.bind(*args, **kwargs)
            bound.apply_defaults()  # a default left out equals the same default passed
            call = {}
            for key, value in bound.arguments.items():
                if hasattr(value, "model_dump"):  # an options model: compared by the options it carries
                    value = value.model_dump(include=set(OPTIONS[_name].model_fields))
                call[key] = _normal(value)
            seen.append((_name, call))
            return 0
        monkeypatch.setattr(kotune.recipe.steps, name, fake)
    return seen


# Profiles beyond gemma, where a recipe has them (policy-qa's grounded ones).
EXTRA = [(REPO / "recipes" / "policy-qa.yaml", p) for p in ("grounded", "gemma-grounded")]


@pytest.mark.parametrize("recipe,profile",
                         [(r, p) for r in RECIPES for p in (None, "gemma")] + EXTRA,
                         ids=[f"{r.stem}-{p}" for r in RECIPES for p in (None, "gemma")] + [f"{r.stem}-{p}" for r, p in EXTRA])
def test_the_printed_command_calls_the_step_as_the_recipe_does(recipe: Path, profile, tmp_path, monkeypatch) -> None:
    plan = load_recipe(recipe, profile=profile)
    seen = _capture(monkeypatch)
    for call in plan.calls(tmp_path / "out"):
        seen.clear()
        if call.name in ("generate", "train", "prefer", "grpo"):
            call.run(resume=False, overwrite=False)
        else:
            call.run()
        direct = list(seen)
        seen.clear()
        res = call_cli(call.args)
        assert res.code == 0, res.err
        assert seen == direct, f"kotune {' '.join(call.args)}"


def test_a_grounded_recipe_records_its_chunks_in_the_run(tmp_path) -> None:
    """The grounded profile's train step gets the prepared chunks (the run records them, so
    eval, chat and serve retrieve from them by default); the closed-book recipe's does not."""
    recipe = REPO / "recipes" / "policy-qa.yaml"
    grounded = {c.name: c.args for c in load_recipe(recipe, profile="grounded").calls(tmp_path / "g")}
    chunks = grounded["prepare"][grounded["prepare"].index("-o") + 1]
    assert grounded["train"][grounded["train"].index("--chunks") + 1] == chunks
    closed = {c.name: c.args for c in load_recipe(recipe).calls(tmp_path / "c")}
    assert "--chunks" not in closed["train"]
