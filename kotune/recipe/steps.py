"""The pipeline's steps as functions: prepare, generate, validate, split, train, doctor, pairs, eval, score.

Each takes its files and its options model (:mod:`kotune.options`) and does the
step, progress and summary included. The ``kotune`` commands parse the command
line into those models and call these; ``kotune run RECIPE`` calls them directly
with the recipe's step models and prints the equivalent command line, built
from the same model (``recipe._flags``), so the printed command does exactly
what the recipe did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.options import (DoctorOptions, EvalOptions, GenerateOptions, PairsOptions, PrepareOptions, ScoreOptions,
                            SplitOptions, TrainOptions, ValidateOptions)
from kotune.ui import console, done, warn
from kotune.ui import progress as _progress


def progress():
    """A progress bar on a terminal only: in logs and pipes its last frame would
    be a stray line in front of the result (or of the one ``error:`` line)."""
    bar = _progress()
    bar.disable = not console.is_interactive
    return bar


def _log(message: str) -> None:
    console.print(message, markup=False)


# ---------------------------------------------------------------- data stage
def prepare(inputs: list[Path], output: Path, opts: PrepareOptions) -> None:
    """Documents → chunks: Kiwi sentences packed to ``chunk_chars``, headings as breadcrumbs."""
    from kotune.data.chunk import prepare as chunk_documents
    from kotune.io import write_jsonl

    with progress() as bar:
        task = bar.add_task("reading documents", total=None)
        chunks = chunk_documents(inputs, chunk_chars=opts.chunk_chars, overlap=opts.overlap,
                                 on_file=lambda p: bar.advance(task))
        bar.update(task, total=bar.tasks[0].completed)
    write_jsonl(output, (c.to_dict() for c in chunks))
    sources = len({c.metadata["source"] for c in chunks})
    done(f"{len(chunks)} chunks from {sources} document(s) → {output}")


def generate(chunks_file: Path, output: Path, opts: GenerateOptions, *, shard: str | None = None,
             resume: bool = False, overwrite: bool = False) -> None:
    """Chunks → QA records through the teacher, journaled (``resume`` continues a cut-off run)."""
    import time

    from rich.progress import TextColumn

    from kotune.data.generate import generate_file, make_teacher, parse_shard, shard_chunks
    from kotune.records import load_chunks

    if not opts.teacher.startswith(("http://", "https://")) and (opts.api_key_env or opts.rpm):
        warn("--api-key-env and --rpm only apply to a URL teacher; ignored")
    if opts.grounded and opts.input_context:
        raise KotuneError("--grounded and --input-context both set each record's input; "
                          "--grounded already puts the source chunk among its passages: use one")
    every = load_chunks(chunks_file)
    sh = parse_shard(shard)
    chunks = shard_chunks(every, sh)
    ground = None
    if opts.grounded:
        from kotune.data.grounded import Grounder

        if len(every) < 2:
            raise KotuneError(f"--grounded needs at least 2 chunks (got {len(every)})", path=chunks_file)
        if opts.grounded_k > len(every):
            warn(f"--grounded-k {opts.grounded_k} but {len(every)} chunks: records get {len(every)} passages "
                 f"(unanswerable ones {len(every) - 1})")
        with console.status("indexing chunks for --grounded"):
            ground = Grounder(every, k=opts.grounded_k, unanswerable_share=opts.unanswerable_share,
                              abstention=opts.abstention).apply
    elif (opts.grounded_k, opts.unanswerable_share, opts.abstention) != \
            tuple(GenerateOptions.default(n) for n in ("grounded_k", "unanswerable_share", "abstention")):
        warn("--grounded-k, --unanswerable-share and --abstention only apply with --grounded; ignored")
    t = make_teacher(opts)
    if not chunks:
        raise KotuneError(f"shard {shard} of {len(every)} chunks is empty")
    stats = t.stats
    with progress() as bar:
        # A model name ("teacher:m:7b", "[org]/x") is plain text, neither markup nor an :emoji: code.
        bar.columns = (*(TextColumn("{task.description}", style="bold", markup=False)
                         if isinstance(c, TextColumn) and "task.description" in c.text_format else c for c in bar.columns),
                       TextColumn("{task.fields[info]}", markup=False))
        task = bar.add_task(f"generating ({t.name})", total=len(chunks), info="")
        started, finished = time.monotonic(), [0, 0]  # chunks done at start (resumed), chunks done

        def refresh(*_: object) -> None:
            rate = (finished[1] - finished[0]) / max(time.monotonic() - started, 1e-6)
            info = f"{rate:.2f} chunks/s"
            if stats is not None:
                info += f" · {stats.accepted} QA · retries {stats.retries} · errors {stats.errors}"
                if stats.rejected:
                    info += f" · rejected {sum(stats.rejected.values())}"
            bar.update(task, info=info)

        def skipped(n: int) -> None:
            finished[0] = n  # chunks taken from the journal do not count toward the rate

        def advance(n: int) -> None:
            finished[1] += n
            bar.advance(task, n)
            refresh()

        if stats is not None:
            stats.on_change = refresh
        records = generate_file(chunks, t, output, per_chunk=opts.per_chunk, resume=resume, overwrite=overwrite,
                                on_chunk=advance, on_start=skipped, input_context=opts.input_context, ground=ground)
    if stats is not None:
        stats.on_change = None
        console.print(f"{t.name}: {stats.summary()}", markup=False, emoji=False)
    if not records:
        warn("the teacher produced no records from these chunks")
    where = f" (shard {sh[0]}/{sh[1]} of {len(every)})" if sh else ""
    if ground is not None:
        unanswerable = sum(1 for r in records if not r.answerable)
        where += f", grounded: {opts.grounded_k} passages each, {unanswerable} unanswerable"
    done(f"{len(records)} records from {len(chunks)} chunks{where} → {output}")


def validate(inputs: list[Path], output: Path, opts: ValidateOptions, *, report: Path | None = None,
             chunks_file: Path | None = None, mapping: dict[str, str] | None = None,
             dropped: Path | None = None) -> None:
    """Merge QA files; drop missing, duplicate, near-duplicate, short, incomplete, evasive and ungrounded records."""
    from kotune.data.preferences import is_preference_file
    from kotune.data.validate import render_tables, validate_records
    from kotune.io import write_json
    from kotune.records import load_chunks, read_records, write_records

    kinds = {is_preference_file(p) for p in inputs if Path(p).is_file()}
    if True in kinds:
        if len(kinds) > 1:
            raise KotuneError("mixes preference files (chosen/rejected or completion/label) with SFT records; "
                              "validate them separately")
        return _validate_preferences(inputs, output, opts, report=report)
    records = []
    for path in inputs:
        for r in read_records(path, mapping or {}):
            r.extra["_file"] = str(path)
            records.append(r)
    chunks = {c["chunk_id"]: c["text"] for c in load_chunks(chunks_file)} if chunks_file else None
    with console.status(f"validating {len(records)} records"):
        result = validate_records(records, chunks, opts)
    for table in render_tables(result):
        console.print(table)
    if not result.kept:
        raise KotuneError(f"no records left after validation (of {len(records)}); see the table above")
    write_records(output, result.kept)
    if report:
        write_json(report, result.report())
    if dropped:
        _write_dropped(dropped, result.dropped)
    done(f"kept {len(result.kept)} of {len(records)} records → {output}" + (f" (report: {report})" if report else ""))


def _write_dropped(path: Path, dropped: list) -> None:
    """Every dropped record in full, with ``drop_reason`` (a key of the report's
    ``dropped_by_reason``) and where it came from (``file``, ``line``)."""
    from kotune.io import atomic_writer, dumps
    from kotune.records import record_out

    with atomic_writer(path) as f:
        for rec, reason in dropped:
            row = record_out(rec)
            row["drop_reason"] = reason
            for key in ("grounding", "duplicate_of", "similarity", "_file", "_line"):
                if key in rec.extra:
                    row[key.lstrip("_")] = rec.extra[key]
            f.write(dumps(row) + "\n")


def _validate_preferences(inputs: list[Path], output: Path, opts: ValidateOptions, *, report: Path | None) -> None:
    """Preference records: drop missing sides, chosen = rejected, duplicates and chosen answers that
    fail the SFT answer checks; counts per reason."""
    from kotune.data.preferences import read_preferences, render_pair_table, validate_preferences, write_preferences
    from kotune.io import write_json

    records = [r for path in inputs for r in read_preferences(path, strict=False)]
    result = validate_preferences(records, min_answer_chars=opts.min_answer_chars)
    console.print(render_pair_table(result))
    if not result.kept:
        raise KotuneError(f"no preference records left after validation (of {len(records)}); see the table above")
    write_preferences(output, result.kept)
    if report:
        write_json(report, result.report())
    done(f"kept {len(result.kept)} of {len(records)} preference records → {output}"
         + (f" (report: {report})" if report else ""))


def split(data: Path, train: Path, test: Path, opts: SplitOptions, *, mapping: dict[str, str] | None = None) -> None:
    """Stratified, deterministic train/test split; optional instruction augmentation without leakage."""
    from kotune.data.split import augment, stratified_split
    from kotune.records import read_records, write_records

    records = read_records(data, mapping or {})
    if len(records) < 2:
        raise KotuneError("need at least two records to split", path=data)
    tr, te = stratified_split(records, test_size=opts.test_size, stratify=opts.stratify or None, seed=opts.seed,
                              group_by=opts.group_by)
    if opts.augment:
        tr = augment(tr, opts.augment, seed=opts.seed)
        if opts.augment_test:
            te = augment(te, opts.augment, seed=opts.seed)
    write_records(train, tr)
    write_records(test, te)
    done(f"train {len(tr)} → {train}, test {len(te)} → {test}")


# ---------------------------------------------------------------- training
def train(opts: TrainOptions, *, base_model: str | None, data: Path, output_dir: Path, system_prompts: Path | None = None,
          eval_data: Path | None = None, trust_remote_code: bool = False, resume: bool = False,
          overwrite: bool = False, from_run: Path | None = None) -> None:
    """Fine-tune with LoRA, QLoRA or full SFT, preference-tune (DPO, ORPO, KTO, SimPO) or run GRPO,
    from ``base_model`` or, for preference methods and GRPO, from the SFT run ``from_run``."""
    import json

    from kotune.train.sft import TrainConfig, train as run_train

    prompts = {}
    if system_prompts:
        from kotune.io import read_text_file

        try:
            prompts = json.loads(read_text_file(system_prompts))
        except json.JSONDecodeError as e:
            raise KotuneError(f"invalid JSON ({e.msg})", path=system_prompts, line=e.lineno) from None
    config = TrainConfig(base_model=base_model or TrainOptions.default_base_model, data=str(data),
                         output_dir=str(output_dir), system_prompts=prompts,
                         eval_data=str(eval_data) if eval_data else None, trust_remote_code=trust_remote_code,
                         from_run=str(from_run) if from_run else None,
                         **opts.model_dump(include=set(TrainOptions.model_fields)))
    config.check()  # options that do not go together, before any file is read
    if from_run is not None and base_model is not None:
        from kotune.train.preference import read_sft_run

        run_base = read_sft_run(from_run).base_model
        if base_model != run_base:
            raise KotuneError(f"--base-model {base_model}: --from {from_run} was trained on {run_base}, and a preference "
                              "run continues it on that base; drop --base-model")
    if config.preference:
        from kotune.train.preference import train_preference

        info = train_preference(config, resume=resume, overwrite=overwrite,
                                template_given="template" in opts.model_fields_set, log=_log)
    elif config.rl:
        from kotune.rl.grpo import train_grpo

        info = train_grpo(config, resume=resume, overwrite=overwrite, template_given="template" in opts.model_fields_set,
                          log=_log)
    else:
        info = run_train(config, resume=resume, overwrite=overwrite, log=_log)
    if info.complete and info.final:
        f = info.final
        extra = ""
        p = info.preference
        if p is not None and p.eval_margin_after is not None:
            extra = f", held-out log-prob margin {p.eval_margin_before} → {p.eval_margin_after}"
        curve = info.grpo.reward_curve if info.grpo is not None else []
        if curve:
            extra = f", reward {curve[0]['reward']} → {curve[-1]['reward']}"
        done(f"trained in {f.seconds} s ({f.steps} steps): train loss {f.train_loss}, "
             f"eval loss {f.eval_loss}{extra} → {output_dir}")


def doctor(run_dir: Path | None, opts: DoctorOptions, *, base_model: str | None = None,
           data: Path | None = None, eval_dir: Path | None = None) -> int:
    """Check a fine-tuning setup (a run folder, or a base model and data) for the classic pitfalls,
    and an evaluation (``eval_dir``, or the ``OUT/eval`` of the ``kotune run`` output a run folder
    belongs to) for closed-book models that invent (:mod:`kotune.eval.closed_book`); with only
    ``eval_dir`` no model is read. 1 when a problem is found, else 0."""
    from rich.markup import escape
    from rich.table import Table

    from kotune.eval.closed_book import eval_findings, eval_next_to
    from kotune.train.doctor import DoctorSetup, diagnose

    if run_dir is None and base_model is None and eval_dir is None:
        raise KotuneError("give a kotune output folder, --base-model (with --data) or --eval EVAL")
    if run_dir is not None and not Path(run_dir).exists():
        raise KotuneError("no such folder", path=run_dir)
    if data is not None and not Path(data).exists():
        raise KotuneError("no such file", path=data)
    if data is not None and run_dir is None and base_model is None:
        raise KotuneError("--data is checked with a model: give --base-model or a kotune output folder")
    if eval_dir is not None and not Path(eval_dir).is_dir():
        raise KotuneError("no such folder", path=eval_dir)
    findings = []
    if run_dir is not None or base_model is not None:
        setup = DoctorSetup(**opts.model_dump(include=set(DoctorOptions.model_fields)), base_model=base_model,
                            data=str(data) if data else None, run_dir=str(run_dir) if run_dir else None)
        findings = diagnose(setup, log=_log)
    if eval_dir is not None:
        findings += eval_findings(eval_dir)
    elif run_dir is not None and (found := eval_next_to(run_dir)) is not None:
        findings += eval_findings(found, run_dir=run_dir)
    table = Table(title="kotune doctor", show_lines=False)
    for column in ("check", "", "finding", "fix"):  # fold: a long line (Korean ones too) loses no character
        table.add_column(column, overflow="fold")
    for f in findings:
        mark = "[green]ok[/green]" if f.ok else ("[yellow]warn[/yellow]" if f.severity == "warning" else "[red]FAIL[/red]")
        table.add_row(escape(f.code), mark, escape(f.message), "" if f.ok else escape(f.fix))
    console.print(table)
    problems = [f for f in findings if not f.ok and f.severity == "error"]
    warnings = [f for f in findings if not f.ok and f.severity == "warning"]
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/red]: {', '.join(f.code for f in problems)}")
        return 1
    done("no pitfalls found" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    return 0


def pairs(model: str | None, output: Path, opts: PairsOptions, *, questions: Path | None = None,
          from_eval: Path | None = None, context: Path | None = None) -> None:
    """Preference pairs from a model's flagged answers (sampled now, or from an eval folder)."""
    from rich.table import Table

    from kotune.eval.evaluate import load_questions
    from kotune.eval.pairs import from_eval as pairs_from_eval, mine

    if (questions is None) == (from_eval is None):
        raise KotuneError("give --questions (with --model) to sample answers, or --from-eval EVAL to use an eval's answers")
    if context is not None and not Path(context).exists():
        raise KotuneError("no such file", path=context)
    if from_eval is not None:
        summary = pairs_from_eval(Path(from_eval), output, opts, model=model,
                                  chunks_path=str(context) if context else None)
    else:
        if model is None:
            raise KotuneError("--model: which model answers (a kotune run, base model or openai:URL#MODEL)")
        qs = load_questions(questions)
        with progress() as bar:
            task = bar.add_task(f"sampling {opts.samples} answers × {len(qs)} questions", total=len(qs) * opts.samples)
            summary = mine(model, qs, output, opts, chunks_path=str(context) if context else None, log=_log,
                           on_progress=lambda n, total: bar.update(task, completed=n))
    table = Table(title=f"선호 쌍 (preference pairs): {summary['pairs']} of {summary['questions']} questions",
                  title_justify="left")
    table.add_column("rejected answer's failure")
    table.add_column("pairs", justify="right")
    for kind, n in summary["rejected_error_types"].items():
        table.add_row(kind, str(n))
    table.add_section()
    for reason, n in summary["skipped"].items():
        table.add_row(f"skipped: {reason}", str(n))
    console.print(table)
    from kotune.io import write_json

    write_json(output.with_name(output.stem + ".summary.json"), summary)
    if not summary["pairs"]:
        warn("no pairs: no answer was flagged with a clear margin (more --samples, a higher --temperature, "
             "or a lower --min-margin)")
    done(f"{summary['pairs']} {'pairs' if opts.format == 'pairs' else 'pairs as labelled answers'} → {output}")


# ---------------------------------------------------------------- evaluation
def evaluate(questions: Path, models: list[str], output: Path, opts: EvalOptions, *,
             context: Path | None = None) -> None:
    """Answer the same questions with every model; Korean-correct metrics, error types and an HTML report."""
    from kotune.eval.evaluate import evaluate as run_eval, load_questions, parse_model_args

    qs = load_questions(questions)
    if context is not None and not Path(context).exists():
        raise KotuneError("no such file", path=context)
    pairs = parse_model_args(models)
    with progress() as bar:
        task = bar.add_task(f"answering {len(qs)} questions × {len(pairs)} models", total=len(qs) * len(pairs))
        metrics = run_eval(qs, pairs, output, options=opts, chunks_path=str(context) if context else None,
                           log=_log, on_progress=lambda name, n: bar.advance(task, n))
    print_metrics(metrics)
    from rich.markup import escape

    for w in metrics.get("warnings") or []:  # closed-book models that invent (kotune.eval.closed_book)
        warn(escape(w["message"]))
    for other, r in (metrics.get("judge") or {}).get("pairs", {}).items():
        console.print(f"judge: {other} vs {metrics['judge']['baseline']}: win {r['win_rate']:.0%}, "
                      f"loss {r['loss_rate']:.0%}, tie {r['tie_rate']:.0%} (orders disagreed {r['order_disagreement']:.0%})")
    done(f"{len(qs)} questions × {len(pairs)} models → {output}/ (responses.jsonl, metrics.json, report.md, report.html)")


def score(predictions: Path, output: Path, opts: ScoreOptions) -> None:
    """Metrics on existing predictions (``answer``, or ``prediction``/``output``), grouped by their ``model``."""
    from kotune.eval.evaluate import read_answerable
    from kotune.eval.metrics import TOKENIZATION, score_rows
    from kotune.io import read_jsonl, write_json

    groups: dict[str, list[dict]] = {}
    for i, (lineno, row) in enumerate(read_jsonl(predictions), 1):
        answer = row.get("answer", row.get("prediction", row.get("output")))
        if not isinstance(answer, str):
            raise KotuneError('missing "answer" (or "prediction"/"output")', path=predictions, line=lineno)
        answerable = read_answerable(row, csv=False, path=predictions, line=lineno, item=i)
        row = {**row, "answer": answer, "answerable": answerable}
        groups.setdefault(str(row.get("model") or "model"), []).append(row)
    if not groups:
        raise KotuneError("no predictions found", path=predictions)
    metrics: dict = {"models": {}, "tokenization": TOKENIZATION}
    for name, rows in groups.items():
        scored = score_rows(rows, abstention=opts.abstention)
        scored["abstention"] = opts.abstention
        scored.pop("per_row", None)
        metrics["models"][name] = scored
        metrics["bleu_signature"] = scored.get("bleu_signature")
    computable = [m for m in metrics["models"].values() if m.get("overall")]
    if not computable:
        raise KotuneError("no metric could be computed from these predictions", path=predictions)
    write_json(output, metrics)
    print_metrics(metrics)
    done(f"scores for {sum(len(r) for r in groups.values())} predictions → {output}")


def print_metrics(metrics: dict[str, Any]) -> None:
    """The overall metrics per model as a terminal table, then skipped metrics and notes."""
    from rich.table import Table

    keys = ["rougeL", "bleu", "chrf", "keyword_coverage", "eos_rate", "repetition", "unsupported_rate"]
    if any((m.get("overall") or {}).get("unanswerable") for m in metrics["models"].values()):
        keys += ["abstain_rate", "false_abstain_rate"]  # some question is marked answerable: false
    if any((m.get("overall") or {}).get(k) is not None for m in metrics["models"].values()
           for k in ("citation_accuracy", "cited_rate")):
        keys += ["citation_accuracy", "cited_rate"]  # some answer was asked with numbered passages ([문서 n])
    table = Table(title=f"metrics ({metrics.get('tokenization', '')})")
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in metrics["models"].items():
        o = m.get("overall", {})
        table.add_row(name, *["–" if o.get(k) is None else str(o.get(k)) for k in keys])
    console.print(table)
    if metrics.get("bleu_signature"):
        console.print(f"BLEU signature: {metrics['bleu_signature']}", markup=False)
    for name, m in metrics["models"].items():
        for item in m.get("skipped", []):
            if isinstance(item, dict):
                warn(f"{name}: {item.get('metric')} skipped — {item.get('reason')}")
            else:
                warn(f"{name}: {item}")
        for note in m.get("notes", []):
            warn(f"{name}: {note}")


__all__ = ["doctor", "evaluate", "generate", "pairs", "prepare", "print_metrics", "progress", "score", "split", "train",
           "validate"]
