"""GRPO: online reinforcement learning from an SFT run, kotune's evaluation metrics as rewards.

TRL's ``GRPOTrainer`` does the optimisation: for each question it samples
``num_generations`` answers from the model being trained, scores them, and raises the
likelihood of the answers that scored above their group's mean. kotune adds, and why:

- the rewards are kotune's metrics (:mod:`kotune.rl.rewards`), computed by the code
  ``kotune eval`` reports with: the key facts, unsupported content against the reference and
  the passages, the abstention sentence on unanswerable questions, EOS, repetition, Hangul;
- ``--from SFT_OUT`` is required: the run's adapter is the starting point, its base, template,
  tokenizer, EOS ids and abstention sentence are kept (as :mod:`kotune.train.preference`
  does). Prompts are rendered with the run's template and tokenized as training and
  inference tokenize them (TRL would tokenize plain-text prompts with the tokenizer's own
  special-token rule), and generation stops at every EOS id the run recorded;
- a grounded run is asked with the passages retrieved as at inference
  (:func:`kotune.model.retrieval.retrieval_for`: the run's chunks, or ``--chunks``);
- the run folder, checkpoints, ``--resume``, the estimate, Rich progress (with each reward's
  mean), TensorBoard and the run record are those of every kotune run; the record's ``grpo``
  section names the rewards, their weights and the reward curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

from kotune import __version__
from kotune.model.runinfo import DataInfo, GrpoInfo, RunInfo, TemplateInfo
from kotune.train.sft import (TrainConfig, announce, check_chunks, estimate, load_weights, lora_config, output_folder,
                              retrieval_info, rich_training_progress, run_trainer, start, trainer_arguments)


def _trainer_class(template, max_prompt_tokens: int):
    from trl import GRPOTrainer

    from kotune.model.templates import encode_prompt
    from kotune.train.preference import completion_head

    class KotuneGRPOTrainer(GRPOTrainer):
        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            # The LM head only on completion positions (preference.completion_head, as DPO/KTO):
            # TRL's fused head projects every padded prompt position through the vocabulary on CPU.
            # kotune samples at temperature 1 (GRPOConfig below), the head's own scale.
            target = self.accelerator.unwrap_model(model)
            completion_head(target.get_base_model() if hasattr(target, "get_base_model") else target,
                            ("log_probs", "entropy"))
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

        def _tokenize_prompts(self, prompts: list):
            # The prompt tokens training and inference use (encode_prompt), cut from the left
            # like a training sample's prompt; TRL would call the tokenizer with its defaults.
            ids = [encode_prompt(self.processing_class, p, template)[-max_prompt_tokens:] for p in prompts]
            return ids, None, {}

    return KotuneGRPOTrainer


def question_rows(questions: list[dict[str, Any]], contexts: list[str], template, tokenizer) -> list[dict[str, Any]]:
    """The GRPO dataset: each question's prompt (the run's template, its passages in the input's
    place as at inference) and the columns the rewards read."""
    return [{"prompt": template.prompt(q["question"], q["input"], category=q["category"], context=ctx or None,
                                       tokenizer=tokenizer),
             "question": q["question"], "reference": q["reference"], "keywords": list(q["keywords"]),
             "context": ctx, "input": q["input"], "answerable": bool(q["answerable"])}
            for q, ctx in zip(questions, contexts)]


def reward_curve(log_history: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per logged step: the weighted reward and each reward's mean (TRL's ``reward`` and
    ``rewards/NAME/mean``), rounded."""
    curve = []
    for h in log_history:
        if "reward" not in h:
            continue
        point = {"step": h.get("step"), "reward": round(float(h["reward"]), 4)}
        for n in names:
            v = h.get(f"rewards/{n}/mean")
            if v is not None and v == v:
                point[n] = round(float(v), 4)
        if "completions/mean_length" in h:
            point["mean_length"] = round(float(h["completions/mean_length"]), 1)
        curve.append(point)
    return curve


def grpo_estimate(trainer, config: TrainConfig, rows: list[dict[str, Any]], steps: int, tokenizer,
                  template) -> dict[str, Any]:
    """Seconds before training: a GRPO step is one generation of batch × num_generations answers
    (up to max_completion_length tokens, one decoding step per token) plus a forward and backward
    over them. Both are measured on the first questions (the prompts' prefill, 8 decoding steps, one
    forward+backward) and scaled, assuming answers of the full length limit (an upper bound: most
    stop earlier)."""
    import torch

    from kotune.model.templates import encode_prompt

    try:
        model = trainer.model
        n = config.num_generations  # one question's group: the unit training steps over (scaled below)
        prompts = [encode_prompt(tokenizer, rows[i % len(rows)]["prompt"], template)
                   for i in range(n)]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        def generate(new: int) -> float:
            t = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=mask.to(model.device), max_new_tokens=new, min_new_tokens=new,
                           do_sample=True, pad_token_id=tokenizer.pad_token_id)
            return time.perf_counter() - t

        model.eval()
        with torch.no_grad():
            prefill = generate(1)  # the prompts' forward pass (and the first token)
            per_decode = max(generate(9) - prefill, 0.0) / 8  # each further token: one step over the cache
        model.train()
        answer = min(width, config.max_completion_length)
        full = torch.cat([ids, ids[:, -answer:]], 1)
        t = time.perf_counter()
        # The head on the answer positions only, as training runs it (the full 262k-vocabulary logits of
        # every prompt position would take ~15 GB on Gemma with their gradient).
        model(input_ids=full, attention_mask=torch.ones_like(full), logits_to_keep=answer).logits.float().mean().backward()
        model.zero_grad(set_to_none=True)
        backward = (time.perf_counter() - t)
        # One generate call samples every question's group at once: a wider batch, about as many
        # decoding steps (counted as one group each, an upper bound on a CPU's batched decoding).
        generation = (prefill + per_decode * config.max_completion_length) * config.batch_size
        step = generation + backward * config.batch_size
        return {"steps": steps, "seconds": round(step * steps, 1), "generation_seconds": round(generation * steps, 1),
                "generation_share": round(generation / step, 2)}
    except Exception:  # an estimate must never stop a run
        return {"steps": steps, "seconds": None}


def train_grpo(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, template_given: bool = False,
               log=print) -> RunInfo:
    """GRPO from ``config.from_run`` on ``config.data`` (questions) and save to ``config.output_dir``."""
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig

    from kotune.eval.evaluate import load_questions
    from kotune.io import sha256_file
    from kotune.model.access import base_source
    from kotune.model.resolve import decide_template
    from kotune.model.retrieval import retrieval_for
    from kotune.train.preference import drop_reference_adapter, read_sft_run, starting_point
    from kotune.options import parse_rewards
    from kotune.rl.rewards import Scorer, check_questions, reward_functions

    sft_dir = Path(config.from_run)
    sft = read_sft_run(sft_dir)
    base, weights = starting_point(sft, sft_dir, config.adapter)
    config = dataclasses.replace(config, base_model=base, adapter=weights)
    check_chunks(config)
    rewards = parse_rewards(config.reward)  # None: the default mix (as TrainConfig.resolved records it)
    questions = load_questions(config.data)
    if config.reward is None and "abstain" in rewards and all(q["answerable"] for q in questions):
        # The default mix on questions that all have answers: nothing to decline, so no abstain term
        # (asked for by name, check_questions refuses it instead).
        del rewards["abstain"]
        config = dataclasses.replace(config, reward=",".join(f"{k}={v:g}" for k, v in rewards.items()))
        log("note: every question is answerable: the default rewards without abstain "
            f"({config.reward}); add questions with \"answerable\": false to teach declining")
    check_questions(questions, rewards, config.data)  # before any weights load
    s = start(config, log)
    config, main, out = s.config, s.main, s.out
    template = decide_template(sft, config.template if template_given else None, spec=str(sft_dir))
    # Questions that bring their passages (in "input", as grounded records do) are asked with them,
    # as a grounded run's own retrieval leaves them; the others are retrieved for as at inference.
    bare = any(not q["input"] and not q["context"] for q in questions)
    retrieval = retrieval_for(sft, name=str(sft_dir), context=config.chunks,
                              remedy="pass --chunks CHUNKS.jsonl (the file its passages came from)") \
        if bare or config.chunks else None
    contexts = [p.text for p in retrieval.for_questions(questions)] if retrieval is not None else [""] * len(questions)
    s.config = config = config.for_data(grounded=sft.retrieval is not None)
    config, epochs_reason, resume_from = output_folder(s, len(questions), resume=resume, overwrite=overwrite)
    continues = not sft.is_full_weights
    tokenizer, model, _ = load_weights(config, s, tokenizer_path=str(sft_dir) if continues else None)
    eos = list(sft.eos_token_ids) or [tokenizer.eos_token_id]
    # Generation stops where the run's answers stop: every EOS id the SFT run trained and recorded.
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if continues:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(sft_dir), is_trainable=True)
    else:
        peft_config = lora_config(config, model, False)
    rows = question_rows(questions, contexts, template, tokenizer)
    datasets.disable_progress_bars()
    train_ds = datasets.Dataset.from_list(rows)

    common = trainer_arguments(config, s, has_eval=False, early=False)
    # --batch-size counts questions; TRL's batch counts answers. One generation of every question's
    # answers per optimizer step (TRL's steps_per_generation = gradient accumulation), trained one
    # question's group per micro-step (Gemma-3-270M on CPU, 4 answers of ~900 tokens: ~18.5 GB peak
    # RSS either way; the 262k-vocabulary head over the answers and the sampling dominate).
    common["per_device_train_batch_size"] = common["per_device_eval_batch_size"] = config.num_generations
    common["gradient_accumulation_steps"] = config.batch_size * config.grad_accum
    common["include_num_input_tokens_seen"] = "no"  # its batches carry prompts, not input_ids
    common.pop("dataset_num_proc")  # GRPO tokenizes while it generates, not beforehand
    args = GRPOConfig(**common, num_generations=config.num_generations, max_completion_length=config.max_completion_length,
                      beta=config.beta, reward_weights=list(rewards.values()), temperature=1.0,
                      remove_unused_columns=False, log_completions=False, shuffle_dataset=True)
    scorer = Scorer(eos_ids=eos, abstention=sft.abstention or config.abstention)
    callbacks = [rich_training_progress()] if main else []
    max_prompt = max(16, config.max_length - config.max_completion_length)
    kwargs = dict(model=model, reward_funcs=reward_functions(list(rewards), scorer), args=args, train_dataset=train_ds,
                  processing_class=tokenizer, callbacks=callbacks)
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    with contextlib.redirect_stdout(None) if not main else contextlib.nullcontext():
        trainer = _trainer_class(template, max_prompt)(**kwargs)
    trainer.remove_callback(PrinterCallback)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    data_path = Path(config.data)
    unanswerable = sum(1 for q in questions if not q["answerable"])
    info = RunInfo(
        kotune_version=__version__, status="running", base_model=config.base_model,
        base_source=base_source(config.base_model), method=config.weights, template=TemplateInfo.of(template),
        eos_token_ids=eos, config=config.fingerprint(),
        data=DataInfo(path=str(data_path), sha256=sha256_file(data_path), train_records=len(questions), eval_records=0),
        device=s.device, processes=s.state.num_processes, batching="padded", attention=model.config._attn_implementation,
        trainable_parameters=trainable, abstention=sft.abstention or config.abstention,
        # A GRPO run from a grounded SFT run is asked as that run is (its passages, its chunks).
        retrieval=retrieval_info([], config, inherited=sft.retrieval, log=lambda *_: None),
        grpo=GrpoInfo(rewards=rewards, from_run=str(sft_dir.resolve()), from_method=sft.method, data=str(data_path),
                      questions=len(questions), unanswerable=unanswerable, num_generations=config.num_generations,
                      max_completion_length=config.max_completion_length, beta=config.beta,
                      retrieval=retrieval.describe() if retrieval is not None else None),
    )
    if main:
        steps = (config.max_steps if config.max_steps > 0
                 else config.steps_per_epoch(len(questions)) * max(1, round(config.epochs)))
        est = grpo_estimate(trainer, config, rows, steps, tokenizer, template)
        # Weights, optimizer and activations as for a training step of batch x num_generations sequences.
        est["memory_gb"] = estimate(len(questions), 0, dataclasses.replace(
            config, batch_size=config.batch_size * config.num_generations), trainer.model, trainable, None)["memory_gb"]
        weights_text = ", ".join(f"{k} {v:g}" for k, v in rewards.items())
        announce(info, config, s, f"grpo ({config.weights} from {sft_dir}) on {len(questions)} questions "
                 f"({unanswerable} unanswerable{', passages retrieved' if retrieval is not None else ''}), "
                 f"{config.num_generations} answers of at most {config.max_completion_length} tokens per question; "
                 f"rewards {weights_text}", est, len(questions), epochs_reason, log, unit="questions")
        if est.get("generation_seconds") is not None:
            log(f"note: generation is ~{est['generation_share']:.0%} of the estimate (sampling "
                f"{config.batch_size * config.num_generations} answers a step); --num-generations and "
                "--max-completion-length set its cost")

    info, _ = run_trainer(trainer, info, s, tokenizer, resume_from=resume_from, resume=resume, has_eval=False,
                          before_save=lambda: drop_reference_adapter(trainer.model))
    if main and info.complete:
        info.grpo.reward_curve = reward_curve(trainer.state.log_history, list(rewards))
        info.write(out)
    return info
