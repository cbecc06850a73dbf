"""Render an evaluation (metrics.json + responses) as one HTML file and as Markdown.

The HTML is self-contained: inline CSS, charts drawn as inline SVG, no scripts,
no external URLs, so it opens offline and can be mailed or attached as is. All
text that came from data (questions, answers, model and category names) is
escaped. Both renderers are pure functions of their inputs (no timestamps), so
the same evaluation renders to the same bytes.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from typing import Any, Iterable

__all__ = ["render_html", "render_markdown", "METRICS", "HEADLINE"]

# (key, label, scale max, higher is better)
METRICS: tuple[tuple[str, str, float, bool], ...] = (
    ("rouge1", "ROUGE-1", 100.0, True),
    ("rouge2", "ROUGE-2", 100.0, True),
    ("rougeL", "ROUGE-L", 100.0, True),
    ("bleu", "BLEU", 100.0, True),
    ("chrf", "chrF", 100.0, True),
    ("keyword_coverage", "keyword coverage", 1.0, True),
    ("eos_rate", "EOS rate", 1.0, True),
    ("repetition", "repetition", 1.0, False),
    ("unsupported_rate", "unsupported rate", 1.0, False),
)
HEADLINE = ("rougeL", "keyword_coverage", "eos_rate", "unsupported_rate")
_INFO = {k: (label, vmax, up) for k, label, vmax, up in METRICS}
_DESCRIPTIONS = {
    "rouge1": "unigram overlap with the reference (Kiwi morphemes), F1",
    "rouge2": "bigram overlap with the reference (Kiwi morphemes), F1",
    "rougeL": "longest common subsequence with the reference (Kiwi morphemes), F1",
    "bleu": "corpus BLEU on Kiwi morphemes",
    "chrf": "corpus chrF on characters",
    "keyword_coverage": "share of expected keywords the answer contains (morpheme match)",
    "eos_rate": "share of answers that ended on their own (not cut at the length limit)",
    "repetition": "share of repeated n-grams in the answer",
    "unsupported_rate": "share of answer content not found in reference or context",
}
# Tableau 10: distinct, colour-blind-friendly enough, readable on white.
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
            "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_ERROR_COLOURS = ("#e15759", "#f28e2b", "#b07aa1", "#9c755f", "#4e79a7")
_OK_FINISH = {"eos", "stop"}
FONT_STACK = ('"Noto Sans CJK KR", "Noto Sans KR", "Apple SD Gothic Neo", "Malgun Gothic", '
              '"NanumGothic", "Nanum Gothic", sans-serif')


# --------------------------------------------------------------------------- shared


def _esc(value: Any) -> str:
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
    return f"{v:.1f}" if _INFO.get(key, ("", 1.0, True))[1] > 1 else f"{v:.3f}"


def _best(values: dict[str, float | None], higher: bool) -> set[str]:
    """Models holding the best value; none when fewer than two values or all equal."""
    got = {k: v for k, v in values.items() if v is not None}
    if len(got) < 2 or len(set(got.values())) == 1:
        return set()
    target = max(got.values()) if higher else min(got.values())
    return {k for k, v in got.items() if v == target}


def _metric_keys(models: dict[str, dict]) -> list[str]:
    """The metric columns to show: known metrics that some model has, in a fixed order."""
    keys = [k for k, *_ in METRICS if any(k in (m.get("overall") or {}) for m in models.values())]
    return keys or [k for k, *_ in METRICS]


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


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: %(font)s; margin: 0; padding: 24px 32px 48px; color: #1f2328; background: #fff;
       line-height: 1.55; font-size: 15px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
.meta { color: #57606a; margin: 2px 0; font-size: 13px; }
.meta code, td code { font-size: 12px; background: #f6f8fa; padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 5px 10px; text-align: right; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
td.best { background: #dafbe1; font-weight: 700; }
.scroll { overflow-x: auto; max-width: 100%%; }
.note { color: #57606a; font-size: 13px; margin: 4px 0; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; padding: 8px; width: fit-content; border: 1px solid #d0d7de; border-radius: 6px; max-width: 100%%; overflow-x: auto; }
svg.chart { display: block; max-width: 100%%; height: auto; font-family: inherit; }
svg .grid { stroke: #e6e8eb; stroke-width: 1; }
svg .axis { stroke: #57606a; stroke-width: 1; }
svg text { fill: #1f2328; }
svg .tick, svg .na { fill: #57606a; }
svg .val { fill: #3d444d; }
article.q { border: 1px solid #d0d7de; border-radius: 6px; margin: 14px 0; padding: 10px 14px; }
article.q h3 { font-size: 15px; margin: 0 0 6px; }
.qid { color: #57606a; font-weight: 400; font-size: 12px; margin-right: 6px; }
.cat { display: inline-block; background: #ddf4ff; color: #0969da; border-radius: 10px; padding: 0 8px;
       font-size: 12px; font-weight: 600; margin-right: 6px; }
.question { font-weight: 600; }
.ref { background: #f6f8fa; border-left: 3px solid #8c959f; padding: 6px 10px; margin: 6px 0; }
.label { color: #57606a; font-size: 12px; font-weight: 600; }
.answers { display: grid; gap: 10px; margin-top: 8px; }
.answer { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 10px; min-width: 0; }
.answer h4 { margin: 0 0 4px; font-size: 13px; display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; }
.text, .ref .body { white-space: pre-wrap; overflow-wrap: anywhere; word-break: keep-all; }
.badge { display: inline-block; border-radius: 10px; padding: 0 7px; font-size: 11px; font-weight: 600;
         border: 1px solid transparent; }
.finish-ok { background: #dafbe1; color: #116329; }
.finish-cut { background: #ffebe9; color: #a40e26; }
.finish-unknown { background: #eaeef2; color: #57606a; }
.err { color: #fff; }
.small { color: #57606a; font-size: 12px; overflow-wrap: anywhere; }
.empty { color: #8c959f; font-style: italic; }
ul.defs { font-size: 13px; color: #57606a; margin: 6px 0; padding-left: 20px; }
""" % {"font": FONT_STACK}


def _model_colours(names: list[str]) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def _metrics_table_html(models: dict[str, dict], colours: dict[str, str]) -> str:
    keys = _metric_keys(models)
    best = {k: _best({n: _num((m.get("overall") or {}).get(k)) for n, m in models.items()}, _INFO[k][2]) for k in keys}
    head = "".join(f'<th title="{_esc(_DESCRIPTIONS.get(k, ""))}">{_esc(_INFO[k][0])} {"↑" if _INFO[k][2] else "↓"}</th>'
                   for k in keys)
    rows = []
    for name, m in models.items():
        overall = m.get("overall") or {}
        n = overall.get("n", m.get("n_rows"))
        cells = "".join(f'<td class="best">{_fmt(k, overall.get(k))}</td>' if name in best[k]
                        else f"<td>{_fmt(k, overall.get(k))}</td>" for k in keys)
        rows.append(f'<tr><td><span class="swatch" style="background:{colours[name]}"></span> {_esc(name)}</td>'
                    f'<td>{_esc("—" if n is None else n)}</td>{cells}</tr>')
    return (f'<div class="scroll"><table class="metrics"><thead><tr><th>model</th><th>n</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _category_table_html(models: dict[str, dict], key: str) -> str:
    cats = _categories(models)
    higher = _INFO[key][2]
    head = "".join(f"<th>{_esc(c)}</th>" for c in ["overall", *cats])
    rows = []
    for name, m in models.items():
        vals = [(m.get("overall") or {}).get(key)] + [((m.get("by_category") or {}).get(c) or {}).get(key) for c in cats]
        rows.append((name, vals))
    body = []
    for name, vals in rows:
        cells = []
        for ci, v in enumerate(vals):
            col = {n: _num(vs[ci]) for n, vs in rows}
            cls = ' class="best"' if name in _best(col, higher) else ""
            cells.append(f"<td{cls}>{_fmt(key, v)}</td>")
        body.append(f"<tr><td>{_esc(name)}</td>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table><caption class="note">{_esc(_INFO[key][0])}</caption>'
            f"<thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _category_charts_html(models: dict[str, dict], colours: dict[str, str]) -> str:
    cats = _categories(models)
    first = next(iter(models.values()), {})
    counts = {c: ((first.get("by_category") or {}).get(c) or {}).get("n") for c in cats}
    groups = [("overall", f"n={(first.get('overall') or {}).get('n', '?')}")] + [
        (c, "" if counts[c] is None else f"n={counts[c]}") for c in cats]
    figures = []
    for key in HEADLINE:
        label, vmax, higher = _INFO[key]
        series = []
        for name, m in models.items():
            vals = [_num((m.get("overall") or {}).get(key))]
            vals += [_num(((m.get("by_category") or {}).get(c) or {}).get(key)) for c in cats]
            series.append((name, colours[name], vals))
        scale = "0–100" if vmax > 1 else "0–1"
        title = f"{label} by category ({'higher' if higher else 'lower'} is better)"
        fmt = (lambda v: f"{v:.1f}") if vmax > 1 else (lambda v: f"{v:.2f}")
        svg = bar_chart(title, groups, series, vmax=vmax, y_label=f"{label} ({scale})", x_label="category", fmt=fmt)
        if all(v is None for _, _, vals in series for v in vals):
            reason = _skipped_reason(models, key)
            svg = (f'<p class="note"><b>{_esc(label)}</b>: not computed'
                   f'{" — " + _esc(reason) if reason else ""}.</p>')
        figures.append(f'<figure data-metric="{_esc(key)}">{svg}</figure>')
    return f'<div class="charts">{"".join(figures)}</div>'


def _skipped_reason(models: dict[str, dict], key: str) -> str:
    for m in models.values():
        for s in m.get("skipped") or []:
            if isinstance(s, dict) and s.get("metric") == key:
                return str(s.get("reason") or "")
    return ""


def _errors_html(models: dict[str, dict], colours: dict[str, str]) -> str:
    types = _error_types(models)
    if not types:
        return '<p class="note">No error types recorded.</p>'
    head = "".join(f"<th>{_esc(t)}</th>" for t in types)
    rows = []
    for name, m in models.items():
        counts = m.get("error_types") or {}
        n = (m.get("overall") or {}).get("n", m.get("n_rows"))
        total = sum(int(_num(counts.get(t)) or 0) for t in types)
        cells = "".join(f"<td>{int(_num(counts.get(t)) or 0)}</td>" for t in types)
        rows.append(f"<tr><td>{_esc(name)}</td><td>{_esc('—' if n is None else n)}</td>{cells}<td>{total}</td></tr>")
    table = (f'<div class="scroll"><table class="errors"><thead><tr><th>model</th><th>answers</th>{head}<th>total tags</th></tr>'
             f'</thead><tbody>{"".join(rows)}</tbody></table></div>')
    series = [(name, colours[name], [float(_num((m.get("error_types") or {}).get(t)) or 0) for t in types])
              for name, m in models.items()]
    svg = hbar_chart("Error types (answers tagged)", types, series, x_label="answers")
    return f'{table}<p class="note">An answer can carry several tags.</p><figure>{svg}</figure>'


def _judge_html(judge: dict) -> str:
    pairs = judge.get("pairs") or {}
    if not pairs:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(other)}</td>" + "".join(f"<td>{_fmt('eos_rate', p.get(k))}</td>"
                                                 for k in ("win_rate", "loss_rate", "tie_rate", "order_disagreement")) + "</tr>"
        for other, p in pairs.items())
    return (f'<h2>LLM judge</h2><p class="meta">judge <code>{_esc(judge.get("judge_model"))}</code>, each model against '
            f'<b>{_esc(judge.get("baseline"))}</b>, both answer orders; a verdict counts only when both orders agree.</p>'
            f'<div class="scroll"><table><thead><tr><th>model</th><th>win</th><th>loss</th><th>tie</th>'
            f'<th>order disagreement</th></tr></thead><tbody>{rows}</tbody></table></div>')


def _finish_badge(reason: Any) -> str:
    r = str(reason or "").strip()
    if not r:
        return '<span class="badge finish-unknown">finish: ?</span>'
    cls = "finish-ok" if r.lower() in _OK_FINISH else ("finish-cut" if r.lower() in {"length", "max_tokens"} else "finish-unknown")
    return f'<span class="badge {cls}">{_esc(r)}</span>'


def _answer_metrics_line(a: dict) -> str:
    bits = []
    for key in ("rougeL", "keyword_coverage", "unsupported_rate"):
        if _num(a.get(key)) is not None:
            bits.append(f"{_INFO[key][0]} {_fmt(key, a.get(key))}")
    return " · ".join(bits)


def _answers_html(responses: list[dict], names: list[str], colours: dict[str, str], error_colours: dict[str, str]) -> str:
    if not responses:
        return '<p class="note">No responses.</p>'
    cols = max(1, min(len(names), 3))
    out = []
    for i, r in enumerate(responses, 1):
        cat = str(r.get("category") or "").strip()
        parts = [f'<article class="q" id="q-{i}"><h3><span class="qid">#{i} · {_esc(r.get("id", ""))}</span>'
                 + (f'<span class="cat">{_esc(cat)}</span>' if cat else "")
                 + f'<span class="question">{_esc(r.get("question", ""))}</span></h3>']
        ref = r.get("reference")
        if ref:
            parts.append(f'<div class="ref"><div class="label">reference</div><div class="body">{_esc(ref)}</div></div>')
        kws = r.get("keywords")
        if kws:
            kw = ", ".join(map(str, kws)) if isinstance(kws, (list, tuple)) else str(kws)
            parts.append(f'<div class="small">keywords: {_esc(kw)}</div>')
        parts.append(f'<div class="answers" style="grid-template-columns: repeat({cols}, minmax(0, 1fr))">')
        answers = r.get("answers") or {}
        for name in names:
            a = answers.get(name)
            if a is None:
                continue
            if not isinstance(a, dict):
                a = {"text": a}
            errs = [e for e in (a.get("errors") or []) if e]
            tags = "".join(f'<span class="badge err" style="background:{error_colours.get(e, "#8c959f")}">{_esc(e)}</span>'
                           for e in errs)
            text = str(a.get("text") or "")
            body = f'<div class="text">{_esc(text)}</div>' if text.strip() else '<div class="text empty">(empty answer)</div>'
            extra = _answer_metrics_line(a)
            retrieved = a.get("retrieved") or []
            parts.append(
                f'<div class="answer"><h4><span class="swatch" style="background:{colours.get(name, "#8c959f")}"></span>'
                f'{_esc(name)} {_finish_badge(a.get("finish_reason"))}{tags}</h4>{body}'
                + (f'<div class="small">{_esc(extra)}</div>' if extra else "")
                + (f'<div class="small">retrieved: {_esc(", ".join(map(str, retrieved)))}</div>' if retrieved else "")
                + "</div>")
        parts.append("</div></article>")
        out.append("".join(parts))
    return "".join(out)


def _meta_lines(metrics: dict, models: dict[str, dict], responses: list[dict]) -> list[tuple[str, str]]:
    first = next(iter(models.values()), {})
    tok = metrics.get("tokenization") or first.get("tokenization")
    bleu_sig = metrics.get("bleu_signature") or first.get("bleu_signature")
    chrf_sig = metrics.get("chrf_signature") or first.get("chrf_signature")
    n_q = metrics.get("questions") or len(responses) or (first.get("overall") or {}).get("n")
    lines = [("questions", str(n_q if n_q is not None else "—")), ("models", ", ".join(models) or "—")]
    if tok:
        lines.append(("tokenization (ROUGE, BLEU)", str(tok)))
    if bleu_sig:
        lines.append(("BLEU signature", str(bleu_sig)))
    if chrf_sig:
        lines.append(("chrF signature", str(chrf_sig)))
    if metrics.get("context"):
        lines.append(("retrieval context", str(metrics["context"])))
    return lines


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


def render_html(metrics: dict, responses: list[dict], title: str = "kotune eval") -> str:
    """The whole report as one self-contained HTML page (UTF-8, inline CSS and SVG, no scripts)."""
    models = _models(metrics)
    names = _model_names(metrics, responses)
    colours = _model_colours(names)
    types = _error_types(models)
    for r in responses:
        for a in (r.get("answers") or {}).values():
            for e in (a.get("errors") or []) if isinstance(a, dict) else []:
                if e not in types:
                    types.append(e)
    error_colours = {t: _ERROR_COLOURS[i % len(_ERROR_COLOURS)] for i, t in enumerate(types)}

    meta = "".join(f'<p class="meta">{_esc(k)}: <code>{_esc(v)}</code></p>' for k, v in _meta_lines(metrics, models, responses))
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in _notes(models))
    defs = "".join(f"<li><b>{_esc(_INFO[k][0])}</b> ({'0–100' if _INFO[k][1] > 1 else '0–1'}, "
                   f"{'higher' if _INFO[k][2] else 'lower'} is better): {_esc(_DESCRIPTIONS[k])}</li>"
                   for k in _metric_keys(models))
    sections = [f"<header><h1>{_esc(title)}</h1>{meta}</header>"]
    if models:
        sections.append(f'<section id="metrics"><h2>Metrics</h2>{_metrics_table_html(models, colours)}'
                        f'<p class="note">Best value per column highlighted. ↑ higher is better, ↓ lower is better.</p>'
                        f'{notes}<details><summary class="note">What the metrics mean</summary><ul class="defs">{defs}</ul></details>'
                        f"</section>")
        cat_tables = "".join(_category_table_html(models, k) for k in HEADLINE)
        sections.append(f'<section id="categories"><h2>By category</h2>{_category_charts_html(models, colours)}'
                        f'<details><summary class="note">Same numbers as tables</summary>{cat_tables}</details></section>')
        sections.append(f'<section id="errors"><h2>Error types</h2>{_errors_html(models, colours)}</section>')
    if isinstance(metrics.get("judge"), dict):
        sections.append(f'<section id="judge">{_judge_html(metrics["judge"])}</section>')
    sections.append(f'<section id="answers"><h2>Answers side by side ({len(responses)})</h2>'
                    f"{_answers_html(responses, names, colours, error_colours)}</section>")
    return ("<!DOCTYPE html>\n"
            '<html lang="ko">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


# --------------------------------------------------------------------------- Markdown

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


def _md_table(header: list[str], rows: Iterable[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(metrics: dict, responses: list[dict], title: str = "kotune eval") -> str:
    """The report as Markdown: metric tables (best in bold), per-category tables, error types, answers."""
    models = _models(metrics)
    names = _model_names(metrics, responses)
    out = [f"# {_md(title)}", ""]
    for k, v in _meta_lines(metrics, models, responses):
        out.append(f"- {k}: " + (", ".join(_md(n) for n in models) if k == "models" else _md_code(v)))
    out.append("")
    if models:
        keys = _metric_keys(models)
        best = {k: _best({n: _num((m.get("overall") or {}).get(k)) for n, m in models.items()}, _INFO[k][2]) for k in keys}
        out += ["## Metrics", ""]
        rows = []
        for name, m in models.items():
            overall = m.get("overall") or {}
            n = overall.get("n", m.get("n_rows"))
            cells = [f"**{_fmt(k, overall.get(k))}**" if name in best[k] else _fmt(k, overall.get(k)) for k in keys]
            rows.append([_md(name), _md("—" if n is None else n), *cells])
        out.append(_md_table(["model", "n", *[f"{_INFO[k][0]} {'↑' if _INFO[k][2] else '↓'}" for k in keys]], rows))
        out += ["", "Best value per column in bold. ↑ higher is better, ↓ lower is better."]
        out += [f"- {_md(n)}" for n in _notes(models)]
        out += ["", "## By category", ""]
        cats = _categories(models)
        for key in HEADLINE:
            label, _vmax, higher = _INFO[key]
            table_rows = []
            for name, m in models.items():
                vals = [(m.get("overall") or {}).get(key)] + [((m.get("by_category") or {}).get(c) or {}).get(key) for c in cats]
                table_rows.append((name, vals))
            md_rows = []
            for name, vals in table_rows:
                cells = []
                for ci, v in enumerate(vals):
                    col = {n: _num(vs[ci]) for n, vs in table_rows}
                    cells.append(f"**{_fmt(key, v)}**" if name in _best(col, higher) else _fmt(key, v))
                md_rows.append([_md(name), *cells])
            out += [f"### {label} ({'higher' if higher else 'lower'} is better)", "",
                    _md_table(["model", "overall", *map(_md, cats)], md_rows), ""]
        types = _error_types(models)
        if types:
            out += ["## Error types", ""]
            rows = []
            for name, m in models.items():
                counts = m.get("error_types") or {}
                vals = [int(_num(counts.get(t)) or 0) for t in types]
                n = (m.get("overall") or {}).get("n", m.get("n_rows"))
                rows.append([_md(name), _md("—" if n is None else n), *map(str, vals), str(sum(vals))])
            out += [_md_table(["model", "answers", *map(_md, types), "total tags"], rows), ""]
    judge = metrics.get("judge")
    if isinstance(judge, dict) and judge.get("pairs"):
        out += ["## LLM judge", "", f"Judge {_md_code(judge.get('judge_model'))}, each model against {_md(judge.get('baseline'))}, "
                "both answer orders.", ""]
        rows = [[_md(o), *[_fmt("eos_rate", p.get(k)) for k in ("win_rate", "loss_rate", "tie_rate", "order_disagreement")]]
                for o, p in judge["pairs"].items()]
        out += [_md_table(["model", "win", "loss", "tie", "order disagreement"], rows), ""]
    out += [f"## Answers side by side ({len(responses)})", ""]
    for i, r in enumerate(responses, 1):
        cat = str(r.get("category") or "").strip()
        out += [f"### {i}. {'[' + _md(cat) + '] ' if cat else ''}{_md(r.get('question', ''))}", ""]
        if r.get("id") is not None:
            out += [f"id: {_md_code(r.get('id'))}", ""]
        if r.get("reference"):
            out += ["**Reference**", "", _md_block(r["reference"]), ""]
        answers = r.get("answers") or {}
        for name in names:
            a = answers.get(name)
            if a is None:
                continue
            if not isinstance(a, dict):
                a = {"text": a}
            errs = [e for e in (a.get("errors") or []) if e]
            info = [f"finish: {_md(a.get('finish_reason') or '?')}"]
            if errs:
                info.append("errors: " + ", ".join(_md(e) for e in errs))
            extra = _answer_metrics_line(a)
            if extra:
                info.append(_md(extra))
            out += [f"**{_md(name)}** — " + " · ".join(info), ""]
            text = str(a.get("text") or "")
            out += [_md_block(text) if text.strip() else "> *(empty answer)*", ""]
    return "\n".join(out).rstrip() + "\n"
