"""``kotune pairs``: preference pairs mined from a model's own failures.

Peers (TRL, LLaMA-Factory, Axolotl, Unsloth) train on preference pairs the user
brings. kotune already labels every answer it evaluates with error types
(근거 없음, 수치 오류, 반복·미종료, 기관 오용, 정보 누락), and a flagged answer is
exactly what a rejected answer is. For each question the model answers
``samples`` times with its own template (sampling), every answer is scored with
the evaluation's metrics (``metrics.score_rows``: grounding against the
reference and the question's context, EOS, repetition, numbers, institutions);
the worst flagged answer becomes ``rejected`` and the reference (or the best
unflagged sample) ``chosen``, when the gap between them is clear. An optional
judge endpoint must also prefer chosen in both orders.

Answers are journaled (``.OUTPUT.samples-HASH.jsonl`` beside the output), so a killed
run resumes without asking again; the output is written atomically.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.eval.metrics import ERROR_TYPES
from kotune.options import PairsOptions

NO_EOS = "미종료"  # an answer cut at the length limit (counted with its error types)
SKIP_REASONS = ("no_flagged_answer", "no_clear_margin", "chosen_fails")


def badness(scored: dict[str, Any]) -> float:
    """How bad one scored answer is: one per error type, one for no EOS, plus its unsupported share."""
    return len(scored["errors"]) + (0.0 if scored["eos"] else 1.0) + float(scored.get("unsupported_rate") or 0.0)


def flags(scored: dict[str, Any]) -> list[str]:
    return list(scored["errors"]) + ([] if scored["eos"] else [NO_EOS])


def score(answers: list[tuple[str, str | None]], question: dict[str, Any], context: str) -> list[dict[str, Any]]:
    """Each ``(text, finish_reason)`` scored as ``kotune eval`` scores it (per-row metrics and error types)."""
    from kotune.eval.metrics import score_rows

    rows = [{"answer": text, "reference": question["reference"] or None, "keywords": question["keywords"],
             "category": question["category"], "context": context, "question": question["question"],
             "finish_reason": finish} for text, finish in answers]
    return score_rows(rows)["per_row"] if rows else []


def choose_pair(question: dict[str, Any], samples: list[tuple[str, str | None]], scored: list[dict[str, Any]],
                options: PairsOptions, rejectable: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The pair for one question, or ``(None, reason)`` (one of :data:`SKIP_REASONS`).
    ``rejectable``: only the first N answers may be rejected (the others may only be chosen)."""
    from kotune.data.validate import text_problem

    n = len(scored) if rejectable is None else rejectable
    flagged = [i for i in range(n) if flags(scored[i])]
    if not flagged:
        return None, "no_flagged_answer"
    worst = max(flagged, key=lambda i: (badness(scored[i]), -(scored[i].get("rougeL") or 0.0)))
    reference = question["reference"]
    if options.chosen == "reference" and reference:
        chosen, source, chosen_bad = reference, "reference", 0.0
    else:
        clean = [i for i in range(len(scored)) if not flags(scored[i])]
        if not clean:
            return None, "no_clear_margin"
        best = min(clean, key=lambda i: (badness(scored[i]), -(scored[i].get("rougeL") or 0.0)))
        chosen, source, chosen_bad = samples[best][0], "sample", badness(scored[best])
    margin = badness(scored[worst]) - chosen_bad
    if margin < options.min_margin:
        return None, "no_clear_margin"
    if text_problem(question["question"], chosen):
        return None, "chosen_fails"
    rejected = samples[worst][0]
    if rejected.strip() == chosen.strip():
        return None, "no_clear_margin"
    return {"instruction": question["question"], "input": question["input"], "category": question["category"],
            "chosen": chosen, "rejected": rejected, "chosen_source": source,
            "rejected_errors": flags(scored[worst]), "margin": round(margin, 4), "id": question["id"]}, None


# ---------------------------------------------------------------- answering, journaled
def _journal(output: Path, model: str) -> Path:
    """The answers journal of ``output`` for ``model`` (its spec and run record: answers of
    another model, or of the same folder retrained, are never reused)."""
    from kotune.io import sha256_file, short_hash

    record = Path(model) / "kotune.json"
    digest = short_hash(model, sha256_file(record) if record.is_file() else "")
    return output.with_name(f".{output.name}.samples-{digest}.jsonl")


def mine(model: str, questions: list[dict[str, Any]], output: Path, options: PairsOptions, *,
         chunks_path: str | None = None, log=print,
         on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Sample, score and pair (module docstring) with ``kotune pairs``' ``options``; returns the
    summary written beside the output."""
    from kotune.model.access import GenerationSettings, open_model

    total = len(questions) * options.samples
    progress = {"n": 0}

    def advance(n: int) -> None:
        progress["n"] += n
        if on_progress:
            on_progress(progress["n"], total)

    journal = _journal(output, model)
    opened = open_model(model, name="model", template=options.template, api_key_env=options.api_key_env,
                        workers=options.workers, batch_size=options.batch_size, log=log)
    contexts = _contexts(questions, opened.run, model, chunks_path, options)
    prompts = [opened.prompt(q["question"], q["input"], category=q["category"], context=c or None)
               for q, c in zip(questions, contexts)]
    per_sample: list[list[tuple[str, str | None]]] = []
    for s in range(options.samples):
        gs = _generation(options, s, GenerationSettings)
        per_sample.append([(a.text, a.finish_reason) for a in opened.answer(prompts, gs, journal=journal, on_done=advance)])
    opened.close()

    pairs, skipped, by_type = [], Counter(), Counter()
    for qi, (q, ctx) in enumerate(zip(questions, contexts)):
        samples = [per_sample[s][qi] for s in range(options.samples)]
        scored = score(samples, q, ctx)
        pair, reason = choose_pair(q, samples, scored, options)
        if pair is None:
            skipped[reason] += 1
            continue
        if ctx:
            pair["input"] = ctx  # the context the answers were given, in place of the input (a RAG template's input)
        pairs.append(pair)
    if options.judge and pairs:
        pairs, disagreed = _judged(pairs, options)
        skipped["judge_disagrees"] += disagreed
    for p in pairs:
        for t in p["rejected_errors"]:
            by_type[t] += 1
    _write(output, pairs, options.format)
    journal.unlink(missing_ok=True)
    return {"questions": len(questions), "samples": options.samples, "pairs": len(pairs),
            "skipped": {r: skipped.get(r, 0) for r in (*SKIP_REASONS, *(["judge_disagrees"] if options.judge else []))},
            "rejected_error_types": {t: by_type.get(t, 0) for t in (*ERROR_TYPES, NO_EOS)},
            "chosen_from": dict(Counter(p["chosen_source"] for p in pairs)), "format": options.format}


def _generation(options: PairsOptions, sample: int, cls):
    # One seed per sample pass: answers differ between passes, and a resumed run asks the same.
    return cls(max_new_tokens=options.max_new_tokens, temperature=options.temperature, top_p=options.top_p,
               repetition_penalty=options.repetition_penalty, stop=list(options.stop), seed=options.seed + sample)


def _contexts(questions: list[dict[str, Any]], run: Any, name: str, chunks_path: str | None,
              options: PairsOptions) -> list[str]:
    """Each question's context, as eval asks the model (:func:`kotune.model.retrieval.retrieval_for`:
    ``--context``, else a grounded run's own chunks, else none) by the one rule of
    :class:`kotune.model.retrieval.Retrieval`."""
    from kotune.model.retrieval import retrieval_for

    retrieval = retrieval_for(run, name=name, context=chunks_path, top_k=options.given("top_k"))
    return [p.text for p in retrieval.for_questions(questions)] if retrieval is not None else [""] * len(questions)


def _judged(pairs: list[dict[str, Any]], options: PairsOptions) -> tuple[list[dict[str, Any]], int]:
    """Pairs the judge also prefers chosen in (both orders, as ``kotune eval --judge`` asks)."""
    from kotune.eval.judge import judge_pairs

    responses = [{"id": str(i), "question": p["instruction"], "reference": "",
                  "answers": {"rejected": {"text": p["rejected"]}, "chosen": {"text": p["chosen"]}}}
                 for i, p in enumerate(pairs)]
    verdict = judge_pairs(responses, ["rejected", "chosen"], url=options.judge,
                          judge_model=options.judge_model or "judge", api_key_env=options.judge_api_key_env)
    winners = {q["id"]: q["winner"] for q in verdict["pairs"]["chosen"]["per_question"]}
    kept = [p for i, p in enumerate(pairs) if winners.get(str(i)) == "chosen"]
    return kept, len(pairs) - len(kept)


def _write(output: Path, pairs: list[dict[str, Any]], fmt: str) -> None:
    from kotune.io import write_jsonl

    if fmt == "kto":
        rows = []
        for p in pairs:
            common = {k: p[k] for k in ("instruction", "input", "category", "id")}
            rows.append({**common, "completion": p["chosen"], "label": True})
            rows.append({**common, "completion": p["rejected"], "label": False, "errors": p["rejected_errors"]})
        write_jsonl(output, rows)
    else:
        write_jsonl(output, pairs)


# ---------------------------------------------------------------- from an eval folder
def from_eval(eval_dir: Path, output: Path, options: PairsOptions, *, model: str | None = None,
              chunks_path: str | None = None) -> dict[str, Any]:
    """Pairs from ``kotune eval``'s answers: ``model``'s flagged answer (default: the last
    model evaluated) is rejected; chosen is the reference, or the best unflagged answer of
    another model."""
    responses_file = Path(eval_dir) / "responses.jsonl"
    if not responses_file.exists():
        raise KotuneError("--from-eval: no responses.jsonl (give the output folder of kotune eval)", path=eval_dir)
    entries = [json.loads(line) for line in responses_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not entries:
        raise KotuneError("--from-eval: responses.jsonl is empty", path=responses_file)
    names = list(entries[0]["answers"])
    target = model or names[-1]
    if target not in names:
        raise KotuneError(f"--model {target}: not in this eval (models: {', '.join(names)})", path=eval_dir)
    chunks = None
    if chunks_path:
        from kotune.records import load_chunks

        chunks = {c["chunk_id"]: c for c in load_chunks(chunks_path)}
    pairs, skipped, by_type = [], Counter(), Counter()
    for e in entries:
        q = {"id": e["id"], "question": e["question"], "input": e.get("input") or "", "category": e.get("category") or "",
             "reference": e.get("reference") or "", "keywords": e.get("keywords") or [], "context": ""}
        order = [target] + [n for n in names if n != target]
        samples = [(e["answers"][n]["text"], e["answers"][n].get("finish_reason")) for n in order]
        scored = [{"errors": e["answers"][n].get("errors", []), "eos": e["answers"][n].get("eos", True),
                   "unsupported_rate": e["answers"][n].get("unsupported_rate"), "rougeL": e["answers"][n].get("rougeL")}
                  for n in order]
        pair, reason = choose_pair(q, samples, scored, options, rejectable=1)  # only the target's answer
        if pair is None:
            skipped[reason] += 1
            continue
        retrieved = e["answers"][target].get("retrieved") or []
        if not q["input"] and retrieved and chunks:
            from kotune.model.retrieval import format_context

            pair["input"] = format_context([(chunks[c], 0.0) for c in retrieved if c in chunks])
        pairs.append(pair)
        for t in pair["rejected_errors"]:
            by_type[t] += 1
    _write(output, pairs, options.format)
    return {"questions": len(entries), "model": target, "pairs": len(pairs),
            "skipped": {r: skipped.get(r, 0) for r in SKIP_REASONS},
            "rejected_error_types": {t: by_type.get(t, 0) for t in (*ERROR_TYPES, NO_EOS)},
            "chosen_from": dict(Counter(p["chosen_source"] for p in pairs)), "format": options.format}
