"""Render an evaluation (metrics.json + responses) as one HTML file and as Markdown.

Both outputs come from one model of the report (:func:`build_report`): the meta
lines, metrics.json's warnings (first, a callout), the metrics table, one table per
headline metric by category, the error types, the LLM judge and the answers, each
built once as small dataclasses
(:class:`Table`, :class:`Cell`, ...). :func:`render_markdown` prints them as pipe
tables; :func:`render_html` hands the same objects to the Jinja2 template
``kotune/assets/report.html.j2``. Labels, scales, directions and meanings of the
metrics come from :data:`kotune.eval.metrics.CATALOGUE`.

The HTML is self-contained: inline CSS, charts drawn as inline SVG, no scripts,
no external URLs, so it opens offline and can be mailed or attached as is. All
text that came from data (questions, answers, model and category names) is
escaped (template autoescape; the SVG helpers escape their own text). Both
renderers are pure functions of their inputs (no timestamps), so the same
evaluation renders to the same bytes.
"""

from __future__ import annotations

import functools
import html
import math
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kotune.eval.metrics import ABSTAIN_METRICS, CATALOGUE, CITATION_METRICS, MetricInfo

__all__ = ["render_html", "render_markdown", "bar_chart", "hbar_chart", "build_report", "cited_passages",
           "Report", "Table", "Cell", "Cited", "Alert", "METRICS", "HEADLINE", "WARNINGS_TITLE"]

# The catalogue's old (key, label, scale max, higher is better) shape, derived from
# kotune.eval.metrics.CATALOGUE (not a copy): kotune.recipe.plan unpacks these 4-tuples.
METRICS: tuple[tuple[str, str, float, bool], ...] = tuple(
    (m.key, m.label, m.vmax, m.higher_is_better) for m in CATALOGUE)
# The metrics that get a chart and a table per category.
HEADLINE = ("rougeL", "keyword_coverage", "eos_rate", "unsupported_rate")
_INFO: dict[str, MetricInfo] = {m.key: m for m in CATALOGUE}
# Tableau 10: distinct, colour-blind-friendly enough, readable on white.
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
            "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_ERROR_COLOURS = ("#e15759", "#f28e2b", "#b07aa1", "#9c755f", "#4e79a7", "#edc948", "#76b7b2")
WARNINGS_TITLE = "⚠ 경고 (warnings)"  # the heading of metrics.json's warnings, at the top of the report
ABSTAINED = "거절 (abstained)"  # the mark of an answer that declined (kotune.model.retrieval.abstains)
UNANSWERABLE = "answerable: false"  # the mark of a question whose answer the documents do not hold
_NO_COLOUR = "#8c959f"
_OK_FINISH = {"eos", "stop"}
_CUT_FINISH = {"length", "max_tokens"}
_TEMPLATE = "report.html.j2"  # in kotune/assets, shipped as package data
PREVIEW_CHARS = 200  # how much of a cited passage the Markdown report quotes


# --------------------------------------------------------------------------- shared


def _esc(value: Any) -> str:
    """Text for the SVG strings (the template autoescapes everything else)."""
    return html.escape("" if value is None else str(value), quote=True)


def _models(metrics: dict) -> dict[str, dict]:
    """``metrics["models"]``; a bare ``kotune score`` result counts as one model."""
    if isinstance(metrics.get("models"), dict):
        return metrics["models"]
    if "overall" in metrics:
        return {"model": metrics}
    return {}


def _model_names(metrics: dict, responses: list[dict]) -> list[str]:
    names = list(_models(metrics))
    for r in responses:
        for name in (r.get("answers") or {}):
            if name not in names:
                names.append(name)
    return names


def _categories(models: dict[str, dict]) -> list[str]:
    cats: list[str] = []
    for m in models.values():
        for c in (m.get("by_category") or {}):
            if c not in cats:
                cats.append(c)
    return cats


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(key: str, value: Any) -> str:
    v = _num(value)
    if v is None:
        return "—"
    info = _INFO.get(key)
    return f"{v:.1f}" if info is not None and info.vmax > 1 else f"{v:.3f}"


def _rate(value: Any) -> str:
    """A 0–1 share as the report writes them (three decimals)."""
    return _fmt("eos_rate", value)


def _best(values: dict[str, float | None], higher: bool) -> set[str]:
    """Models holding the best value; none when fewer than two values or all equal."""
    got = {k: v for k, v in values.items() if v is not None}
    if len(got) < 2 or len(set(got.values())) == 1:
        return set()
    target = max(got.values()) if higher else min(got.values())
    return {k for k, v in got.items() if v == target}


def _has_unanswerable(models: dict[str, dict]) -> bool:
    return any((_num((m.get("overall") or {}).get("unanswerable")) or 0) > 0 for m in models.values())


def _has_citations(models: dict[str, dict]) -> bool:
    """Whether some model has a citation metric: some question was asked with numbered passages."""
    return any(_num((m.get("overall") or {}).get(k)) is not None for m in models.values() for k in CITATION_METRICS)


def _metric_keys(models: dict[str, dict]) -> list[str]:
    """The metric columns to show: known metrics that some model has, in a fixed order; the
    abstention rates only when some question is marked unanswerable, the citation metrics only
    when some model has a value for one (they are null for every model of a closed-book eval)."""
    hidden = ((() if _has_unanswerable(models) else ABSTAIN_METRICS)
              + (() if _has_citations(models) else CITATION_METRICS))
    shown = [k for k, *_ in METRICS if k not in hidden]
    keys = [k for k in shown if any(k in (m.get("overall") or {}) for m in models.values())]
    return keys or [k for k, *_ in METRICS if k not in ABSTAIN_METRICS and k not in CITATION_METRICS]


def _error_types(models: dict[str, dict]) -> list[str]:
    types: list[str] = []
    for m in models.values():
        for t in (m.get("error_types") or {}):
            if t not in types:
                types.append(t)
    return types


def _width(text: str, size: float) -> float:
    """Rough rendered width of ``text`` at font ``size`` (Hangul and CJK are full width)."""
    return sum(size * (1.0 if unicodedata.east_asian_width(ch) in "WF" else 0.6) for ch in text)


def _clip(text: str, size: float, max_px: float) -> str:
    if _width(text, size) <= max_px:
        return text
    out = ""
    for ch in text:
        if _width(out + ch + "…", size) > max_px:
            break
        out += ch
    return out + "…"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= v:
            return m * mag
    return 10 * mag


def _tick_label(v: float) -> str:
    return f"{v:g}" if v >= 1 or v == 0 else f"{v:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- SVG
#
# Drawn by hand rather than with matplotlib or plotly: matplotlib is no dependency
# of kotune and plotly's charts need its JavaScript; plain <rect>/<text> keep the
# page script-free, offline and small, and the text selectable.


def _legend(names: list[str], colours: list[str], x0: float, y0: float, max_x: float) -> tuple[list[str], float]:
    """Legend items laid out in rows from (x0, y0); returns the SVG parts and the height used."""
    parts, x, y = [], x0, y0
    for name, colour in zip(names, colours):
        label = _clip(name, 12, 220)
        w = 18 + _width(label, 12) + 18
        if x > x0 and x + w > max_x:
            x, y = x0, y + 18
        parts.append(f'<g class="legend-item"><title>{_esc(name)}</title>'
                     f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" rx="2" fill="{colour}"/>'
                     f'<text x="{x + 17:.1f}" y="{y:.1f}" font-size="12">{_esc(label)}</text></g>')
        x += w
    return parts, (y - y0) + 18


def bar_chart(title: str, groups: list[tuple[str, str]], series: list[tuple[str, str, list[float | None]]], *,
              vmax: float, y_label: str, x_label: str, fmt=_tick_label) -> str:
    """Grouped vertical bars as an SVG string.

    ``groups``: (label, second line) per x position; ``series``: (name, colour,
    one value per group, None for a missing value).
    """
    n_series = max(1, len(series))
    bar = max(6.0, min(26.0, 110.0 / n_series))
    gap = 26.0
    group_w = n_series * bar + gap
    left, right, plot_h = 58.0, 16.0, 190.0
    plot_w = max(320.0, len(groups) * group_w, _width(title, 15) + 10 - left)
    group_w = plot_w / max(1, len(groups))  # spread the groups over the whole axis
    gap = group_w - n_series * bar
    width = left + plot_w + right
    legend, legend_h = _legend([s[0] for s in series], [s[1] for s in series], left, 44.0, width - right)
    top = 44.0 + legend_h + 8
    height = top + plot_h + 62
    y_of = lambda v: top + plot_h - (max(0.0, min(v, vmax)) / vmax) * plot_h  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'width="{width:.0f}" height="{height:.0f}" aria-label="{_esc(title)}">',
             f'<title>{_esc(title)}</title>',
             f'<text x="{left:.1f}" y="22" font-size="15" font-weight="600">{_esc(title)}</text>',
             *legend]
    for i in range(5):  # grid and y ticks
        v = vmax * i / 4
        y = y_of(v)
        parts.append(f'<line x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" font-size="11" text-anchor="end" class="tick">{_esc(_tick_label(v))}</text>')
    cy = top + plot_h / 2
    parts.append(f'<text x="14" y="{cy:.1f}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">{_esc(y_label)}</text>')
    for gi, (label, sub) in enumerate(groups):
        gx = left + gi * group_w + gap / 2
        for si, (name, colour, values) in enumerate(series):
            v = values[gi] if gi < len(values) else None
            x = gx + si * bar
            tip = f"{name} · {label}: {'—' if v is None else fmt(v)}"
            if v is None:
                parts.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h - 4:.1f}" font-size="9" text-anchor="middle" '
                             f'class="na"><title>{_esc(tip)}</title>n/a</text>')
                continue
            y = y_of(v)
            h = max(top + plot_h - y, 0.0)
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{_esc(tip)}</title></rect>')
            if bar >= 18:
                parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle" class="val">{_esc(fmt(v))}</text>')
        cx = gx + n_series * bar / 2
        clipped = _clip(label, 12, group_w - 4)
        parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 17:.1f}" font-size="12" text-anchor="middle">'
                     f'<title>{_esc(label)}</title>{_esc(clipped)}</text>')
        if sub:
            parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 31:.1f}" font-size="10" text-anchor="middle" class="tick">{_esc(sub)}</text>')
    parts.append(f'<line x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{top + plot_h:.1f}" y2="{top + plot_h:.1f}" class="axis"/>'
                 f'<line x1="{left:.1f}" x2="{left:.1f}" y1="{top:.1f}" y2="{top + plot_h:.1f}" class="axis"/>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8:.1f}" font-size="12" text-anchor="middle">{_esc(x_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(title: str, rows: list[str], series: list[tuple[str, str, list[float]]], *, x_label: str) -> str:
    """Grouped horizontal bars (counts) as an SVG string: one row per label, one bar per series."""
    n_series = max(1, len(series))
    bar = 12.0
    row_h = n_series * bar + 10
    left = 14 + max([_width(r, 12) for r in rows] + [40])
    right = 40.0
    plot_w = max(300.0, _width(title, 15) + 20 - left)
    width = left + plot_w + right
    legend, legend_h = _legend([s[0] for s in series], [s[1] for s in series], left, 44.0, width - 10)
    top = 44.0 + legend_h + 6
    height = top + len(rows) * row_h + 44
    step = _nice_max(max([v for s in series for v in s[2]] + [1]) / 4)
    vmax = max(4.0, 4 * math.ceil(step))  # counts: whole-number ticks
    x_of = lambda v: left + (v / vmax) * plot_w  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'width="{width:.0f}" height="{height:.0f}" aria-label="{_esc(title)}">',
             f'<title>{_esc(title)}</title>',
             f'<text x="10" y="22" font-size="15" font-weight="600">{_esc(title)}</text>', *legend]
    bottom = top + len(rows) * row_h
    for i in range(5):
        v = vmax * i / 4
        x = x_of(v)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{bottom + 14:.1f}" font-size="11" text-anchor="middle" class="tick">{_esc(_tick_label(v))}</text>')
    for ri, label in enumerate(rows):
        y0 = top + ri * row_h + 5
        parts.append(f'<text x="{left - 8:.1f}" y="{y0 + n_series * bar / 2 + 4:.1f}" font-size="12" text-anchor="end">{_esc(label)}</text>')
        for si, (name, colour, values) in enumerate(series):
            v = values[ri]
            y = y0 + si * bar
            parts.append(f'<rect x="{left:.1f}" y="{y + 1:.1f}" width="{x_of(v) - left:.1f}" height="{bar - 2:.1f}" fill="{colour}">'
                         f'<title>{_esc(f"{name} · {label}: {v:g}")}</title></rect>'
                         f'<text x="{x_of(v) + 4:.1f}" y="{y + bar - 3:.1f}" font-size="10" class="val">{v:g}</text>')
    parts.append(f'<line x1="{left:.1f}" x2="{left:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" class="axis"/>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 8:.1f}" font-size="12" text-anchor="middle">{_esc(x_label)}</text></svg>')
    return "".join(parts)


# --------------------------------------------------------------------------- the report model
#
# Built once by build_report() and printed by both renderers, so a number, a best
# mark or a note cannot differ between report.md and report.html.


@dataclass(frozen=True)
class Cell:
    """One table cell: its text as shown, and whether it holds its column's best value."""

    text: str
    best: bool = False
    hint: str = ""  # what the column means (HTML tooltip; Markdown has none)
    colour: str = ""  # the model's chart colour (HTML swatch; Markdown has none)


@dataclass(frozen=True)
class Table:
    """A titled table: a header row, body rows of cells, and notes printed after it."""

    title: str
    header: tuple[Cell, ...]
    rows: tuple[tuple[Cell, ...], ...]
    notes: tuple[str, ...] = ()
    kind: str = ""  # the HTML table's class ("metrics", "errors")


@dataclass(frozen=True)
class MetaLine:
    """One ``label: value`` line under the title."""

    label: str
    value: str
    verbatim: bool = True  # a machine string (signature, path): Markdown shows it as code


@dataclass(frozen=True)
class Judge:
    """The LLM-judge section: who judged, against which baseline, and the rates."""

    model: str
    baseline: str
    table: Table


@dataclass(frozen=True)
class Cited:
    """One passage an answer cites: its number, its text (None when the number is not a
    passage of the prompt) and whether it holds the key facts (None when not checked)."""

    number: int
    text: str | None
    correct: bool | None

    @property
    def label(self) -> str:
        return f"[문서 {self.number}]"

    @property
    def mark(self) -> str:
        """✓ (holds the key facts), ✗ (does not, or is no passage) or "" (not checked)."""
        return "" if self.correct is None else ("✓" if self.correct else "✗")

    @property
    def preview(self) -> str:
        """The passage's first :data:`PREVIEW_CHARS` characters on one line ("…" when cut)."""
        flat = " ".join((self.text or "").split())
        return flat if len(flat) <= PREVIEW_CHARS else flat[:PREVIEW_CHARS].rstrip() + "…"


def cited_passages(answer: dict) -> tuple[Cited, ...]:
    """The passages an answer of responses.jsonl cites (its ``citations``, ``cited_passages`` and
    ``cited_correct``, :func:`kotune.eval.metrics.check_citations`); () for an answer that cites
    nothing or an eval written before citations were checked."""
    numbers = answer.get("citations") or []
    texts = answer.get("cited_passages") or []
    checks = answer.get("cited_correct") or []
    out = []
    for i, n in enumerate(numbers):
        if isinstance(n, bool) or not isinstance(n, int):
            continue
        text = texts[i] if i < len(texts) else None
        ok = checks[i] if i < len(checks) else None
        out.append(Cited(n, None if text is None else str(text), ok if isinstance(ok, bool) else None))
    return tuple(out)


@dataclass(frozen=True)
class Answer:
    """One model's answer to one question."""

    model: str
    colour: str
    text: str
    finish: str  # the finish reason as given, "" when unknown
    errors: tuple[str, ...]
    scores: str  # "ROUGE-L 12.5 · keyword coverage 0.500", "" when none
    retrieved: tuple[str, ...]
    abstained: bool = False  # the answer declined ("not in the documents")
    cited: tuple[Cited, ...] = ()  # the passages it cites ([문서 n])

    @property
    def blank(self) -> bool:
        return not self.text.strip()

    @property
    def finish_kind(self) -> str:
        """ok (ended on its own), cut (hit the length limit) or unknown."""
        r = self.finish.lower()
        return "ok" if r in _OK_FINISH else ("cut" if r in _CUT_FINISH else "unknown")


@dataclass(frozen=True)
class Question:
    """One question with its reference and every model's answer, numbered from 1."""

    number: int
    qid: str | None
    category: str
    question: str
    reference: str
    keywords: str
    answers: tuple[Answer, ...]
    answerable: bool = True  # False: marked unanswerable (the documents do not hold the answer)


@dataclass(frozen=True)
class Alert:
    """One warning of metrics.json's ``warnings`` (kotune.eval.closed_book), shown at the top."""

    model: str
    kind: str
    message: str


@dataclass(frozen=True)
class Report:
    """Everything both renderers print; ``metrics`` is None (and the tables empty) without models."""

    title: str
    meta: tuple[MetaLine, ...]
    metrics: Table | None
    definitions: tuple[MetricInfo, ...]  # the metrics the metrics table shows
    categories: tuple[Table, ...]
    errors: Table | None  # None when no error types were recorded
    judge: Judge | None
    questions: tuple[Question, ...]
    general: Table | None = None  # lm-eval tasks per model (kotune eval --benchmark)
    warnings: tuple[Alert, ...] = ()  # metrics.json's warnings (closed-book models that invent)

    @property
    def tables(self) -> tuple[Table, ...]:
        """Every table in page order."""
        return tuple(t for t in (self.metrics, *self.categories, self.errors,
                                 self.judge.table if self.judge else None, self.general) if t is not None)


def _model_colours(names: list[str]) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def _arrow(info: MetricInfo) -> str:
    return "↑" if info.higher_is_better else "↓"


def _n_answers(m: dict) -> str:
    n = (m.get("overall") or {}).get("n", m.get("n_rows"))
    return "—" if n is None else str(n)


def _metrics_table(models: dict[str, dict], colours: dict[str, str]) -> Table:
    infos = [_INFO[k] for k in _metric_keys(models)]
    best = {i.key: _best({n: _num((m.get("overall") or {}).get(i.key)) for n, m in models.items()}, i.higher_is_better)
            for i in infos}
    header = (Cell("model"), Cell("n"), *(Cell(f"{i.label} {_arrow(i)}", hint=i.description) for i in infos))
    rows = tuple((Cell(name, colour=colours.get(name, _NO_COLOUR)), Cell(_n_answers(m)),
                  *(Cell(_fmt(i.key, (m.get("overall") or {}).get(i.key)), best=name in best[i.key]) for i in infos))
                 for name, m in models.items())
    notes = _notes(models)
    if _has_unanswerable(models):
        first = next(iter(models.values())).get("overall") or {}
        notes.append(f"abstain rate over the {first.get('unanswerable', '?')} questions marked answerable: false, "
                     f"false abstain rate over the {first.get('answerable', '?')} others.")
    if _has_citations(models):
        counts = "; ".join(f"{name}: {(m.get('overall') or {}).get('n_cited', '?')} passages cited in "
                           f"{(m.get('overall') or {}).get('n_citing', '?')} answers, "
                           f"{(m.get('overall') or {}).get('n_citable', '?')} answers that could cite"
                           for name, m in models.items())
        notes.append("citation accuracy: a cited passage is correct when it holds at least half of the reference "
                     "answer's key facts (its keywords); cited rate over the answered, answerable questions asked "
                     f"with numbered passages ({counts}).")
    return Table("Metrics", header, rows, notes=tuple(notes), kind="metrics")


def _category_table(models: dict[str, dict], key: str) -> Table:
    info = _INFO[key]
    cats = _categories(models)
    values = {name: [(m.get("overall") or {}).get(key)] + [((m.get("by_category") or {}).get(c) or {}).get(key)
                                                           for c in cats]
              for name, m in models.items()}
    best = [_best({n: _num(vs[ci]) for n, vs in values.items()}, info.higher_is_better) for ci in range(len(cats) + 1)]
    rows = tuple((Cell(name), *(Cell(_fmt(key, v), best=name in best[ci]) for ci, v in enumerate(vals)))
                 for name, vals in values.items())
    return Table(f"{info.label} ({info.direction} is better)", (Cell("model"), Cell("overall"), *map(Cell, cats)), rows)


def _errors_table(models: dict[str, dict]) -> Table | None:
    types = _error_types(models)
    if not types:
        return None
    rows = []
    for name, m in models.items():
        counts = [int(_num((m.get("error_types") or {}).get(t)) or 0) for t in types]
        rows.append((Cell(name), Cell(_n_answers(m)), *(Cell(str(c)) for c in counts), Cell(str(sum(counts)))))
    header = (Cell("model"), Cell("answers"), *map(Cell, types), Cell("total tags"))
    return Table("Error types", header, tuple(rows), notes=("An answer can carry several tags.",), kind="errors")


def _judge(judge: Any) -> Judge | None:
    pairs = judge.get("pairs") if isinstance(judge, dict) else None
    if not isinstance(pairs, dict) or not pairs:
        return None
    rows = tuple((Cell(str(other)), *(Cell(_rate((p if isinstance(p, dict) else {}).get(k)))
                                      for k in ("win_rate", "loss_rate", "tie_rate", "order_disagreement")))
                 for other, p in pairs.items())
    table = Table("LLM judge", tuple(map(Cell, ("model", "win", "loss", "tie", "order disagreement"))), rows,
                  notes=("A verdict counts only when both answer orders agree.",))
    model, baseline = judge.get("judge_model"), judge.get("baseline")
    return Judge("" if model is None else str(model), "" if baseline is None else str(baseline), table)


def _general(general: Any) -> Table | None:
    """The general-ability table (kotune.eval.general): each task's score per model and the change
    against the first model, marked ⚠ beyond the forgetting margin."""
    tasks = general.get("tasks") if isinstance(general, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        return None
    base = general.get("baseline")
    names = list(dict.fromkeys(n for e in tasks.values() for n in (e.get("models") or {})))
    others = [n for n in names if n != base]
    margin = _num(general.get("margin")) or 0.0
    header = (Cell("task"), Cell("metric"), *(Cell(n) for n in names), *(Cell(f"Δ {n}") for n in others))
    rows = []
    for task, e in tasks.items():
        scores = e.get("models") or {}
        cells = [Cell(str(task)), Cell(str(e.get("metric") or ""))]
        best = max((v for v in scores.values() if _num(v) is not None), default=None)
        cells += [Cell("—" if _num(scores.get(n)) is None else f"{scores[n]:.4f}", best=scores.get(n) == best)
                  for n in names]
        for n in others:
            if _num(scores.get(n)) is None or _num(scores.get(base)) is None:
                cells.append(Cell("—"))
                continue
            delta = scores[n] - scores[base]
            cells.append(Cell(f"{delta:+.4f}{' ⚠' if -delta > margin else ''}"))
        rows.append(tuple(cells))
    notes = [f"Δ against {base}; ⚠ marks a loss of more than {margin:g} (forgetting)." if base and others else ""]
    notes += [f"{n}: not run — {why}" for n, why in (general.get("not_run") or {}).items()]
    return Table("General ability (lm-evaluation-harness)", header, tuple(rows),
                 notes=tuple(n for n in notes if n), kind="metrics")


def _answer_metrics_line(a: dict) -> str:
    bits = []
    for key in ("rougeL", "keyword_coverage", "unsupported_rate"):
        if _num(a.get(key)) is not None:
            bits.append(f"{_INFO[key].label} {_fmt(key, a.get(key))}")
    return " · ".join(bits)


def _questions(responses: list[dict], names: list[str], colours: dict[str, str]) -> tuple[Question, ...]:
    out = []
    for i, r in enumerate(responses, 1):
        kws = r.get("keywords")
        keywords = (", ".join(map(str, kws)) if isinstance(kws, (list, tuple)) else str(kws)) if kws else ""
        answers = []
        given = r.get("answers") or {}
        for name in names:
            a = given.get(name)
            if a is None:
                continue
            if not isinstance(a, dict):
                a = {"text": a}
            answers.append(Answer(
                model=name, colour=colours.get(name, _NO_COLOUR), text=str(a.get("text") or ""),
                finish=str(a.get("finish_reason") or "").strip(),
                errors=tuple(str(e) for e in (a.get("errors") or []) if e),
                scores=_answer_metrics_line(a), retrieved=tuple(map(str, a.get("retrieved") or [])),
                abstained=a.get("abstained") is True, cited=cited_passages(a)))
        q, qid = r.get("question"), r.get("id")
        out.append(Question(number=i, qid=None if qid is None else str(qid),
                            category=str(r.get("category") or "").strip(), question="" if q is None else str(q),
                            reference=str(r.get("reference") or ""), keywords=keywords, answers=tuple(answers),
                            answerable=r.get("answerable") is not False))
    return tuple(out)


def _meta_lines(metrics: dict, models: dict[str, dict], responses: list[dict]) -> tuple[MetaLine, ...]:
    first = next(iter(models.values()), {})
    tok = metrics.get("tokenization") or first.get("tokenization")
    bleu_sig = metrics.get("bleu_signature") or first.get("bleu_signature")
    chrf_sig = metrics.get("chrf_signature") or first.get("chrf_signature")
    n_q = metrics.get("questions") or len(responses) or (first.get("overall") or {}).get("n")
    lines = [MetaLine("questions", str(n_q if n_q is not None else "—")),
             MetaLine("models", ", ".join(models) or "—", verbatim=False)]
    if tok:
        lines.append(MetaLine("tokenization (ROUGE, BLEU)", str(tok)))
    if bleu_sig:
        lines.append(MetaLine("BLEU signature", str(bleu_sig)))
    if chrf_sig:
        lines.append(MetaLine("chrF signature", str(chrf_sig)))
    if metrics.get("context"):
        lines.append(MetaLine("retrieval context", str(metrics["context"])))
    own = [f"{name}: {r.get('chunks')} (top {r.get('top_k')})" for name, r in
           ((n, m.get("retrieval") or {}) for n, m in models.items()) if r.get("from") == "run"]
    if own:  # grounded runs asked with the chunks they recorded (no --context)
        lines.append(MetaLine("retrieval of grounded runs", "; ".join(own)))
    if any(m.get("mode") for m in models.values()):  # how each model was asked: in-process or over the API
        asked = []
        for name, m in models.items():
            ep = m.get("endpoint") or {}
            where = f" {ep.get('url')}#{ep.get('model')}" if ep else ""
            timing = f", {m['answers_per_second']} answers/s" if m.get("answers_per_second") is not None else ""
            asked.append(f"{name}: {m.get('mode') or 'local'}{where}{timing}")
        lines.append(MetaLine("how models were asked", "; ".join(asked)))
    return tuple(lines)


def _notes(models: dict[str, dict]) -> list[str]:
    seen: list[str] = []
    for m in models.values():
        for note in m.get("notes") or []:
            if str(note) not in seen:
                seen.append(str(note))
        for s in m.get("skipped") or []:
            if isinstance(s, dict):
                line = f"{s.get('metric')} not computed: {s.get('reason')}"
                if line not in seen:
                    seen.append(line)
    return seen


def _warnings(warnings: Any) -> tuple[Alert, ...]:
    """metrics.json's ``warnings`` ({"model", "kind", "message", ...}); anything else is ignored."""
    if not isinstance(warnings, list):
        return ()
    return tuple(Alert(str(w.get("model") or ""), str(w.get("kind") or ""), str(w["message"]))
                 for w in warnings if isinstance(w, dict) and w.get("message"))


def build_report(metrics: dict, responses: list[dict], title: str = "kotune eval") -> Report:
    """The report model both renderers print: every table, meta line and answer, built once."""
    models = _models(metrics)
    names = _model_names(metrics, responses)
    colours = _model_colours(names)
    return Report(
        title=str(title),
        meta=_meta_lines(metrics, models, responses),
        metrics=_metrics_table(models, colours) if models else None,
        definitions=tuple(_INFO[k] for k in _metric_keys(models)) if models else (),
        categories=tuple(_category_table(models, k) for k in HEADLINE) if models else (),
        errors=_errors_table(models),
        judge=_judge(metrics.get("judge")),
        questions=_questions(responses, names, colours),
        general=_general(metrics.get("general_ability")),
        warnings=_warnings(metrics.get("warnings")),
    )


# --------------------------------------------------------------------------- HTML


@dataclass(frozen=True)
class _Figure:
    """One per-category chart: its SVG, or why the metric has no values."""

    key: str
    label: str
    svg: str  # "" when no model has a value for the metric
    reason: str = ""


def _skipped_reason(models: dict[str, dict], key: str) -> str:
    for m in models.values():
        for s in m.get("skipped") or []:
            if isinstance(s, dict) and s.get("metric") == key:
                return str(s.get("reason") or "")
    return ""


def _category_figures(models: dict[str, dict], colours: dict[str, str]) -> list[_Figure]:
    cats = _categories(models)
    first = next(iter(models.values()), {})
    counts = {c: ((first.get("by_category") or {}).get(c) or {}).get("n") for c in cats}
    groups = [("overall", f"n={(first.get('overall') or {}).get('n', '?')}")] + [
        (c, "" if counts[c] is None else f"n={counts[c]}") for c in cats]
    figures = []
    for key in HEADLINE:
        info = _INFO[key]
        series = []
        for name, m in models.items():
            vals = [_num((m.get("overall") or {}).get(key))]
            vals += [_num(((m.get("by_category") or {}).get(c) or {}).get(key)) for c in cats]
            series.append((name, colours[name], vals))
        if all(v is None for _, _, vals in series for v in vals):
            figures.append(_Figure(key, info.label, "", _skipped_reason(models, key)))
            continue
        title = f"{info.label} by category ({info.direction} is better)"
        fmt = (lambda v: f"{v:.1f}") if info.vmax > 1 else (lambda v: f"{v:.2f}")
        figures.append(_Figure(key, info.label, bar_chart(title, groups, series, vmax=info.vmax,
                                                          y_label=f"{info.label} ({info.scale})",
                                                          x_label="category", fmt=fmt)))
    return figures


def _error_chart(models: dict[str, dict], colours: dict[str, str]) -> str:
    types = _error_types(models)
    if not types:
        return ""
    series = [(name, colours[name], [float(_num((m.get("error_types") or {}).get(t)) or 0) for t in types])
              for name, m in models.items()]
    return hbar_chart("Error types (answers tagged)", types, series, x_label="answers")


@functools.lru_cache(maxsize=1)
def _template():
    """The page template from package data, compiled once.

    Jinja2 rather than string concatenation: autoescape makes every data string safe
    by default (answers are untrusted), and the page's structure reads as HTML.
    Imported here, not at module level: only the HTML report needs it (it comes
    with torch and trl).
    """
    import jinja2

    source = (resources.files("kotune") / "assets" / _TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(source)


def render_html(metrics: dict, responses: list[dict], title: str = "kotune eval") -> str:
    """The whole report as one self-contained HTML page (UTF-8, inline CSS and SVG, no scripts)."""
    report = build_report(metrics, responses, title)
    models = _models(metrics)
    colours = _model_colours(_model_names(metrics, responses))
    types = _error_types(models)
    for e in (e for q in report.questions for a in q.answers for e in a.errors):
        if e not in types:
            types.append(e)
    error_colours = {t: _ERROR_COLOURS[i % len(_ERROR_COLOURS)] for i, t in enumerate(types)}
    return _template().render(
        r=report, abstained_mark=ABSTAINED, warnings_title=WARNINGS_TITLE, unanswerable_mark=UNANSWERABLE,
        figures=_category_figures(models, colours) if models else [],
        error_chart=_error_chart(models, colours),
        error_colours=error_colours,
        columns=max(1, min(len(colours), 3)),
    )


def charts(metrics: dict, responses: list[dict]) -> tuple[list[_Figure], str]:
    """The report's charts, for pages that lay them out themselves (kotune studio's eval
    page): the per-category figures and the error-type chart (SVG, "" when none)."""
    models = _models(metrics)
    colours = _model_colours(_model_names(metrics, responses))
    return (_category_figures(models, colours) if models else []), _error_chart(models, colours)


# --------------------------------------------------------------------------- Markdown
#
# Written by hand rather than with a table library (tabulate and the like): none of
# them applies CommonMark backslash escapes to cell text, which is what keeps a "|"
# or "<script>" in a model answer or name from breaking the table or the page.

_MD_SPECIAL = set("\\`*_[]<>|#")


def _md(text: Any) -> str:
    """One line of Markdown-safe text (CommonMark backslash escapes; newlines become spaces)."""
    s = " ".join(str("" if text is None else text).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in s)


def _md_block(text: str) -> str:
    """A block quote of ``text`` keeping its line breaks."""
    lines = str(text).splitlines() or [""]
    return "\n".join("> " + ("".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in line) if line.strip() else "")
                     for line in lines)


def _md_code(text: Any) -> str:
    """An inline code span that holds any text (the fence outgrows the longest backtick run)."""
    s = " ".join(str(text).split())
    runs = [len(m) for m in re.findall(r"`+", s)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _md_cell(c: Cell) -> str:
    return f"**{_md(c.text)}**" if c.best else _md(c.text)


def _md_table(t: Table) -> list[str]:
    """A pipe table (first column left-aligned, numbers right-aligned), then its notes as a list."""
    out = ["| " + " | ".join(_md_cell(c) for c in t.header) + " |",
           "| " + " | ".join(["---"] + ["---:"] * (len(t.header) - 1)) + " |"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return out


def _md_notes(t: Table) -> list[str]:
    return [f"- {_md(n)}" for n in t.notes]


def render_markdown(metrics: dict, responses: list[dict], title: str = "kotune eval") -> str:
    """The report as Markdown: metric tables (best in bold), per-category tables, error types, answers."""
    report = build_report(metrics, responses, title)
    out = [f"# {_md(report.title)}", ""]
    out += [f"- {m.label}: {_md_code(m.value) if m.verbatim else _md(m.value)}" for m in report.meta]
    out.append("")
    if report.warnings:
        out += [f"## {WARNINGS_TITLE}", ""]
        for w in report.warnings:
            out += [f"> ⚠ {_md(w.message)}", ""]
    if report.metrics is not None:
        out += [f"## {report.metrics.title}", "", *_md_table(report.metrics), "",
                "Best value per column in bold. ↑ higher is better, ↓ lower is better.", *_md_notes(report.metrics)]
        out += ["", "## By category", ""]
        for t in report.categories:
            out += [f"### {_md(t.title)}", "", *_md_table(t), ""]
    if report.errors is not None:
        out += [f"## {report.errors.title}", "", *_md_table(report.errors), "", *_md_notes(report.errors), ""]
    if report.judge is not None:
        j = report.judge
        out += [f"## {j.table.title}", "",
                f"Judge {_md_code(j.model) if j.model else '—'}, each model against {_md(j.baseline)}, both answer orders.",
                "", *_md_table(j.table), "", *_md_notes(j.table), ""]
    if report.general is not None:
        out += [f"## {report.general.title}", "", *_md_table(report.general), "", *_md_notes(report.general), ""]
    out += [f"## Answers side by side ({len(report.questions)})", ""]
    for q in report.questions:
        out += [f"### {q.number}. {'[' + _md(q.category) + '] ' if q.category else ''}{_md(q.question)}", ""]
        if q.qid is not None or not q.answerable:
            bits = ([f"id: {_md_code(q.qid)}"] if q.qid is not None else []) + ([UNANSWERABLE] if not q.answerable else [])
            out += [" · ".join(bits), ""]
        if q.reference:
            out += ["**Reference**", "", _md_block(q.reference), ""]
        for a in q.answers:
            info = [f"finish: {_md(a.finish or '?')}"]
            if a.abstained:
                info.append(f"**{_md(ABSTAINED)}**")
            if a.errors:
                info.append("errors: " + ", ".join(_md(e) for e in a.errors))
            if a.scores:
                info.append(_md(a.scores))
            out += [f"**{_md(a.model)}** — " + " · ".join(info), ""]
            out += ["> *(empty answer)*" if a.blank else _md_block(a.text), ""]
            for c in a.cited:
                head = f"cited {_md(c.label)}" + (f" {c.mark}" if c.mark else "")
                body = _md(c.preview) if c.text is not None else "*(not a passage of the prompt)*"
                out += [f"- {head}: {body}"]
            if a.cited:
                out.append("")
    return "\n".join(out).rstrip() + "\n"
