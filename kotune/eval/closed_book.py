"""Keep closed-book honest: warn when a tuned model asked without passages makes things up.

A model is *closed-book* in an evaluation when none of its prompts carried passages: no
question had retrieved context (``kotune eval --context``), a ``context`` of its own or an
``input`` (:func:`asked_closed_book`). ``kotune eval`` records it per model in metrics.json
(``models.NAME.closed_book``). Such a model answers from its weights alone, so its
``unsupported_rate`` (the share of answer content found in neither the reference nor the
context, :func:`kotune.eval.metrics.unsupported_rate`) is the measure of how much it invents.

The rule (:func:`closed_book_warnings`): the first model of the comparison is the base (the
report's baseline, as for the judge and the general-ability check) and is never warned; every
later model that was asked closed-book is warned when its overall ``unsupported_rate`` is above
:data:`UNSUPPORTED_LIMIT` or above the base's by more than :data:`ABOVE_BASE_MARGIN`. A model
asked with passages (grounded) is never warned here. The warning suggests grounded training
(README "문서 기반 답변(grounded)과 닫힌 책" / "Grounded vs closed-book"). ``kotune eval`` stores the warnings in
metrics.json (``warnings``), the report shows them at the top, and ``kotune doctor`` reports
them as the ``closed_book_unsupported`` finding (:func:`eval_findings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from kotune.errors import KotuneError

__all__ = ["UNSUPPORTED_LIMIT", "ABOVE_BASE_MARGIN", "KIND", "GROUNDED_HINT", "asked_closed_book",
           "closed_book_warnings", "eval_next_to", "eval_findings"]

# A closed-book tuned model whose overall unsupported_rate is above this is warned: more than
# 30% of its answer content is in neither the reference nor the context.
UNSUPPORTED_LIMIT = 0.3
# A closed-book tuned model is also warned when its unsupported_rate exceeds the base model's
# by more than this (0: any increase). Tuning should not make a model invent more than its base.
ABOVE_BASE_MARGIN = 0.0
KIND = "closed_book_unsupported"
# What to do instead: train and evaluate grounded (the README section of that name).
GROUNDED_HINT = ("kotune generate chunks.jsonl -o qa.jsonl --grounded, kotune train --template rag, "
                 "kotune eval --context chunks.jsonl (README \"문서 기반 답변(grounded)과 닫힌 책\" / \"Grounded vs closed-book\")")


def asked_closed_book(questions: Iterable[Mapping[str, Any]], contexts: Iterable[str]) -> bool:
    """True when no prompt carried passages: every question's context (retrieved or its own,
    ``contexts`` in question order) is empty and no question has an ``input``."""
    return not any((ctx or "").strip() or str(q.get("input") or "").strip() for q, ctx in zip(questions, contexts))


def _rate(model: Mapping[str, Any]) -> float | None:
    value = (model.get("overall") or {}).get("unsupported_rate")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _message(name: str, rate: float, base: str, base_rate: float | None, reasons: list[str]) -> str:
    ko, en = [], []
    if "above_limit" in reasons:
        ko.append(f"{UNSUPPORTED_LIMIT:g} 초과")
        en.append(f"above {UNSUPPORTED_LIMIT:g}")
    if "above_base" in reasons:
        ko.append(f"기준 모델 {base}의 {base_rate:.3f}보다 높음")
        en.append(f"above {base}'s {base_rate:.3f}, the baseline")
    return (f"{name}: 문서 없이(closed-book) 답한 내용의 근거 없는 비율 {rate:.3f} ({', '.join(ko)}) — "
            f"문서 기반 학습을 권합니다 / {name} answered closed-book with unsupported_rate {rate:.3f} "
            f"({', '.join(en)}): train it grounded — {GROUNDED_HINT}")


def closed_book_warnings(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The warnings for metrics.json's ``models`` (in comparison order; the first is the base):
    one ``{"model", "kind", "unsupported_rate", "base", "base_unsupported_rate", "limit",
    "reasons", "message"}`` per closed-book model after the first whose ``unsupported_rate``
    is above :data:`UNSUPPORTED_LIMIT` (reason ``above_limit``) or above the base's by more than
    :data:`ABOVE_BASE_MARGIN` (``above_base``). Models without ``closed_book: true`` or without
    an ``unsupported_rate`` are not warned."""
    names = list(models)
    if len(names) < 2:
        return []
    base = names[0]
    base_rate = _rate(models[base])
    out: list[dict[str, Any]] = []
    for name in names[1:]:
        m = models[name]
        rate = _rate(m)
        if m.get("closed_book") is not True or rate is None:
            continue
        reasons = []
        if rate > UNSUPPORTED_LIMIT:
            reasons.append("above_limit")
        if base_rate is not None and rate > base_rate + ABOVE_BASE_MARGIN:
            reasons.append("above_base")
        if reasons:
            out.append({"model": name, "kind": KIND, "unsupported_rate": rate, "base": base,
                        "base_unsupported_rate": base_rate, "limit": UNSUPPORTED_LIMIT, "reasons": reasons,
                        "message": _message(name, rate, base, base_rate, reasons)})
    return out


# ---------------------------------------------------------------- kotune doctor
def eval_next_to(run_dir: str | Path) -> Path | None:
    """The eval folder of the ``kotune run`` output a run folder belongs to (``OUT/model`` →
    ``OUT/eval``, when ``OUT/run.json`` and ``OUT/eval/metrics.json`` exist), else None."""
    out = Path(run_dir).resolve().parent
    if (out / "run.json").is_file() and (out / "eval" / "metrics.json").is_file():
        return out / "eval"
    return None


def _read_metrics(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "metrics.json"
    if not eval_dir.is_dir():
        raise KotuneError("no such folder", path=eval_dir)
    if not path.is_file():
        raise KotuneError("not a kotune eval folder (no metrics.json)", path=eval_dir)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KotuneError(f"invalid metrics.json ({getattr(e, 'msg', None) or e.reason})", path=path) from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("models"), dict):
        raise KotuneError('not a kotune eval\'s metrics.json (no "models")', path=path)
    return metrics


def eval_findings(eval_dir: str | Path, *, run_dir: str | Path | None = None) -> list[Any]:
    """``kotune doctor``'s findings on an eval folder: one ``closed_book_unsupported`` warning per
    model :func:`closed_book_warnings` warns (the same message), else one passing finding with
    the measured rates. With ``run_dir``, an eval older than the run's record is not judged (it
    did not evaluate this run)."""
    from kotune.train.doctor import Finding

    eval_dir = Path(eval_dir)
    metrics = _read_metrics(eval_dir)
    where = str(eval_dir)
    if run_dir is not None:
        record = Path(run_dir) / "kotune.json"
        if record.is_file() and (eval_dir / "metrics.json").stat().st_mtime < record.stat().st_mtime:
            return [Finding(KIND, True, f"{where} is older than this run: not checked (run kotune eval again)")]
    models = metrics["models"]
    warned = closed_book_warnings(models)
    if warned:
        return [Finding(KIND, False, w["message"], 'README "문서 기반 답변(grounded)과 닫힌 책" / "Grounded vs closed-book"', severity="warning")
                for w in warned]
    names = list(models)
    rates = ", ".join(f"{n} {r:.3f}" if (r := _rate(models[n])) is not None else f"{n} —" for n in names)
    if len(names) < 2:
        return [Finding(KIND, True, f"{where}: one model, no tuned model to compare with a base (unsupported_rate {rates})")]
    tuned = names[1:]
    if all("closed_book" not in models[n] for n in tuned):
        return [Finding(KIND, True, f"{where}: metrics.json does not record closed_book (an older kotune eval): "
                                    f"not checked (unsupported_rate {rates})")]
    closed = [n for n in tuned if models[n].get("closed_book") is True]
    if not closed:
        return [Finding(KIND, True, f"{where}: the tuned models were asked with passages (grounded; "
                                    f"unsupported_rate {rates})")]
    return [Finding(KIND, True, f"{where}: closed-book unsupported_rate within {UNSUPPORTED_LIMIT:g} and the base's "
                                f"({rates}; base {names[0]})")]
