"""Compare models on the same questions: answers, Korean-correct metrics, error types, report.

Every model answers with its own training template (from ``kotune.json``); a
plain base model answers in the template of the first tuned model being
compared, so base and tuned see the same prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.io import check_input_file, decode_bytes
from kotune.eval.metrics import split_keywords
from kotune.records import raw_rows


# ---------------------------------------------------------------- questions
def _question_row(raw: dict[str, Any], i: int) -> dict[str, Any]:
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
    }


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Questions from .txt (one per line), .jsonl/.json or .csv/.tsv (``question`` or record fields)."""
    path = check_input_file(path)
    if path.suffix.lower() == ".txt":
        data = path.read_bytes()
        if not data.strip():
            raise KotuneError("file is empty", path=path)
        text, _ = decode_bytes(data, path)
        lines = (l.strip() for l in text.splitlines())
        rows = [_question_row({"question": l}, i) for i, l in enumerate((l for l in lines if l and not l.startswith("#")), 1)]
    elif path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv"):
        rows = [_question_row(raw, i) for i, (_, raw) in enumerate(raw_rows(path), 1)]
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


@dataclass
class EvalSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 42                        # sampling seed (temperature > 0)
    batch_size: int = 16
    top_k: int = 3
    template: str | None = None
    judge_url: str | None = None          # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    judge_model: str | None = None
    judge_api_key_env: str | None = None
    workers: int = 8                      # concurrent requests per endpoint model
    api_key_env: str | None = None        # env variable(s) holding endpoint API keys, comma-separated
    rpm: float | None = None              # requests per minute per key, endpoint models
    benchmarks: tuple[str, ...] = ()      # lm-eval tasks for the general-ability check (kotune.eval.general)
    benchmark_data: str | None = None     # folder of task YAMLs and data (machines without hub access)
    benchmark_limit: int | None = None    # first N documents per task
    forgetting_margin: float = 0.02       # flag a model that lost more than this against the first


def evaluate(questions: list[dict[str, Any]], models: list[tuple[str, str]], out_dir: str | Path, *,
             settings: EvalSettings | None = None, chunks_path: str | None = None,
             log: Callable[[str], None] = print, on_progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Answer every question with every model; write responses.jsonl, metrics.json, report.md/html."""
    from kotune.model.generation import GenerationSettings, Generator
    from kotune.io import atomic_writer, dumps, write_json
    from kotune.eval.metrics import score_rows
    from kotune.model.endpoint import EndpointSpec, journal_path, open_endpoint
    from kotune.model.loading import resolve_model
    from kotune.model.openai_client import read_api_keys
    from kotune.eval.report import render_html, render_markdown
    from kotune.model.resolve import decide_template

    settings = settings or EvalSettings()
    out = Path(out_dir)
    # Resolve every model before any work, so a bad path, a refused --template or an endpoint
    # that cannot answer (unreachable, key rejected, model not served) fails fast.
    endpoints = {name: EndpointSpec.parse(spec) for name, spec in models}
    refs = {name: resolve_model(spec, log=log) for name, spec in models if endpoints[name] is None}
    for name, spec in models:
        if name in refs:
            decide_template(refs[name].run, settings.template, spec=spec)
    # A model without a run of its own (a plain base, local or behind a server) answers in the
    # compared run's whole template, system prompts included: byte-identical prompts.
    own = [r.run.own_template for r in refs.values() if r.run and r.run.own_template]
    api_keys = read_api_keys(settings.api_key_env, option="--api-key-env") if settings.api_key_env else []
    opened = {name: open_endpoint(name, spec, template=settings.template, default_template=own[0] if own else None,
                                  api_keys=api_keys, workers=settings.workers, rpm=settings.rpm)
              for name, spec in endpoints.items() if spec is not None}
    runs_of_endpoints = [ep.template for ep in opened.values() if ep.own_template]
    shared_template = own[0] if own else (runs_of_endpoints[0] if runs_of_endpoints else None)
    for ep in opened.values():
        if not ep.own_template:
            ep.template = decide_template(None, settings.template, default=shared_template, spec=str(ep.spec))
    manager = None
    if settings.benchmarks:  # a missing extra or an unknown task is an error before any work
        from kotune.eval.general import task_manager

        manager = task_manager(list(settings.benchmarks), settings.benchmark_data)

    retriever = None
    if chunks_path:
        from kotune.model.retrieval import Retriever, format_context

        retriever = Retriever.from_file(chunks_path)
    contexts: list[tuple[str, list[str]]] = []
    for q in questions:
        if retriever is not None and not q["context"]:
            hits = retriever.search(q["question"], k=settings.top_k)
            contexts.append((format_context(hits), [h[0]["chunk_id"] for h in hits]))
        else:
            contexts.append((q["context"], []))

    gen_settings = GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                      top_p=settings.top_p, repetition_penalty=settings.repetition_penalty,
                                      stop=list(settings.stop), seed=settings.seed)
    answers: dict[str, list[Any]] = {}
    prompts_by_model: dict[str, list[str]] = {}
    timing: dict[str, float] = {}
    for name, spec in models:
        if name in opened:
            ep = opened[name]
            prompts = [ep.prompt(q["question"], q["input"], category=q["category"], context=ctx or None)
                       for q, (ctx, _) in zip(questions, contexts)]
            log(f"{name}: {ep.spec} ({ep.mode}, template {ep.template.name}, {ep.workers} workers)")
            t0 = time.time()
            answers[name] = ep.answer(prompts, gen_settings, journal_path(out, name))
        else:
            gen = Generator(spec, template=settings.template, default_template=shared_template, log=log)
            prompts = [gen.prompt(q["question"], q["input"], category=q["category"], context=ctx or None)
                       for q, (ctx, _) in zip(questions, contexts)]
            t0 = time.time()
            answers[name] = gen.generate(prompts, gen_settings, batch_size=settings.batch_size)
            del gen
        timing[name] = time.time() - t0
        prompts_by_model[name] = prompts
        if on_progress:
            on_progress(name, len(prompts))

    metrics: dict[str, Any] = {"models": {}, "settings": {**settings.__dict__, "stop": list(settings.stop),
                                                          "benchmarks": list(settings.benchmarks)},
                               "questions": len(questions), "context": chunks_path}
    responses: list[dict[str, Any]] = []
    per_model_rows: dict[str, list[dict[str, Any]]] = {}
    for name, _ in models:
        rows = []
        for q, (ctx, ids), a in zip(questions, contexts, answers[name]):
            rows.append({"answer": a.text, "reference": q["reference"] or None, "keywords": q["keywords"],
                         "category": q["category"], "context": ctx, "finish_reason": a.finish_reason})
        scored = score_rows(rows)
        per_model_rows[name] = scored.pop("per_row")
        scored["answers_per_second"] = round(len(questions) / max(timing[name], 1e-9), 3)
        scored["wall_seconds"] = round(timing[name], 2)
        scored["mode"] = opened[name].mode if name in opened else "local"
        if name in opened:
            scored["endpoint"] = opened[name].describe()
        metrics["models"][name] = scored
        metrics["tokenization"] = scored.get("tokenization")
        metrics["bleu_signature"] = scored.get("bleu_signature")
    with atomic_writer(out / "responses.jsonl") as f:
        for i, (q, (ctx, ids)) in enumerate(zip(questions, contexts)):
            entry = {"id": q["id"], "question": q["question"], "input": q["input"], "category": q["category"],
                     "reference": q["reference"],
                     "keywords": q["keywords"], **({"chunk_id": q["chunk_id"]} if q.get("chunk_id") else {}),
                     "answers": {}}
            for name, _ in models:
                a = answers[name][i]
                row = per_model_rows[name][i]
                entry["answers"][name] = {"text": a.text, "prompt": prompts_by_model[name][i],  # exactly what the model saw
                                          "finish_reason": a.finish_reason, "errors": row.get("errors", []),
                                          "retrieved": ids, "completion_tokens": a.completion_tokens,
                                          **{k: v for k, v in row.items() if k not in ("errors",)}}
            responses.append(entry)
            f.write(dumps(entry) + "\n")
    if settings.judge_url:
        from kotune.eval.judge import judge_pairs

        if len(models) < 2:
            raise KotuneError("--judge compares models: give at least two")
        metrics["judge"] = judge_pairs(responses, [n for n, _ in models], url=settings.judge_url,
                                       judge_model=settings.judge_model or "judge", api_key_env=settings.judge_api_key_env)
    if manager is not None:
        from kotune.eval.general import run_benchmarks

        metrics["general_ability"] = run_benchmarks(models, list(settings.benchmarks), manager,
                                                    limit=settings.benchmark_limit, batch_size=settings.batch_size,
                                                    margin=settings.forgetting_margin, api_keys=api_keys,
                                                    workers=settings.workers, log=log)
    write_json(out / "metrics.json", metrics)
    with atomic_writer(out / "report.md") as f:
        f.write(render_markdown(metrics, responses))
    with atomic_writer(out / "report.html") as f:
        f.write(render_html(metrics, responses))
    for name in opened:  # every answer is in responses.jsonl now
        journal_path(out, name).unlink(missing_ok=True)
    return metrics
