"""Every step's options, declared once: types, allowed values, ranges and defaults.

The ``kotune`` commands take their defaults from these models and check the
values a user gave against them; a recipe's steps are these models plus the
recipe's own fields (input files), so a recipe and the command line accept the
same values, with the same default, and refuse the same ones — with one error
line naming the option (``--batching: Input should be 'auto', ... (got 'foo')``)
or the recipe field (``steps.train.batching: ...``), exit code 2.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kotune.errors import KotuneError

METHODS = ("lora", "qlora", "full")                   # how the weights train (supervised fine-tuning)
PREFERENCE_METHODS = ("dpo", "orpo", "kto", "simpo")    # preference tuning, on LoRA, QLoRA or full weights
PRESET_NAMES = ("fast", "balanced", "quality", "memory_efficient")
TEMPLATE_NAMES = ("kotune", "alpaca", "koalpaca", "rag", "chat")
SCHEDULER_NAMES = ("cosine", "linear", "constant_with_warmup")
BATCHING_NAMES = ("auto", "group_by_length", "padding_free")
REPORT_TO = ("tensorboard", "wandb", "mlflow", "none")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default (what the command line shows and uses)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

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
    per_chunk: int = Field(8, ge=1)
    workers: int = Field(8, ge=1)
    api_key_env: Optional[str] = None
    max_retries: int = Field(6, ge=0)
    rpm: Optional[float] = Field(None, gt=0)
    timeout: float = Field(120.0, gt=0)
    temperature: float = Field(0.7, ge=0, le=2)
    max_new_tokens: Optional[int] = Field(None, ge=16)
    input_context: bool = False              # the source chunk as each record's input (RAG training)


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

    method: Literal[METHODS + PREFERENCE_METHODS] = "lora"  # type: ignore[valid-type]
    adapter: Optional[Literal[METHODS]] = None  # type: ignore[valid-type]  # preference methods: lora | qlora | full
    beta: Optional[float] = Field(None, gt=0)   # preference strength (default per method: DPO/KTO/ORPO 0.1, SimPO 2)
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
    lora_mlp: bool = False
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


class EvalOptions(Options):
    """Generation and scoring settings of ``kotune eval`` (``steps.eval`` in a recipe)."""

    top_k: int = Field(3, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, ge=0.5)
    stop: list[str] = Field(default_factory=list)
    batch_size: int = Field(16, ge=1)
    seed: int = 42
    workers: int = Field(8, ge=1)            # concurrent requests per endpoint model (openai:URL#MODEL)
    api_key_env: Optional[str] = None        # environment variable(s) holding endpoint API keys
    rpm: Optional[float] = Field(None, gt=0)  # requests per minute per key, endpoint models
    benchmark: list[str] = Field(default_factory=list)    # lm-eval tasks: the general-ability check
    benchmark_data: Optional[str] = None     # task YAMLs and their data, for machines without hub access
    benchmark_limit: Optional[int] = Field(None, ge=1)   # first N documents per task
    forgetting_margin: float = Field(0.02, ge=0, le=1)   # a loss beyond this against the first model is flagged


class PairsOptions(Options):
    """Preference pairs mined from a model's flagged answers (``kotune pairs``; ``steps.pairs`` in a recipe)."""

    samples: int = Field(4, ge=1)
    temperature: float = Field(0.8, gt=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.0, ge=0.5)
    stop: list[str] = Field(default_factory=list)
    top_k: int = Field(3, ge=1)
    min_margin: float = Field(1.0, ge=0)
    chosen: Literal["reference", "sample"] = "reference"
    format: Literal["pairs", "kto"] = "pairs"
    batch_size: int = Field(16, ge=1)
    workers: int = Field(8, ge=1)
    seed: int = 42


__all__ = ["problem", "BATCHING_NAMES", "EvalOptions", "GenerateOptions", "METHODS", "PairsOptions", "Options", "PREFERENCE_METHODS", "PRESET_NAMES", "PrepareOptions",
           "REPORT_TO", "SCHEDULER_NAMES", "SplitOptions", "TEMPLATE_NAMES", "TrainOptions", "ValidateOptions"]
