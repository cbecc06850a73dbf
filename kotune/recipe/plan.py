"""``kotune run RECIPE.yaml``: a whole pipeline from one YAML file.

A recipe is data (as in torchtune): which steps to run and their settings. Every
step is an ordinary ``kotune`` command: a step's settings are that command's
options model (:mod:`kotune.options`), ``run`` prints the equivalent command line
(so a user can rerun or adapt one step by hand) and calls the step function
(:mod:`kotune.recipe.steps`) with the same model:

    prepare → generate → validate → split → train → doctor → eval

Each step reads the previous step's file in ``OUT`` (or a file the recipe names)
and writes its own there::

    OUT/chunks.jsonl  qa.jsonl  clean.jsonl validation.json dropped.jsonl  train.jsonl test.jsonl
    OUT/model/        eval/ (eval-train/)    run.json (what ran, with which inputs)

A step is skipped when its key — the command line with every input file replaced
by its content hash, plus the kotune version — matches the last finished run and
its outputs are still there. Steps write deterministic outputs, so changing an
eval setting reruns only eval. A step that was cut off (crash, SIGKILL) resumes:
``generate`` from its journal, ``train`` from its last checkpoint.

A recipe is checked whole before any work starts: unknown steps and keys, wrong
types, missing input files and steps whose input nothing provides are reported
with the field's path (``steps.train.epochs``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kotune import __version__
from kotune.recipe import steps
from kotune.errors import KotuneError
from kotune.options import (PREFERENCE_METHODS, RL_METHODS, DoctorOptions, EvalOptions, GenerateOptions, PairsOptions,
                            PrepareOptions, RunOptions, SplitOptions, TrainOptions, ValidateOptions, problem)
from kotune.model.runinfo import RunInfo
from kotune.eval.report import METRICS as REPORT_METRICS

STEP_ORDER = ("prepare", "generate", "validate", "split", "train", "doctor", "pairs", "prefer", "grpo", "eval")
METRICS = tuple(key for key, *_ in REPORT_METRICS)
LOWER_IS_BETTER = tuple(key for key, _, _, higher_is_better in REPORT_METRICS if not higher_is_better)


# ---------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareStep(PrepareOptions):
    """Documents → ``OUT/chunks.jsonl``."""

    inputs: list[str] = Field(min_length=1)


class GenerateStep(GenerateOptions):
    """Chunks → ``OUT/qa.jsonl``."""

    chunks: Optional[str] = None            # default: OUT/chunks.jsonl from prepare


class ValidateStep(ValidateOptions):
    """Generated QA plus ``data`` files → ``OUT/clean.jsonl``, ``OUT/validation.json``, ``OUT/dropped.jsonl``."""

    data: list[str] = Field(default_factory=list)
    map: dict[str, str] = Field(default_factory=dict)


class SplitStep(SplitOptions):
    """Records → ``OUT/train.jsonl``, ``OUT/test.jsonl``."""

    data: Optional[str] = None
    map: dict[str, str] = Field(default_factory=dict)


class TrainStep(TrainOptions):
    """``OUT/train.jsonl`` → ``OUT/model/``; the other fields are ``kotune train``'s options."""

    data: Optional[str] = None
    system_prompts: dict[str, str] = Field(default_factory=dict)


class DoctorStep(DoctorOptions):
    """Pitfall check of ``OUT/model``; the fields are ``kotune doctor``'s options (usually none:
    a kotune run is checked with its own template, length and targets)."""


class PairsStep(PairsOptions):
    """``OUT/model``'s flagged answers → ``OUT/pairs.jsonl`` (``kotune pairs``)."""

    questions: str = "train"                 # train | test | a questions file
    limit: Optional[int] = Field(None, ge=1)  # first N questions
    context: Union[bool, str] = False        # true: retrieve from OUT/chunks.jsonl


class PreferStep(TrainOptions):
    """Preference tuning from ``OUT/model`` on ``OUT/pairs.jsonl`` → ``OUT/model-METHOD/``;
    the other fields are ``kotune train``'s options."""

    method: Literal[PREFERENCE_METHODS] = "dpo"  # type: ignore[valid-type]
    data: Optional[str] = None


class GrpoStep(TrainOptions):
    """GRPO from ``OUT/model`` on questions (the train split by default) → ``OUT/model-grpo/``;
    the other fields are ``kotune train``'s options (``reward``, ``num_generations``, ...)."""

    method: Literal[RL_METHODS] = "grpo"  # type: ignore[valid-type]
    questions: str = "train"                 # train | test | a questions file
    context: Union[bool, str] = False        # true: retrieve from OUT/chunks.jsonl (as the eval step does)


class EvalStep(EvalOptions):
    """Base vs tuned on the test split → ``OUT/eval/``; ``train_sample: N`` adds
    ``OUT/eval-train/`` on the first N training records (did tuning take?)."""

    questions: str = "test"                  # test | train | a questions file
    limit: Optional[int] = Field(None, ge=1)  # first N questions
    train_sample: Optional[int] = Field(None, ge=1)
    models: Optional[list[str]] = None       # default: base=<base_model> tuned=OUT/model
    context: Union[bool, str] = False        # true: retrieve from OUT/chunks.jsonl
    headline: Literal[METRICS] = "rougeL"  # type: ignore[valid-type]


class Steps(_Strict):
    prepare: Optional[PrepareStep] = None
    generate: Optional[GenerateStep] = None
    validate_: Optional[ValidateStep] = Field(None, alias="validate")
    split: Optional[SplitStep] = None
    train: Optional[TrainStep] = None
    doctor: Optional[DoctorStep] = None
    pairs: Optional[PairsStep] = None
    prefer: Optional[PreferStep] = None
    grpo: Optional[GrpoStep] = None
    eval: Optional[EvalStep] = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def get(self, name: str) -> Any:
        return getattr(self, "validate_" if name == "validate" else name)


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    base_model: str = TrainOptions.default_base_model
    steps: Steps
    # Named sets of overrides for another base model or mode (``kotune run R --profile gemma``):
    # settings that suit that model live in the recipe, not in code. Merged into the
    # recipe before validation, so a profile is checked like the recipe itself. Profiles
    # compose: ``--profile gemma,grounded`` applies gemma, then grounded (later ones win),
    # and a profile may be a list of other profiles' names (``gemma-grounded: [gemma, grounded]``).
    profiles: dict[str, Union[dict[str, Any], list[str]]] = Field(default_factory=dict)


_STEP_MODELS = {"prepare": PrepareStep, "generate": GenerateStep, "validate": ValidateStep, "split": SplitStep,
                "train": TrainStep, "doctor": DoctorStep, "pairs": PairsStep, "prefer": PreferStep, "grpo": GrpoStep,
                "eval": EvalStep}


# ---------------------------------------------------------------- loading
def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("validate_",):
            out += ".validate" if out else "validate"
        else:
            out += f".{part}" if out else str(part)
    return out


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed where an unknown key was found."""
    if len(loc) == 1:
        return list(Recipe.model_fields)
    if len(loc) == 2 and loc[0] == "steps":
        return list(STEP_ORDER)
    if len(loc) == 3 and loc[0] == "steps" and loc[1] in _STEP_MODELS:
        return list(_STEP_MODELS[loc[1]].model_fields)
    return []


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = tuple("validate" if p == "validate_" else p for p in err["loc"])
    where = _loc(loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc)
        what = "unknown step" if len(loc) == 2 and loc[0] == "steps" else "unknown key"
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: {what}{hint}; expected one of {', '.join(known)}"
    if err["type"] == "missing":
        return f"{where}: required field missing"
    if len(loc) >= 3 and loc[0] == "steps" and loc[1] in _STEP_MODELS:  # the step's options: the CLI's words
        return problem(_STEP_MODELS[loc[1]], err, where)
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{where}: {err['msg']}{shown}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``steps.train.epochs=2`` → ``(["steps", "train", "epochs"], 2)``; the value is YAML."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise KotuneError(f"--set takes KEY=VALUE (e.g. steps.train.epochs=2), got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return [k for k in key.strip().split(".") if k], value


def _apply(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge a profile into the recipe data (mappings merge, other values replace)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _profile_for(data: dict[str, Any], profile: str | None, base_model: str | None) -> str | None:
    """The profile to apply: the one named (``a,b``: several, applied in that order), else the
    one declaring the --base-model given."""
    profiles = data.get("profiles") or {}
    if profile is not None:
        names = _profile_names(profile)
        for name in names:
            if name not in profiles:
                known = ", ".join(profiles) or "none"
                which = f": {name}" if len(names) > 1 else ""
                raise KotuneError(f"--profile {profile}: no such profile in this recipe{which} (it has: {known})")
        return profile
    if base_model is not None:
        matching = [n for n, p in profiles.items() if isinstance(p, dict) and p.get("base_model") == base_model]
        return matching[0] if matching else None
    return None


def _profile_names(profile: str) -> list[str]:
    """``"gemma,grounded"`` → ``["gemma", "grounded"]``."""
    names = [n.strip() for n in profile.split(",") if n.strip()]
    if not names:
        raise KotuneError(f"--profile {profile!r}: name a profile of the recipe")
    return names


def _profile_bodies(profiles: dict[str, Any], profile: str, src: Path) -> list[tuple[str, dict[str, Any]]]:
    """The mappings ``profile`` applies, in order: a name's own mapping, or for a profile that is a
    list of names, theirs (recursively); a profile that names itself is an error."""
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(name: str, seen: tuple[str, ...]) -> None:
        if name in seen:
            raise KotuneError(f"profiles.{seen[0]}: refers to itself through {' → '.join((*seen, name))}", path=src)
        if name not in profiles:
            known = ", ".join(profiles) or "none"
            raise KotuneError(f"profiles.{seen[-1]}: no such profile: {name} (this recipe has: {known})", path=src)
        body = profiles[name]
        if isinstance(body, list) and all(isinstance(n, str) for n in body):
            for part in body:
                walk(part, (*seen, name))
        elif isinstance(body, dict):
            out.append((name, body))
        else:
            raise KotuneError(f"profiles.{name}: a profile is a mapping of recipe fields or a list of profile names",
                              path=src)

    for name in _profile_names(profile):
        walk(name, ())
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, profile: str | None = None,
                base_model: str | None = None) -> "Plan":
    """Read, apply a profile and overrides, validate and resolve a recipe; raises
    KotuneError naming the field. ``base_model`` (``--base-model``) also picks the
    profile that declares it when no profile is named."""
    import yaml

    from kotune.io import check_input_file, read_text_file

    src = check_input_file(path)
    try:
        data = yaml.safe_load(read_text_file(src))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise KotuneError(f"invalid YAML ({getattr(e, 'problem', None) or e})", path=src,
                          line=mark.line + 1 if mark is not None else None) from None
    if not isinstance(data, dict):
        raise KotuneError("a recipe is a YAML mapping with name, base_model and steps", path=src)
    chosen = _profile_for(data, profile, base_model)
    if chosen is not None:
        for _, body in _profile_bodies(data["profiles"], chosen, src):
            _merge(data, copy.deepcopy({k: v for k, v in body.items() if k != "profiles"}))
    for item in overrides or []:
        keys, value = parse_override(item)
        _apply(data, keys, value)
    if base_model is not None:
        data["base_model"] = base_model
    steps = data.get("steps")
    if isinstance(steps, dict):  # "doctor:" with nothing after it means the step with its defaults
        data["steps"] = {k: ({} if v is None else v) for k, v in steps.items()}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise KotuneError(_first_error(e), path=src) from None
    if not any(recipe.steps.get(s) is not None for s in STEP_ORDER):
        raise KotuneError("steps: no steps to run", path=src)
    plan = Plan(recipe, src)
    plan.profile = chosen
    return plan


def load_run(path: str | Path, opts: RunOptions) -> "Plan":
    """``kotune run``'s recipe: :func:`load_recipe` with ``opts``' profile, base model and
    overrides (``--set`` items, then the ``--method``/``--preset``/``--epochs``/``--max-steps``
    shortcuts)."""
    return load_recipe(path, opts.overrides(), profile=opts.profile, base_model=opts.base_model)


# ---------------------------------------------------------------- plan
@dataclass
class StepCall:
    name: str
    args: list[str]                       # the kotune command line (without resume flags)
    inputs: list[Path]                    # files (or model folders) whose content decides the key
    outputs: list[Path]
    label: str = ""                       # state key (eval and eval-train are two calls of one step)
    sample: Optional[tuple[Path, Path, int]] = None  # (records, questions file, n): first n records as questions
    anchors: tuple[tuple[str, str], ...] = ()         # (path prefix, placeholder): keys survive a moved folder
    run: Optional[Callable[..., Any]] = None          # the step function, with this call's files and options

    def _portable(self, text: str) -> str:
        for prefix, name in self.anchors:  # also inside "tuned=OUT/model"
            text = re.sub(re.escape(prefix) + r"(?=/|$)", name, text)
        return text

    @property
    def key(self) -> str:
        """Command line and input contents, with OUT and the recipe's folder as placeholders."""
        h = hashlib.sha256()
        args = [self._portable(a) for a in self.args]
        h.update(json.dumps({"kotune": __version__, "step": self.label or self.name, "args": args},
                            ensure_ascii=False).encode("utf-8"))
        for p in self.inputs:
            h.update(self._portable(str(p)).encode("utf-8"))
            h.update(_content_hash(p).encode("ascii"))
        return h.hexdigest()


def _content_hash(p: Path) -> str:
    from kotune.io import sha256_file

    if p.is_dir():  # a model folder: its kotune.json changes with every training run
        info = p / "kotune.json"
        return sha256_file(info) if info.exists() else "missing"
    if p.is_file():
        return sha256_file(p)
    return "missing"


class Plan:
    """A validated recipe with every path resolved: which commands run, reading and writing what."""

    profile: str | None = None

    def __init__(self, recipe: Recipe, path: Path):
        self.recipe = recipe
        self.path = path
        self.root = path.parent

    def output(self, given: str | Path | None = None) -> Path:
        """The run folder: the one given (``--output``), else ``runs/<recipe name>``."""
        return Path(given) if given else Path("runs") / self.recipe.name

    def rel(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def _need(self, field_path: str, path: Path) -> Path:
        if not path.exists():
            raise KotuneError(f"{field_path}: no such file: {path}", path=self.path)
        return path

    def _context(self, field_path: str, value: bool | str, chunks: Path | None) -> Path | None:
        """A step's ``context``: true → the prepared chunks, a string → that file, false → none."""
        if value is True:
            if chunks is None:
                raise KotuneError(f"{field_path}: true needs chunks from a prepare step; give a file instead",
                                  path=self.path)
            return chunks
        if isinstance(value, str):
            return self._need(field_path, self.rel(value))
        return None

    def _questions(self, field_path: str, value: str, produced: dict[str, Path | None]) -> Path:
        """A step's questions: the ``train`` or ``test`` split the recipe makes, or a file."""
        if value in ("test", "train"):
            q = produced[value]
            if q is None:
                raise KotuneError(f"{field_path}: {value!r} needs a split step; give a questions file", path=self.path)
            return q
        return self._need(field_path, self.rel(value))

    def calls(self, out: Path) -> list[StepCall]:
        """Every step's command, in order; checks inputs exist and that each step's input is provided."""
        s = self.recipe.steps
        calls: list[StepCall] = []
        chunks = out / "chunks.jsonl"
        produced: dict[str, Path | None] = {"chunks": None, "qa": None, "clean": None, "train": None, "test": None,
                                            "model": None, "pairs": None, "preferred": None, "grpo": None}

        if s.prepare:
            inputs = [self._need(f"steps.prepare.inputs[{i}]", self.rel(v)) for i, v in enumerate(s.prepare.inputs)]
            files = sorted(f for p in inputs for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
            calls.append(StepCall("prepare", ["prepare", *map(str, inputs), "-o", str(chunks),
                                              *_flags(s.prepare, {"inputs"})], files, [chunks],
                                  run=lambda p=s.prepare, i=inputs, o=chunks: steps.prepare(i, o, p)))
            produced["chunks"] = chunks
        if s.generate:
            g = s.generate
            src = self._need("steps.generate.chunks", self.rel(g.chunks)) if g.chunks else produced["chunks"]
            if src is None:
                raise KotuneError("steps.generate: needs chunks: add a prepare step or set steps.generate.chunks",
                                  path=self.path)
            qa = out / "qa.jsonl"
            args = ["generate", str(src), "-o", str(qa), *_flags(g, {"chunks"})]
            calls.append(StepCall("generate", args, [src], [qa],
                                  run=lambda resume, overwrite, g=g, src=src, qa=qa: steps.generate(
                                      src, qa, g, resume=resume, overwrite=overwrite)))
            produced["qa"] = qa
            produced["chunks"] = produced["chunks"] or src
        records_in: Path | None = produced["qa"]
        if s.validate_:
            v = s.validate_
            data = [self._need(f"steps.validate.data[{i}]", self.rel(d)) for i, d in enumerate(v.data)]
            sources = ([produced["qa"]] if produced["qa"] else []) + data
            if not sources:
                raise KotuneError("steps.validate: nothing to validate: add a generate step or steps.validate.data",
                                  path=self.path)
            clean, report, dropped = out / "clean.jsonl", out / "validation.json", out / "dropped.jsonl"
            args = ["validate", *map(str, sources), "-o", str(clean), "--report", str(report), "--dropped", str(dropped),
                    *_flags(v, {"data"})]
            if produced["qa"] and produced["chunks"] and v.grounding:
                args += ["--chunks", str(produced["chunks"])]
            grounding_chunks = produced["chunks"] if "--chunks" in args else None
            ins = sources + ([grounding_chunks] if grounding_chunks else [])
            calls.append(StepCall("validate", args, ins, [clean, report, dropped],
                                  run=lambda v=v, sources=sources, clean=clean, report=report, c=grounding_chunks,
                                  d=dropped: steps.validate(sources, clean, v, report=report, chunks_file=c,
                                                            mapping=v.map, dropped=d)))
            records_in = clean
        if s.split:
            sp = s.split
            src = self._need("steps.split.data", self.rel(sp.data)) if sp.data else records_in
            if src is None:
                raise KotuneError("steps.split: needs records: add a validate step or set steps.split.data",
                                  path=self.path)
            train, test = out / "train.jsonl", out / "test.jsonl"
            args = ["split", str(src), "--train", str(train), "--test", str(test), *_flags(sp, {"data"})]
            calls.append(StepCall("split", args, [src], [train, test],
                                  run=lambda sp=sp, src=src, train=train, test=test: steps.split(
                                      src, train, test, sp, mapping=sp.map)))
            produced["train"], produced["test"] = train, test
        if s.train:
            t = s.train
            if t.chunks:   # a chunks file the recipe names: relative to the recipe
                t = t.model_copy(update={"chunks": str(self._need("steps.train.chunks", self.rel(t.chunks)))})
            elif s.generate is not None and s.generate.grounded and produced["chunks"] is not None:
                # A grounded run records the chunks it was trained to retrieve from (eval, chat,
                # serve and the studio retrieve from them by default).
                t = t.model_copy(update={"chunks": str(produced["chunks"])})
            src = self._need("steps.train.data", self.rel(t.data)) if t.data else produced["train"] or records_in
            if src is None:
                raise KotuneError("steps.train: needs training data: add a split step or set steps.train.data",
                                  path=self.path)
            model = out / "model"
            args = ["train", "--base-model", self.recipe.base_model, "--data", str(src), "--output-dir", str(model)]
            args += _flags(t, {"data", "system_prompts"})
            ins = [src]
            prompts = out / "system_prompts.json" if t.system_prompts else None
            if prompts:  # written into OUT by run_recipe before the step runs
                args += ["--system-prompts", str(prompts)]
                ins.append(prompts)
            base = self.recipe.base_model
            calls.append(StepCall("train", args, ins, [model / "kotune.json"],
                                  run=lambda resume, overwrite, t=t, src=src, model=model, prompts=prompts, base=base:
                                  steps.train(t, base_model=base, data=src, output_dir=model, system_prompts=prompts,
                                              resume=resume, overwrite=overwrite)))
            produced["model"] = model
        if s.doctor:
            if produced["model"] is None:
                raise KotuneError("steps.doctor: needs a train step", path=self.path)
            d = s.doctor
            calls.append(StepCall("doctor", ["doctor", str(produced["model"]), *_flags(d, set())], [produced["model"]],
                                  [], run=lambda d=d, m=produced["model"]: steps.doctor(m, d)))
        if s.pairs:
            pa = s.pairs
            if produced["model"] is None:
                raise KotuneError("steps.pairs: needs a train step (its model's answers are mined)", path=self.path)
            q = self._questions("steps.pairs.questions", pa.questions, produced)
            qfile = out / "pairs-questions.jsonl" if pa.limit else q
            ctx = self._context("steps.pairs.context", pa.context, produced["chunks"])
            pairs_file = out / "pairs.jsonl"
            args = ["pairs", "--model", str(produced["model"]), "--questions", str(qfile), "-o", str(pairs_file),
                    *_flags(pa, {"questions", "limit", "context"})]
            if ctx is not None:
                args += ["--context", str(ctx)]
            calls.append(StepCall("pairs", args, [q, produced["model"]] + ([ctx] if ctx else []), [pairs_file],
                                  sample=(q, qfile, pa.limit) if pa.limit else None,
                                  run=lambda pa=pa, m=produced["model"], q=qfile, o=pairs_file, c=ctx:
                                  steps.pairs(str(m), o, pa, questions=q, context=c)))
            produced["pairs"] = pairs_file
        if s.prefer:
            pr = s.prefer
            if produced["model"] is None:
                raise KotuneError("steps.prefer: needs a train step (preference tuning starts from its model)",
                                  path=self.path)
            src = self._need("steps.prefer.data", self.rel(pr.data)) if pr.data else produced["pairs"]
            if src is None:
                raise KotuneError("steps.prefer: needs preference data: add a pairs step or set steps.prefer.data",
                                  path=self.path)
            preferred = out / f"model-{pr.method}"
            args = ["train", "--from", str(produced["model"]), "--data", str(src), "--output-dir", str(preferred),
                    *_flags(pr, {"data"})]
            if "method" not in pr.model_fields_set:
                args += ["--method", pr.method]
            calls.append(StepCall("prefer", args, [src, produced["model"]], [preferred / "kotune.json"],
                                  run=lambda resume, overwrite, pr=pr, src=src, m=produced["model"], o=preferred:
                                  steps.train(pr, base_model=None, data=src, output_dir=o, from_run=m,
                                              resume=resume, overwrite=overwrite)))
            produced["preferred"] = preferred
        if s.grpo:
            gr = s.grpo
            if produced["model"] is None:
                raise KotuneError("steps.grpo: needs a train step (GRPO starts from its model)", path=self.path)
            q = self._questions("steps.grpo.questions", gr.questions, produced)
            ctx = self._context("steps.grpo.context", gr.context, produced["chunks"])
            if ctx is not None:
                gr = gr.model_copy(update={"chunks": str(ctx)})
                gr.model_fields_set.add("chunks")
            reinforced = out / "model-grpo"
            args = ["train", "--from", str(produced["model"]), "--data", str(q), "--output-dir", str(reinforced),
                    "--method", "grpo", *_flags(gr, {"questions", "context", "method"})]
            calls.append(StepCall("grpo", args, [q, produced["model"]] + ([ctx] if ctx else []),
                                  [reinforced / "kotune.json"],
                                  run=lambda resume, overwrite, gr=gr, q=q, m=produced["model"], o=reinforced:
                                  steps.train(gr, base_model=None, data=q, output_dir=o, from_run=m,
                                              resume=resume, overwrite=overwrite)))
            produced["grpo"] = reinforced
        if s.eval:
            e = s.eval
            if e.models:
                models = list(e.models)
            elif produced["model"] is not None:
                models = [f"base={self.recipe.base_model}", f"tuned={produced['model']}"]
                if produced["preferred"] is not None:
                    models.append(f"{s.prefer.method}={produced['preferred']}")
                if produced["grpo"] is not None:
                    models.append(f"grpo={produced['grpo']}")
            else:
                raise KotuneError("steps.eval.models: needed when there is no train step", path=self.path)
            model_inputs = [m for m in (produced["model"], produced["preferred"], produced["grpo"]) if m is not None]
            context = self._context("steps.eval.context", e.context, produced["chunks"])
            sets: list[tuple[str, str, Path, Optional[int]]] = []
            if e.questions in ("test", "train"):
                q = produced[e.questions]
                if q is None:
                    raise KotuneError(f"steps.eval.questions: {e.questions!r} needs a split step; give a questions file",
                                      path=self.path)
                sets.append(("eval", "eval", q, e.limit))
            else:
                sets.append(("eval", "eval", self._need("steps.eval.questions", self.rel(e.questions)), e.limit))
            if e.train_sample:
                if produced["train"] is None:
                    raise KotuneError("steps.eval.train_sample: needs a split step", path=self.path)
                sets.append(("eval-train", "eval-train", produced["train"], e.train_sample))
            for label, folder, questions, limit in sets:
                qfile = questions
                if limit:
                    qfile = out / f"{folder}-questions.jsonl"
                dest = out / folder
                args = ["eval", "--questions", str(qfile), "-o", str(dest),
                        *_flags(e, {"questions", "limit", "train_sample", "models", "context", "headline"})]
                if context is not None:
                    args += ["--context", str(context)]
                for m in models:
                    args += ["--models", m]
                ins = [questions] + model_inputs + ([context] if context is not None else [])
                calls.append(StepCall("eval", args, ins, [dest / "metrics.json", dest / "report.html"], label=label,
                                      sample=(questions, qfile, limit) if limit else None,
                                      run=lambda e=e, q=qfile, dest=dest, ms=list(models), c=context:
                                      steps.evaluate(q, ms, dest, e, context=c)))
        anchors = ((str(out), "$OUT"), (str(self.root), "$RECIPE"))
        for call in calls:
            call.anchors = anchors
        return calls


def _flags(step: BaseModel, skip: set[str]) -> list[str]:
    """The command-line options for the fields a recipe sets (the rest keep the
    command's own defaults): ``epochs: 2`` → ``--epochs 2``, ``lora_mlp: true`` →
    ``--lora-mlp``, lists repeat the option (``stop``) or join with commas
    (``lora_targets``), mappings become ``--map K=V``."""
    args: list[str] = []
    for name in sorted(step.model_fields_set - skip, key=list(type(step).model_fields).index):
        value = getattr(step, name)
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if name in _SWITCHES:
                args.append(_SWITCHES[name][0 if value else 1])
            elif name in _NEGATABLE:
                args.append(flag if value else f"--no-{flag[2:]}")
            elif value:
                args.append(flag)
        elif isinstance(value, dict):
            for k, v in value.items():
                args += [flag, f"{k}={v}"]
        elif isinstance(value, list):
            if name in _JOINED:
                args += [flag, ",".join(map(str, value))]
            else:
                for v in value:
                    args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return args


_NEGATABLE = {"grounding", "gradient_checkpointing"}   # --x/--no-x options
_SWITCHES = {"one_answer_per_prompt": ("--one-answer-per-prompt", "--many-answers-per-prompt")}
_JOINED = {"lora_targets"}                             # comma-separated options


# ---------------------------------------------------------------- state
def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("steps"), dict) else {"steps": {}}
    except (OSError, ValueError):
        return {"steps": {}}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    from kotune.io import write_json

    write_json(path, state)


@dataclass
class StepResult:
    label: str
    status: str              # ran | resumed | skipped
    seconds: float = 0.0


# ---------------------------------------------------------------- running
def run_recipe(plan: Plan, out: Path, *, force: bool = RunOptions.default("force"),
               log: Callable[[str], None] = print, header: Callable[[str], None] | None = None) -> list[StepResult]:
    """Run every step not up to date: its step function (:mod:`kotune.recipe.steps`) with the recipe's
    options, after printing the equivalent ``kotune`` command line."""
    calls = plan.calls(out)  # checks every input before any work starts
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "run.json"
    state = _read_state(state_path)
    # pid: a run.json whose steps stopped at "started" and whose process is gone was killed
    # (kotune studio shows it as resumable); "failed" steps keep their one error line.
    state.update({"recipe": str(plan.path), "name": plan.recipe.name, "base_model": plan.recipe.base_model,
                  "pid": os.getpid(), "steps_planned": [c.label or c.name for c in calls]})
    header = header or log
    if plan.recipe.steps.train and plan.recipe.steps.train.system_prompts:
        from kotune.io import write_json

        write_json(out / "system_prompts.json", plan.recipe.steps.train.system_prompts)
    results: list[StepResult] = []
    for i, call in enumerate(calls, 1):
        label = call.label or call.name
        if call.sample:
            _write_first(*call.sample)
        key = call.key
        prev = state["steps"].get(label) or {}
        if (not force and prev.get("status") == "done" and prev.get("key") == key
                and all(p.exists() for p in call.outputs)):
            header(f"[{i}/{len(calls)}] {label}: up to date, skipped")
            results.append(StepResult(label, "skipped"))
            continue
        argv = list(call.args)
        resumed = overwrite = False
        if call.name == "generate":
            journal = Path(str(call.outputs[0]) + ".journal")
            resumed = journal.exists() and prev.get("status") == "started" and prev.get("key") == key and not force
            overwrite = not resumed
        elif call.name in ("train", "prefer", "grpo"):
            model_dir = call.outputs[0].parent
            info = RunInfo.read(model_dir)
            resumed = (info is not None and info.status == "running" and prev.get("status") == "started"
                       and prev.get("key") == key and not force)
            overwrite = not resumed and model_dir.exists() and any(model_dir.iterdir())
        if resumed:
            argv.append("--resume")
        elif overwrite:
            argv.append("--overwrite")
        header(f"[{i}/{len(calls)}] {label}{' (resuming)' if resumed else ''}: kotune {shlex.join(argv)}")
        state["steps"][label] = {"key": key, "status": "started", "started": _now()}
        _write_state(state_path, state)
        t0 = time.monotonic()
        try:
            rc = call.run(resume=resumed, overwrite=overwrite) if call.name in ("generate", "train", "prefer", "grpo") else call.run()
            if rc not in (None, 0):
                raise KotuneError(f"step {label} failed (exit code {rc}); fix it and run the recipe again")
        except (KotuneError, OSError) as e:
            state["steps"][label] = {"key": key, "status": "failed", "started": state["steps"][label]["started"],
                                     "error": str(e)}
            _write_state(state_path, state)
            raise
        seconds = round(time.monotonic() - t0, 1)
        state["steps"][label] = {"key": key, "status": "done", "finished": _now(), "seconds": seconds}
        _write_state(state_path, state)
        results.append(StepResult(label, "resumed" if resumed else "ran", seconds))
    return results


def _write_first(src: Path, dest: Path, n: int) -> None:
    """The first ``n`` records of ``src`` as JSONL (questions for a quick eval)."""
    from kotune.io import dumps, atomic_writer
    from kotune.records import read_records, record_out

    rows = [dumps(record_out(r)) + "\n" for r in read_records(src)[:n]]
    text = "".join(rows)
    if dest.exists() and dest.read_text(encoding="utf-8") == text:
        return  # unchanged: keep its content hash (and the eval step up to date)
    with atomic_writer(dest) as f:
        f.write(text)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def headline(plan: Plan, out: Path) -> dict[str, Any] | None:
    """The recipe's headline metric for base and tuned from ``OUT/eval/metrics.json``."""
    e = plan.recipe.steps.eval
    if e is None:
        return None
    try:
        metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError):
        return None
    values = {name: (m.get("overall") or {}).get(e.headline) for name, m in metrics.items()}
    result: dict[str, Any] = {"metric": e.headline, "values": values,
                              "lower_is_better": e.headline in LOWER_IS_BETTER}
    if values.get("base") is not None and values.get("tuned") is not None:
        b, t = values["base"], values["tuned"]
        result["tuned_better"] = t < b if result["lower_is_better"] else t > b
    return result
