"""Every command's options, declared once: types, allowed values, ranges and defaults.

One options model per command (chat, serve, doctor, studio, export, run and score
included), and the step and entry functions take these models whole: no module keeps
its own copy of a default.
The ``kotune`` commands take their defaults from these models and check the
values a user gave against them; a recipe's steps are these models plus the
recipe's own fields (input files), so a recipe and the command line accept the
same values, with the same default, and refuse the same ones — with one error
line naming the option (``unknown --batching 'foo'; one of 'auto', ...``)
or the recipe field (``steps.train.batching: ...``), exit code 2.

Allowed values come from the registries they name: the templates registered in
:mod:`kotune.model.templates`, and the presets (what each one sets), batching and
scheduler names, which this module owns. ``tests/test_defaults.py`` checks that
a default is the same wherever it is declared.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from kotune.errors import KotuneError
from kotune.model.templates import ABSTENTION, TEMPLATES

# ---------------------------------------------------------------- registries: the allowed values, once
METHODS = ("lora", "qlora", "full")                   # how the weights train (supervised fine-tuning)
PREFERENCE_METHODS = ("dpo", "orpo", "kto", "simpo")    # preference tuning, on LoRA, QLoRA or full weights
RL_METHODS = ("grpo",)                                 # online RL, kotune's metrics as rewards (kotune.rl.grpo)
TRAIN_METHODS = METHODS + PREFERENCE_METHODS + RL_METHODS
# GRPO's generation per device (kotune.train.sft.TrainConfig.resolved), where the user gave none: answers
# sampled per question (the group its advantage is relative to) and their length limit. Generation is
# most of a GRPO step; on CPU, 4 answers of 128 tokens keep a Gemma-3-270M step near a minute (TRL's
# defaults, 8 x 256, are sized for a GPU).
GRPO_PRESETS: dict[str, dict[str, int]] = {
    "cpu": {"num_generations": 4, "max_completion_length": 128},
    "cuda": {"num_generations": 8, "max_completion_length": 256},
}
# What each --preset sets: the training options it fills where the user gave none
# (kotune.train.sft.TrainConfig.resolved). Named as in the civil-law seed; values tuned for LoRA-style adapters.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"epochs": 2, "learning_rate": 3e-4, "batch_size": 8, "grad_accum": 1, "lora_r": 8, "lora_alpha": 16},
    "balanced": {"epochs": 4, "learning_rate": 2e-4, "batch_size": 8, "grad_accum": 1, "lora_r": 16, "lora_alpha": 32},
    "quality": {"epochs": 6, "learning_rate": 1e-4, "batch_size": 4, "grad_accum": 2, "lora_r": 32, "lora_alpha": 64},
    "memory_efficient": {"epochs": 3, "learning_rate": 2e-4, "batch_size": 1, "grad_accum": 8, "lora_r": 8, "lora_alpha": 16,
                         "gradient_checkpointing": True},
}
PRESET_NAMES = tuple(PRESETS)
TEMPLATE_NAMES = tuple(TEMPLATES)                       # the prompt templates registered in kotune.model.templates
SCHEDULER_NAMES = ("cosine", "linear", "constant_with_warmup")   # learning-rate schedules (transformers' names)
BATCHING_NAMES = ("auto", "group_by_length", "padding_free")      # how training batches are formed
REPORT_TO = ("tensorboard", "wandb", "mlflow", "none")
SERVE_BATCHING = ("continuous", "static")               # kotune serve: requests join running batches, or not
PAD_TOKENS = ("tokenizer", "eos")                       # doctor: the setup's pad token (eos: pad = eos, the seeds' bug)
LOSS_ON = ("answer", "full")                            # doctor: which tokens the setup's loss covers
EXPORT_DTYPES = ("auto", "float32", "bfloat16", "float16")  # export: the merged weights' dtype (auto: the base's)
EXPORT_FORMATS = ("hf", "gguf")  # export: a transformers/vLLM folder, or one GGUF file (llama.cpp, Ollama)
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0")  # kotune.export.gguf.QUANTS' names
GGUF_QUANT = "q8_0"  # export --format gguf: the default tensor type (keeps a fine-tuning's changes)

# GRPO's rewards (kotune.rl.rewards computes each from kotune.eval.metrics), in catalogue order.
REWARD_NAMES = ("facts", "grounded", "abstain", "eos", "repetition", "korean")
# Document QA: right facts first, nothing unsupported, "not in the documents" when it is not,
# and the format (stop, no loops) kept. Facts and grounding pull against each other (copying more
# of the reference raises both; inventing raises neither); the format terms weigh half.
DEFAULT_REWARDS = "facts=1,grounded=1,abstain=1,eos=0.5,repetition=0.5"


def parse_rewards(value: str | None, option: str = "--reward") -> dict[str, float]:
    """``"facts=1,eos=0.5,grounded"`` → ``{"facts": 1.0, "eos": 0.5, "grounded": 1.0}`` (None: the
    default mix); one line naming the problem for an unknown name, a weight that is not a
    number, or a repeated name."""
    text = (value if value is not None else DEFAULT_REWARDS).strip()
    if not text:
        raise KotuneError(f"{option}: give at least one reward ({', '.join(REWARD_NAMES)})")
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in REWARD_NAMES:
            raise KotuneError(f"unknown {option} {name!r}; one of {', '.join(REWARD_NAMES)}")
        if name in out:
            raise KotuneError(f"{option}: {name!r} is given twice")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise KotuneError(f"{option} {name}: the weight must be a number, got {weight.strip()!r}") from None
        if w != w or w in (float("inf"), float("-inf")):
            raise KotuneError(f"{option} {name}: the weight must be a finite number, got {weight.strip()!r}")
        out[name] = w
    if not any(out.values()):
        raise KotuneError(f"{option}: every weight is 0; nothing to reward")
    return out


# ---------------------------------------------------------------- settings several commands share, declared once
TopK = Annotated[int, Field(3, ge=1)]                          # passages retrieved per question
MaxNewTokens = Annotated[int, Field(256, ge=1)]                # answer length limit
GreedyTemperature = Annotated[float, Field(0.0, ge=0)]        # 0 = greedy (eval, chat)
TopP = Annotated[float, Field(1.0, ge=0, le=1)]                # nucleus sampling, off by default (eval, chat)
RepetitionPenalty = Annotated[float, Field(1.0, ge=0.5)]
Stop = Annotated[list[str], Field(default_factory=list)]       # stop sequences, trimmed from answers
TemplateName = Annotated[Optional[Literal[TEMPLATE_NAMES]], Field(None)]  # type: ignore[valid-type]  # None: the run's own


def _sentence(value: str) -> str:
    value = value.strip()
    if not any(ch.isalnum() for ch in value):  # a blank sentence would be "contained" in every answer
        raise ValueError("must be a sentence with words in it")
    return value


# The sentence a model says when the documents do not hold the answer (train records it, eval recognises it).
Abstention = Annotated[str, Field(ABSTENTION), AfterValidator(_sentence)]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default (what the command line shows and uses)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    def given(self, name: str) -> Any:
        """A field's value when it was given (command line, recipe, request), else None: for
        settings whose default depends on something else (``top_k``: a grounded run's own)."""
        return getattr(self, name) if name in self.model_fields_set else None

    @classmethod
    def check(cls, values: dict[str, Any], flags: dict[str, str] | None = None) -> "Options":
        """The options, validated; the first problem is one line naming the command-line option."""
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            err = e.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else ""
            raise KotuneError(problem(cls, err, (flags or {}).get(name) or "--" + name.replace("_", "-"))) from None


def _bounds(field: Any) -> str | None:
    """A field's range as users read it: ``in (0, 1]``, ``>= 1``."""
    lo = hi = None
    lo_open = hi_open = False
    for m in getattr(field, "metadata", ()):
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "ge", None) is not None:
            lo, lo_open = m.ge, False
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
        if getattr(m, "le", None) is not None:
            hi, hi_open = m.le, False
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return None


def problem(model: type[BaseModel], err: dict[str, Any], where: str) -> str:
    """One line for one validation error of ``model``'s field, named ``where`` (a command-line
    option or a recipe path): the same words from the CLI and from a recipe."""
    name = next((str(p) for p in reversed(err["loc"]) if isinstance(p, str)), "")
    field = model.model_fields.get(name)
    value = err.get("input")
    if err["type"] == "literal_error":
        return f"unknown {where} {value!r}; one of {(err.get('ctx') or {}).get('expected', '')}"
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") and _bounds(field):
        return f"{where} must be {_bounds(field)}, got {value!r}"
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{where}: {err['msg']}{shown}"


class PrepareOptions(Options):
    """Documents → chunks."""

    chunk_chars: int = Field(1000, ge=50)
    overlap: int = Field(100, ge=0)


class GenerateOptions(Options):
    """Chunks → QA records through a teacher."""

    teacher: str = "rule"
    model: Optional[str] = None
    per_chunk: Optional[int] = Field(None, ge=1)   # records per chunk at most; None: the teacher's default
    phrasings: int = Field(3, ge=1, le=6)     # questions written for each fact
    workers: int = Field(8, ge=1)
    api_key_env: Optional[str] = None
    max_retries: int = Field(6, ge=0)
    rpm: Optional[float] = Field(None, gt=0)
    timeout: float = Field(120.0, gt=0)
    temperature: float = Field(0.7, ge=0, le=2)
    seed: int = Field(42, ge=0)             # sampling seeds of a model teacher's requests (reproducible reruns)
    max_new_tokens: Optional[int] = Field(None, ge=16)
    input_context: bool = False              # the source chunk as each record's input (RAG training)
    grounded: bool = False                   # RAFT-style records: retrieved passages, cited answers, abstentions
    grounded_k: int = Field(3, ge=1)         # passages per grounded record
    unanswerable_share: float = Field(0.2, ge=0, le=0.9)   # grounded records without their source → abstention
    abstention: Abstention                   # the sentence unanswerable grounded records answer with


class ValidateOptions(Options):
    """QA files → clean records."""

    min_answer_chars: int = Field(10, ge=0)
    near_dup_threshold: float = Field(0.85, gt=0, le=1)
    min_grounding: float = Field(0.5, ge=0, le=1)
    grounding: bool = True
    one_answer_per_prompt: bool = True
    categories: list[str] = Field(default_factory=list)   # keep only these (the civil-law seed's --categories)


class SplitOptions(Options):
    """Records → train and test files."""

    test_size: float = Field(0.1, gt=0, lt=1)
    stratify: str = "category"
    seed: int = 42
    augment: int = Field(0, ge=0)
    augment_test: bool = False
    group_by: Optional[str] = None


class TrainOptions(Options):
    """Fine-tuning hyper-parameters (``kotune train``; ``steps.train`` in a recipe)."""

    default_base_model: ClassVar[str] = "builtin:tiny-ko"

    method: Literal[TRAIN_METHODS] = "lora"  # type: ignore[valid-type]
    adapter: Optional[Literal[METHODS]] = None  # type: ignore[valid-type]  # preference methods, GRPO: lora | qlora | full
    beta: Optional[float] = Field(None, ge=0)   # preference strength (DPO/KTO/ORPO 0.1, SimPO 2); GRPO: KL weight (0)
    reward: Optional[str] = None              # GRPO: "NAME[=WEIGHT],..." (REWARD_NAMES; default DEFAULT_REWARDS)
    num_generations: Optional[int] = Field(None, ge=2)   # GRPO: answers per question (default: GRPO_PRESETS)
    max_completion_length: Optional[int] = Field(None, ge=8)   # GRPO: answer length limit (default: GRPO_PRESETS)
    sft_weight: Optional[float] = Field(None, ge=0)  # DPO/SimPO: weight of the chosen answers' NLL (default DPO 1, SimPO 0)
    preset: Literal[PRESET_NAMES] = "balanced"  # type: ignore[valid-type]
    template: Literal[TEMPLATE_NAMES] = "kotune"  # type: ignore[valid-type]
    epochs: Optional[float] = Field(None, gt=0)
    learning_rate: Optional[float] = Field(None, gt=0)
    batch_size: Optional[int] = Field(None, ge=1)
    grad_accum: Optional[int] = Field(None, ge=1)
    max_length: int = Field(1024, ge=16)
    lora_r: Optional[int] = Field(None, ge=1)
    lora_alpha: Optional[int] = Field(None, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: Optional[list[str]] = None
    lora_mlp: Optional[bool] = None           # None: MLP too unless the data is grounded (see TrainConfig.for_data)
    scheduler: Literal[SCHEDULER_NAMES] = "cosine"  # type: ignore[valid-type]
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    neftune_alpha: Optional[float] = Field(None, gt=0)
    gradient_checkpointing: Optional[bool] = None
    eval_split: float = Field(0.1, ge=0, lt=1)
    early_stopping: Optional[int] = Field(None, ge=1)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(5, ge=1)
    max_steps: int = -1
    min_steps: int = Field(30, ge=0)
    batching: Literal[BATCHING_NAMES] = "auto"  # type: ignore[valid-type]
    report_to: Literal[REPORT_TO] = "tensorboard"  # type: ignore[valid-type]
    seed: int = 42
    abstention: Abstention                    # the run's "not in the documents" sentence, recorded in kotune.json
    chunks: Optional[str] = None              # grounded data: the chunks file inference retrieves from, recorded in kotune.json


class DoctorOptions(Options):
    """What ``kotune doctor`` checks a setup against (the base model, data and run folder are its inputs)."""

    template: TemplateName                    # a plain base's template (default kotune); a run uses its own
    max_length: Optional[int] = Field(None, ge=16)   # default: the run's, else kotune train's
    lora_targets: Optional[list[str]] = None  # default: the run's, else the architecture's
    pad_token: Literal[PAD_TOKENS] = "tokenizer"  # type: ignore[valid-type]
    loss_on: Literal[LOSS_ON] = "answer"  # type: ignore[valid-type]
    inference_template: TemplateName          # the template the setup queries the model with


class EvalOptions(Options):
    """Generation and scoring settings of ``kotune eval`` (``steps.eval`` in a recipe)."""

    top_k: TopK
    max_new_tokens: MaxNewTokens
    temperature: GreedyTemperature
    top_p: TopP
    repetition_penalty: RepetitionPenalty
    stop: Stop
    batch_size: int = Field(16, ge=1)
    seed: int = 42
    workers: int = Field(8, ge=1)            # concurrent requests per endpoint model (openai:URL#MODEL)
    api_key_env: Optional[str] = None        # environment variable(s) holding endpoint API keys
    rpm: Optional[float] = Field(None, gt=0)  # requests per minute per key, endpoint models
    benchmark: list[str] = Field(default_factory=list)    # lm-eval tasks: the general-ability check
    benchmark_data: Optional[str] = None     # task YAMLs and their data, for machines without hub access
    benchmark_limit: Optional[int] = Field(None, ge=1)   # first N documents per task
    forgetting_margin: float = Field(0.02, ge=0, le=1)   # a loss beyond this against the first model is flagged
    template: TemplateName                   # a plain base's template (default: the compared run's, else kotune)
    judge: Optional[str] = None              # OpenAI-compatible URL of an LLM judge (pairs judged in both orders)
    judge_model: Optional[str] = None        # the judge endpoint's model name (default "judge")
    judge_api_key_env: Optional[str] = None  # environment variable holding the judge's API key
    abstention: Abstention                   # recognised as abstaining, for models whose run records none


class PairsOptions(Options):
    """Preference pairs mined from a model's flagged answers (``kotune pairs``; ``steps.pairs`` in a recipe)."""

    samples: int = Field(4, ge=1)
    temperature: float = Field(0.8, gt=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: MaxNewTokens
    repetition_penalty: RepetitionPenalty
    stop: Stop
    top_k: TopK
    min_margin: float = Field(1.0, ge=0)
    chosen: Literal["reference", "sample"] = "reference"
    format: Literal["pairs", "kto"] = "pairs"
    batch_size: int = Field(16, ge=1)
    workers: int = Field(8, ge=1)
    seed: int = 42
    template: TemplateName                   # a plain base's template (default kotune); a run uses its own
    api_key_env: Optional[str] = None        # environment variable(s) holding an endpoint model's API keys
    judge: Optional[str] = None              # OpenAI-compatible URL of an LLM judge that must also prefer chosen
    judge_model: Optional[str] = None        # the judge endpoint's model name (default "judge")
    judge_api_key_env: Optional[str] = None  # environment variable holding the judge's API key


class ChatOptions(Options):
    """Terminal chat with one model (``kotune chat``): the answering settings are eval's."""

    model: str                                # a run, base model, or openai:URL#MODEL
    context: Optional[str] = None             # chunks JSONL to retrieve from
    top_k: TopK
    template: TemplateName
    category: str = ""                        # for per-category system prompts (chat template)
    max_new_tokens: MaxNewTokens
    temperature: GreedyTemperature
    top_p: TopP
    repetition_penalty: RepetitionPenalty
    stop: Stop
    api_key_env: Optional[str] = None         # environment variable(s) holding an endpoint model's API keys


class ServeOptions(Options):
    """The HTTP API's settings (``kotune serve``; the base model and its adapters are its inputs)."""

    host: str = "127.0.0.1"                   # loopback by default
    port: int = Field(8000, ge=1, le=65535)
    template: TemplateName
    api_key_env: Optional[str] = None         # environment variable holding the key clients must send
    max_tokens_limit: int = Field(1024, ge=1)     # the largest max_tokens a request may ask for
    default_max_tokens: int = Field(256, ge=1)    # max_tokens when a request gives none (at most the limit)
    max_body_bytes: int = Field(1_000_000, ge=1)
    max_batch: int = Field(16, ge=1)          # prompts decoded together
    batching: Literal[SERVE_BATCHING] = "continuous"  # type: ignore[valid-type]
    batch_wait_ms: float = Field(10.0, ge=0)  # static batching: how long to collect a batch
    context: Optional[str] = None             # chunks JSONL: retrieve for every question
    top_k: TopK
    access_log: bool = False


class ScoreOptions(Options):
    """``kotune score``: metrics on existing predictions. Its predictions file and its output are its
    inputs (an option added later is declared here, once)."""

    abstention: Abstention                   # the sentence that counts as abstaining


class StudioOptions(Options):
    """The web UI's settings (``kotune studio``)."""

    root: str = "."                           # the folder whose runs, data, evals and recipes it shows
    host: str = "127.0.0.1"                   # loopback by default; any other host needs a token
    port: int = Field(7860, ge=1, le=65535)
    token_env: Optional[str] = None           # environment variable holding the token (default: a new one)


class ExportOptions(Options):
    """How ``kotune export`` writes a run (the run folder is its input)."""

    output: Optional[str] = None              # folder for the merged model (needed with merge)
    merge: bool = True                        # merge the adapter into the base (hf: else the vLLM LoRA command; gguf: else base + adapter files)
    name: Optional[str] = None                # adapter name without merge (default: the folder name)
    dtype: Literal[EXPORT_DTYPES] = "auto"  # type: ignore[valid-type]
    overwrite: bool = False                   # replace an earlier export in output
    format: Literal[EXPORT_FORMATS] = "hf"    # type: ignore[valid-type]
    quant: Literal[GGUF_QUANTS] = GGUF_QUANT  # type: ignore[valid-type]  # GGUF tensor type


class RunOptions(Options):
    """How ``kotune run`` runs a recipe (the recipe file is its input). ``method``, ``preset``,
    ``epochs`` and ``max_steps`` are shortcuts for ``--set steps.train.X=VALUE``."""

    output: Optional[str] = None              # run folder (default: runs/<recipe name>)
    set: list[str] = Field(default_factory=list)   # KEY=VALUE overrides of recipe fields, applied in order
    base_model: Optional[str] = None          # overrides base_model; a profile declaring it applies too
    profile: Optional[str] = None             # the recipe's named profile to apply
    method: Optional[Literal[TRAIN_METHODS]] = None  # type: ignore[valid-type]
    preset: Optional[Literal[PRESET_NAMES]] = None  # type: ignore[valid-type]
    epochs: Optional[float] = Field(None, gt=0)
    max_steps: Optional[int] = None
    force: bool = False                       # run every step, even those that are up to date
    dry_run: bool = False                     # check the recipe and print each step's command; run nothing

    def overrides(self) -> list[str]:
        """``set`` followed by the shortcuts given, as ``KEY=VALUE`` overrides."""
        given = (("steps.train.method", self.method), ("steps.train.preset", self.preset),
                 ("steps.train.epochs", self.epochs), ("steps.train.max_steps", self.max_steps))
        return [*self.set, *(f"{key}={value}" for key, value in given if value is not None)]


__all__ = ["problem", "Abstention", "BATCHING_NAMES", "ChatOptions", "DoctorOptions", "EvalOptions", "EXPORT_DTYPES", "EXPORT_FORMATS", "ExportOptions", "GGUF_QUANT", "GGUF_QUANTS",
           "GenerateOptions", "LOSS_ON", "METHODS", "Options", "PAD_TOKENS", "PairsOptions", "PREFERENCE_METHODS",
           "PRESET_NAMES", "PRESETS", "RL_METHODS", "TRAIN_METHODS", "GRPO_PRESETS", "REWARD_NAMES", "DEFAULT_REWARDS",
           "parse_rewards", "PrepareOptions", "REPORT_TO", "RunOptions", "SCHEDULER_NAMES", "ScoreOptions",
           "SERVE_BATCHING", "ServeOptions", "SplitOptions", "StudioOptions", "TEMPLATE_NAMES", "TrainOptions",
           "ValidateOptions"]
