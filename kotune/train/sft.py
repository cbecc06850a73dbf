"""Supervised fine-tuning (LoRA, QLoRA, full) on TRL's SFTTrainer, correct by construction.

What kotune adds on top of TRL/PEFT, and why:
- samples are tokenized by ``templates.encode_example`` (prompt masked to -100,
  EOS appended and trained, pad distinct from EOS) and handed to SFTTrainer
  pre-tokenized, so the loss is right whatever TRL's defaults are;
- per-device defaults: fp32 and no gradient checkpointing on CPU (TRL 1.x turns
  on bf16 and checkpointing, 2x slower on a CPU without AMX), bf16 on GPUs,
  gradient checkpointing for QLoRA on GPUs (memory is what QLoRA is for);
- padding-free batches everywhere, with attention that keeps the packed samples
  apart and costs Σ len² (flash-attn, or ``kotune.train.packing`` where it is missing:
  transformers' fallback masks the whole packed row);
- ``OUT/kotune.json`` records base model, method, template and data hash, which
  every later step reads back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kotune import __version__
from kotune.errors import KotuneError
from kotune.options import (BATCHING_NAMES, DEFAULT_REWARDS, GRPO_PRESETS, PREFERENCE_METHODS, PRESETS,
                            RL_METHODS, SCHEDULER_NAMES, TRAIN_METHODS, TrainOptions, parse_rewards)
from kotune.model.runinfo import DataInfo, FinalInfo, GenerationInfo, RetrievalInfo, RunInfo, TemplateInfo

# The presets (what each --preset sets), the batching and scheduler names: kotune.options, their one registry.
FULL_LR_SCALE = 0.1
# Preference tuning moves a model that already answers well: steps a quarter of SFT's
# (DPO papers use 5e-7..5e-6 for full weights, 5e-6..5e-5 for LoRA).
PREFERENCE_LR_SCALE = 0.25
PREFERENCE_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}  # TRL's / the papers' defaults
# DPO alone lowers the chosen answers' likelihood along with the rejected ones' (the margin
# grows while both fall), and with it the probability of EOS after a good answer: measured
# on tiny-ko, a DPO run from an SFT run with eos_rate 0.93 answered with eos_rate 0.0.
# The chosen answers' NLL beside the preference loss (RPO, Pang et al. 2024: weight 1)
# keeps them likely. SimPO is run as published (no NLL term) unless asked.
PREFERENCE_SFT_WEIGHT = {"dpo": 1.0, "simpo": 0.0}
GRPO_QUESTIONS_PER_STEP = 2  # GRPO's default --batch-size: questions per step, each answered num_generations times
MAX_AUTO_EPOCHS = 30  # min_steps never makes a run pass over its data more often than this
MIN_AUTO_BATCH = 2    # min_steps lowers the preset's batch size (records per step) no further
# Optimizer steps below which a run is unlikely to have learned the answer format and EOS
# (doctor's too_few_steps warning; the default --min-steps).
MIN_LEARNING_STEPS = TrainOptions.default("min_steps")
_USER_TB_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")  # full fine-tuning wants ~10x smaller steps than LoRA


def _default(name: str):  # the options' defaults, declared once in kotune.options
    return TrainOptions.default(name)


@dataclass
class TrainConfig:
    base_model: str
    data: str
    output_dir: str
    method: str = _default("method")                 # lora | qlora | full | dpo | orpo | kto | simpo | grpo
    adapter: str | None = _default("adapter")        # preference methods, GRPO: lora | qlora | full weights
    beta: float | None = _default("beta")            # preference: strength of the preference; GRPO: KL weight
    sft_weight: float | None = _default("sft_weight")  # DPO/SimPO: NLL on chosen answers beside the preference loss
    from_run: str | None = None                      # preference methods, GRPO: the SFT run to start from
    reward: str | None = _default("reward")          # GRPO: "NAME[=WEIGHT],..." (kotune.rl.rewards)
    num_generations: int | None = _default("num_generations")   # GRPO: answers sampled per question
    max_completion_length: int | None = _default("max_completion_length")   # GRPO: their length limit
    preset: str = _default("preset")
    template: str = _default("template")
    system_prompts: dict[str, str] = field(default_factory=dict)
    epochs: float | None = _default("epochs")
    learning_rate: float | None = _default("learning_rate")
    batch_size: int | None = _default("batch_size")
    grad_accum: int | None = _default("grad_accum")
    max_length: int = _default("max_length")
    lora_r: int | None = _default("lora_r")
    lora_alpha: int | None = _default("lora_alpha")
    lora_dropout: float = _default("lora_dropout")
    lora_targets: list[str] | None = _default("lora_targets")
    lora_mlp: bool | None = _default("lora_mlp")
    scheduler: str = _default("scheduler")
    warmup_ratio: float = _default("warmup_ratio")
    weight_decay: float = 0.0
    neftune_alpha: float | None = _default("neftune_alpha")
    gradient_checkpointing: bool | None = _default("gradient_checkpointing")
    eval_data: str | None = None
    eval_split: float = _default("eval_split")
    early_stopping: int | None = _default("early_stopping")    # patience in evaluations
    save_steps: int = _default("save_steps")
    logging_steps: int = _default("logging_steps")
    seed: int = _default("seed")
    report_to: str = _default("report_to")
    batching: str = _default("batching")               # auto | group_by_length | padding_free
    abstention: str = _default("abstention")           # the "not in the documents" sentence, recorded in the run
    chunks: str | None = _default("chunks")           # grounded data: the chunks file inference retrieves from
    trust_remote_code: bool = False
    max_steps: int = _default("max_steps")
    min_steps: int = MIN_LEARNING_STEPS  # optimizer steps a run gets at least, when epochs come from the preset

    def resolved(self, hints: dict[str, Any] | None = None, device: str = "cpu") -> "TrainConfig":
        """Fill preset values. ``hints`` (``models.training_hints``: the builtin toy model
        needs larger steps, MLP adapters and more passes) apply only where the user
        gave no learning rate / epochs / explicit LoRA targets. Defaults that depend on
        the ``device`` training runs on are picked here too."""
        hints = hints or {}
        if self.preset not in PRESETS:
            raise KotuneError(f"unknown preset {self.preset!r}; one of {', '.join(PRESETS)}")
        self.check()
        for option, value, allowed in (("--batching", self.batching, BATCHING_NAMES),
                                       ("--scheduler", self.scheduler, SCHEDULER_NAMES)):
            if value not in allowed:  # an unknown value must not quietly train some other way
                raise KotuneError(f"unknown {option} {value!r}; one of {', '.join(allowed)}")
        c = dataclasses.replace(self)
        if self.preference:
            c.adapter = self.adapter or "lora"
            if c.beta is None:
                c.beta = PREFERENCE_BETA[self.method]
            if c.sft_weight is None:
                c.sft_weight = PREFERENCE_SFT_WEIGHT.get(self.method)
        if self.rl:
            c.adapter = self.adapter or "lora"
            c.beta = 0.0 if c.beta is None else c.beta  # TRL's and DAPO's: no reference model, no KL term
            c.reward = self.reward or DEFAULT_REWARDS
            for k, v in GRPO_PRESETS["cuda" if device == "cuda" else "cpu"].items():
                if getattr(c, k) is None:
                    setattr(c, k, v)
            # Questions per step, each answered num_generations times; one pass over the questions:
            # a GRPO step costs num_generations generations, and the SFT run already learned the format.
            if c.batch_size is None:
                c.batch_size = GRPO_QUESTIONS_PER_STEP
            if c.grad_accum is None:
                c.grad_accum = 1
            if c.epochs is None:
                c.epochs = 1.0
        for k, v in PRESETS[self.preset].items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if self.preference and self.batch_size is None:
            # A pair is two sequences through the policy's forward and backward: half the preset's
            # records per forward (as many sequences as an SFT step), twice the accumulation, the
            # same pairs per step. The activations of 16 sequences are what does not fit: Gemma-3-
            # 270M DPO at 8 pairs of ~700 tokens held ~23 GB and was OOM-killed at 24 GB; with the
            # LM head on completion positions only, packed rows and the reference precomputed
            # (kotune.train.preference) it still reached 17.0 GB RSS in its first steps (`kotune train
            # --method dpo --from` the policy-qa Gemma run, --batch-size 8, --max-length 1024): too
            # little margin on a 24 GB machine to restore the preset's 8 pairs per forward.
            c.batch_size = max(1, c.batch_size // 2)
            if self.grad_accum is None:
                c.grad_accum = c.grad_accum * 2
        if self.learning_rate is None:
            c.learning_rate = (c.learning_rate * hints.get("learning_rate_scale", 1.0)
                               * (FULL_LR_SCALE if c.weights == "full" else 1.0)
                               * (PREFERENCE_LR_SCALE if self.continues else 1.0))
        if self.epochs is None and not self.rl:  # GRPO: one pass over the questions, whatever the model
            c.epochs = c.epochs * hints.get("epochs_scale", 1.0)
        if hints.get("lora_mlp") and not self.lora_targets:
            c.lora_mlp = True
        if c.gradient_checkpointing is None:
            # QLoRA on a GPU is chosen to fit a model into little memory: recompute each
            # layer's activations in the backward pass (as the QLoRA paper and the insurance
            # seed do). An 8B Llama at 2048 tokens otherwise keeps an estimated ~13 GB of activations
            # beside ~6 GB of 4-bit weights. Elsewhere speed wins: recomputing costs about a
            # third more compute, and on CPU it made TRL's defaults ~2x slower.
            c.gradient_checkpointing = c.weights == "qlora" and device == "cuda"
        return c

    @property
    def preference(self) -> bool:
        """Preference tuning (DPO, ORPO, KTO, SimPO) rather than supervised fine-tuning."""
        return self.method in PREFERENCE_METHODS

    @property
    def rl(self) -> bool:
        """Online reinforcement learning (GRPO) with kotune's metrics as rewards."""
        return self.method in RL_METHODS

    @property
    def continues(self) -> bool:
        """A method that continues an SFT run (``--from``): preference tuning or GRPO."""
        return self.preference or self.rl

    @property
    def weights(self) -> str:
        """How the weights train: lora, qlora or full (``--method``, or ``--adapter`` for preference methods and GRPO)."""
        return (self.adapter or "lora") if self.continues else self.method

    def check(self) -> None:
        """Options that do not go together: one line, before any data or weights are read."""
        if self.method not in TRAIN_METHODS:
            raise KotuneError(f"unknown method {self.method!r}; one of {', '.join(TRAIN_METHODS)}")
        continuing = ", ".join(PREFERENCE_METHODS + RL_METHODS)
        if self.adapter is not None and not self.continues:
            raise KotuneError(f"--adapter applies to preference methods and GRPO ({continuing}); "
                              f"for supervised fine-tuning use --method {self.adapter}")
        if self.from_run is not None and not self.continues:
            raise KotuneError(f"--from starts preference tuning or GRPO from an SFT run; --method {self.method} is "
                              f"supervised (give --method {' | '.join(PREFERENCE_METHODS + RL_METHODS)})")
        if self.rl and self.from_run is None:
            raise KotuneError(f"--method {self.method} needs --from SFT_OUT: GRPO improves a fine-tuned run (its "
                              "adapter, template and EOS); train one with kotune train first")
        if self.beta is not None and not self.continues:
            raise KotuneError(f"--beta applies to preference methods and GRPO ({continuing})")
        if self.beta is not None and self.preference and self.beta <= 0:
            raise KotuneError(f"--beta must be > 0 for {self.method}, got {self.beta:g}")
        if self.sft_weight is not None and not self.preference:
            raise KotuneError(f"--sft-weight applies to preference methods ({', '.join(PREFERENCE_METHODS)})")
        for option, value in (("--reward", self.reward), ("--num-generations", self.num_generations),
                              ("--max-completion-length", self.max_completion_length)):
            if value is not None and not self.rl:
                raise KotuneError(f"{option} applies to --method {' | '.join(RL_METHODS)}")
        if self.rl:
            parse_rewards(self.reward)
        if self.sft_weight is not None and self.preference and self.method not in PREFERENCE_SFT_WEIGHT:
            raise KotuneError(f"--sft-weight applies to dpo and simpo; {self.method} "
                              f"{'has its own NLL term' if self.method == 'orpo' else 'has none'}")

    def for_data(self, grounded: bool) -> "TrainConfig":
        """The defaults that depend on the data: LoRA on the MLP too, unless asked otherwise,
        where facts must be memorised (closed-book), attention only where the answer is read
        from passages (grounded).

        Why: facts live in the MLP (Geva et al. 2021, "Transformer Feed-Forward Layers Are
        Key-Value Memories"); attention-only LoRA did not store them (Gemma-3-270M, 57 fact
        records, r16, 35 steps: key facts 0.09), while LoRA on every projection is what the
        QLoRA paper, Unsloth and Axolotl's defaults use. A grounded model only has to learn
        to read; attention-only is ~25% cheaper per token on its long prompts.
        """
        if self.lora_mlp is not None:
            return self
        return dataclasses.replace(self, lora_mlp=not grounded)

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / (self.batch_size * self.grad_accum))

    def with_min_steps(self, n_train: int, epochs_given: bool,
                       batch_given: bool = False) -> tuple["TrainConfig", str | None]:
        """Give small data ``min_steps`` optimizer steps: first fewer records per step, then
        more epochs.

        Why: a preset's batch size and epochs suit a dataset of hundreds of records. On
        10-100 records (the seeds' "140 samples" and smaller) 4 epochs of 8 records a step
        are 2-50 optimizer steps, too few for a real model to learn the answer format or
        to stop at EOS (Gemma-3-270M: 6 steps left eos_rate at 0.0; 30 steps gave 1.0),
        let alone to read passages (59 grounded records, 2 epochs: 16 steps of 8 answered
        with the passages' headings; 60 steps of 2 learned the format). Halving the batch
        (down to :data:`MIN_AUTO_BATCH`) doubles the steps at the same cost, since a step's
        cost is its tokens; only then are epochs raised (up to :data:`MAX_AUTO_EPOCHS`),
        which costs time. An explicit --batch-size, --epochs or --max-steps is the user's
        choice and is kept (doctor warns about it). Returns the config and a one-line
        reason when it changed.
        """
        if self.max_steps > 0 or self.min_steps <= 0 or self.rl:  # GRPO: one pass over the questions by default
            return self, None
        if self.steps_per_epoch(n_train) * math.ceil(self.epochs) >= self.min_steps:
            return self, None
        c, why = self, []
        if not batch_given and self.batch_size > MIN_AUTO_BATCH:
            batch = self.batch_size
            while batch > MIN_AUTO_BATCH and math.ceil(n_train / (batch * self.grad_accum)) * math.ceil(self.epochs) < self.min_steps:
                batch = max(MIN_AUTO_BATCH, batch // 2)
            c = dataclasses.replace(c, batch_size=batch)
            why.append(f"batch size lowered from {self.batch_size} to {batch}")
        per_epoch = c.steps_per_epoch(n_train)
        if not epochs_given and per_epoch * math.ceil(c.epochs) < c.min_steps:
            epochs = min(math.ceil(c.min_steps / per_epoch), MAX_AUTO_EPOCHS)
            c = dataclasses.replace(c, epochs=float(epochs))
            why.append(f"epochs raised from {self.epochs:g} to {epochs}")
        if not why:
            return self, None
        reason = (f"{' and '.join(why)} so that {n_train} records ({per_epoch} optimizer step{'s' if per_epoch != 1 else ''} "
                  f"per epoch) get {per_epoch * math.ceil(c.epochs)} steps, toward --min-steps {self.min_steps}: fewer do "
                  "not teach a real model the format and EOS (--batch-size, --epochs or --min-steps 0 to choose yourself)")
        return c, reason

    def fingerprint(self) -> dict[str, Any]:
        """What must match for --resume to continue a run."""
        d = dataclasses.asdict(self)
        # abstention and chunks change no weight (the data teaches the sentence and the passages; the
        # run records them beside this fingerprint), and runs started before they existed stay resumable.
        for k in ("output_dir", "save_steps", "logging_steps", "report_to", "abstention", "chunks"):
            d.pop(k)
        return d


# ---------------------------------------------------------------- data
def load_training_records(path: str):
    from kotune.records import read_records

    records = [r for r in read_records(path) if r.instruction.strip() and r.output.strip()]
    if not records:
        raise KotuneError("no usable records (each needs instruction and output)", path=path)
    return records


def check_chunks(config: TrainConfig) -> None:
    """``--chunks`` names a file (checked before any weights load)."""
    if config.chunks and not Path(config.chunks).is_file():
        raise KotuneError("--chunks: no such file", path=config.chunks)


def retrieval_info(records, config: TrainConfig, *, inherited: RetrievalInfo | None = None,
                   log=print) -> RetrievalInfo | None:
    """What a grounded run records of its retrieval (:class:`RetrievalInfo`), so that eval, chat,
    serve and the studio ask it as it was trained: the chunks file ``--chunks`` names (absolute)
    and as many passages as its records had at most. Grounded data is decided once, by
    :func:`kotune.records.grounded_passages`; ``inherited`` is the retrieval of the run training
    continues (a preference run from a grounded SFT run, a resumed run): its chunks file is kept
    when ``--chunks`` is not given again, its whole retrieval when these records say nothing."""
    from kotune.model.retrieval import DEFAULT_TOP_K, PASSAGE_WORD
    from kotune.records import grounded_passages

    chunks = str(Path(config.chunks).resolve()) if config.chunks else None
    most = grounded_passages(records)
    if most is None and inherited is None:
        if chunks:
            log("note: --chunks is recorded for grounded training data only (records with \"passages\" or "
                "\"answerable\": false, as kotune generate --grounded writes them); these records have none, ignored")
        return None
    if most is None:
        info = inherited.model_copy(update={"chunks": chunks} if chunks else {})
    else:
        info = RetrievalInfo(chunks=chunks or (inherited.chunks if inherited else None), top_k=most or DEFAULT_TOP_K,
                             label=PASSAGE_WORD)
    if info.chunks is None:
        log(f"note: grounded training data ({info.top_k} passages per question) without --chunks: kotune eval, chat "
            "and serve will need --context CHUNKS.jsonl for this run (pass --chunks to record the file)")
    return info


def check_template_fields(records, template, path: str) -> None:
    if template.needs_context:
        missing = sum(1 for r in records if not r.input.strip())
        if missing:
            raise KotuneError(f"template {template.name!r} needs the context in field \"input\"; {missing} of {len(records)} records have none", path=path)


def tokenize_records(records, tokenizer, template, max_length: int):
    from datasets import Dataset

    from kotune.model.templates import encode_example

    rows = [encode_example(tokenizer, template, r, max_length) for r in records]
    truncated = sum(r.pop("truncated") for r in rows)
    for r in rows:
        r["length"] = len(r["input_ids"])
    return Dataset.from_list(rows), truncated


# ---------------------------------------------------------------- output folder
def prepare_output_dir(out: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber another run; returns the checkpoint to resume from, if any."""
    if out.exists() and not RunInfo.read(out):
        # A run killed while loading (before its record was written) leaves only the empty
        # folders Trainer made: nothing to keep, nothing to refuse.
        for p in list(out.iterdir()):
            if p.name in ("checkpoints", "logs") and p.is_dir() and not any(p.rglob("*")):
                shutil.rmtree(p)
    if out.exists() and any(out.iterdir()):
        info = RunInfo.read(out)
        if overwrite:
            if info is None:
                raise KotuneError("is not a kotune output folder; refusing to delete it — choose an empty or new folder", path=out)
            shutil.rmtree(out)
        elif resume:
            if info is None:
                raise KotuneError("has no kotune.json to resume from", path=out)
            if info.config != config.fingerprint():
                diff = info.config_differences(config.fingerprint())
                raise KotuneError(f"holds a different run (differs in: {', '.join(diff)}); use a new folder or --overwrite", path=out)
            return last_checkpoint(out)
        else:
            what = f"a {info.status} run" if info else "other files"
            raise KotuneError(f"already holds {what}; pass --resume to continue it or --overwrite to replace it", path=out)
    elif resume:
        raise KotuneError("nothing to resume: the folder is empty or missing", path=out)
    return None


def last_checkpoint(out: Path) -> Path | None:
    # trainer_state.json is written last: a checkpoint without it was cut off mid-save.
    ckpts = sorted((p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


# ---------------------------------------------------------------- estimates
def estimate(n_train: int, tokens: int, config: TrainConfig, model, trainable: int, token_seconds: float | None,
             eval_tokens: int = 0) -> dict[str, Any]:
    """Steps, seconds and memory before training starts.

    Time is per token: padding-free batches cost in proportion to their tokens, so
    a measured forward+backward (``time_per_token``) times the tokens of every
    epoch, plus a forward-only pass over the eval data after each epoch (about half
    a LoRA step's cost: the frozen weights need no gradients, so backward is about
    one forward).
    """
    steps = config.steps_per_epoch(n_train) * math.ceil(config.epochs) if config.max_steps <= 0 else config.max_steps
    epochs = config.epochs if config.max_steps <= 0 else config.max_steps / max(config.steps_per_epoch(n_train), 1)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer = trainable * 4 * 3  # fp32 master copy-free AdamW: grad + 2 moments
    act = config.batch_size * config.max_length * model.config.hidden_size * getattr(model.config, "num_hidden_layers", 12) * 4 * 16
    seconds = None
    if token_seconds:
        evals = math.ceil(epochs) if eval_tokens else 0
        seconds = round(token_seconds * (tokens * epochs + eval_tokens * evals / 2), 1)
    return {
        "steps": steps,
        "tokens_per_epoch": tokens,
        "seconds": seconds,
        "memory_gb": round((params + optimizer + act) / 1e9, 2),
    }


# ---------------------------------------------------------------- main entry
@dataclass
class Start:
    """What every training run (supervised or preference) decides before loading anything."""

    config: TrainConfig
    device: str
    state: Any
    base_path: str
    epochs_given: bool
    out: Path
    batch_given: bool = False

    @property
    def main(self) -> bool:
        return self.state.is_main_process


def start(config: TrainConfig, log=print) -> Start:
    """Device, process group, base weights, preset values and the logging folder."""
    from accelerate import PartialState

    from kotune.model.access import pick_device, resolve_base, training_hints

    # cpu=True makes a CPU-only machine join the torchrun/accelerate process group
    # over gloo (DDP) instead of each process training alone.
    device = pick_device()
    state = PartialState(cpu=device == "cpu")
    base_path = resolve_base(config.base_model, log=log if state.is_main_process else (lambda *_: None))
    epochs_given = config.epochs is not None
    batch_given = config.batch_size is not None
    config = config.resolved(training_hints(config.base_model), device=device)
    out = Path(config.output_dir)
    if config.report_to not in ("none", ""):
        import importlib.util

        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}.get(config.report_to)
        if module is None:
            raise KotuneError(f"unknown --report-to {config.report_to!r}; one of tensorboard, wandb, mlflow, none")
        if importlib.util.find_spec(module) is None:
            raise KotuneError(f"--report-to {config.report_to}: the {module} package is not installed (pip install {module})")
        # OUT/logs unless the user chose a folder (read once: in-process runs must not inherit the last OUT).
        os.environ["TENSORBOARD_LOGGING_DIR"] = _USER_TB_DIR or str(out / "logs")
    if not Path(config.data).exists():
        raise KotuneError("no such file", path=config.data)
    return Start(config, device, state, base_path, epochs_given, out, batch_given)


def output_folder(s: Start, n_train: int, *, resume: bool, overwrite: bool) -> tuple[TrainConfig, str | None, Path | None]:
    """Epochs raised for small data (``with_min_steps``), then the output folder checked:
    the final config, why epochs changed, and the checkpoint to resume from."""
    config, epochs_reason = s.config.with_min_steps(n_train, s.epochs_given, s.batch_given)
    resume_from = None
    if s.main:
        resume_from = prepare_output_dir(s.out, config, resume=resume, overwrite=overwrite)
    s.state.wait_for_everyone()
    if not s.main and resume:
        resume_from = last_checkpoint(s.out)
    return config, epochs_reason, resume_from


def load_weights(config: TrainConfig, s: Start, tokenizer_path: str | None = None):
    """Tokenizer and model to train (4-bit for QLoRA), with a pad token distinct from EOS.
    Returns ``(tokenizer, model, added_pad)``."""
    from kotune.model.access import load_trainable

    return load_trainable(s.base_path, device=s.device if s.state.num_processes == 1 else "cpu",
                          quantize_4bit=config.weights == "qlora", trust_remote_code=config.trust_remote_code,
                          tokenizer_path=tokenizer_path)


def lora_config(config: TrainConfig, model, added_pad: bool):
    """The LoRA adapter to train (None for full weights)."""
    from kotune.model.access import lora_targets, module_names

    if config.weights not in ("lora", "qlora"):
        return None
    from peft import LoraConfig

    targets = config.lora_targets or lora_targets(model, config.lora_mlp)
    missing = [t for t in targets if t not in module_names(model)]
    if missing:
        raise KotuneError(f"LoRA targets not in this model ({getattr(model.config, 'model_type', '?')}): "
                          f"{', '.join(missing)}; it has e.g. {', '.join(lora_targets(model))}")
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM",
                      modules_to_save=["embed_in", "embed_out"] if added_pad and model.config.model_type == "gpt_neox" else None)


def trainer_arguments(config: TrainConfig, s: Start, *, has_eval: bool, early: bool) -> dict[str, Any]:
    """The Trainer arguments every kotune run shares (TRL's SFT, DPO, KTO, ORPO and CPO
    configs all extend ``TrainingArguments``): schedule, device precision, checkpoints,
    logging. TRL 1.x defaults (bf16, gradient checkpointing) are replaced by the device's."""
    import torch

    use_bf16 = s.device == "cuda" and torch.cuda.is_bf16_supported()
    return dict(
        output_dir=str(s.out / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        gradient_checkpointing=bool(config.gradient_checkpointing),
        bf16=use_bf16,
        fp16=False,
        eval_strategy="epoch" if has_eval else "no",
        # Best-model tracking (early stopping) needs saves aligned with evaluations.
        save_strategy="epoch" if early else "steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        save_only_model=False,
        logging_steps=config.logging_steps,
        report_to=[] if config.report_to in ("none", "") else [config.report_to],
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        use_cpu=s.device == "cpu",
        include_num_input_tokens_seen="non_padding",
    )


@contextlib.contextmanager
def tqdm_off(off: bool):
    """``TQDM_DISABLE=1`` while training: TRL's DPO/KTO reference pass draws its own tqdm bar
    ("Computing reference log probs ...") and reads that variable, not ``disable_tqdm``; kotune
    shows one Rich bar."""
    before = os.environ.get("TQDM_DISABLE")
    if off:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if off:
            if before is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = before


def run_trainer(trainer, info: RunInfo, s: Start, tokenizer, *, resume_from: Path | None, resume: bool,
                has_eval: bool, before_save=None) -> tuple[RunInfo, dict[str, Any]]:
    """Train (from ``resume_from`` when resuming), save the weights and tokenizer, and
    complete the run record. ``before_save`` runs after training, before saving
    (restoring attention switched for training). Returns the record and the final
    evaluation's metrics."""
    if trainer.is_world_process_zero():
        trainer.add_callback(live_history(info, s.out))
    with tqdm_off(trainer.args.disable_tqdm):
        # The untuned model's eval loss, so the run reports what tuning changed.
        initial_eval = trainer.evaluate()["eval_loss"] if has_eval and not resume else None
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        elapsed = time.time() - t0
        final_eval = trainer.evaluate() if has_eval else {}
    if before_save is not None:
        before_save()
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(s.out))
        tokenizer.save_pretrained(str(s.out))
        history = loss_history(trainer.state.log_history)
        info.status = "complete"
        seen = trainer.state.num_input_tokens_seen
        info.final = FinalInfo(
            train_loss=round(result.training_loss, 4),
            eval_loss=round(final_eval["eval_loss"], 4) if "eval_loss" in final_eval else None,
            initial_eval_loss=round(initial_eval, 4) if initial_eval is not None else None,
            steps=trainer.state.global_step, seconds=round(elapsed, 1),
            tokens_per_second=round(seen / max(elapsed, 1e-9), 1) if seen else None)
        info.history = history
        # The EOS ids decided when the run started (its record's eos_token_ids), never derived again.
        info.generation = GenerationInfo(eos_token_id=list(info.eos_token_ids), pad_token_id=tokenizer.pad_token_id)
        info.write(s.out)
    s.state.wait_for_everyone()
    return info, final_eval


def announce(info: RunInfo, config: TrainConfig, s: Start, what: str, est: dict[str, Any], n_train: int,
             epochs_reason: str | None, log, unit: str = "records") -> None:
    """Log the run's setup and estimate, and write its record (status running)."""
    import torch

    precision = "bf16" if s.device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if epochs_reason:
        est["epochs_reason"] = epochs_reason
    info.estimate = est
    log(f"{what}; {info.trainable_parameters / 1e6:.2f}M trainable parameters; device {s.device}"
        f"{f' x{s.state.num_processes} processes' if s.state.num_processes > 1 else ''}, "
        f"{precision}, batching {info.batching}, attention {info.attention}"
        f"{', gradient checkpointing' if config.gradient_checkpointing else ''}")
    log(f"estimate: {est['steps']} optimizer steps ({config.epochs:g} epochs x {config.steps_per_epoch(n_train)}"
        f" steps of {config.batch_size * config.grad_accum} {unit}), ~{est['seconds'] or '?'} s, "
        f"~{est['memory_gb']} GB memory")
    if epochs_reason:
        log(f"note: {epochs_reason}")
    s.out.mkdir(parents=True, exist_ok=True)
    info.pid = os.getpid()  # a running record whose process is gone was killed (kotune studio: resumable)
    info.write(s.out)


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, log=print) -> RunInfo:
    """Fine-tune and save to ``config.output_dir``; returns the run record written to kotune.json.
    Preference methods are :func:`kotune.train.preference.train_preference`."""
    from kotune.io import sha256_file
    from kotune.model.access import base_source
    from kotune.model.templates import eos_ids, get_template

    if config.preference:
        raise KotuneError(f"--method {config.method} is preference tuning: kotune.train.preference.train_preference runs it")
    check_chunks(config)
    s = start(config, log)
    config, main, device = s.config, s.main, s.device
    data_path = Path(config.data)
    template = get_template(config.template, config.system_prompts)
    records = load_training_records(config.data)
    check_template_fields(records, template, config.data)
    earlier = RunInfo.read(config.output_dir) if resume else None  # a resumed run keeps its recorded chunks
    retrieval = retrieval_info(records, config, inherited=earlier.retrieval if earlier else None,
                               log=log if main else (lambda *_: None))
    s.config = config = config.for_data(grounded=retrieval is not None)
    eval_records = load_training_records(config.eval_data) if config.eval_data else None
    if eval_records is None and config.eval_split > 0 and len(records) >= 20:
        from kotune.data.split import stratified_split

        records, eval_records = stratified_split(records, test_size=config.eval_split, seed=config.seed)
    config, epochs_reason, resume_from = output_folder(s, len(records), resume=resume, overwrite=overwrite)
    tokenizer, model, added_pad = load_weights(config, s)
    peft_config = lora_config(config, model, added_pad)

    train_ds, truncated = tokenize_records(records, tokenizer, template, config.max_length)
    eval_ds = tokenize_records(eval_records, tokenizer, template, config.max_length)[0] if eval_records else None
    if truncated and main:
        log(f"warning: {truncated} of {len(records)} samples exceed --max-length {config.max_length} and were truncated "
            "(prompt cut from the left, answer and EOS kept)")

    batching = config.batching
    if batching == "auto":
        # Padding-free on every device: no compute spent on pads, and attention per packed
        # sample (flash-attn, or kotune.train.packing's per-sample SDPA). Measured against length
        # grouping and the alternatives in benchmarks/RESULTS.md (bench_train.py).
        batching = "padding_free"

    import datasets
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()

    early = bool(config.early_stopping and eval_ds is not None)
    args = SFTConfig(
        **trainer_arguments(config, s, has_eval=eval_ds is not None, early=early),
        neftune_noise_alpha=config.neftune_alpha,
        # Samples are already cut to max_length by encode_example (answer and EOS kept);
        # TRL's padding-free collator wants max_length=None (no truncation of its own).
        max_length=None if batching == "padding_free" else config.max_length,
        padding_free=batching == "padding_free",
        train_sampling_strategy="group_by_length" if batching == "group_by_length" else "random",
        # Eval needs the loss only: without this Trainer gathers every position's logits
        # (262k floats per token on Gemma, ~1 MB each in fp32).
        prediction_loss_only=True,
    )
    # Padding-free rows need attention that keeps their samples apart; restored after
    # training, before anything is saved (the model is not used past this function).
    attention_switch = contextlib.ExitStack()
    attention = model.config._attn_implementation
    if batching == "padding_free":
        from kotune.train.packing import padding_free_attention

        attention = attention_switch.enter_context(padding_free_attention(model, device))
    callbacks = [EarlyStoppingCallback(config.early_stopping)] if early else []
    if main:
        callbacks.append(rich_training_progress())
    trainer = answer_only_head(SFTTrainer)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the Rich bar shows progress; logs go to TensorBoard
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    tokens = sum(train_ds["length"])
    supervised = sum(sum(1 for t in lab if t != -100) for lab in train_ds["labels"])

    info = RunInfo(
        kotune_version=__version__, status="running", base_model=config.base_model,
        base_source=base_source(config.base_model), method=config.method, template=TemplateInfo.of(template),
        eos_token_ids=eos_ids(tokenizer), config=config.fingerprint(),
        data=DataInfo(path=str(data_path), sha256=sha256_file(data_path), train_records=len(records),
                      eval_records=len(eval_records or []), truncated=truncated, train_tokens=tokens,
                      supervised_tokens=supervised),
        device=device, processes=s.state.num_processes, batching=batching, attention=attention,
        trainable_parameters=trainable, abstention=config.abstention, retrieval=retrieval,
    )
    if main:
        eval_tokens = sum(eval_ds["length"]) if eval_ds is not None else 0
        est = estimate(len(records), tokens, config, trainer.model, trainable, time_per_token(trainer, train_ds),
                       eval_tokens=eval_tokens)
        announce(info, config, s, f"training {config.method} on {len(records)} records ({tokens} tokens, "
                 f"{supervised} supervised), eval {len(eval_records or [])}", est, len(records), epochs_reason, log)
    info, _ = run_trainer(trainer, info, s, tokenizer, resume_from=resume_from, resume=resume,
                          has_eval=eval_ds is not None, before_save=attention_switch.close)
    return info


def answer_only_head(base: type) -> type:
    """``base`` (TRL's SFTTrainer) with the loss computed by kotune: the LM head runs
    only where a label is trained (``logits_to_keep`` with a boolean mask, a plain
    matmul), then one cross-entropy.

    Why not TRL's own fused head: it also computes per-token entropy and top-1 and a
    gradient for the (frozen) head weight, in tiles; on CPU that was ~45% of a LoRA
    step on the benchmark model (torch profiler; benchmarks/RESULTS.md). Models whose
    forward takes no ``logits_to_keep`` keep TRL's path.
    """
    import inspect

    import torch
    import torch.nn.functional as F

    class AnswerOnlyHeadTrainer(base):
        _keeps_logits: bool | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._keeps_logits is None:
                target = self.accelerator.unwrap_model(model)
                inner = target.get_base_model() if hasattr(target, "get_base_model") else target
                self._keeps_logits = "logits_to_keep" in inspect.signature(type(inner).forward).parameters
            if return_outputs or not self._keeps_logits or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if model.training else "eval"
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            shifted = labels[:, 1:]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = shifted != -100  # position t is scored on the token at t+1
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
            targets = shifted[shifted != -100]
            total = F.cross_entropy(logits, targets, reduction="sum")
            n = num_items_in_batch if num_items_in_batch is not None else targets.numel()
            loss = total / torch.as_tensor(n, device=total.device).clamp(min=1)
            # As TRL does: num_items_in_batch counts every rank's tokens, DDP averages gradients.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            with torch.no_grad():
                correct = (logits.argmax(-1) == targets).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / max(targets.numel(), 1)).item())
            return loss

    AnswerOnlyHeadTrainer.__name__ = AnswerOnlyHeadTrainer.__qualname__ = f"AnswerOnlyHead{base.__name__}"
    return AnswerOnlyHeadTrainer


def time_per_token(trainer, ds, batches: int = 2) -> float | None:
    """Seconds per token of a training step (forward through kotune's loss and
    backward), measured on ``batches`` batches after one untimed warm-up batch: the
    first step pays for allocations and kernel selection, and timing it alone put
    the estimate at 3.4x the real time on Gemma-3-270M. Gradients are discarded."""
    import torch

    model = trainer.model
    try:
        n = min(len(ds), trainer.args.per_device_train_batch_size)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
        model.train()
        spent, seen = 0.0, 0
        for b in range(batches + 1):
            rows = [ds[order[(b * n + i) % len(ds)]] for i in range(n)]
            batch = trainer.data_collator(rows)
            batch = {k: v.to(model.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            t = time.perf_counter()
            trainer.compute_loss(model, batch).backward()
            model.zero_grad(set_to_none=True)
            if b:
                spent += time.perf_counter() - t
                seen += sum(r["length"] for r in rows)
        for metrics in trainer._metrics.values():
            metrics.clear()
        return spent / max(seen, 1)
    except Exception:  # an estimate must never stop a run
        return None


def loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged entries that carry a loss (train or eval): the run record's ``history``."""
    return [h for h in log_history if "loss" in h or "eval_loss" in h]


def live_history(info: RunInfo, out: Path):
    """Rewrite the run record's ``history`` at every log while training, so a watcher
    (kotune studio's loss curve) sees the losses live; the record is small and written
    atomically, and TensorBoard's event files need a reader kotune does not ship."""
    from transformers import TrainerCallback

    class LiveHistory(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and ("loss" in logs or "eval_loss" in logs):
                info.history = loss_history(state.log_history)
                info.write(out)

    return LiveHistory()


def rich_training_progress():
    """A Rich progress bar for Trainer: step, loss, eval loss and tokens/s (GRPO: the reward
    and each reward function's mean)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import TrainerCallback

    from kotune.ui import console

    class RichTrainingProgress(TrainerCallback):

        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.task = None
            self.t0 = 0.0
            self.tokens0 = 0
            self.loss: float | None = None
            self.eval_loss: float | None = None
            self.rewards: dict[str, float] = {}   # GRPO: the weighted reward and each reward's mean

        def on_train_begin(self, args, state, control, **kwargs):
            import time

            from rich.progress import TextColumn as _T

            self.bar = Progress(SpinnerColumn(), TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                _T("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("training", total=state.max_steps, completed=state.global_step, stats="")
            self.t0 = time.time()
            self.tokens0 = state.num_input_tokens_seen

        def _stats(self, state) -> str:
            import time

            if self.rewards:  # GRPO: what it optimises, not its (near-zero, meaningless) loss
                total = self.rewards.get("reward")
                each = " ".join(f"{k} {v:.2f}" for k, v in self.rewards.items() if k != "reward")
                return f"reward {total:.3f} ({each})" if total is not None else each
            tps = (state.num_input_tokens_seen - self.tokens0) / max(time.time() - self.t0, 1e-9)
            parts = [f"loss {self.loss:.3f}" if self.loss is not None else "loss –"]
            if self.eval_loss is not None:
                parts.append(f"eval {self.eval_loss:.3f}")
            parts.append(f"{tps:,.0f} tok/s")
            return " · ".join(parts)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step, stats=self._stats(state))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.loss = float(logs["loss"])
            if "eval_loss" in logs:
                self.eval_loss = float(logs["eval_loss"])
            if "reward" in logs:
                self.rewards = {"reward": float(logs["reward"])}
                self.rewards.update({k.split("/")[1]: float(v) for k, v in logs.items()
                                     if k.startswith("rewards/") and k.endswith("/mean") and v == v})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step, stats=self._stats(state))
                self.bar.stop()
                self.bar = None

    return RichTrainingProgress()
