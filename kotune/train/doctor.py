"""``kotune doctor``: find the classic fine-tuning pitfalls in a setup, with a fix for each.

It checks kotune runs and other people's setups alike: a base model, a data file
(records, or raw training strings ``{"text": ...}`` as the seed projects fed
SFTTrainer), the template, and the settings that caused the seeds' failures
(pad = eos, loss on the whole text, LoRA targets, max_length, a different
template at inference).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kotune.errors import KotuneError
from kotune.options import DoctorOptions


@dataclass
class Finding:
    code: str
    ok: bool
    message: str
    fix: str = ""
    severity: str = "error"  # error | warning


class DoctorSetup(DoctorOptions):
    """The setup to check: a kotune run folder, or a base model and data, with ``kotune doctor``'s
    options (:class:`kotune.options.DoctorOptions`: template, max_length, LoRA targets, pad token,
    loss, inference template)."""

    base_model: Optional[str] = None
    data: Optional[str] = None
    run_dir: Optional[str] = None


def _meta_model(base_path: str, trust_remote_code: bool = False):
    """The model's modules without loading weights (meta device): cheap for 8B models too."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise KotuneError(f"cannot read model config: {str(e).splitlines()[0]}", path=base_path) from None
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _raw_texts(path: str) -> list[str] | None:
    """Raw training strings when the data is ``{"text": ...}`` rows, else None."""
    from kotune.records import raw_rows  # the same reader, before normalisation

    texts = []
    for _, row in raw_rows(Path(path)):
        if "text" in row and isinstance(row["text"], str) and "instruction" not in row and "output" not in row:
            texts.append(row["text"])
        else:
            return None
    return texts


def diagnose(setup: DoctorSetup, log=print) -> list[Finding]:
    from kotune.model.access import lora_targets, module_names, resolve_base
    from kotune.options import TrainOptions
    from kotune.records import read_records
    from kotune.model.resolve import resolve
    from kotune.model.templates import IGNORE_INDEX, encode_example

    spec = str(setup.run_dir or setup.base_model or "")
    if not spec:
        raise KotuneError("give --base-model or a kotune output folder")
    resolved = resolve(spec, template=setup.template, device="cpu", log=log)  # the run's template, EOS, trust
    run = resolved.run
    if setup.run_dir and run is None:
        raise KotuneError("not a kotune output (no kotune.json)", path=setup.run_dir)
    template, tokenizer, trust = resolved.template, resolved.tokenizer, resolved.trust_remote_code
    eos = set(resolved.eos_ids)  # the run's EOS ids (the resolver's decision), not the tokenizer's guess
    data = setup.data or (run.data_path if run else None)
    max_length = setup.max_length or (run.max_length if run else None) or TrainOptions.default("max_length")
    base_path = resolve_base(setup.base_model, log=log) if setup.run_dir and setup.base_model else resolved.ref.base
    model = _meta_model(base_path, trust)
    findings: list[Finding] = []

    # pad == eos: the collator masks pad positions out of the loss, EOS among them.
    pad_id = tokenizer.eos_token_id if setup.pad_token == "eos" else tokenizer.pad_token_id
    if pad_id is None or pad_id in eos or pad_id == tokenizer.eos_token_id:
        findings.append(Finding("pad_is_eos", False,
                                f"pad token is the EOS token ({tokenizer.eos_token!r}) or unset: padding masks EOS out of the labels",
                                "use a distinct pad token (kotune adds '<|pad|>' when the tokenizer has none)"))
    else:
        findings.append(Finding("pad_is_eos", True, f"pad token {tokenizer.convert_ids_to_tokens(pad_id)!r} differs from EOS"))

    # LoRA targets that do not exist in this architecture.
    names = module_names(model)
    targets = setup.lora_targets or (run.lora_targets if run else None) or lora_targets(model)
    missing = [t for t in targets if t not in names]
    linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if m.__class__.__name__ in ("Linear", "Conv1D", "Linear4bit")})
    if missing:
        findings.append(Finding("lora_targets", False,
                                f"LoRA targets not in this {model.config.model_type} model: {', '.join(missing)}",
                                f"use {', '.join(lora_targets(model))} (linear layers here: {', '.join(linear)})"))
    else:
        findings.append(Finding("lora_targets", True, f"LoRA targets exist: {', '.join(targets)}"))

    # Tokenizer outputs the model's forward() does not take.
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in tokenizer("가나다") and "token_type_ids" not in params:
        findings.append(Finding("token_type_ids", False,
                                "the tokenizer returns token_type_ids, which this model's forward() does not take "
                                "(generate() fails or silently misbehaves)",
                                "tokenize with return_token_type_ids=False or drop 'token_type_ids' from "
                                "tokenizer.model_input_names (kotune does)"))
    else:
        findings.append(Finding("token_type_ids", True, "tokenizer outputs match the model's inputs"))

    # Inference template differing from training.
    if setup.inference_template and setup.inference_template != template.name:
        findings.append(Finding("template_mismatch", False,
                                f"trained with template {template.name!r} but queried with {setup.inference_template!r}",
                                "use the training template at inference (kotune reads it from OUT/kotune.json)"))
    else:
        findings.append(Finding("template_mismatch", True, f"inference uses the training template {template.name!r}"))

    preference_data = False
    if data:
        from kotune.data.preferences import is_preference_file

        preference_data = Path(data).is_file() and is_preference_file(data)
    if data and preference_data:
        # A preference run: both answers of every pair end with EOS, prompts are never supervised
        # (encode_preference keeps them apart), and the longest pair must fit.
        from kotune.data.preferences import read_preferences
        from kotune.model.templates import encode_preference

        encoded = [encode_preference(tokenizer, template, r, max_length=10**9) for r in read_preferences(data)]
        answers = [e[k] for e in encoded for k in ("chosen_ids", "rejected_ids", "completion_ids") if k in e]
        no_eos = sum(1 for a in answers if not a or a[-1] not in eos)
        findings.append(Finding("eos_in_labels", no_eos == 0,
                                f"EOS ends every chosen and rejected answer ({len(answers)})" if no_eos == 0
                                else f"{no_eos} answers lack EOS", "append the EOS token to every answer"))
        findings.append(Finding("prompt_in_loss", True, "prompts are kept apart from the answers (never in the loss)"))
        lengths = [len(e["prompt_ids"]) + max(len(a) for k, a in e.items() if k.endswith("_ids") and k != "prompt_ids")
                   for e in encoded]
    if data and not preference_data:
        texts = _raw_texts(data)
        if texts is not None:
            # Raw strings fed whole to the trainer: labels = input_ids.
            ends = tuple(t for t in tokenizer.convert_ids_to_tokens(sorted(eos)) if t)
            no_eos = sum(1 for t in texts if not t.rstrip().endswith(ends))
            findings.append(Finding("eos_in_labels", no_eos == 0,
                                    f"{no_eos} of {len(texts)} samples do not end with EOS {ends[0]!r}: the model never learns to stop"
                                    if no_eos else "every sample ends with EOS",
                                    "append the EOS token to every answer (kotune's encoder always does)"))
            findings.append(Finding("prompt_in_loss", False,
                                    "raw text samples are trained whole: the prompt tokens are in the loss",
                                    "train on prompt/answer records; kotune masks the prompt with -100"))
            lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
        else:
            records = [r for r in read_records(data) if r.instruction and r.output]
            if not records:
                raise KotuneError("no usable records", path=data)
            encoded = [encode_example(tokenizer, template, r, max_length=10**9) for r in records]
            no_eos = sum(1 for e in encoded if not eos.intersection(e["labels"]))
            findings.append(Finding("eos_in_labels", no_eos == 0,
                                    "EOS is in every sample's labels" if no_eos == 0 else f"{no_eos} samples lack EOS in labels",
                                    "append the EOS token to every answer"))
            if setup.loss_on == "full":
                findings.append(Finding("prompt_in_loss", False, "labels = input_ids: the prompt tokens are in the loss",
                                        "mask prompt tokens with -100 (kotune does; TRL: prompt/completion data)"))
            else:
                leaked = sum(1 for e in encoded if e["labels"][0] != IGNORE_INDEX)
                findings.append(Finding("prompt_in_loss", leaked == 0,
                                        "prompt tokens carry label -100" if leaked == 0 else f"{leaked} samples score prompt tokens",
                                        "mask prompt tokens with -100"))
            lengths = [len(e["input_ids"]) for e in encoded]
    if data:
        over = sum(1 for n in lengths if n > max_length)
        findings.append(Finding("truncation", over == 0,
                                f"{over} of {len(lengths)} samples are longer than max_length {max_length} "
                                f"(longest {max(lengths)} tokens) and would be truncated" if over
                                else f"all {len(lengths)} samples fit in max_length {max_length} (longest {max(lengths)})",
                                f"raise --max-length to {max(lengths)} or shorten the inputs", severity="warning"))

    # Too few optimizer steps: the seed-004 failure ("140 samples, the model did not learn").
    steps = run.steps if run else None
    if steps is not None:
        from kotune.train.sft import MIN_LEARNING_STEPS

        few = steps < MIN_LEARNING_STEPS
        findings.append(Finding("too_few_steps", not few,
                                f"the run took only {steps} optimizer steps: too few to learn the answer format and "
                                f"to stop at EOS (a real model needs about {MIN_LEARNING_STEPS})" if few
                                else f"{steps} optimizer steps (at least {MIN_LEARNING_STEPS})",
                                f"train for at least {MIN_LEARNING_STEPS} steps: drop --epochs (kotune then raises the "
                                "epochs for small data), raise --epochs, lower --batch-size, or add records",
                                severity="warning"))
    return findings
