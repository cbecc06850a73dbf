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

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.eval.metrics import ERROR_TYPES

NO_EOS = "미종료"  # an answer cut at the length limit (counted with its error types)
SKIP_REASONS = ("no_flagged_answer", "no_clear_margin", "chosen_fails")


@dataclasses.dataclass
class PairSettings:
    samples: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 42
    batch_size: int = 16
    top_k: int = 3                  # retrieved chunks per question (--context)
    min_margin: float = 1.0         # badness(rejected) - badness(chosen) a pair must reach
    chosen: str = "reference"       # reference | sample
    format: str = "pairs"           # pairs | kto
    workers: int = 8


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
                settings: PairSettings, rejectable: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The pair for one question, or ``(None, reason)`` (one of :data:`SKIP_REASONS`).
    ``rejectable``: only the first N answers may be rejected (the others may only be chosen)."""
    from kotune.data.validate import text_problem

    n = len(scored) if rejectable is None else rejectable
    flagged = [i for i in range(n) if flags(scored[i])]
    if not flagged:
        return None, "no_flagged_answer"
    worst = max(flagged, key=lambda i: (badness(scored[i]), -(scored[i].get("rougeL") or 0.0)))
    reference = question["reference"]
    if settings.chosen == "reference" and reference:
        chosen, source, chosen_bad = reference, "reference", 0.0
    else:
        clean = [i for i in range(len(scored)) if not flags(scored[i])]
        if not clean:
            return None, "no_clear_margin"
        best = min(clean, key=lambda i: (badness(scored[i]), -(scored[i].get("rougeL") or 0.0)))
        chosen, source, chosen_bad = samples[best][0], "sample", badness(scored[best])
    margin = badness(scored[worst]) - chosen_bad
    if margin < settings.min_margin:
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


def _answer_local(gen, prompts: list[str], settings, journal: Path, batch_size: int,
                  on_done: Callable[[int], None]) -> list[tuple[str, str | None]]:
    """A local model's answers, appended to ``journal`` batch by batch (kotune eval's endpoint
    journal format and keys: a rerun asks only for answers not yet written)."""
    from kotune.model.endpoint import answer_key, read_journal

    done = read_journal(journal)
    keys = [answer_key(p, settings) for p in prompts]
    todo = [i for i, k in enumerate(keys) if k not in done]
    on_done(len(prompts) - len(todo))
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            answers = gen.generate([prompts[i] for i in idx], settings, batch_size=batch_size)
            for i, a in zip(idx, answers):
                done[keys[i]] = {"text": a.text, "finish_reason": a.finish_reason}
                f.write(json.dumps({"key": keys[i], **done[keys[i]]}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            on_done(len(idx))
    return [(done[k]["text"], done[k].get("finish_reason")) for k in keys]


def mine(model: str, questions: list[dict[str, Any]], output: Path, settings: PairSettings, *,
         chunks_path: str | None = None, template: str | None = None, api_key_env: str | None = None,
         judge: dict[str, Any] | None = None, log=print,
         on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Sample, score and pair (module docstring); returns the summary written beside the output."""
    from kotune.model.endpoint import EndpointSpec, open_endpoint
    from kotune.model.generation import GenerationSettings, Generator
    from kotune.model.openai_client import read_api_keys

    contexts = _contexts(questions, chunks_path, settings.top_k)
    spec = EndpointSpec.parse(model)
    total = len(questions) * settings.samples
    progress = {"n": 0}

    def advance(n: int) -> None:
        progress["n"] += n
        if on_progress:
            on_progress(progress["n"], total)

    journal = _journal(output, model)
    per_sample: list[list[tuple[str, str | None]]] = []
    if spec is not None:
        keys = read_api_keys(api_key_env, option="--api-key-env") if api_key_env else []
        ep = open_endpoint("model", spec, template=template, default_template=None, api_keys=keys,
                           workers=settings.workers)
        prompts = [ep.prompt(q["question"], q["input"], category=q["category"], context=c or None)
                   for q, c in zip(questions, contexts)]
        for s in range(settings.samples):
            gs = _generation(settings, s, GenerationSettings)
            per_sample.append([(a.text, a.finish_reason) for a in ep.answer(prompts, gs, journal)])
            advance(len(prompts))
    else:
        gen = Generator(model, template=template, log=log)
        prompts = [gen.prompt(q["question"], q["input"], category=q["category"], context=c or None)
                   for q, c in zip(questions, contexts)]
        for s in range(settings.samples):
            gs = _generation(settings, s, GenerationSettings)
            per_sample.append(_answer_local(gen, prompts, gs, journal, settings.batch_size, advance))

    pairs, skipped, by_type = [], Counter(), Counter()
    for qi, (q, ctx) in enumerate(zip(questions, contexts)):
        samples = [per_sample[s][qi] for s in range(settings.samples)]
        scored = score(samples, q, ctx)
        pair, reason = choose_pair(q, samples, scored, settings)
        if pair is None:
            skipped[reason] += 1
            continue
        if ctx and not q["input"]:
            pair["input"] = ctx  # the retrieved context the answers were given (a RAG template's input)
        pairs.append(pair)
    if judge and pairs:
        pairs, disagreed = _judged(pairs, judge)
        skipped["judge_disagrees"] += disagreed
    for p in pairs:
        for t in p["rejected_errors"]:
            by_type[t] += 1
    _write(output, pairs, settings.format)
    journal.unlink(missing_ok=True)
    return {"questions": len(questions), "samples": settings.samples, "pairs": len(pairs),
            "skipped": {r: skipped.get(r, 0) for r in (*SKIP_REASONS, *(["judge_disagrees"] if judge else []))},
            "rejected_error_types": {t: by_type.get(t, 0) for t in (*ERROR_TYPES, NO_EOS)},
            "chosen_from": dict(Counter(p["chosen_source"] for p in pairs)), "format": settings.format}


def _generation(settings: PairSettings, sample: int, cls):
    # One seed per sample pass: answers differ between passes, and a resumed run asks the same.
    return cls(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
               repetition_penalty=settings.repetition_penalty, stop=list(settings.stop), seed=settings.seed + sample)


def _contexts(questions: list[dict[str, Any]], chunks_path: str | None, top_k: int) -> list[str]:
    """Each question's context: its own, else the chunks retrieved for it (as kotune eval retrieves)."""
    if not chunks_path:
        return [q["context"] or "" for q in questions]
    from kotune.model.retrieval import Retriever, format_context

    retriever = Retriever.from_file(chunks_path)
    return [q["context"] or (format_context(retriever.search(q["question"], k=top_k)) if not q["input"] else "")
            for q in questions]


def _judged(pairs: list[dict[str, Any]], judge: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Pairs the judge also prefers chosen in (both orders, as ``kotune eval --judge`` asks)."""
    from kotune.eval.judge import judge_pairs

    responses = [{"id": str(i), "question": p["instruction"], "reference": "",
                  "answers": {"rejected": {"text": p["rejected"]}, "chosen": {"text": p["chosen"]}}}
                 for i, p in enumerate(pairs)]
    verdict = judge_pairs(responses, ["rejected", "chosen"], url=judge["url"], judge_model=judge["model"],
                          api_key_env=judge.get("api_key_env"))
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
def from_eval(eval_dir: Path, output: Path, settings: PairSettings, *, model: str | None = None,
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
        pair, reason = choose_pair(q, samples, scored, settings, rejectable=1)  # only the target's answer
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
    _write(output, pairs, settings.format)
    return {"questions": len(entries), "model": target, "pairs": len(pairs),
            "skipped": {r: skipped.get(r, 0) for r in SKIP_REASONS},
            "rejected_error_types": {t: by_type.get(t, 0) for t in (*ERROR_TYPES, NO_EOS)},
            "chosen_from": dict(Counter(p["chosen_source"] for p in pairs)), "format": settings.format}
