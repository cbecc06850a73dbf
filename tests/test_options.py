"""One option schema per step (kotune.options): the command line and a recipe take the same
defaults and refuse the same values with the same line, exit code 2, before any work."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from kotune.options import (EvalOptions, GenerateOptions, PrepareOptions, SplitOptions, TrainOptions,
                            ValidateOptions)
from kotune.recipe.plan import EvalStep, GenerateStep, PrepareStep, SplitStep, TrainStep, ValidateStep

STEPS = {  # recipe step → (its options model, its command line without the option under test)
    "prepare": (PrepareOptions, ["prepare", "{doc}", "-o", "{out}/chunks.jsonl"]),
    "generate": (GenerateOptions, ["generate", "{doc}", "-o", "{out}/qa.jsonl"]),
    "validate": (ValidateOptions, ["validate", "{doc}", "-o", "{out}/clean.jsonl"]),
    "split": (SplitOptions, ["split", "{doc}", "--train", "{out}/a.jsonl", "--test", "{out}/b.jsonl"]),
    "train": (TrainOptions, ["train", "--data", "{doc}", "--output-dir", "{out}/model"]),
    "eval": (EvalOptions, ["eval", "--questions", "{doc}", "--models", "builtin:tiny-ko", "-o", "{out}/eval"]),
}
RECIPE_STEP = {"prepare": PrepareStep, "generate": GenerateStep, "validate": ValidateStep, "split": SplitStep,
               "train": TrainStep, "eval": EvalStep}
RECIPE_NEEDS = {"prepare": "inputs: [{doc}]", "generate": "chunks: {doc}", "validate": "data: [{doc}]",
                "split": "data: {doc}", "train": "data: {doc}", "eval": "questions: {doc}\n    models: [builtin:tiny-ko]"}


def _enum_fields():
    for step, (model, _) in STEPS.items():
        for name, field in model.model_fields.items():
            if typing.get_origin(field.annotation) is typing.Literal:
                yield step, name, typing.get_args(field.annotation)


def _ranged_fields():
    """(step, field, a value just outside its range)."""
    for step, (model, _) in STEPS.items():
        for name, field in model.model_fields.items():
            for m in field.metadata:
                for attr, bad in (("gt", lambda v: v), ("ge", lambda v: v - 1)):
                    if getattr(m, attr, None) is not None:
                        yield step, name, bad(getattr(m, attr))


ENUMS = list(_enum_fields())
RANGES = list(_ranged_fields())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argv(step: str, doc: Path, out: Path) -> list[str]:
    return [a.format(doc=doc, out=out) for a in STEPS[step][1]]


def _recipe(tmp_path: Path, step: str, field: str, value, doc: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    needs = RECIPE_NEEDS[step].format(doc=doc)
    recipe.write_text(f"name: r\nsteps:\n  {step}:\n    {needs}\n    {field}: {value!r}\n", encoding="utf-8")
    return recipe


def test_every_step_option_model_is_the_recipe_steps_base() -> None:
    for step, (model, _) in STEPS.items():
        assert issubclass(RECIPE_STEP[step], model)
        assert all(RECIPE_STEP[step].model_fields[n].default == f.default for n, f in model.model_fields.items())


def test_the_enum_and_range_tables_are_not_empty() -> None:
    assert {name for _, name, _ in ENUMS} == {"method", "preset", "template", "scheduler", "batching", "report_to"}
    assert len(RANGES) >= 20


@pytest.mark.parametrize("step,field,choices", ENUMS, ids=[f"{s}.{n}" for s, n, _ in ENUMS])
def test_an_unknown_enum_value_is_one_line_from_the_cli_and_from_a_recipe(step, field, choices, cli, tmp_path) -> None:
    doc = tmp_path / "doc.jsonl"
    doc.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    res = cli([*_argv(step, doc, tmp_path / "o"), _flag(field), "bogus"])
    expected = "one of " + ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    assert res.code == 2 and res.err_lines == [f"error: unknown {_flag(field)} 'bogus'; {expected}"], res.err
    res = cli(["run", _recipe(tmp_path, step, field, "bogus", doc), "-o", tmp_path / "out"])
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert f"unknown steps.{step}.{field} 'bogus'; {expected}" in res.err_lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("step,field,bad", RANGES, ids=[f"{s}.{n}" for s, n, _ in RANGES])
def test_an_out_of_range_number_is_one_line_from_the_cli_and_from_a_recipe(step, field, bad, cli, tmp_path) -> None:
    doc = tmp_path / "doc.jsonl"
    doc.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    res = cli([*_argv(step, doc, tmp_path / "o"), _flag(field), str(bad)])
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith(f"error: {_flag(field)} must be ") and line.endswith(f", got {bad!r}") or \
        line.endswith(f", got {float(bad)!r}"), line
    res = cli(["run", _recipe(tmp_path, step, field, bad, doc), "-o", tmp_path / "out"])
    assert res.code == 2 and len(res.err_lines) == 1 and f"steps.{step}.{field} must be " in res.err_lines[0], res.err
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


def test_the_command_line_defaults_are_the_models() -> None:
    """`kotune train --help` and a recipe without the key use the same value (max_length was declared in four files)."""
    from kotune.cli import app
    from kotune.train.sft import TrainConfig

    import typer.main

    command = typer.main.get_command(app).commands["train"]
    defaults = {p.name: p.default for p in command.params}
    for name in ("max_length", "min_steps", "batching", "scheduler", "eval_split", "lora_dropout"):
        assert defaults[name] == TrainOptions.default(name) == getattr(TrainConfig("b", "d", "o"), name)
