"""Compare models on the same questions: answers, Korean-correct metrics, error types, report.

Every model answers with its own training template (from ``kotune.json``); a
plain base model answers in the template of the first tuned model being
compared, so base and tuned see the same prompt.

Each model is asked with its own passages (:func:`kotune.model.retrieval.retrieval_for`):
``--context CHUNKS`` retrieves for every model; without it a grounded run retrieves from
the chunks and ``top_k`` it recorded, while a closed-book run and a plain base are asked
without passages. ``metrics.json`` says how, per model (``models.NAME.retrieval``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.io import check_input_file, decode_bytes
from kotune.eval.metrics import split_keywords
from kotune.model.runinfo import RunInfo
from kotune.options import EvalOptions
from kotune.records import raw_rows


# ---------------------------------------------------------------- questions
# How a CSV cell says a question is answerable (compared stripped and lower-cased). JSON has
# booleans of its own and must use them: "yes", 1 or "false" there is a mistake, not a value.
_CSV_TRUE = frozenset({"true", "1", "예"})
_CSV_FALSE = frozenset({"false", "0", "아니오", "아니요"})


def read_answerable(raw: dict[str, Any], *, csv: bool, path: Path, line: int | None, item: int) -> bool:
    """A question's ``answerable`` field: True when missing (or null, or an empty CSV cell);
    ``false`` when the documents do not hold the answer; anything else is one error line
    naming the file, the line (JSON lists: the item) and the field."""
    value = raw.get("answerable")
    if value is None or (csv and isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, bool):
        return value
    if csv and isinstance(value, str):
        word = value.strip().lower()
        if word in _CSV_TRUE or word in _CSV_FALSE:
            return word in _CSV_TRUE
    accepted = "true or false (also 1/0, 예/아니오)" if csv else "true or false (a JSON boolean)"
    where = "" if line is not None else f"item {item}: "
    raise KotuneError(f'{where}"answerable" must be {accepted}, got {json.dumps(value, ensure_ascii=False)}',
                      path=path, line=line)


def _question_row(raw: dict[str, Any], i: int, answerable: bool = True) -> dict[str, Any]:
    q = raw.get("question") or raw.get("instruction") or raw.get("query") or raw.get("prompt") or ""
    ref = raw.get("reference") or raw.get("answer") or raw.get("output") or ""
    return {
        "id": str(raw.get("id") or f"q{i:04d}"),
        "question": str(q).strip(),
        "input": str(raw.get("input") or "").strip(),
        "reference": str(ref).strip(),
        "keywords": split_keywords(raw.get("keywords")),
        "category": str(raw.get("category") or "").strip(),
        "context": str(raw.get("context") or "").strip(),
        "chunk_id": str(raw.get("chunk_id") or ""),   # the chunk a generated question came from
        "answerable": answerable,                      # False: the documents do not hold the answer
    }


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Questions from .txt (one per line), .jsonl/.json or .csv/.tsv (``question`` or record fields).
    ``answerable: false`` marks a question whose answer the documents do not hold (a JSON boolean;
    in CSV also 1/0 and 예/아니오); missing, it is answerable."""
    path = check_input_file(path)
    if path.suffix.lower() == ".txt":
        data = path.read_bytes()
        if not data.strip():
            raise KotuneError("file is empty", path=path)
        text, _ = decode_bytes(data, path)
        lines = (l.strip() for l in text.splitlines())
        rows = [_question_row({"question": l}, i) for i, l in enumerate((l for l in lines if l and not l.startswith("#")), 1)]
    elif path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv"):
        csv = path.suffix.lower() in (".csv", ".tsv")
        rows = [_question_row(raw, i, read_answerable(raw, csv=csv, path=path, line=line, item=i))
                for i, (line, raw) in enumerate(raw_rows(path), 1)]
    else:
        raise KotuneError(f"unsupported questions format {path.suffix.lower()!r}; use .txt, .jsonl, .json or .csv", path=path)
    rows = [r for r in rows if r["question"]]
    if not rows:
        raise KotuneError("no questions found (need a 'question' or 'instruction' field, or one per line in .txt)", path=path)
    return rows


# ---------------------------------------------------------------- models
def parse_model_args(specs: list[str]) -> list[tuple[str, str]]:
    """``["base=builtin:tiny-ko", "runs/x"]`` → ``[("base", "builtin:tiny-ko"), ("x", "runs/x")]``."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, target = spec.partition("=")
        if spec.startswith("openai:"):  # an unnamed endpoint model is named after its model
            out.append((spec.rpartition("#")[2].partition("?")[0].partition("@")[0] or spec, spec))
        elif spec.startswith("llamacpp:"):  # an unnamed GGUF model is named after its file
            out.append((Path(spec[len("llamacpp:"):].partition("?")[0]).stem or spec, spec))
        elif sep and name and not Path(spec).exists():
            out.append((name, target))
        else:
            out.append((Path(spec.rstrip("/")).name if Path(spec).exists() else spec, spec))
    names = [n for n, _ in out]
    for n in set(names):
        if names.count(n) > 1:
            k = 0
            for i, (m, s) in enumerate(out):
                if m == n:
                    k += 1
                    out[i] = (f"{m}#{k}", s)
    return out


def benchmark_tasks(options: EvalOptions) -> list[str]:
    """The lm-eval tasks of ``--benchmark``: repeated, comma-separated or both (``kmmlu,haerae``)."""
    return [t.strip() for v in options.benchmark for t in v.split(",") if t.strip()]


def settings_block(options: EvalOptions) -> dict[str, Any]:
    """The ``settings`` of metrics.json (a file users read: its keys stay as they are)."""
    return {"max_new_tokens": options.max_new_tokens, "temperature": options.temperature, "top_p": options.top_p,
            "repetition_penalty": options.repetition_penalty, "stop": list(options.stop), "seed": options.seed,
            "batch_size": options.batch_size, "top_k": options.top_k, "template": options.template,
            "judge_url": options.judge, "judge_model": options.judge_model,
            "judge_api_key_env": options.judge_api_key_env, "workers": options.workers,
            "api_key_env": options.api_key_env, "rpm": options.rpm, "benchmarks": benchmark_tasks(options),
            "benchmark_data": options.benchmark_data, "benchmark_limit": options.benchmark_limit,
            "forgetting_margin": options.forgetting_margin}


def abstention_sentence(run: RunInfo | None, options: EvalOptions) -> str:
    """The sentence that counts as abstaining for a model: its run's recorded one, else ``--abstention``."""
    return run.abstention if run and run.abstention else options.abstention


def evaluate(questions: list[dict[str, Any]], models: list[tuple[str, str]], out_dir: str | Path, *,
             options: EvalOptions, chunks_path: str | None = None,
             log: Callable[[str], None] = print, on_progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Answer every question with every model (``kotune eval``'s ``options``); write responses.jsonl,
    metrics.json, report.md/html."""
    from kotune.io import atomic_writer, dumps, write_json
    from kotune.eval.closed_book import asked_closed_book, closed_book_warnings
    from kotune.eval.metrics import score_rows
    from kotune.model.access import GenerationSettings, open_models
    from kotune.model.journal import journal_path
    from kotune.model.retrieval import retrieval_for
    from kotune.eval.report import render_html, render_markdown

    out = Path(out_dir)
    # Every model is opened before any work, so a bad path, an unfinished run, a refused
    # --template or an endpoint that cannot answer fails fast; a plain base answers in the
    # compared run's whole template (kotune.model.access).
    opened = open_models(models, template=options.template, api_key_env=options.api_key_env, workers=options.workers,
                         rpm=options.rpm, batch_size=options.batch_size, log=log)
    tasks = benchmark_tasks(options)
    manager = None
    if tasks:  # a missing extra or an unknown task is an error before any work
        from kotune.eval.general import task_manager

        manager = task_manager(tasks, options.benchmark_data)

    # Each model's passages, decided before any answer (a grounded run whose chunks are gone is one
    # line, nothing written): --context for all, else a grounded run's own chunks and top_k, else none.
    retrievals = {name: retrieval_for(opened[name].run, name=name, context=chunks_path, top_k=options.given("top_k"))
                  for name, _ in models}
    contexts_by_model: dict[str, list[tuple[str, list[str]]]] = {}
    asked: dict[tuple, list[tuple[str, list[str]]]] = {}   # models retrieving alike share the passages
    for name, _ in models:
        r = retrievals[name]
        key = (r.source, r.k, r.from_run) if r is not None else ()
        if key not in asked:
            asked[key] = ([(p.text, p.chunk_ids) for p in r.for_questions(questions)] if r is not None
                          else [("", []) for _ in questions])
        contexts_by_model[name] = asked[key]

    gen_settings = GenerationSettings(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                      top_p=options.top_p, repetition_penalty=options.repetition_penalty,
                                      stop=list(options.stop), seed=options.seed)
    answers: dict[str, list[Any]] = {}
    prompts_by_model: dict[str, list[Any]] = {}
    timing: dict[str, float] = {}
    for name, _ in models:
        model = opened[name]
        # The prompt holds the passages, so journaled answers are keyed on them (kotune.model.journal).
        prompts = [model.prompt(q["question"], q["input"], category=q["category"], context=ctx or None)
                   for q, (ctx, _) in zip(questions, contexts_by_model[name])]
        log(f"{name}: {model.spec} ({model.mode}, template "
            f"{model.template.name}" + (f", {model.workers} workers)" if model.mode != "local" else ")"))
        t0 = time.time()
        # Journaled batch by batch: a killed eval resumes without asking an answered question again.
        answers[name] = model.answer(prompts, gen_settings, journal=journal_path(out, name))
        model.close()
        timing[name] = time.time() - t0
        prompts_by_model[name] = prompts
        if on_progress:
            on_progress(name, len(prompts))

    metrics: dict[str, Any] = {"models": {}, "settings": settings_block(options),
                               "questions": len(questions), "context": chunks_path}
    responses: list[dict[str, Any]] = []
    per_model_rows: dict[str, list[dict[str, Any]]] = {}
    for name, _ in models:
        rows = []
        contexts = contexts_by_model[name]
        for q, (ctx, _), a in zip(questions, contexts, answers[name]):
            # input: the passages a grounded question brings, cited when there is no context
            rows.append({"answer": a.text, "reference": q["reference"] or None, "keywords": q["keywords"],
                         "category": q["category"], "context": ctx, "input": q["input"],
                         "finish_reason": a.finish_reason, "answerable": q.get("answerable", True)})
        abstention = abstention_sentence(opened[name].run, options)
        scored = score_rows(rows, abstention=abstention)
        scored["abstention"] = abstention
        per_model_rows[name] = scored.pop("per_row")
        scored["answers_per_second"] = round(len(questions) / max(timing[name], 1e-9), 3)
        scored["wall_seconds"] = round(timing[name], 2)
        scored["mode"] = opened[name].mode
        scored["retrieval"] = retrievals[name].describe() if retrievals[name] is not None else None
        # Asked without passages (no context, no input): kotune.eval.closed_book judges its unsupported_rate.
        scored["closed_book"] = asked_closed_book(questions, [ctx for ctx, _ in contexts])
        if opened[name].mode != "local":
            scored["endpoint"] = opened[name].describe()
        metrics["models"][name] = scored
        metrics["tokenization"] = scored.get("tokenization")
        metrics["bleu_signature"] = scored.get("bleu_signature")
    with atomic_writer(out / "responses.jsonl") as f:
        for i, q in enumerate(questions):
            entry = {"id": q["id"], "question": q["question"], "input": q["input"], "category": q["category"],
                     "reference": q["reference"], "answerable": q.get("answerable", True),
                     "keywords": q["keywords"], **({"chunk_id": q["chunk_id"]} if q.get("chunk_id") else {}),
                     "answers": {}}
            for name, _ in models:
                a = answers[name][i]
                row = per_model_rows[name][i]
                entry["answers"][name] = {"text": a.text, "prompt": prompts_by_model[name][i],  # exactly what the model saw
                                          "finish_reason": a.finish_reason, "errors": row.get("errors", []),
                                          "retrieved": contexts_by_model[name][i][1],
                                          "completion_tokens": a.completion_tokens,
                                          **{k: v for k, v in row.items() if k not in ("errors", "answerable")}}
            responses.append(entry)
            f.write(dumps(entry) + "\n")
    if options.judge:
        from kotune.eval.judge import judge_pairs

        if len(models) < 2:
            raise KotuneError("--judge compares models: give at least two")
        metrics["judge"] = judge_pairs(responses, [n for n, _ in models], url=options.judge,
                                       judge_model=options.judge_model or "judge", api_key_env=options.judge_api_key_env)
    if manager is not None:
        from kotune.eval.general import run_benchmarks

        metrics["general_ability"] = run_benchmarks(opened, tasks, manager,
                                                    limit=options.benchmark_limit, batch_size=options.batch_size,
                                                    margin=options.forgetting_margin, workers=options.workers, log=log)
    # Closed-book tuned models that invent: above kotune.eval.closed_book's limit or the base's (the first model's) rate.
    metrics["warnings"] = closed_book_warnings(metrics["models"])
    write_json(out / "metrics.json", metrics)
    with atomic_writer(out / "report.md") as f:
        f.write(render_markdown(metrics, responses))
    with atomic_writer(out / "report.html") as f:
        f.write(render_html(metrics, responses))
    for name in opened:  # every answer is in responses.jsonl now
        journal_path(out, name).unlink(missing_ok=True)
    return metrics
