"""The ``kotune`` command: parses, delegates, prints. No logic lives here."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from kotune import __version__
from kotune.errors import KotuneError
from kotune.eval.closed_book import UNSUPPORTED_LIMIT
from kotune.options import (BATCHING_NAMES, EXPORT_DTYPES, EXPORT_FORMATS, GGUF_QUANTS, LOSS_ON, METHODS, PAD_TOKENS, PREFERENCE_METHODS, RL_METHODS, TRAIN_METHODS, GRPO_PRESETS,
                            PRESET_NAMES, REPORT_TO, SCHEDULER_NAMES, SERVE_BATCHING, TEMPLATE_NAMES, ChatOptions,
                            DoctorOptions, EvalOptions, ExportOptions, GenerateOptions, PairsOptions, PrepareOptions,
                            RunOptions, ScoreOptions, ServeOptions, SplitOptions, StudioOptions, TrainOptions,
                            ValidateOptions)
from kotune.recipe import steps
from kotune.ui import console, done

app = typer.Typer(
    name="kotune",
    help="Korean documents → instruction data → fine-tuned, evaluated, servable LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_DEBUG = False


def _choices(names: tuple[str, ...]) -> str:
    """A registry's names as help text shows them: ``a | b | c``."""
    return " | ".join(names)


def _given(ctx: typer.Context, **values):
    """The options of ``values`` the user typed (not left at their default): an options model then
    knows them as given (``Options.given``), e.g. ``--top-k`` over a grounded run's own number."""
    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    return {k: v for k, v in values.items() if typed(k)}


def _commas(value: Optional[str]) -> Optional[list[str]]:
    """``"a, b"`` → ``["a", "b"]``; None when nothing was given."""
    return [t.strip() for t in value.split(",") if t.strip()] if value else None


# Options several commands take, declared once (their defaults come from each command's options model).
TemplateOption = Annotated[Optional[str], typer.Option(
    "--template", help=f"Prompt template: {_choices(TEMPLATE_NAMES)}. A kotune run uses its own and refuses another; "
                       "a plain base model uses this one (default: the template of the kotune run it is tuned from, "
                       "compared with or serving adapters of, else kotune).")]
ClientKeysOption = Annotated[Optional[str], typer.Option(
    "--api-key-env", help="Environment variable(s) holding the API keys kotune sends to an OpenAI-compatible server "
                          "(a URL --teacher, openai:URL#MODEL models), comma-separated (A,B): requests take them in "
                          "turn.")]
ServerKeyOption = Annotated[Optional[str], typer.Option(
    "--api-key-env", help="Environment variable holding the API key clients must send to this server as "
                          "'Authorization: Bearer KEY'.")]
JudgeModelOption = Annotated[Optional[str], typer.Option("--judge-model", help="Model name at the judge endpoint.")]
JudgeKeyOption = Annotated[Optional[str], typer.Option(
    "--judge-api-key-env", help="Environment variable holding the judge's API key.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kotune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    global _DEBUG
    _DEBUG = debug or _DEBUG


# ---------------------------------------------------------------- data stage
@app.command()
def prepare(
    inputs: List[Path] = typer.Argument(..., help="Documents (.txt .md .pdf .hwpx .hwp .docx) or folders of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Chunks file to write (JSONL)."),
    chunk_chars: int = typer.Option(PrepareOptions.default("chunk_chars"), "--chunk-chars", "--chunk_chars", help="Maximum characters per chunk."),
    overlap: int = typer.Option(PrepareOptions.default("overlap"), "--overlap", help="Characters of whole sentences repeated between chunks."),
) -> None:
    """Documents → chunks: Kiwi sentences packed to --chunk-chars, headings as breadcrumbs."""
    steps.prepare(inputs, output, PrepareOptions.check(dict(chunk_chars=chunk_chars, overlap=overlap)))


@app.command()
def generate(
    chunks_file: Path = typer.Argument(..., metavar="CHUNKS", help="Chunks JSONL from `kotune prepare`."),
    output: Path = typer.Option(..., "--output", "-o", help="QA records file to write (JSONL)."),
    teacher: str = typer.Option(GenerateOptions.default("teacher"), "--teacher", help="rule (offline, default), hf:PATH (local model, e.g. hf:builtin:tiny-ko) or an OpenAI-compatible URL."),
    model: Optional[str] = typer.Option(GenerateOptions.default("model"), "--model", help="Model name for a URL teacher (default: the server's first model)."),
    per_chunk: Optional[int] = typer.Option(GenerateOptions.default("per_chunk"), "--per-chunk", "--per_chunk", help="At most this many records per chunk. Default: every fact × --phrasings for the rule teacher, 24 for a teacher model."),
    phrasings: int = typer.Option(GenerateOptions.default("phrasings"), "--phrasings", help="Questions per fact, in different wordings (a fact seen in one phrasing is memorised but not recalled by other questions)."),
    workers: int = typer.Option(GenerateOptions.default("workers"), "--workers", help="Concurrent requests (URL teacher) or chunks per batch (hf teacher)."),
    api_key_env: ClientKeysOption = GenerateOptions.default("api_key_env"),
    max_retries: int = typer.Option(GenerateOptions.default("max_retries"), "--max-retries", help="Retries per request on 429/5xx, dropped connections and timeouts."),
    rpm: Optional[float] = typer.Option(GenerateOptions.default("rpm"), "--rpm", help="At most this many requests per minute per API key."),
    timeout: float = typer.Option(GenerateOptions.default("timeout"), "--timeout", help="Seconds to wait for one teacher response."),
    temperature: float = typer.Option(GenerateOptions.default("temperature"), "--temperature", help="Sampling temperature of a URL teacher (0 = greedy)."),
    seed: int = typer.Option(GenerateOptions.default("seed"), "--seed", help="Seed of the teacher's sampling: each request sends one derived from it, the chunk and the re-ask round (OpenAI's `seed`), so a rerun samples the same."),
    max_new_tokens: Optional[int] = typer.Option(GenerateOptions.default("max_new_tokens"), "--max-new-tokens", "--max_new_tokens", help="Token budget of one teacher reply (default: grows with --per-chunk)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: only chunks whose index % N == I-1 (merge shards with `kotune validate`)."),
    input_context: bool = typer.Option(GenerateOptions.default("input_context"), "--input-context", help="Store the source chunk as each record's input (RAG-style training with --template rag)."),
    grounded: bool = typer.Option(GenerateOptions.default("grounded"), "--grounded", help="RAFT-style records for --template rag: each question with the passages retrieved for it ([문서 1]..[문서 k], the source among distractors), the answer citing its passage; a share without the source answers with the abstention sentence (\"answerable\": false)."),
    grounded_k: int = typer.Option(GenerateOptions.default("grounded_k"), "--grounded-k", help="Passages per grounded record (as many as kotune eval --top-k retrieves at inference)."),
    unanswerable_share: float = typer.Option(GenerateOptions.default("unanswerable_share"), "--unanswerable-share", help="Share of grounded records whose passages do not hold the answer (answer: the abstention sentence), in [0, 0.9]."),
    abstention: str = typer.Option(GenerateOptions.default("abstention"), "--abstention", metavar="TEXT", help="The sentence unanswerable grounded records answer with (train with the same --abstention)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its journal."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an interrupted run's journal and start over."),
) -> None:
    """Chunks → QA records (instruction/output), every record tied to its chunk_id and source."""
    opts = GenerateOptions.check(dict(teacher=teacher, model=model, per_chunk=per_chunk, phrasings=phrasings, workers=workers,
                                      api_key_env=api_key_env, max_retries=max_retries, rpm=rpm, timeout=timeout,
                                      temperature=temperature, seed=seed, max_new_tokens=max_new_tokens,
                                      input_context=input_context,
                                      grounded=grounded, grounded_k=grounded_k, unanswerable_share=unanswerable_share,
                                      abstention=abstention))
    steps.generate(chunks_file, output, opts, shard=shard, resume=resume, overwrite=overwrite)


@app.command()
def validate(
    inputs: List[Path] = typer.Argument(..., metavar="QA...", help="QA files to merge (.jsonl .json .csv), in priority order."),
    output: Path = typer.Option(..., "--output", "-o", help="Clean records file to write."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the validation report (JSON) here."),
    dropped: Optional[Path] = typer.Option(None, "--dropped", help="Write every dropped record here (JSONL, with drop_reason)."),
    chunks_file: Optional[Path] = typer.Option(None, "--chunks", help="Chunks JSONL, to check answers are grounded in their chunk."),
    mapping: Optional[List[str]] = typer.Option(None, "--map", help="Column mapping SOURCE=FIELD, e.g. --map 질문=instruction."),
    min_answer_chars: int = typer.Option(ValidateOptions.default("min_answer_chars"), "--min-answer-chars", help="Drop answers shorter than this."),
    near_dup: float = typer.Option(ValidateOptions.default("near_dup_threshold"), "--near-dup-threshold", help="MinHash Jaccard at which records are near-duplicates, in (0, 1]."),
    min_grounding: float = typer.Option(ValidateOptions.default("min_grounding"), "--min-grounding", help="Share of answer content morphemes that must occur in the source chunk."),
    grounding: bool = typer.Option(ValidateOptions.default("grounding"), "--grounding/--no-grounding", help="Check answers against their chunk or input."),
    one_answer: bool = typer.Option(ValidateOptions.default("one_answer_per_prompt"), "--one-answer-per-prompt/--many-answers-per-prompt", help="Whether the same instruction + input twice is a duplicate (QA) or several references per input are kept (question generation)."),
    categories: Optional[List[str]] = typer.Option(ValidateOptions.default("categories"), "--categories", help="Keep only records of these categories: comma-separated or repeated, e.g. --categories 전세사기,부동산물권."),
) -> None:
    """Merge QA files; drop missing, duplicate, near-duplicate, short, incomplete, evasive and ungrounded records."""
    from kotune.records import parse_mapping

    opts = ValidateOptions.check(dict(min_answer_chars=min_answer_chars, near_dup_threshold=near_dup,
                                      min_grounding=min_grounding, grounding=grounding, one_answer_per_prompt=one_answer,
                                      categories=list(categories or [])))
    steps.validate(inputs, output, opts, report=report, chunks_file=chunks_file, mapping=parse_mapping(mapping),
                   dropped=dropped)


@app.command()
def split(
    data: Path = typer.Argument(..., help="Records to split (.jsonl .json .csv)."),
    train: Path = typer.Option(..., "--train", help="Train file to write."),
    test: Path = typer.Option(..., "--test", help="Test file to write."),
    test_size: float = typer.Option(SplitOptions.default("test_size"), "--test-size", "--test_size", help="Share of groups for test (0 < X < 1)."),
    stratify: str = typer.Option(SplitOptions.default("stratify"), "--stratify", help="Field to stratify by ('' for none)."),
    seed: int = typer.Option(SplitOptions.default("seed"), "--seed", help="Random seed; the same seed gives the same split."),
    augment_n: int = typer.Option(SplitOptions.default("augment"), "--augment", help="Add N paraphrased-instruction variants per train record."),
    augment_test: bool = typer.Option(SplitOptions.default("augment_test"), "--augment-test", help="Augment the test file too (variants stay on their original's side)."),
    group_by: Optional[str] = typer.Option(SplitOptions.default("group_by"), "--group-by", help="Keep records that share this field (e.g. input, chunk_id) on the same side."),
    mapping: Optional[List[str]] = typer.Option(None, "--map", help="Column mapping SOURCE=FIELD."),
) -> None:
    """Stratified, deterministic train/test split; optional instruction augmentation without leakage."""
    from kotune.records import parse_mapping

    opts = SplitOptions.check(dict(test_size=test_size, stratify=stratify, seed=seed, augment=augment_n,
                                   augment_test=augment_test, group_by=group_by))
    steps.split(data, train, test, opts, mapping=parse_mapping(mapping))


# ---------------------------------------------------------------- training
@app.command()
def train(
    base_model: Optional[str] = typer.Option(None, "--base-model", "--base_model", help=f"HF id, local folder, .gguf file, builtin:tiny-ko or builtin:gemma-3-270m (default {TrainOptions.default_base_model}; with --from, the run's base)."),
    data: Path = typer.Option(..., "--data", "--data_path", "--data-path", help="Training records (.jsonl .json .csv); for preference methods, pairs {instruction, chosen, rejected} (or TRL's formats) or labelled answers {prompt, completion, label} (KTO); for grpo, questions as kotune eval reads them {question, reference, keywords, answerable}."),
    output_dir: Path = typer.Option(..., "--output-dir", "--output_dir", "-o", help="Run folder: adapter, tokenizer, kotune.json."),
    method: str = typer.Option(TrainOptions.default("method"), "--method", help=f"{_choices(METHODS)} (qlora: 4-bit NF4); preference tuning: {_choices(PREFERENCE_METHODS)}; or online RL with kotune's metrics as rewards: {_choices(RL_METHODS)}."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Preference methods and grpo: the SFT run to start from (its adapter, base, template, EOS; the reference model for DPO/KTO)."),
    adapter: Optional[str] = typer.Option(TrainOptions.default("adapter"), "--adapter", help=f"Preference methods and grpo: {_choices(METHODS)} weights (default: the --from run's, else lora)."),
    beta: Optional[float] = typer.Option(TrainOptions.default("beta"), "--beta", help="Preference methods: strength of the preference (default DPO/KTO/ORPO 0.1, SimPO 2.0); grpo: weight of the KL term to the --from run (default 0: none)."),
    reward: Optional[str] = typer.Option(TrainOptions.default("reward"), "--reward", metavar="NAME[=WEIGHT],...", help="grpo: the rewards, kotune's eval metrics: facts, grounded, abstain, eos, repetition, korean (default facts=1,grounded=1,abstain=1,eos=0.5,repetition=0.5)."),
    num_generations: Optional[int] = typer.Option(TrainOptions.default("num_generations"), "--num-generations", help=f"grpo: answers sampled per question (default {GRPO_PRESETS['cpu']['num_generations']} on CPU, {GRPO_PRESETS['cuda']['num_generations']} on a GPU)."),
    max_completion_length: Optional[int] = typer.Option(TrainOptions.default("max_completion_length"), "--max-completion-length", help=f"grpo: answer length limit in tokens (default {GRPO_PRESETS['cpu']['max_completion_length']} on CPU, {GRPO_PRESETS['cuda']['max_completion_length']} on a GPU)."),
    sft_weight: Optional[float] = typer.Option(TrainOptions.default("sft_weight"), "--sft-weight", help="DPO/SimPO: weight of the chosen answers' NLL beside the preference loss, which keeps them (and their EOS) likely (default DPO 1.0, SimPO 0)."),
    preset: str = typer.Option(TrainOptions.default("preset"), "--preset", help=f"{_choices(PRESET_NAMES)}: the epochs, learning rate, batch and LoRA size the other options leave open."),
    template: TemplateOption = None,  # None: not given (TrainOptions' default, or with --from the run's)
    system_prompts: Optional[Path] = typer.Option(None, "--system-prompts", help="JSON {category: system prompt} for --template chat."),
    epochs: Optional[float] = typer.Option(TrainOptions.default("epochs"), "--epochs", help="Override the preset."),
    learning_rate: Optional[float] = typer.Option(TrainOptions.default("learning_rate"), "--learning-rate", "--learning_rate", help="Override the preset."),
    batch_size: Optional[int] = typer.Option(TrainOptions.default("batch_size"), "--batch-size", "--batch_size", help="Per-device batch; overrides the preset (grpo: questions per step, each answered --num-generations times; default 2)."),
    grad_accum: Optional[int] = typer.Option(TrainOptions.default("grad_accum"), "--grad-accum", help="Gradient accumulation steps."),
    max_length: int = typer.Option(TrainOptions.default("max_length"), "--max-length", "--max_length", help="Tokens per sample (longer ones are truncated, EOS kept)."),
    lora_r: Optional[int] = typer.Option(TrainOptions.default("lora_r"), "--lora-r", "--lora_r", help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(TrainOptions.default("lora_alpha"), "--lora-alpha", "--lora_alpha", help="LoRA alpha."),
    lora_dropout: float = typer.Option(TrainOptions.default("lora_dropout"), "--lora-dropout", help="LoRA dropout."),
    lora_targets: Optional[str] = typer.Option(TrainOptions.default("lora_targets"), "--lora-targets", help="Comma-separated module names (default: per architecture)."),
    lora_mlp: Optional[bool] = typer.Option(TrainOptions.default("lora_mlp"), "--lora-mlp/--no-lora-mlp", help="Adapt the MLP projections as well as attention. Default: yes, where facts must be memorised (closed-book data); attention only for grounded data (the answer is in the passages)."),
    scheduler: str = typer.Option(TrainOptions.default("scheduler"), "--scheduler", help=f"{_choices(SCHEDULER_NAMES)}."),
    warmup_ratio: float = typer.Option(TrainOptions.default("warmup_ratio"), "--warmup-ratio", help="Share of steps for linear warmup."),
    neftune_alpha: Optional[float] = typer.Option(TrainOptions.default("neftune_alpha"), "--neftune-alpha", help="NEFTune noise alpha (e.g. 5)."),
    gradient_checkpointing: Optional[bool] = typer.Option(TrainOptions.default("gradient_checkpointing"), "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory (default: on for QLoRA on a GPU, off otherwise)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Records for eval loss (default: 10% split of --data)."),
    eval_split: float = typer.Option(TrainOptions.default("eval_split"), "--eval-split", help="Share of --data held out for eval loss when no --eval-data."),
    early_stopping: Optional[int] = typer.Option(TrainOptions.default("early_stopping"), "--early-stopping", help="Stop after N evaluations without improvement."),
    save_steps: int = typer.Option(TrainOptions.default("save_steps"), "--save-steps", help="Checkpoint every N steps."),
    logging_steps: int = typer.Option(TrainOptions.default("logging_steps"), "--logging-steps", help="Log loss every N steps (TensorBoard, kotune.json history)."),
    max_steps: int = typer.Option(TrainOptions.default("max_steps"), "--max-steps", help="Stop after N optimizer steps (overrides epochs)."),
    min_steps: int = typer.Option(TrainOptions.default("min_steps"), "--min-steps", help="Small datasets: raise the preset's epochs until the run takes at least N optimizer steps (0: off; an explicit --epochs is kept)."),
    batching: str = typer.Option(TrainOptions.default("batching"), "--batching", help=f"{_choices(BATCHING_NAMES)}."),
    report_to: str = typer.Option(TrainOptions.default("report_to"), "--report-to", help=f"{_choices(REPORT_TO)}."),
    seed: int = typer.Option(TrainOptions.default("seed"), "--seed", help="Random seed."),
    abstention: str = typer.Option(TrainOptions.default("abstention"), "--abstention", metavar="TEXT", help="The sentence the model says when the documents do not hold the answer (as the training data teaches it); recorded in the run, so kotune eval recognises it."),
    chunks: Optional[Path] = typer.Option(TrainOptions.default("chunks"), "--chunks", help="Grounded data (kotune generate --grounded): the chunks JSONL its passages came from, recorded in the run so kotune eval, chat, serve and studio retrieve from it for this run without --context."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub (off by default)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT_DIR from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the kotune run in OUTPUT_DIR."),
) -> None:
    """Fine-tune with LoRA, QLoRA or full SFT, preference-tune (DPO, ORPO, KTO, SimPO) or run GRPO on kotune's metrics: prompt masked, EOS trained, template saved for inference."""
    targets = _commas(lora_targets)
    given = {k: v for k, v in (("template", template), ("adapter", adapter), ("beta", beta), ("sft_weight", sft_weight),
                               ("reward", reward), ("num_generations", num_generations),
                               ("max_completion_length", max_completion_length)) if v is not None}
    opts = TrainOptions.check(dict(
        **given, method=method, preset=preset, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        grad_accum=grad_accum, max_length=max_length, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=targets, lora_mlp=lora_mlp, scheduler=scheduler, warmup_ratio=warmup_ratio, neftune_alpha=neftune_alpha,
        gradient_checkpointing=gradient_checkpointing, eval_split=eval_split, early_stopping=early_stopping,
        save_steps=save_steps, logging_steps=logging_steps, max_steps=max_steps, min_steps=min_steps, batching=batching,
        report_to=report_to, seed=seed, abstention=abstention, chunks=str(chunks) if chunks else None))
    _quiet_libraries()
    steps.train(opts, base_model=base_model, data=data, output_dir=output_dir, system_prompts=system_prompts,
                eval_data=eval_data, trust_remote_code=trust_remote_code, resume=resume, overwrite=overwrite,
                from_run=from_run)


@app.command()
def doctor(
    run_dir: Optional[Path] = typer.Argument(None, metavar="[OUT]", help="A kotune output folder to check."),
    base_model: Optional[str] = typer.Option(None, "--base-model", "--base_model", help="Base model (HF id, folder, builtin:tiny-ko)."),
    data: Optional[Path] = typer.Option(None, "--data", "--data_path", help="Training data: records or raw {\"text\": ...} rows."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval", metavar="EVAL", help=f"A kotune eval folder: warn about closed-book models whose unsupported_rate is above {UNSUPPORTED_LIMIT:g} or the base's (default: OUT/eval of the kotune run output the run folder is in). Alone, no model is read."),
    template: TemplateOption = DoctorOptions.default("template"),
    max_length: Optional[int] = typer.Option(DoctorOptions.default("max_length"), "--max-length", "--max_length", help="Training max_length to check truncation against (default: the run's, else kotune train's)."),
    lora_targets: Optional[str] = typer.Option(DoctorOptions.default("lora_targets"), "--lora-targets", help="LoRA target modules the setup uses (comma-separated; default: the run's, else the architecture's)."),
    pad_token: str = typer.Option(DoctorOptions.default("pad_token"), "--pad-token", help=f"{_choices(PAD_TOKENS)}: eos if the setup sets tokenizer.pad_token = eos_token, else the tokenizer's own."),
    loss_on: str = typer.Option(DoctorOptions.default("loss_on"), "--loss-on", help=f"{_choices(LOSS_ON)}: full if labels = input_ids (the prompt in the loss), answer if the prompt is masked."),
    inference_template: Optional[str] = typer.Option(DoctorOptions.default("inference_template"), "--inference-template", help=f"Template the setup queries the model with ({_choices(TEMPLATE_NAMES)})."),
) -> None:
    """Check a fine-tuning setup for the classic pitfalls (EOS, pad, prompt loss, LoRA targets, truncation, template) and an eval for closed-book models that invent."""
    opts = DoctorOptions.check(dict(template=template, max_length=max_length, lora_targets=_commas(lora_targets),
                                    pad_token=pad_token, loss_on=loss_on, inference_template=inference_template))
    code = steps.doctor(run_dir, opts, base_model=base_model, data=data, eval_dir=eval_dir)
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------- evaluation and use
def _stop_list(stop: Optional[List[str]]) -> tuple[str, ...]:
    # Shell users type a newline in a stop sequence as "\\n".
    return tuple(s.replace("\\n", "\n") for s in (stop or []))


@app.command("eval")
def eval_(
    ctx: typer.Context,
    questions: Path = typer.Option(..., "--questions", "--questions_file", "--questions-file", help="Questions: .txt (one per line) or .jsonl/.csv with question, reference, keywords, category, answerable (false: the documents do not hold the answer)."),
    models: List[str] = typer.Option(..., "--models", "--model_paths", "--model-paths", help="Models to compare: HF id, folder, kotune output, .gguf, builtin:tiny-ko, or an OpenAI-compatible endpoint openai:URL#MODEL[@RUN]; NAME=SPEC to name one. Repeat or list."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for responses.jsonl, metrics.json, report.md, report.html."),
    context: Optional[Path] = typer.Option(None, "--context", help="Chunks JSONL: retrieve top-k chunks per question for every model (BM25 over Kiwi morphemes). Without it a grounded run retrieves from the chunks it recorded (kotune train --chunks); other models get no passages."),
    top_k: int = typer.Option(EvalOptions.default("top_k"), "--top-k", help="Chunks retrieved per question (a grounded run without --top-k: its recorded number)."),
    max_new_tokens: int = typer.Option(EvalOptions.default("max_new_tokens"), "--max-new-tokens", "--max_new_tokens", help="Answer length limit."),
    temperature: float = typer.Option(EvalOptions.default("temperature"), "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(EvalOptions.default("top_p"), "--top-p", help="Nucleus sampling."),
    repetition_penalty: float = typer.Option(EvalOptions.default("repetition_penalty"), "--repetition-penalty", help="e.g. 1.2 as the insurance seed."),
    stop: Optional[List[str]] = typer.Option(EvalOptions.default("stop"), "--stop", help="Stop sequence (repeatable); trimmed from answers."),
    batch_size: int = typer.Option(EvalOptions.default("batch_size"), "--batch-size", help="Questions per generation batch."),
    seed: int = typer.Option(EvalOptions.default("seed"), "--seed", help="Sampling seed (with --temperature > 0): the same seed gives the same answers."),
    template: TemplateOption = EvalOptions.default("template"),
    judge: Optional[str] = typer.Option(EvalOptions.default("judge"), "--judge", help="OpenAI-compatible URL of an LLM judge (pairs judged in both orders)."),
    judge_model: JudgeModelOption = EvalOptions.default("judge_model"),
    judge_api_key_env: JudgeKeyOption = EvalOptions.default("judge_api_key_env"),
    workers: int = typer.Option(EvalOptions.default("workers"), "--workers", help="Concurrent requests per endpoint model (openai:URL#MODEL)."),
    api_key_env: ClientKeysOption = EvalOptions.default("api_key_env"),
    rpm: Optional[float] = typer.Option(EvalOptions.default("rpm"), "--rpm", help="At most this many requests per minute per API key (endpoint models)."),
    benchmark: Optional[List[str]] = typer.Option(EvalOptions.default("benchmark"), "--benchmark", help="General ability (forgetting) with lm-evaluation-harness tasks, e.g. kmmlu,haerae,kobest (pip install 'kotune[bench]')."),
    benchmark_data: Optional[str] = typer.Option(EvalOptions.default("benchmark_data"), "--benchmark-data", help="Folder of task YAMLs and their data, for machines without hub access."),
    benchmark_limit: Optional[int] = typer.Option(EvalOptions.default("benchmark_limit"), "--benchmark-limit", help="First N documents of each task."),
    forgetting_margin: float = typer.Option(EvalOptions.default("forgetting_margin"), "--forgetting-margin", help="Flag a model that lost more than this (absolute) on a task against the first model."),
    abstention: str = typer.Option(EvalOptions.default("abstention"), "--abstention", metavar="TEXT", help="The sentence that counts as abstaining (\"not in the documents\") for a model whose run records none; a kotune run's own recorded sentence wins."),
) -> None:
    """Answer the same questions with every model; Korean-correct metrics, error types and an HTML report."""
    opts = EvalOptions.check(dict(**_given(ctx, top_k=top_k), max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  repetition_penalty=repetition_penalty, stop=list(_stop_list(stop)),
                                  batch_size=batch_size, seed=seed, workers=workers, api_key_env=api_key_env, rpm=rpm,
                                  benchmark=list(benchmark or []), benchmark_data=benchmark_data,
                                  benchmark_limit=benchmark_limit, forgetting_margin=forgetting_margin,
                                  template=template, judge=judge, judge_model=judge_model,
                                  judge_api_key_env=judge_api_key_env, abstention=abstention))
    _quiet_libraries()
    steps.evaluate(questions, [m for item in models for m in item.split()], output, opts, context=context)


@app.command()
def pairs(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="Preference file to write (.jsonl)."),
    model: Optional[str] = typer.Option(None, "--model", help="The model whose failures become rejected answers: a kotune run, base model or openai:URL#MODEL[@RUN]; with --from-eval, the eval's model name (default: its last)."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="Questions with references (.jsonl/.csv), e.g. the train split."),
    from_eval: Optional[Path] = typer.Option(None, "--from-eval", help="Build pairs from a kotune eval folder's answers instead of sampling."),
    context: Optional[Path] = typer.Option(None, "--context", help="Chunks JSONL: retrieve context per question (as kotune eval --context; a grounded run without it retrieves from the chunks it recorded)."),
    samples: int = typer.Option(PairsOptions.default("samples"), "--samples", help="Answers sampled per question."),
    temperature: float = typer.Option(PairsOptions.default("temperature"), "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(PairsOptions.default("top_p"), "--top-p", help="Nucleus sampling."),
    max_new_tokens: int = typer.Option(PairsOptions.default("max_new_tokens"), "--max-new-tokens", help="Answer length limit."),
    repetition_penalty: float = typer.Option(PairsOptions.default("repetition_penalty"), "--repetition-penalty", help="Repetition penalty while sampling."),
    stop: Optional[List[str]] = typer.Option(PairsOptions.default("stop"), "--stop", help="Stop sequence (repeatable)."),
    top_k: int = typer.Option(PairsOptions.default("top_k"), "--top-k", help="Chunks retrieved per question (a grounded run without --top-k: its recorded number)."),
    min_margin: float = typer.Option(PairsOptions.default("min_margin"), "--min-margin", help="Keep a pair when the rejected answer is this much worse (error types + no EOS + unsupported share)."),
    chosen: str = typer.Option(PairsOptions.default("chosen"), "--chosen", help="reference (the question's reference answer) | sample (the best unflagged sample)."),
    fmt: str = typer.Option(PairsOptions.default("format"), "--format", help="pairs (chosen/rejected, for dpo/orpo/simpo) | kto (labelled answers)."),
    batch_size: int = typer.Option(PairsOptions.default("batch_size"), "--batch-size", help="Prompts per generation batch (local models)."),
    workers: int = typer.Option(PairsOptions.default("workers"), "--workers", help="Concurrent requests (endpoint models)."),
    seed: int = typer.Option(PairsOptions.default("seed"), "--seed", help="Sampling seed (sample i uses seed + i)."),
    template: TemplateOption = PairsOptions.default("template"),
    api_key_env: ClientKeysOption = PairsOptions.default("api_key_env"),
    judge: Optional[str] = typer.Option(PairsOptions.default("judge"), "--judge", help="OpenAI-compatible URL of an LLM judge that must also prefer chosen (both orders)."),
    judge_model: JudgeModelOption = PairsOptions.default("judge_model"),
    judge_api_key_env: JudgeKeyOption = PairsOptions.default("judge_api_key_env"),
) -> None:
    """Preference pairs mined from a model's own failures: flagged answers rejected, references chosen."""
    opts = PairsOptions.check(dict(samples=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                   repetition_penalty=repetition_penalty, stop=list(_stop_list(stop)),
                                   **_given(ctx, top_k=top_k), min_margin=min_margin, chosen=chosen, format=fmt, batch_size=batch_size,
                                   workers=workers, seed=seed, template=template, api_key_env=api_key_env, judge=judge,
                                   judge_model=judge_model, judge_api_key_env=judge_api_key_env),
                              flags={"format": "--format"})
    _quiet_libraries()
    steps.pairs(model, output, opts, questions=questions, from_eval=from_eval, context=context)


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="JSONL rows with answer (or prediction/output), reference, keywords, category, context, finish_reason, model."),
    output: Path = typer.Option(..., "--output", "-o", help="Scores JSON (metrics.json format)."),
    abstention: str = typer.Option(ScoreOptions.default("abstention"), "--abstention", metavar="TEXT", help="The sentence that counts as abstaining (\"not in the documents\"); rows may say \"answerable\": false."),
) -> None:
    """Metrics on existing predictions (grouped by their 'model' field)."""
    steps.score(predictions, output, ScoreOptions.check({"abstention": abstention}))


@app.command()
def chat(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="kotune output, HF id, folder, builtin:tiny-ko, or openai:URL#MODEL (a model behind an OpenAI-compatible server)."),
    context: Optional[Path] = typer.Option(ChatOptions.default("context"), "--context", help="Chunks JSONL for retrieval (toggle with /context on|off); a grounded run without it retrieves from the chunks it recorded."),
    top_k: int = typer.Option(ChatOptions.default("top_k"), "--top-k", help="Chunks retrieved per question (a grounded run without --top-k: its recorded number)."),
    max_new_tokens: int = typer.Option(ChatOptions.default("max_new_tokens"), "--max-new-tokens", help="Answer length limit."),
    temperature: float = typer.Option(ChatOptions.default("temperature"), "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(ChatOptions.default("top_p"), "--top-p", help="Nucleus sampling."),
    repetition_penalty: float = typer.Option(ChatOptions.default("repetition_penalty"), "--repetition-penalty", help="e.g. 1.2 as the insurance seed."),
    stop: Optional[List[str]] = typer.Option(ChatOptions.default("stop"), "--stop", help="Stop sequence (repeatable)."),
    template: TemplateOption = ChatOptions.default("template"),
    category: str = typer.Option(ChatOptions.default("category"), "--category", help="Category for per-category system prompts (chat template)."),
    api_key_env: ClientKeysOption = ChatOptions.default("api_key_env"),
) -> None:
    """Interactive terminal chat with streaming. Commands: /reset, /context on|off, /settings, /exit."""
    opts = ChatOptions.check(dict(model=model, context=str(context) if context else None, **_given(ctx, top_k=top_k),
                                  template=template,
                                  category=category, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, repetition_penalty=repetition_penalty, stop=list(_stop_list(stop)),
                                  api_key_env=api_key_env))
    if context is not None and not context.exists():
        raise KotuneError("no such file", path=context)
    from kotune.serve.chat import run_chat

    _quiet_libraries()
    run_chat(opts)


@app.command()
def serve(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Base: HF id, folder, builtin:tiny-ko or a kotune output (served under this name and 'base'); or llamacpp:FILE.gguf (an exported GGUF, served by llama.cpp's own server)."),
    adapter: Optional[List[str]] = typer.Option(None, "--adapter", help="NAME=PATH of a kotune LoRA output on the same base; repeat or list."),
    host: str = typer.Option(ServeOptions.default("host"), "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(ServeOptions.default("port"), "--port", help="Port to listen on."),
    template: TemplateOption = ServeOptions.default("template"),
    api_key_env: ServerKeyOption = ServeOptions.default("api_key_env"),
    max_tokens_limit: int = typer.Option(ServeOptions.default("max_tokens_limit"), "--max-tokens-limit", help="Largest max_tokens a request may ask for."),
    default_max_tokens: int = typer.Option(ServeOptions.default("default_max_tokens"), "--default-max-tokens", help="max_tokens when a request gives none (at most --max-tokens-limit)."),
    max_body_bytes: int = typer.Option(ServeOptions.default("max_body_bytes"), "--max-body-bytes", help="Largest request body accepted (413 above)."),
    max_batch: int = typer.Option(ServeOptions.default("max_batch"), "--max-batch", help="Most prompts decoded together."),
    batching: str = typer.Option(ServeOptions.default("batching"), "--batching", help=f"{_choices(SERVE_BATCHING)}. continuous: requests join the running batch at every step (full-attention models; others fall back to static). static: one generate per collected batch."),
    batch_wait_ms: float = typer.Option(ServeOptions.default("batch_wait_ms"), "--batch-wait-ms", help="Static batching: how long to collect concurrent requests into one batch."),
    context: Optional[Path] = typer.Option(ServeOptions.default("context"), "--context", help="Chunks JSONL: retrieve top-k chunks for every question (RAG), for every served name; without it a grounded run retrieves from the chunks it recorded. Chat answers then carry the passages in a \"kotune\" field."),
    top_k: int = typer.Option(ServeOptions.default("top_k"), "--top-k", help="Chunks retrieved per question (a grounded run without --top-k: its recorded number)."),
    access_log: bool = typer.Option(ServeOptions.default("access_log"), "--access-log", help="Log every request line (never keys or headers)."),
) -> None:
    """OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, /health) over a base and its adapters."""
    opts = ServeOptions.check(dict(host=host, port=port, template=template, api_key_env=api_key_env,
                                   max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens,
                                   max_body_bytes=max_body_bytes, max_batch=max_batch, batching=batching,
                                   batch_wait_ms=batch_wait_ms, context=str(context) if context else None,
                                   **_given(ctx, top_k=top_k),
                                   access_log=access_log))
    from kotune.serve.server import parse_adapter_args, serve as run_serve

    _quiet_libraries()
    run_serve(model, parse_adapter_args(adapter), opts, log=lambda m: console.print(m, markup=False))


@app.command()
def studio(
    root: Path = typer.Option(StudioOptions.default("root"), "--root", help="The folder whose runs, data, evals and recipes the studio shows (nothing outside it is read)."),
    host: str = typer.Option(StudioOptions.default("host"), "--host", help="Address to listen on (loopback by default; any other needs a token)."),
    port: int = typer.Option(StudioOptions.default("port"), "--port", help="Port to listen on."),
    token_env: Optional[str] = typer.Option(StudioOptions.default("token_env"), "--token-env", help="Environment variable holding the token other hosts must give (default: a new one, printed once)."),
) -> None:
    """Web UI: runs with live loss curves, data as the model sees it, eval flips, side-by-side chat, launching recipes."""
    opts = StudioOptions.check(dict(root=str(root), host=host, port=port, token_env=token_env))
    from kotune.studio.app import run_studio

    _quiet_libraries()
    run_studio(Path(opts.root), host=opts.host, port=opts.port, token_env=opts.token_env,
               log=lambda m: console.print(m, markup=False, highlight=False))


@app.command()
def export(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="A kotune output folder (LoRA, QLoRA or full)."),
    output: Optional[Path] = typer.Option(ExportOptions.default("output"), "--output", "-o", help="hf: folder for the merged model (needed with --merge). gguf: the .gguf file, or a folder for RUN.QUANT.gguf (default: beside the run folder)."),
    format: str = typer.Option(ExportOptions.default("format"), "--format", help=f"{_choices(EXPORT_FORMATS)}: a transformers/vLLM folder, or one GGUF file for llama.cpp and Ollama (with a Modelfile)."),
    quant: str = typer.Option(ExportOptions.default("quant"), "--quant", help=f"GGUF tensor type ({_choices(GGUF_QUANTS)}: llama.cpp's names). q8_0 keeps a fine-tuning; 4-6 bits may not (README)."),
    merge: bool = typer.Option(ExportOptions.default("merge"), "--merge/--no-merge", help="Merge the adapter into the base (default). --no-merge: hf prints the vLLM LoRA command; gguf writes the base and the LoRA adapter as two files (a 4-bit base keeps the tuning)."),
    name: Optional[str] = typer.Option(ExportOptions.default("name"), "--name", help="Adapter name for --no-merge (default: the folder name)."),
    dtype: str = typer.Option(ExportOptions.default("dtype"), "--dtype", help=f"{_choices(EXPORT_DTYPES)} for the merged weights (auto: the base's)."),
    overwrite: bool = typer.Option(ExportOptions.default("overwrite"), "--overwrite", help="Replace an earlier export."),
) -> None:
    """A merged, standalone model: a folder (safetensors + tokenizer + generation_config + kotune.json) for vLLM and
    plain transformers, or (--format gguf) one GGUF file with the run's chat template and stop tokens, plus an Ollama Modelfile."""
    opts = ExportOptions.check(dict(output=str(output) if output else None, merge=merge, name=name, dtype=dtype,
                                    overwrite=overwrite, format=format, **_given(ctx, quant=quant)))
    from kotune.export import export as run_export

    _quiet_libraries()
    result = run_export(model, opts, log=lambda m: console.print(m, markup=False))
    if result["kind"] == "gguf":
        done(f"GGUF ({result['bytes'] / 2**20:.0f} MiB) → {result['output']}"
             + (f"; LoRA adapter → {result['adapter']}" if result.get("adapter") else "")
             + f"; Ollama Modelfile → {result['modelfile']}")
        console.print("run it with Ollama:", markup=False)
        for c in result["commands"]:
            typer.echo(c)  # stdout: the lines a script wants
        console.print(f"or evaluate it with llama.cpp: kotune eval --models {shlex.quote(result['llamacpp'])} ...",
                      markup=False)
        return
    if result["kind"] in ("merged", "copied"):
        done(f"{result['kind']} model → {result['output']}")
    console.print("serve it with vLLM:", markup=False)
    typer.echo(result["command"])  # stdout: the one line a script wants


@app.command()
def run(
    recipe: Path = typer.Argument(..., metavar="RECIPE.yaml", help="A recipe: name, base_model and steps (see recipes/)."),
    output: Optional[Path] = typer.Option(RunOptions.default("output"), "--output", "-o", help="Run folder (default: runs/<recipe name>)."),
    set_: Optional[List[str]] = typer.Option(RunOptions.default("set"), "--set", help="Override a recipe field: KEY=VALUE with a dotted key, e.g. steps.train.epochs=2 (repeatable)."),
    base_model: Optional[str] = typer.Option(RunOptions.default("base_model"), "--base-model", "--base_model", help="Override base_model (e.g. EleutherAI/polyglot-ko-1.3b); a profile declaring that model applies too."),
    profile: Optional[str] = typer.Option(RunOptions.default("profile"), "--profile", help="Apply the recipe's named profile (e.g. gemma: builtin:gemma-3-270m with settings that suit it)."),
    method: Optional[str] = typer.Option(RunOptions.default("method"), "--method", help=f"Override steps.train.method ({_choices(TRAIN_METHODS)})."),
    preset: Optional[str] = typer.Option(RunOptions.default("preset"), "--preset", help=f"Override steps.train.preset ({_choices(PRESET_NAMES)})."),
    epochs: Optional[float] = typer.Option(RunOptions.default("epochs"), "--epochs", help="Override steps.train.epochs."),
    max_steps: Optional[int] = typer.Option(RunOptions.default("max_steps"), "--max-steps", help="Override steps.train.max_steps."),
    force: bool = typer.Option(RunOptions.default("force"), "--force", help="Run every step, even those that are up to date."),
    dry_run: bool = typer.Option(RunOptions.default("dry_run"), "--dry-run", help="Check the recipe and print each step's command; run nothing."),
) -> None:
    """Run a recipe's steps (prepare → generate → validate → split → train → doctor → eval), skipping up-to-date ones."""
    import shlex

    from rich.table import Table

    from kotune.recipe.plan import headline, load_run, run_recipe

    opts = RunOptions.check(dict(output=str(output) if output else None, set=list(set_ or []), base_model=base_model,
                                 profile=profile, method=method, preset=preset, epochs=epochs, max_steps=max_steps,
                                 force=force, dry_run=dry_run))
    plan = load_run(recipe, opts)
    if plan.profile:
        console.print(f"profile {plan.profile}: base model {plan.recipe.base_model}", markup=False, highlight=False)
    out = plan.output(opts.output)
    calls = plan.calls(out)  # every input checked before any work starts
    if opts.dry_run:
        for call in calls:
            typer.echo("kotune " + shlex.join(call.args))
        return

    _quiet_libraries()
    console.rule(f"kotune run {plan.recipe.name} → {out}", style="bold")
    results = run_recipe(plan, out, force=opts.force,
                         header=lambda m: console.print(m, style="bold cyan", markup=False, highlight=False,
                                                        soft_wrap=True))  # a whole command line, copyable
    table = Table(title=f"recipe {plan.recipe.name}")
    for col in ("step", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for r in results:
        table.add_row(r.label, r.status, f"{r.seconds:.1f}" if r.status != "skipped" else "–")
    console.print(table)
    h = headline(plan, out)
    if h and "tuned_better" in h:
        v = h["values"]
        verdict = "tuned is better" if h["tuned_better"] else "tuned is NOT better"
        more = "".join(f" → {name} {value}" for name, value in v.items() if name not in ("base", "tuned"))
        console.print(f"headline {h['metric']}{' (lower is better)' if h['lower_is_better'] else ''}: "
                      f"base {v['base']} → tuned {v['tuned']}{more}: {verdict}", markup=False, soft_wrap=True)
    if all(r.status == "skipped" for r in results):
        done(f"nothing to do: all {len(results)} steps are up to date in {out} (--force reruns them)")
    else:
        ran = sum(r.status != "skipped" for r in results)
        done(f"{ran} step(s) run, {len(results) - ran} up to date → {out}")


def _quiet_libraries() -> None:
    """Library deprecation chatter is not for users; --debug shows it."""
    if _DEBUG:
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|trl|torch|bitsandbytes)")
    for name in ("bitsandbytes", "transformers", "peft", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# ---------------------------------------------------------------- entry point
def _error(message: str) -> None:
    """The one ``error:`` line; the message is text, never Rich markup ("[...]" in paths)."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


_VARIADIC = ("--models", "--model_paths", "--model-paths", "--adapter")


def _expand_variadic(argv: list[str]) -> list[str]:
    """``--models A B C`` → ``--models A --models B --models C`` (the seed's
    ``--model_paths base tuned`` style; click options take one value each)."""
    out: list[str] = []
    current = None
    for arg in argv:
        if arg in _VARIADIC:
            current = arg
            out.append(arg)
            continue
        if current and not arg.startswith("-") and out and out[-1] != current:
            out += [current, arg]
            continue
        if arg.startswith("-"):
            current = None
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user mistakes print one ``error:`` line and exit 2."""
    global _DEBUG
    argv = _expand_variadic(list(sys.argv[1:] if argv is None else argv))
    _DEBUG = "--debug" in argv or os.environ.get("KOTUNE_DEBUG") == "1"
    if "--debug" in argv[1:]:  # accepted after the command too: kotune prepare x.txt -o y --debug
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    try:
        # With standalone_mode=False click returns (not raises) a command's Exit code.
        rc = app(args=argv, prog_name="kotune", standalone_mode=False)
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except KotuneError as e:
        if _DEBUG:
            raise
        _error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:  # unreadable input, -o naming a folder, disk full: the user's to fix
        if _DEBUG:
            raise
        name = e.filename2 or e.filename  # os.replace(tmp, OUTPUT) failing is about OUTPUT
        where = f"{name}: " if name else ""
        _error(where + (e.strerror or str(e)))
        sys.exit(KotuneError.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as e:  # usage errors: missing argument, bad option value
        if isinstance(e, _usage_error_types()) and callable(getattr(e, "show", None)):
            if _DEBUG:
                raise
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        raise


def _usage_error_types() -> tuple[type, ...]:
    """Typer >= 0.29 vendors click (``typer._click``), so its usage errors are not
    ``click.ClickException``; both derive from what is checked here."""
    types: list[type] = [t for t in (getattr(typer, "TyperException", None),) if t is not None]
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(types)
