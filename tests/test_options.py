"""One option schema per command (kotune.options): the command line and a recipe take the same
defaults and refuse the same values with the same line, exit code 2, before any work; the allowed
values come from the registries they name (templates, presets, batching, schedulers)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from kotune.options import (BATCHING_NAMES, EXPORT_DTYPES, METHODS, PREFERENCE_METHODS, PRESET_NAMES, PRESETS, RL_METHODS, TRAIN_METHODS,
                            SCHEDULER_NAMES, TEMPLATE_NAMES, ChatOptions, DoctorOptions, EvalOptions, ExportOptions,
                            GenerateOptions, PairsOptions, PrepareOptions, RunOptions, ServeOptions, SplitOptions,
                            StudioOptions, TrainOptions, ValidateOptions)
from kotune.recipe.plan import DoctorStep, EvalStep, GenerateStep, PrepareStep, SplitStep, TrainStep, ValidateStep

STEPS = {  # recipe step → (its options model, its command line without the option under test)
    "prepare": (PrepareOptions, ["prepare", "{doc}", "-o", "{out}/chunks.jsonl"]),
    "generate": (GenerateOptions, ["generate", "{doc}", "-o", "{out}/qa.jsonl"]),
    "validate": (ValidateOptions, ["validate", "{doc}", "-o", "{out}/clean.jsonl"]),
    "split": (SplitOptions, ["split", "{doc}", "--train", "{out}/a.jsonl", "--test", "{out}/b.jsonl"]),
    "train": (TrainOptions, ["train", "--data", "{doc}", "--output-dir", "{out}/model"]),
    "eval": (EvalOptions, ["eval", "--questions", "{doc}", "--models", "builtin:tiny-ko", "-o", "{out}/eval"]),
    "doctor": (DoctorOptions, ["doctor", "--base-model", "builtin:tiny-ko", "--data", "{doc}"]),
}
RECIPE_STEP = {"prepare": PrepareStep, "generate": GenerateStep, "validate": ValidateStep, "split": SplitStep,
               "train": TrainStep, "eval": EvalStep, "doctor": DoctorStep}
RECIPE_NEEDS = {"prepare": "inputs: [{doc}]", "generate": "chunks: {doc}", "validate": "data: [{doc}]",
                "split": "data: {doc}", "train": "data: {doc}", "eval": "questions: {doc}\n    models: [builtin:tiny-ko]",
                "doctor": ""}
COMMANDS = {  # commands that are no recipe step → (their options model, their command line)
    "chat": (ChatOptions, ["chat", "--model", "builtin:tiny-ko"]),
    "serve": (ServeOptions, ["serve", "--model", "builtin:tiny-ko"]),
    "studio": (StudioOptions, ["studio", "--root", "{out}"]),
    "export": (ExportOptions, ["export", "--model", "{out}/model", "-o", "{out}/merged"]),
    "run": (RunOptions, ["run", "{out}/recipe.yaml", "-o", "{out}/run"]),
}


def _enum_fields(table=STEPS):
    for step, (model, _) in table.items():
        for name, field in model.model_fields.items():
            if typing.get_origin(field.annotation) is typing.Literal:
                yield step, name, typing.get_args(field.annotation)


def _ranged_fields(table=STEPS):
    """(step, field, a value just outside its range)."""
    for step, (model, _) in table.items():
        for name, field in model.model_fields.items():
            for m in field.metadata:
                for attr, bad in (("gt", lambda v: v), ("ge", lambda v: v - 1)):
                    if getattr(m, attr, None) is not None:
                        yield step, name, bad(getattr(m, attr))


ENUMS = list(_enum_fields())
RANGES = list(_ranged_fields())
COMMAND_CHECKS = [(c, f, bad, kind) for kind, rows in (("enum", _enum_fields(COMMANDS)), ("range", _ranged_fields(COMMANDS)))
                  for c, f, bad in rows]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argv(step: str, doc: Path, out: Path) -> list[str]:
    return [a.format(doc=doc, out=out) for a in {**STEPS, **COMMANDS}[step][1]]


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
    assert {name for _, name, _ in ENUMS} == {"method", "preset", "template", "scheduler", "batching", "report_to",
                                              "pad_token", "loss_on"}
    assert len(RANGES) >= 20
    assert {(c, f) for c, f, _, kind in COMMAND_CHECKS if kind == "enum"} == {("serve", "batching"), ("export", "dtype"),
                                                                                      ("export", "format"), ("export", "quant")}
    assert {("studio", "port"), ("run", "epochs")} <= {(c, f) for c, f, _, kind in COMMAND_CHECKS if kind == "range"}
    assert len([1 for *_, kind in COMMAND_CHECKS if kind == "range"]) >= 12


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


@pytest.mark.parametrize("command,field,bad,kind", COMMAND_CHECKS, ids=[f"{c}.{f}" for c, f, _, _ in COMMAND_CHECKS])
def test_commands_without_a_recipe_step_refuse_a_bad_value_in_one_line_before_doing_anything(command, field, bad, kind,
                                                                                             cli, tmp_path) -> None:
    res = cli([*_argv(command, tmp_path, tmp_path), _flag(field), "bogus" if kind == "enum" else str(bad)])
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    if kind == "enum":
        assert line.startswith(f"error: unknown {_flag(field)} 'bogus'; one of "), line
    else:
        assert line.startswith(f"error: {_flag(field)} must be ") and (
            line.endswith(f", got {bad!r}") or line.endswith(f", got {float(bad)!r}")), line


def test_allowed_values_come_from_the_registries_they_name() -> None:
    import kotune.train.sft as sft
    from kotune.model.templates import TEMPLATES
    from kotune.studio import launch

    assert TEMPLATE_NAMES == tuple(TEMPLATES) and PRESET_NAMES == tuple(PRESETS)
    literal = {name: typing.get_args(f.annotation) for name, f in TrainOptions.model_fields.items()
               if typing.get_origin(f.annotation) is typing.Literal}
    assert literal["template"] == TEMPLATE_NAMES and literal["preset"] == PRESET_NAMES
    assert literal["scheduler"] == SCHEDULER_NAMES and literal["batching"] == BATCHING_NAMES
    for model in (ChatOptions, ServeOptions, DoctorOptions):  # a plain base's template, or None: the run's own
        assert typing.get_args(typing.get_args(model.model_fields["template"].annotation)[0]) == TEMPLATE_NAMES
    for name, values in PRESETS.items():  # a preset sets training options, with values they accept
        assert set(values) <= set(TrainOptions.model_fields), name
        TrainOptions.model_validate(values)
    assert sft.PRESETS is PRESETS and not hasattr(sft, "BATCHING") and not hasattr(sft, "SCHEDULERS")
    assert launch.PRESETS == PRESET_NAMES
    from kotune.export import merged

    assert merged.DTYPES is EXPORT_DTYPES
    run_literals = {name: typing.get_args(typing.get_args(RunOptions.model_fields[name].annotation)[0])
                    for name in ("method", "preset")}
    assert run_literals == {"method": TRAIN_METHODS, "preset": PRESET_NAMES}
    assert TRAIN_METHODS == METHODS + PREFERENCE_METHODS + RL_METHODS
    assert literal["method"] == TRAIN_METHODS
    from kotune.rl import rewards

    assert rewards.REWARD_NAMES == ("facts", "grounded", "abstain", "eos", "repetition", "korean")


def test_shared_options_are_declared_once_on_the_command_line() -> None:
    """--template (six commands) and --api-key-env (two meanings: keys kotune sends, the key serve asks for)."""
    import typer.main

    from kotune.cli import app

    source = (Path(__file__).resolve().parents[1] / "kotune" / "cli.py").read_text(encoding="utf-8")
    assert source.count('"--template"') == 1 and source.count('"--api-key-env"') == 2
    commands = typer.main.get_command(app).commands
    helps = {name: {p.help for p in c.params if "--template" in p.opts} for name, c in commands.items()}
    using = {name for name, h in helps.items() if h}
    assert using == {"train", "doctor", "eval", "pairs", "chat", "serve"}
    assert len(set().union(*helps.values())) == 1
    keys = {name: next(p.help for p in c.params if "--api-key-env" in p.opts)
            for name, c in commands.items() if any("--api-key-env" in p.opts for p in c.params)}
    assert set(keys) == {"generate", "eval", "pairs", "chat", "serve"}
    assert len({keys[n] for n in ("generate", "eval", "pairs", "chat")}) == 1 and keys["serve"] != keys["chat"]
    assert source.count('"--judge-model"') == 1 and source.count('"--judge-api-key-env"') == 1


def test_eval_and_pairs_take_their_template_keys_and_judge_from_their_options_model() -> None:
    """--template, --api-key-env and --judge* are fields (a recipe's steps.eval and steps.pairs take them too),
    and no module keeps a settings copy of eval's or pairs' options."""
    import kotune.eval.evaluate as evaluate
    import kotune.eval.pairs as pairs

    for model in (EvalOptions, PairsOptions):
        assert {"template", "api_key_env", "judge", "judge_model", "judge_api_key_env"} <= set(model.model_fields)
    assert not hasattr(evaluate, "EvalSettings") and not hasattr(pairs, "PairSettings")
    opts = EvalOptions(benchmark=["kmmlu, haerae", "kobest"], stop=["\n\n"], judge="http://j/v1", template="rag")
    # metrics.json's "settings" is a file users read: its keys and their order stay as they were.
    block = evaluate.settings_block(opts)
    assert list(block) == ["max_new_tokens", "temperature", "top_p", "repetition_penalty", "stop", "seed", "batch_size",
                           "top_k", "template", "judge_url", "judge_model", "judge_api_key_env", "workers",
                           "api_key_env", "rpm", "benchmarks", "benchmark_data", "benchmark_limit", "forgetting_margin"]
    assert block["benchmarks"] == ["kmmlu", "haerae", "kobest"] and block["judge_url"] == "http://j/v1"
    assert block["stop"] == ["\n\n"] and block["template"] == "rag"


def test_a_recipe_passes_eval_and_pairs_template_and_judge_as_the_command_line_does(tmp_path) -> None:
    from kotune.recipe.plan import load_recipe

    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nsteps:\n  split:\n    data: {data}\n  train: {{}}\n"
                      "  pairs:\n    template: rag\n    api_key_env: KEYS\n    judge: http://j/v1\n"
                      "  eval:\n    template: rag\n    judge: http://j/v1\n    judge_model: m\n"
                      "    judge_api_key_env: JK\n", encoding="utf-8")
    calls = {c.label or c.name: c.args for c in load_recipe(recipe).calls(tmp_path / "out")}
    pairs_args, eval_args = " ".join(calls["pairs"]), " ".join(calls["eval"])
    assert "--template rag --api-key-env KEYS --judge http://j/v1" in pairs_args
    assert "--template rag --judge http://j/v1 --judge-model m --judge-api-key-env JK" in eval_args


def test_run_options_shortcuts_are_overrides_after_set() -> None:
    opts = RunOptions(set=["steps.eval.limit=4"], method="qlora", epochs=2, max_steps=6)
    assert opts.overrides() == ["steps.eval.limit=4", "steps.train.method=qlora", "steps.train.epochs=2.0",
                                "steps.train.max_steps=6"]
    assert RunOptions().overrides() == []


def test_the_command_line_defaults_are_the_models() -> None:
    """`kotune train --help` and a recipe without the key use the same value (max_length was declared in four files)."""
    from kotune.cli import app
    from kotune.train.sft import TrainConfig

    import typer.main

    command = typer.main.get_command(app).commands["train"]
    defaults = {p.name: p.default for p in command.params}
    for name in ("max_length", "min_steps", "batching", "scheduler", "eval_split", "lora_dropout"):
        assert defaults[name] == TrainOptions.default(name) == getattr(TrainConfig("b", "d", "o"), name)


@pytest.mark.parametrize("flag", ["--method", "--preset"])
def test_run_refuses_an_unknown_method_or_preset_in_one_line_before_reading_the_recipe(flag, cli, tmp_path) -> None:
    res = cli(["run", tmp_path / "missing.yaml", flag, "bogus", "-o", tmp_path / "out"])
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(f"error: unknown {flag} 'bogus'; one of "), res.err
    assert not (tmp_path / "out").exists()
