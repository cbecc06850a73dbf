"""Preference tuning: DPO, KTO, ORPO and SimPO on TRL's trainers, with kotune's template contract.

TRL does the optimisation (``DPOTrainer``, ``KTOTrainer``, and ``ORPOTrainer`` /
``CPOTrainer`` with ``loss_type="simpo"`` from ``trl.experimental``). kotune
adds what TRL leaves to the user, and why:

- samples are tokenized by ``templates.encode_preference``, the tokenization SFT
  uses: the prompt rendered with the run's template and never supervised, EOS
  after the chosen and the rejected answer, pad distinct from EOS. TRL's own
  tokenization would render prompts with the tokenizer's chat template (or take
  text as is) and add EOS as text; the trainers below take kotune's tokens as
  they are;
- ``--from RUN`` starts from an SFT run: its adapter is the starting point, its
  base, template and tokenizer are kept, and for DPO/KTO TRL copies the adapter
  as the frozen reference ("ref" adapter), so the preference is learned
  relative to the SFT model, not the base;
- a DPO/KTO step costs what an SFT step costs per answer token: the LM head only on
  completion positions, the batch as one padding-free row (``completion_head``), the
  reference log-probabilities computed once before training (the reference never
  changes); TRL's defaults on CPU cost ~2-4x (benchmarks/bench_dpo_cost.py). ORPO and
  SimPO run the head on completion positions too (``KotunePairTrainer.concatenated_forward``;
  ORPO's NLL term on the chosen answer, not its prompt);
- the run folder, checkpoints, resume, estimate, progress bar and run record are
  those of supervised training (``kotune.train.sft``); the record's ``preference``
  section names the method, the SFT run and the preference data.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

from kotune import __version__
from kotune.errors import KotuneError
from kotune.train.sft import (TrainConfig, announce, check_chunks, estimate, load_weights, lora_config, output_folder,
                          retrieval_info, rich_training_progress, run_trainer, start, time_per_token,
                          trainer_arguments)
from kotune.model.runinfo import DataInfo, PreferenceInfo, RunInfo, TemplateInfo


def read_sft_run(folder: str | Path) -> RunInfo:
    """The SFT run ``--from`` names, or one line saying why it is not one."""
    return RunInfo.finished(folder, option="--from")


def starting_point(info: RunInfo, folder: Path, adapter: str | None) -> tuple[str, str]:
    """``(base_model, weights)`` of a preference run that starts from the SFT run ``info``:
    a LoRA/QLoRA run continues its adapter on its base; a full or merged run is the base."""
    if info.is_full_weights:
        return str(folder.resolve()), adapter or "lora"
    if adapter == "full":
        raise KotuneError(f"--adapter full from a {info.method} run: merge it first (kotune export {folder} --merge -o M) "
                          "and give the merged folder as --from")
    return info.base_model, adapter or info.method or "lora"


def drop_reference_adapter(model) -> None:
    """Delete TRL's frozen "ref" adapter copy (the reference of DPO/KTO and of GRPO with a KL
    term) before saving: it is not part of the result."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


# ---------------------------------------------------------------- the LM head
# The per-token outputs TRL's DPO and KTO read from their fused head (``add_fused_lm_head(outputs=...)``).
HEAD_OUTPUTS = {"dpo": ("log_probs", "entropy", "mean_logits", "is_top1"), "kto": ("log_probs", "entropy", "mean_logits")}


def completion_head(model, outputs: tuple[str, ...]) -> bool:
    """Replace the fused LM head TRL's DPO/KTO trainers put on ``model`` with kotune's.
    Returns whether it did (models whose forward takes no ``logits_to_keep`` keep TRL's).

    TRL's trainers get per-token log-probabilities from ``model(..., labels=labels,
    fused_lm_head=True)``: a ``FusedCausalLMOutput`` whose fields are zero where the
    label is -100. Its loss math reads only that output, so kotune replaces the head
    and keeps the trainers' loss code as it is. Why: off Triton devices (every CPU)
    TRL's head projects every position of the padded batch (prompt and padding too)
    through the vocabulary, in tiles, and the backward recomputes each tile; on
    Gemma-3-270M (262k vocabulary) that made a DPO token cost ~4x an SFT token
    (benchmarks/RESULTS.md, bench_dpo_cost). kotune's head, as SFT's
    (``sft.answer_only_head``), runs the model's own head only on completion positions
    (``logits_to_keep`` with a boolean mask), and when the attention keeps packed
    samples apart (``packing.padding_free_attention``) runs the padded batch as one
    padding-free row. Numerically the same outputs (tests/test_preference.py).
    """
    import inspect
    import types

    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import FusedCausalLMOutput

    if getattr(model, "_kotune_completion_head", False):
        return True
    if "logits_to_keep" not in inspect.signature(type(model).forward).parameters:
        return False
    trl_forward = model.forward  # TRL's fused head, for the calls kotune's does not cover
    packing_attention = ("kotune_varlen", "flash_attention_2")

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if (not fused_lm_head or args or shift_labels is not None or kwargs.get("output_router_logits")
                or kwargs.get("inputs_embeds") is not None or "input_ids" not in kwargs):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        input_ids, mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask", None)
        kwargs.pop("inputs_embeds", None)
        kwargs["use_cache"] = False
        scored = labels[:, 1:] != -100                       # position t is scored on the label at t+1
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = scored
        if mask is not None and self.config._attn_implementation in packing_attention:
            real = mask.bool()
            positions = (mask.long().cumsum(1) - 1)[real][None]  # restart at 0: one packed sample per row
            out = type(self).forward(self, input_ids=input_ids[real][None], position_ids=positions,
                                     logits_to_keep=keep[real][None], **kwargs)
        else:
            out = type(self).forward(self, input_ids=input_ids, attention_mask=mask, logits_to_keep=keep, **kwargs)
        logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # [completion tokens, vocab]
        targets = labels[:, 1:][scored]
        logps = -F.cross_entropy(logits, targets, reduction="none")
        fields = {"log_probs": logps}
        with torch.no_grad():
            if "entropy" in outputs or "log_sum_sq_probs" in outputs:
                log_p = torch.log_softmax(logits, -1)
                if "entropy" in outputs:
                    fields["entropy"] = -(log_p.exp() * log_p).sum(-1)
                if "log_sum_sq_probs" in outputs:
                    fields["log_sum_sq_probs"] = torch.logsumexp(2 * log_p, -1)
                del log_p
            if "mean_logits" in outputs:
                fields["mean_logits"] = logits.mean(-1)
            if "is_top1" in outputs:
                fields["is_top1"] = logits.argmax(-1) == targets
        per_token = {k: v.new_zeros(scored.shape).masked_scatter(scored, v) for k, v in fields.items()}
        log_probs = per_token["log_probs"]
        loss = -log_probs.sum() / (scored.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, label_mask=scored, **per_token)

    model.forward = types.MethodType(forward, model)
    model._kotune_completion_head = True
    return True


# ---------------------------------------------------------------- trainers
def _with_completion_head(base: type, method: str) -> type:
    """TRL's DPO/KTO trainer ``base`` with :func:`completion_head` on the policy and the
    reference: installed before the reference log-probabilities are precomputed (in
    ``__init__``) and checked again before each loss."""

    class CompletionHeadTrainer(base):
        def _completion_head(self) -> None:
            outputs = HEAD_OUTPUTS[method] + (("log_sum_sq_probs",) if getattr(self, "use_weighting", False) else ())
            for model in (self.model, self.ref_model):
                if model is not None:
                    model = self.accelerator.unwrap_model(model)
                    completion_head(model.get_base_model() if hasattr(model, "get_base_model") else model, outputs)

        def _precompute_ref_logps(self, *args, **kwargs):
            from kotune.train.sft import tqdm_off

            self._completion_head()
            with tqdm_off(self.args.disable_tqdm):  # kotune's one progress bar, not TRL's tqdm too
                return super()._precompute_ref_logps(*args, **kwargs)

        def _compute_loss(self, model, inputs, return_outputs):
            self._completion_head()
            return super()._compute_loss(model, inputs, return_outputs)

    return CompletionHeadTrainer


def _trainer_class(method: str):
    """TRL's trainer for ``method``, taking kotune-tokenized samples as they are."""
    import warnings

    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        class KotuneDPOTrainer(_with_completion_head(DPOTrainer, method)):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # prompt_ids / chosen_ids / rejected_ids from encode_preference

        return KotuneDPOTrainer, DPOConfig
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        class KotuneKTOTrainer(_with_completion_head(KTOTrainer, method)):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if not self.calculate_KL:
                    return dataset
                # As TRL's own preparation does after tokenizing: the KL term's mismatched
                # completions, rotated by one within each batch.
                def add_kl(examples):
                    examples["KL_completion_ids"] = [examples["completion_ids"][-1]] + examples["completion_ids"][:-1]
                    return examples

                return dataset.map(add_kl, batched=True, batch_size=args.per_device_train_batch_size)

        return KotuneKTOTrainer, KTOConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental announces itself on import
        if method == "orpo":
            from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Base
        else:
            from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Base

    class KotunePairTrainer(Base):
        def concatenated_forward(self, model, batch):
            """TRL's ORPO/CPO forward with the LM head on completion positions only (``logits_to_keep``
            with a boolean mask, as SFT's and DPO's heads): TRL's projects every position of the
            padded chosen + rejected batch through the vocabulary (262k on Gemma) and takes a
            log-softmax over all of it. The same log-probabilities (summed, or averaged for
            ORPO, IPO and SimPO) and the same CPO NLL; ORPO's NLL term is on the chosen answer's
            tokens, not on its prompt too as TRL's is (kotune never scores prompt tokens).
            Returns TRL's tuple; the "logits" are the completion positions' (its metrics
            read only their mean)."""
            import inspect

            import torch
            import torch.nn.functional as F

            inner = self.accelerator.unwrap_model(model)
            inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
            if self.is_encoder_decoder or self.aux_loss_enabled or \
                    "logits_to_keep" not in inspect.signature(type(inner).forward).parameters:
                return super().concatenated_forward(model, batch)
            pad = self.padding_value if method == "orpo" else self.pad_token_id  # as each trainer pads
            cb = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=pad,
                                          device=self.accelerator.device)
            n = batch["chosen_labels"].shape[0]
            labels = cb["concatenated_labels"]
            scored = labels[:, 1:] != -100   # position t is scored on the label at t+1
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = scored
            out = model(cb["concatenated_input_ids"], attention_mask=cb["concatenated_attention_mask"], use_cache=False,
                        logits_to_keep=keep)
            logits = out.logits.reshape(-1, out.logits.shape[-1]).float()   # [completion tokens, vocab]
            token_logps = -F.cross_entropy(logits, labels[:, 1:][scored], reduction="none")
            per_row = token_logps.new_zeros(scored.shape).masked_scatter(scored, token_logps)
            counts = scored.sum(-1)
            average = method == "orpo" or self.loss_type in ("ipo", "simpo")
            logps = per_row.sum(-1) / counts.clamp(min=1) if average else per_row.sum(-1)
            chosen_tokens = int(counts[:n].sum())
            if method == "orpo" or self.cpo_alpha != 0:
                nll = -token_logps[:chosen_tokens].mean()   # the chosen rows' tokens come first
            else:
                nll = torch.tensor(0.0, device=logits.device)
            return logps[:n], logps[n:], logits[:chosen_tokens], logits[chosen_tokens:], nll

        def tokenize_row(self, feature, model=None):
            # ORPO/CPO's row format, built from encode_preference's tokens: labels mask the prompt.
            prompt = list(feature["prompt_ids"])
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                ids = prompt + list(feature[f"{side}_ids"])
                row[f"{side}_input_ids"] = ids
                row[f"{side}_attention_mask"] = [1] * len(ids)
                row[f"{side}_labels"] = [-100] * len(prompt) + list(feature[f"{side}_ids"])
            return row

    KotunePairTrainer.__name__ = f"Kotune{Base.__name__}"
    return KotunePairTrainer, Config


# The reference of a kotune run never changes (no sync_ref_model): TRL can score it once,
# before training, instead of on every step (PEFT: the "ref" adapter or the base; full
# weights: the starting weights, so no second copy of the model is held). Resume rebuilds
# the trainer from the same starting point, so the figures are the same.
PACKED_METHODS = ("dpo", "kto")  # the trainers whose forward kotune's completion_head packs


def _method_arguments(config: TrainConfig) -> dict[str, Any]:
    # Eval needs the loss only: without this DPO/KTO run one more forward per eval batch
    # for full-vocabulary logits nobody reads.
    reference = dict(precompute_ref_log_probs=True, prediction_loss_only=True)
    if config.method == "dpo":
        losses = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, config.sft_weight]) if config.sft_weight else {}
        return dict(beta=config.beta, max_length=None, **reference, **losses)
    if config.method == "kto":
        return dict(beta=config.beta, max_length=None, **reference)
    if config.method == "orpo":
        return dict(beta=config.beta, max_length=config.max_length * 2, max_completion_length=config.max_length)
    # SimPO (Meng et al. 2024) as TRL runs it: CPO's trainer, the length-normalised margin loss, no BC term.
    return dict(beta=config.beta, loss_type="simpo", cpo_alpha=config.sft_weight or 0.0, max_length=config.max_length * 2,
                max_completion_length=config.max_length)


# ---------------------------------------------------------------- data
def encode_records(records, tokenizer, template, max_length: int):
    """Records → a datasets.Dataset of kotune-tokenized preference samples, and how many were cut."""
    from datasets import Dataset

    from kotune.model.templates import encode_preference

    rows = [encode_preference(tokenizer, template, r, max_length) for r in records]
    truncated = sum(r.pop("truncated") for r in rows)
    for r in rows:
        answers = [len(r[k]) for k in ("chosen_ids", "rejected_ids", "completion_ids") if k in r]
        r["length"] = len(r["prompt_ids"]) * len(answers) + sum(answers)  # tokens one step processes
    return Dataset.from_list(rows), truncated


def hold_out(records: list, share: float, seed: int) -> tuple[list, list]:
    """A seeded share of the records for evaluation (none under 20 records or with share 0)."""
    if share <= 0 or len(records) < 20:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(records) * share))
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def log_margins(model, tokenizer, template, records, max_length: int = 1024, batch_size: int = 8) -> list[float]:
    """Per pair: log p(chosen) − log p(rejected) under ``model`` (sums over answer tokens,
    EOS included), prompts rendered with ``template``. The preference a model holds."""
    import torch

    from kotune.model.templates import encode_preference

    def logp(prompt: list[int], answer: list[int]) -> float:
        ids = torch.tensor([prompt + answer], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).sum().item()

    was_training = model.training
    model.eval()
    out = []
    for r in records:
        enc = encode_preference(tokenizer, template, r, max_length)
        out.append(logp(enc["prompt_ids"], enc["chosen_ids"]) - logp(enc["prompt_ids"], enc["rejected_ids"]))
    if was_training:
        model.train()
    return out


# ---------------------------------------------------------------- the run
def train_preference(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                     template_given: bool = False, log=print) -> RunInfo:
    """Preference-tune and save to ``config.output_dir`` (see the module docstring)."""
    import dataclasses

    from kotune.data.preferences import check_for_method, read_preferences
    from kotune.io import sha256_file
    from kotune.model.access import base_source
    from kotune.model.resolve import decide_template
    from kotune.model.templates import eos_ids, get_template

    sft = None
    sft_dir = Path(config.from_run) if config.from_run else None
    if sft_dir is not None:
        sft = read_sft_run(sft_dir)
        base, weights = starting_point(sft, sft_dir, config.adapter)
        config = dataclasses.replace(config, base_model=base, adapter=weights)
    check_chunks(config)
    records = check_for_method(read_preferences(config.data), config.method, config.data)
    eval_records = (check_for_method(read_preferences(config.eval_data), config.method, config.eval_data)
                    if config.eval_data else None)
    s = start(config, log)
    config, main, out = s.config, s.main, s.out
    if sft is not None:
        template = decide_template(sft, config.template if template_given else None, spec=str(sft_dir))
    else:
        template = get_template(config.template, config.system_prompts)
    if template.needs_context and any(not r.input.strip() for r in records):
        raise KotuneError(f"template {template.name!r} needs the context in field \"input\" of every preference record", path=config.data)
    if eval_records is None:
        records, eval_records = hold_out(records, config.eval_split, config.seed)
    s.config = config = config.for_data(grounded=sft is not None and sft.retrieval is not None)
    config, epochs_reason, resume_from = output_folder(s, len(records), resume=resume, overwrite=overwrite)
    continues = sft is not None and not sft.is_full_weights
    tokenizer, model, added_pad = load_weights(config, s, tokenizer_path=str(sft_dir) if continues else None)
    peft_config = None
    if continues:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(sft_dir), is_trainable=True)
    else:
        peft_config = lora_config(config, model, added_pad)

    train_ds, truncated = encode_records(records, tokenizer, template, config.max_length)
    eval_ds = encode_records(eval_records, tokenizer, template, config.max_length)[0] if eval_records else None
    if truncated and main:
        log(f"warning: {truncated} of {len(records)} records exceed --max-length {config.max_length} and were cut "
            "(prompt from the left; answers keep their end and EOS)")

    import datasets
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    datasets.disable_progress_bars()
    trainer_cls, config_cls = _trainer_class(config.method)
    # DPO/KTO batches run as one padding-free row (completion_head), as SFT's do; the
    # attention is restored before anything is saved.
    attention_switch = contextlib.ExitStack()
    attention = model.config._attn_implementation
    if config.method in PACKED_METHODS:
        from kotune.train.packing import padding_free_attention

        attention = attention_switch.enter_context(padding_free_attention(model, s.device))
    early = bool(config.early_stopping and eval_ds is not None)
    common = trainer_arguments(config, s, has_eval=eval_ds is not None, early=early)
    if config.method in ("orpo", "simpo"):  # their batches have no "input_ids" for Trainer to count
        common["include_num_input_tokens_seen"] = "no"
    args = config_cls(**common, **_method_arguments(config), remove_unused_columns=False)
    callbacks = [EarlyStoppingCallback(config.early_stopping)] if early else []
    if main:
        callbacks.append(rich_training_progress())
    kwargs = dict(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                  callbacks=callbacks)
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    with contextlib.redirect_stdout(None) if not main else contextlib.nullcontext():
        trainer = trainer_cls(**kwargs)
    trainer.remove_callback(PrinterCallback)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    tokens = sum(train_ds["length"])
    data_path = Path(config.data)
    margins_before = None
    info = RunInfo(
        kotune_version=__version__, status="running", base_model=config.base_model,
        base_source=base_source(config.base_model), method=config.weights, template=TemplateInfo.of(template),
        eos_token_ids=eos_ids(tokenizer), config=config.fingerprint(),
        data=DataInfo(path=str(data_path), sha256=sha256_file(data_path), train_records=len(records),
                      eval_records=len(eval_records or []), truncated=truncated, train_tokens=tokens),
        device=s.device, processes=s.state.num_processes,
        batching="padding_free" if config.method in PACKED_METHODS else "padded", attention=attention,
        trainable_parameters=trainable, abstention=config.abstention,
        # A preference run from a grounded SFT run is asked as that run is (its passages, its chunks).
        retrieval=retrieval_info([], config, inherited=sft.retrieval if sft else None,
                                 log=log if main else (lambda *_: None)),
        preference=PreferenceInfo(method=config.method, beta=config.beta, sft_weight=config.sft_weight,
                                  from_run=str(sft_dir.resolve()) if sft_dir else None,
                                  from_method=sft.method if sft else None,
                                  data=str(data_path), pairs=sum(1 for r in records if r.paired),
                                  labelled=sum(1 for r in records if not r.paired)),
    )
    pairs_eval = [r for r in (eval_records or []) if r.paired]
    if main:
        if pairs_eval and not resume:
            margins_before = log_margins(trainer.model, tokenizer, template, pairs_eval, config.max_length)
            info.preference.eval_margin_before = round(sum(margins_before) / len(margins_before), 4)
        eval_tokens = sum(eval_ds["length"]) if eval_ds is not None else 0
        # A preference step runs the policy (and the reference, without gradients) over both answers.
        # trainer.train_dataset: with the reference log-probabilities TRL precomputed.
        est = estimate(len(records), tokens, config, trainer.model, trainable,
                       time_per_token(trainer, trainer.train_dataset),
                       eval_tokens=eval_tokens)
        start_from = f" from {sft_dir}" if sft_dir else ""
        nll = f", chosen NLL weight {config.sft_weight:g}" if config.sft_weight else ""
        announce(info, config, s, f"{config.method} ({config.weights}{start_from}, beta {config.beta:g}{nll}) on "
                 f"{len(records)} {'pairs' if records[0].paired else 'labelled answers'} ({tokens} tokens), "
                 f"eval {len(eval_records or [])}", est, len(records), epochs_reason, log)
    def before_save() -> None:  # attention restored; TRL's frozen "ref" adapter copy is not part of the result
        attention_switch.close()
        drop_reference_adapter(trainer.model)

    info, final_eval = run_trainer(trainer, info, s, tokenizer, resume_from=resume_from, resume=resume,
                                   has_eval=eval_ds is not None, before_save=before_save)
    if main and info.complete:
        if pairs_eval:
            after = log_margins(trainer.model, tokenizer, template, pairs_eval, config.max_length)
            info.preference.eval_margin_after = round(sum(after) / len(after), 4)
        if "eval_rewards/margins" in final_eval:  # TRL's: beta x (policy - reference) log-ratio margin
            info.preference.eval_reward_margin = round(float(final_eval["eval_rewards/margins"]), 4)
        if "eval_rewards/accuracies" in final_eval:
            info.preference.eval_reward_accuracy = round(float(final_eval["eval_rewards/accuracies"]), 4)
        info.write(out)
    return info
