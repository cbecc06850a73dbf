"""One owner per setting: every option's default is the same wherever it is declared.

An option's default can be written in several places: the command line (the Typer
app's parameters), the command's options model (:mod:`kotune.options`), the recipe's
step model (:mod:`kotune.recipe.plan`, built on the options models), and the keyword
defaults of the functions and settings classes the value travels to
(:mod:`kotune.recipe.steps`, the data/train/eval/serve/studio/export/run entry points,
``TrainConfig``, ``DoctorSetup``, ``GenerationSettings``). For every option of every command
and every recipe step, each place that declares a default must declare the same one; an
option declared in only one place passes. The command line declares no default of its own:
each comes from the command's options model (the source is read), save the inputs listed in
``NOT_OPTIONS``.

The command line is read twice: as declared (``--help`` shows it) and as used — the
command is run with its required arguments only and the step function it calls is
replaced by one that records what it was given. A declared ``None`` means "not given"
(``train --template``: the model's default, or with ``--from`` the run's), so where the
command hands its options to a model, the value used stands in for it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable

import pytest
import typer.main
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import kotune.recipe.steps as steps
from kotune.cli import app, main
from kotune.options import (ChatOptions, DoctorOptions, EvalOptions, ExportOptions, GenerateOptions, Options,
                            PairsOptions, PrepareOptions, RunOptions, ScoreOptions, ServeOptions, SplitOptions,
                            StudioOptions, TrainOptions, ValidateOptions)
from kotune.recipe import plan

COMMANDS = typer.main.get_command(app).commands

# ---------------------------------------------------------------- where a command's defaults live
MODELS: dict[str, type[Options]] = {
    "prepare": PrepareOptions, "generate": GenerateOptions, "validate": ValidateOptions, "split": SplitOptions,
    "train": TrainOptions, "doctor": DoctorOptions, "eval": EvalOptions, "pairs": PairsOptions,
    "chat": ChatOptions, "serve": ServeOptions, "studio": StudioOptions, "export": ExportOptions, "run": RunOptions,
    "score": ScoreOptions,
}
RECIPE_STEPS: dict[str, list[tuple[str, type[BaseModel]]]] = {  # command → (recipe step, its model)
    "prepare": [("prepare", plan.PrepareStep)], "generate": [("generate", plan.GenerateStep)],
    "validate": [("validate", plan.ValidateStep)], "split": [("split", plan.SplitStep)],
    "train": [("train", plan.TrainStep), ("prefer", plan.PreferStep)], "doctor": [("doctor", plan.DoctorStep)],
    "pairs": [("pairs", plan.PairsStep)], "eval": [("eval", plan.EvalStep)],
}
# A recipe step's own fields that are not options: inputs the plan resolves into files
# (``questions: train`` becomes OUT/train.jsonl), so they have no command-line default to match.
# ``map`` is an option (``--map``) and is compared.
RECIPE_INPUTS = {"inputs", "chunks", "data", "questions", "limit", "train_sample", "models", "context", "headline",
                 "system_prompts"}
# Deliberate differences, each with its reason.
EXEMPT = {
    ("train", "method", "recipe steps.prefer"): "steps.prefer is `kotune train --from` with a preference method "
                                                "(dpo); the plan always prints --method for it",
}
# Command-line parameters with a default of their own, which are no options-model field: a command's input and
# output files and model specs (a recipe's plan provides them: steps.validate's report is OUT/validation.json),
# flags about one invocation rather than the work (--resume, --overwrite, --shard, --trust-remote-code), and
# train's --template, whose None means "not given" (with --from: the run's template, else TrainOptions').
NOT_OPTIONS = {
    "generate": {"shard", "resume", "overwrite"},
    "validate": {"report", "dropped", "chunks_file", "mapping"},
    "split": {"mapping"},
    "train": {"base_model", "from_run", "template", "system_prompts", "eval_data", "trust_remote_code", "resume",
              "overwrite"},
    "doctor": {"run_dir", "base_model", "data", "eval_dir"},
    "eval": {"context"},
    "pairs": {"model", "questions", "from_eval", "context"},
    "serve": {"adapter"},
}
# What a None handed to the step function stands for (the function resolves it).
RESOLVED = {("train", "base_model"): TrainOptions.default_base_model}   # steps.train: base_model or the default


def _functions() -> dict[str, list[tuple[str, Callable[..., Any], dict[str, str]]]]:
    """command → (label, callable, {parameter: option}) of the functions its values reach."""
    from kotune.data import chunk, qa, split, validate
    from kotune.data.generate import generate_file
    from kotune.data.grounded import Grounder
    from kotune.data.http_teacher import OpenAITeacher
    from kotune.data.local_teacher import LocalTeacher
    from kotune.eval import evaluate, pairs
    from kotune.export import merged, to_gguf
    from kotune.serve import chat, engine, server
    from kotune.studio import app as studio

    def f(fn, **renames):
        return (fn.__qualname__, fn, renames)

    return {
        "prepare": [f(steps.prepare), f(chunk.prepare), f(chunk.chunk_paragraphs)],
        "generate": [f(steps.generate), f(generate_file), f(OpenAITeacher.__init__, max_tokens="max_new_tokens"),
                     f(LocalTeacher.__init__, batch_size="workers"), f(Grounder.__init__, k="grounded_k")],
        "validate": [f(steps.validate, chunks_file="chunks", mapping="map"), f(validate.validate_records),
                     f(validate.text_problem), f(validate.grounding_problem), f(qa.answer_problem), f(qa.accept_pairs),
                     # the teachers accept an answer as validate keeps it (one implementation for both)
                     ("OpenAITeacher (min_grounding)", OpenAITeacher.__init__, {}),
                     ("LocalTeacher (min_grounding)", LocalTeacher.__init__, {})],
        "split": [f(steps.split, mapping="map"), f(split.stratified_split), f(split.augment)],
        "train": [f(steps.train, from_run="from")],
        "doctor": [f(steps.doctor)],
        "eval": [f(steps.evaluate), f(evaluate.evaluate, chunks_path="context")],
        "pairs": [f(steps.pairs), f(pairs.mine, chunks_path="context"), f(pairs.from_eval, chunks_path="context"),
                  f(pairs.choose_pair)],
        "chat": [f(chat.run_chat)],
        "serve": [f(server.serve), f(server.create_app), f(engine.Engine.__init__), f(engine.Batcher.__init__),
                  f(engine.LiveBatcher.__init__)],
        "studio": [f(studio.run_studio)],
        "export": [f(merged.export, model_dir="model"), f(to_gguf.export_gguf, model_dir="model")],
        "run": [f(plan.load_run), f(plan.load_recipe, overrides="set"), f(plan.Plan.output, given="output"),
                f(plan.run_recipe)],
        "score": [f(steps.score)],
    }


def _settings_classes() -> dict[str, list[tuple[type, dict[str, str], set[str] | None]]]:
    """command → (dataclass, {field: option}, only these fields or None for all) its values are copied into."""
    from kotune.model.answers import GenerationSettings
    from kotune.train.doctor import DoctorSetup
    from kotune.train.sft import TrainConfig

    # GenerationSettings' seed is None (unseeded) for library calls; eval passes its own (42) always.
    sampling = {"max_new_tokens", "temperature", "top_p", "repetition_penalty", "stop"}
    return {
        "train": [(TrainConfig, {"from_run": "from"}, None)],
        "doctor": [(DoctorSetup, {}, None)],
        "eval": [(GenerationSettings, {}, sampling)],
        "chat": [(GenerationSettings, {}, sampling)],
    }


# ---------------------------------------------------------------- the command line as used
class _Called(Exception):
    """Raised by the stand-in step function once it has recorded its arguments."""


ENTRY = {  # command → (module, attribute the command calls, its command line with required arguments only)
    "prepare": ("kotune.recipe.steps", "prepare", ["prepare", "doc.txt", "-o", "chunks.jsonl"]),
    "generate": ("kotune.recipe.steps", "generate", ["generate", "chunks.jsonl", "-o", "qa.jsonl"]),
    "validate": ("kotune.recipe.steps", "validate", ["validate", "qa.jsonl", "-o", "clean.jsonl"]),
    "split": ("kotune.recipe.steps", "split", ["split", "clean.jsonl", "--train", "a.jsonl", "--test", "b.jsonl"]),
    "train": ("kotune.recipe.steps", "train", ["train", "--data", "train.jsonl", "-o", "model"]),
    "doctor": ("kotune.recipe.steps", "doctor", ["doctor"]),
    "eval": ("kotune.recipe.steps", "evaluate", ["eval", "--questions", "q.jsonl", "--models", "m", "-o", "ev"]),
    "pairs": ("kotune.recipe.steps", "pairs", ["pairs", "-o", "pairs.jsonl"]),
    "chat": ("kotune.serve.chat", "run_chat", ["chat", "--model", "m"]),
    "serve": ("kotune.serve.server", "serve", ["serve", "--model", "m"]),
    "studio": ("kotune.studio.app", "run_studio", ["studio"]),
    "export": ("kotune.export", "export", ["export", "--model", "m"]),
    "run": ("kotune.recipe.plan", "load_run", ["run", "recipe.yaml"]),
    "score": ("kotune.recipe.steps", "score", ["score", "p.jsonl", "-o", "s.json"]),
}
_USED: dict[str, dict[str, Any]] = {}


def _used(command: str) -> dict[str, Any]:
    """option → the value the command hands on when only its required arguments are given."""
    if command not in ENTRY:
        return {}
    if command not in _USED:
        import importlib

        module_name, attr, argv = ENTRY[command]
        module = importlib.import_module(module_name)
        real = getattr(module, attr)
        renames = next((r for _, fn, r in _functions().get(command, []) if fn is real), {})
        seen: dict[str, Any] = {}

        def stand_in(*args, **kwargs):
            bound = inspect.signature(real).bind(*args, **kwargs)
            bound.apply_defaults()
            for name, value in bound.arguments.items():
                if isinstance(value, Options):
                    seen.update({k: getattr(value, k) for k in type(value).model_fields})
                else:
                    seen[renames.get(name, name)] = value
            raise _Called

        mp = pytest.MonkeyPatch()
        mp.setattr(module, attr, stand_in)
        try:
            with pytest.raises(_Called):
                main(argv)
        finally:
            mp.undo()
        _USED[command] = seen
    return _USED[command]


# ---------------------------------------------------------------- collecting the defaults
def _option_name(param: Any) -> str:
    """``--near-dup-threshold`` → ``near_dup_threshold`` (the convention the recipe's flags follow)."""
    long = [o for o in param.opts if o.startswith("--")]
    return long[0][2:].replace("-", "_") if long else param.name


def _cli_params(command: str) -> dict[str, Any]:
    return {_option_name(p): p for p in COMMANDS[command].params if p.name != "help"}


def _field_default(field: Any) -> Any:
    value = field.get_default(call_default_factory=True)
    return PydanticUndefined if value is PydanticUndefined else value


def _sources(command: str, option: str) -> list[tuple[str, Any]]:
    """(where, default) for every place that declares ``option``'s default for ``command``."""
    found: list[tuple[str, Any]] = []
    model = MODELS.get(command)
    used = _used(command)
    param = _cli_params(command).get(option)
    if param is not None and not param.required:
        declared = param.default
        if not (declared is None or (param.multiple and not declared)) or option not in used:
            found.append((f"kotune {command} --help", declared))   # else: "not given", the used value stands in
    if option in used and (param is None or not param.required):
        found.append((f"kotune {command} (used)", used[option]))
    if model is not None and option in model.model_fields:
        default = _field_default(model.model_fields[option])
        if default is not PydanticUndefined:
            found.append((model.__name__, default))
    for step, step_model in RECIPE_STEPS.get(command, []):
        if option in step_model.model_fields and option not in RECIPE_INPUTS:
            found.append((f"recipe steps.{step}", _field_default(step_model.model_fields[option])))
    for label, fn, renames in _functions().get(command, []):
        for name, p in inspect.signature(fn).parameters.items():
            if renames.get(name, name) == option and p.default is not inspect.Parameter.empty:
                found.append((f"{label}({name}=)", p.default))
    for cls, renames, only in _settings_classes().get(command, []):
        for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
            if renames.get(f.name, f.name) == option and (only is None or f.name in only):
                if f.default is not dataclasses.MISSING:
                    found.append((f"{cls.__name__}.{f.name}", f.default))
                elif f.default_factory is not dataclasses.MISSING:
                    found.append((f"{cls.__name__}.{f.name}", f.default_factory()))
        if isinstance(cls, type) and issubclass(cls, BaseModel) and option in cls.model_fields:
            default = _field_default(cls.model_fields[option])
            if default is not PydanticUndefined:
                found.append((cls.__name__, default))
    if (command, option) in RESOLVED:
        found = [(w, RESOLVED[(command, option)] if v is None else v) for w, v in found]
        found.append((f"{command}'s resolved default", RESOLVED[(command, option)]))
    if command == "train" and option == "base_model":
        found.append(("Recipe.base_model", plan.Recipe.model_fields["base_model"].default))
    return [(w, v) for w, v in found if (command, option, w) not in EXEMPT]


def _normal(value: Any, collection: bool) -> Any:
    if isinstance(value, Path):
        return str(value)
    if collection and value is None:
        return []                                   # no list given = an empty list
    if isinstance(value, (tuple, list)):
        return [_normal(v, False) for v in value]
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]   # --map K=V
    return value


def _all_options() -> list[tuple[str, str]]:
    """Every option of every command, and every field of every recipe step, once."""
    seen: dict[tuple[str, str], None] = {}
    for command in sorted(COMMANDS):
        for option in _cli_params(command):
            seen[(command, option)] = None
        if command in MODELS:
            for option in MODELS[command].model_fields:
                seen[(command, option)] = None
        for _, step_model in RECIPE_STEPS.get(command, []):
            for option in step_model.model_fields:
                if option not in RECIPE_INPUTS:
                    seen[(command, option)] = None
    return list(seen)


ALL = _all_options()


@pytest.mark.parametrize("command,option", ALL, ids=[f"{c}.{o}" for c, o in ALL])
def test_an_options_default_is_the_same_everywhere_it_is_declared(command: str, option: str) -> None:
    found = _sources(command, option)
    collection = any(isinstance(v, (list, tuple, dict)) for _, v in found)
    values = [_normal(v, collection) for _, v in found]
    assert all(v == values[0] for v in values), f"{command} {option}: " + "; ".join(
        f"{where} = {value!r}" for where, value in found)


def test_the_comparison_covers_the_commands_and_finds_counterparts() -> None:
    """Every command is covered, and most options are declared (and so compared) in more than one place."""
    assert {c for c, _ in ALL} == set(COMMANDS)
    compared = [(c, o) for c, o in ALL if len(_sources(c, o)) > 1]
    assert len(compared) >= 160, len(compared)
    assert set(ENTRY) == set(COMMANDS) == set(MODELS)  # every command has an options model


def _declared_defaults() -> dict[str, dict[str, ast.expr]]:
    """command → {parameter: the expression its default is declared with} in kotune/cli.py."""
    import kotune.cli

    tree = ast.parse(Path(kotune.cli.__file__).read_text(encoding="utf-8"))
    found: dict[str, dict[str, ast.expr]] = {}
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for d in fn.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command":
                name = d.args[0].value if d.args else fn.name
                params = fn.args.args[len(fn.args.args) - len(fn.args.defaults):]
                found[name] = {}
                for param, default in zip(params, fn.args.defaults):
                    if (isinstance(default, ast.Call) and isinstance(default.func, ast.Attribute)
                            and default.func.attr in ("Option", "Argument")):
                        default = default.args[0] if default.args else ast.Constant(None)
                    found[name][param.arg] = default
    return found


def test_the_command_line_takes_every_default_from_the_commands_options_model() -> None:
    """In kotune/cli.py a default is required (``...``) or ``<the command's model>.default("field")``;
    only the parameters of ``NOT_OPTIONS`` declare their own (and each of them does)."""
    declared = _declared_defaults()
    assert set(declared) == set(COMMANDS)
    own: dict[str, set[str]] = {}
    for command, params in declared.items():
        for name, expr in params.items():
            if isinstance(expr, ast.Constant) and expr.value is Ellipsis:
                continue
            if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "default"
                    and isinstance(expr.func.value, ast.Name)):
                assert expr.func.value.id == MODELS[command].__name__, (command, name, expr.func.value.id)
                field = expr.args[0].value
                assert field in MODELS[command].model_fields, (command, name, field)
                continue
            own.setdefault(command, set()).add(name)
    assert own == NOT_OPTIONS


def test_every_option_not_compared_is_an_input() -> None:
    """An option declared in only one place is a command's required input, or one of ``NOT_OPTIONS``."""
    inputs = {(c, p) for c, params in NOT_OPTIONS.items() for p in params}
    for command, option in ALL:
        if len(_sources(command, option)) > 1:
            continue
        param = _cli_params(command)[option]
        assert param.required or (command, param.name) in inputs, (command, option)


def test_every_command_with_settings_has_one_options_model_that_its_step_takes() -> None:
    """The value a command uses for an option it hands to its options model is the model's default."""
    for command, model in MODELS.items():
        used = _used(command)
        for name, field in model.model_fields.items():
            if field.is_required():
                continue
            assert _normal(used[name], True) == _normal(_field_default(field), True), (command, name)
