"""What the studio's pages show, computed from kotune's own files and functions: records
as the model sees them (:func:`kotune.model.templates.encode_example`, the training code's
own tokenization), eval flips, doctor findings. No HTTP here (:mod:`kotune.studio.app`)."""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.model.runinfo import RunInfo
from kotune.studio.root import MODEL_LOCK

PAGE_SIZE = 20


# ---------------------------------------------------------------- records as the model sees them
_TOKENIZERS: dict[tuple[str, float], Any] = {}
_TOKENIZER_LOCK = threading.Lock()


def run_tokenizer(model_dir: Path):
    """The run's tokenizer, template and EOS ids, decided by :func:`kotune.model.resolve.resolve` as
    training and inference decide them (no weights are loaded); cached per record version."""
    from kotune.model.resolve import resolve

    key = (str(model_dir), (model_dir / "kotune.json").stat().st_mtime)
    with _TOKENIZER_LOCK, MODEL_LOCK:
        if key not in _TOKENIZERS:
            resolved = resolve(str(model_dir), log=lambda *_: None)
            _TOKENIZERS[key] = (resolved.tokenizer, resolved.template, resolved.eos_ids)
        return _TOKENIZERS[key]


def token_view(tokenizer: Any, template: Any, record: Any, max_length: int, eos: Any) -> dict[str, Any]:
    """One record tokenized exactly as training tokenizes it, cut into segments: ``prompt``
    (label -100), ``answer`` (supervised), ``special`` (BOS and the like), ``eos`` (the
    supervised end: one of the run's ``eos`` ids), ``cut`` (where truncation removed tokens)."""
    from kotune.model.templates import IGNORE_INDEX, encode_answer, encode_example, record_prompt

    ex = encode_example(tokenizer, template, record, max_length)
    full_prompt = len(record_prompt(tokenizer, template, record))
    full_answer = len(encode_answer(tokenizer, template, record.output))
    ids, labels = ex["input_ids"], ex["labels"]
    n_prompt = sum(1 for l in labels if l == IGNORE_INDEX)
    n_answer = len(ids) - n_prompt
    special = set(tokenizer.all_special_ids)
    ends = set(eos)
    segments: list[dict[str, str]] = []
    if full_prompt > n_prompt:
        segments.append({"kind": "cut", "text": str(full_prompt - n_prompt), "where": "prompt"})
    run: list[int] = []
    run_kind = ""

    def flush() -> None:
        if run:
            segments.append({"kind": run_kind, "text": tokenizer.decode(run, skip_special_tokens=False,
                                                                        clean_up_tokenization_spaces=False)})
            run.clear()

    for i, (tid, lab) in enumerate(zip(ids, labels)):
        kind = "prompt" if lab == IGNORE_INDEX else "answer"
        if kind == "answer" and i == len(ids) - 1 and full_answer > n_answer:
            flush()
            segments.append({"kind": "cut", "text": str(full_answer - n_answer), "where": "answer"})
        if tid in special:
            flush()
            is_eos = kind == "answer" and tid in ends
            segments.append({"kind": "eos" if is_eos else "special",
                             "text": tokenizer.convert_ids_to_tokens(tid), "supervised": kind == "answer"})
            continue
        if kind != run_kind:
            flush()
            run_kind = kind
        run.append(tid)
    flush()
    return {"segments": segments, "tokens": len(ids), "prompt_tokens": n_prompt, "supervised_tokens": n_answer,
            "truncated": bool(ex["truncated"]), "ends_with_eos": bool(ids) and ids[-1] in ends and labels[-1] != IGNORE_INDEX}


SOURCES = {"kept": "clean.jsonl", "dropped": "dropped.jsonl", "train": "train.jsonl", "test": "test.jsonl"}


@dataclass
class DataPage:
    report: dict[str, Any]
    source: str
    sources: list[str]
    records: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    categories: list[tuple[str, int]]
    reasons: list[tuple[str, int]]
    lengths: list[tuple[str, int]]
    model: str = ""
    models: list[str] = field(default_factory=list)
    max_length: int = 0
    template: str = ""
    note: str = ""


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    from kotune.io import read_jsonl

    return list(read_jsonl(path)) if path.exists() else []


def _length_histogram(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    edges = [0, 25, 50, 100, 200, 400, 800]
    counts = Counter()
    for r in rows:
        n = len(str(r.get("output") or ""))
        label = next((f"{lo}–{hi - 1}" for lo, hi in zip(edges, edges[1:]) if n < hi), f"{edges[-1]}+")
        counts[label] += 1
    order = [f"{lo}–{hi - 1}" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    return [(k, counts[k]) for k in order if counts[k]]


def data_page(root: Any, folder: Path, *, source: str = "kept", category: str = "", reason: str = "",
              query: str = "", page: int = 1, model: str = "") -> DataPage:
    """A recipe output's validation report and its records, filtered, each rendered with
    the chosen run's template (default: the output's ``model``)."""
    from kotune.records import normalize

    files = {s: folder / f for s, f in SOURCES.items() if (folder / f).exists()}
    own_run = not files and (folder / "kotune.json").exists()
    if own_run:  # a kotune train output: the records it trained on, when they are under ROOT
        info = RunInfo.read(folder)
        data = Path(info.data.path) if info and info.data and info.data.path else None
        if data is not None and not data.is_absolute():
            data = root.dir / data
        if data is not None and data.exists() and root.inside(data):
            files["train"] = data
    if not files:
        raise KotuneError(f"{root.rel(folder)}: no records here (clean.jsonl, train.jsonl or test.jsonl, or a run's "
                          f"training data under the studio root)")
    sources = list(files)
    if source not in sources:
        source = sources[0]
    report_path = folder / "validation.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    rows = [r for _, r in _read_rows(files[source])]
    categories = Counter(str(r.get("category") or "") for r in rows)
    reasons = Counter(str(r.get("drop_reason") or "") for r in rows if r.get("drop_reason"))
    picked = [r for r in rows
              if (not category or str(r.get("category") or "") == category)
              and (not reason or str(r.get("drop_reason") or "") == reason)
              and (not query or query in str(r.get("instruction") or "") + str(r.get("input") or "")
                   + str(r.get("output") or ""))]
    pages = max(1, -(-len(picked) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = picked[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]

    models = [root.rel(m) for m in ([folder] if own_run else sorted(folder.glob("model*"))) if (m / "kotune.json").exists()]
    out = DataPage(report, source, sources, [], len(picked), page, pages, sorted(categories.items(), key=lambda kv: -kv[1]),
                   sorted(reasons.items(), key=lambda kv: -kv[1]), _length_histogram(rows), models=models)
    model_dir = (root.path(model) if model else folder if own_run
                 else folder / "model" if (folder / "model" / "kotune.json").exists() else None)
    tok = None
    if model_dir is not None:
        info = RunInfo.read(model_dir)
        if info is None:
            raise KotuneError(f"{root.rel(model_dir)}: not a kotune run (no kotune.json)")
        out.model, out.template = root.rel(model_dir), info.template.name if info.template else ""
        out.max_length = int(info.max_length or 1024)
        tok = run_tokenizer(model_dir)
    else:
        out.note = "no_model"
    for r in shown:
        item: dict[str, Any] = {"row": r, "view": None}
        rec = normalize(r)
        if tok is not None and rec is not None:
            try:
                item["view"] = token_view(tok[0], tok[1], rec, out.max_length, tok[2])
            except KotuneError as e:  # a record this template cannot render (shown as text, with why)
                item["problem"] = str(e)
        out.records.append(item)
    return out


# ---------------------------------------------------------------- eval flips
FLIPS = ("", "worse", "better")


@dataclass
class EvalPage:
    metrics: dict[str, Any]
    names: list[str]
    a: str
    b: str
    rows: list[dict[str, Any]]       # each question of responses.jsonl, with its "flip" and "cited"
    total: int
    categories: list[str]
    errors: list[str]
    chunks: str = ""                 # the chunks file questions link back to ("" when none)
    counts: dict[str, int] = field(default_factory=dict)


def _errors_of(answer: dict[str, Any]) -> set[str]:
    return set(answer.get("errors") or [])


def flip(a: dict[str, Any], b: dict[str, Any], metric: str) -> str:
    """How ``b``'s answer compares with ``a``'s: better, worse or same. ``errors``: fewer
    error types is better; else the metric's value (higher is better but for the rates
    where lower is)."""
    from kotune.recipe.plan import LOWER_IS_BETTER

    if metric == "errors":
        ea, eb = len(_errors_of(a)), len(_errors_of(b))
        return "better" if eb < ea else "worse" if eb > ea else "same"
    va, vb = a.get(metric), b.get(metric)
    if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)) or va == vb:
        return "same"
    better = vb < va if metric in LOWER_IS_BETTER else vb > va
    return "better" if better else "worse"


def eval_page(root: Any, folder: Path, *, a: str = "", b: str = "", flip_: str = "", metric: str = "rougeL",
              error: str = "", category: str = "") -> EvalPage:
    from kotune.eval.report import cited_passages

    metrics_path, responses_path = folder / "metrics.json", folder / "responses.jsonl"
    if not metrics_path.exists() or not responses_path.exists():
        raise KotuneError(f"{root.rel(folder)}: not an eval folder (metrics.json and responses.jsonl)")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    responses = [r for _, r in _read_rows(responses_path)]
    names = list((metrics.get("models") or {}).keys()) or (list(responses[0]["answers"]) if responses else [])
    a = a if a in names else (names[0] if names else "")
    b = b if b in names and b != a else next((n for n in reversed(names) if n != a), a)
    rows, counts = [], Counter()
    for q in responses:
        answers = q.get("answers") or {}
        if a not in answers or b not in answers:
            continue
        how = flip(answers[a], answers[b], metric)
        counts[how] += 1
        if flip_ and how != flip_:
            continue
        if error and error not in _errors_of(answers[b]):
            continue
        if category and str(q.get("category") or "") != category:
            continue
        # The passages each answer cites, as the report shows them (kotune.eval.report.Cited).
        cited = {n: cited_passages(ans) for n, ans in answers.items() if isinstance(ans, dict)}
        rows.append({**q, "flip": how, "cited": cited})
    categories = sorted({str(q.get("category") or "") for q in responses} - {""})
    errors = sorted({e for q in responses for ans in (q.get("answers") or {}).values() for e in _errors_of(ans)})
    chunks = folder.parent / "chunks.jsonl"
    return EvalPage(metrics, names, a, b, rows, len(responses), categories, errors,
                    chunks=root.rel(chunks) if chunks.exists() and root.inside(chunks) else "", counts=dict(counts))


def find_chunk(path: Path, chunk_id: str) -> dict[str, Any] | None:
    for _, row in _read_rows(path):
        if str(row.get("chunk_id")) == chunk_id:
            return row
    return None


# ---------------------------------------------------------------- doctor
@functools.lru_cache(maxsize=32)
def _doctor(run_dir: str, stamp: float) -> tuple:
    from kotune.train.doctor import DoctorSetup, diagnose

    with MODEL_LOCK:
        return tuple(diagnose(DoctorSetup(run_dir=run_dir), log=lambda *_: None))


def doctor_findings(model_dir: Path) -> list[Any]:
    """kotune doctor's findings for a finished run (cached per run record version)."""
    try:
        return list(_doctor(str(model_dir), (model_dir / "kotune.json").stat().st_mtime))
    except (KotuneError, OSError) as e:  # e.g. the run's data file moved: said on the page, not a crash
        from kotune.train.doctor import Finding

        return [Finding("doctor", False, str(e), fix="run kotune doctor on the run where its data is")]
