"""Keep closed-book honest: a tuned model asked without passages that invents more than 0.3 or more
than its base is warned in metrics.json, at the top of the report and by ``kotune doctor``, with
the grounded mode suggested. No model is loaded here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kotune.eval.closed_book import (ABOVE_BASE_MARGIN, GROUNDED_HINT, KIND, UNSUPPORTED_LIMIT, asked_closed_book,
                                     closed_book_warnings, eval_findings, eval_next_to)
from kotune.eval.report import WARNINGS_TITLE, build_report, render_html, render_markdown

from conftest import call_cli
from helpers.canned import canned_openai


def _model(rate: float | None, closed_book: bool | None = True) -> dict:
    m = {"overall": {"n": 4, "unsupported_rate": rate, "rougeL": 20.0}, "mode": "local"}
    if closed_book is not None:
        m["closed_book"] = closed_book
    return m


def _models(base: float | None, **tuned: tuple[float | None, bool | None]) -> dict:
    return {"base": _model(base), **{n: _model(r, cb) for n, (r, cb) in tuned.items()}}


def _warned(models: dict) -> dict[str, list[str]]:
    return {w["model"]: w["reasons"] for w in closed_book_warnings(models)}


# ---------------------------------------------------------------- the rule
def test_the_thresholds_are_the_documented_ones() -> None:
    assert UNSUPPORTED_LIMIT == 0.3 and ABOVE_BASE_MARGIN == 0.0


def test_above_the_base_only() -> None:
    assert _warned(_models(0.10, tuned=(0.20, True))) == {"tuned": ["above_base"]}


def test_above_the_limit_only() -> None:
    assert _warned(_models(0.50, tuned=(0.35, True))) == {"tuned": ["above_limit"]}


def test_above_both() -> None:
    (w,) = closed_book_warnings(_models(0.25, tuned=(0.42, True)))
    assert w["reasons"] == ["above_limit", "above_base"]
    assert w["kind"] == KIND == "closed_book_unsupported"
    assert (w["model"], w["unsupported_rate"], w["base"], w["base_unsupported_rate"]) == ("tuned", 0.42, "base", 0.25)
    assert set(w) >= {"model", "kind", "unsupported_rate", "base_unsupported_rate", "message"}
    msg = w["message"]
    assert "\n" not in msg and msg.startswith("tuned: ")
    # Korean first, then English; the grounded mode with its three commands and the README section.
    assert msg.index("문서 기반 학습") < msg.index("answered closed-book")
    assert "0.420" in msg and "0.250" in msg and "0.3 초과" in msg and "above 0.3" in msg
    for part in ("kotune generate", "--grounded", "kotune train --template rag", "kotune eval --context chunks.jsonl",
                 '"문서 기반 답변(grounded)과 닫힌 책"', '"Grounded vs closed-book"'):
        assert part in msg and part in GROUNDED_HINT


def test_neither() -> None:
    assert _warned(_models(0.20, tuned=(0.20, True), other=(0.05, True))) == {}
    assert _warned(_models(0.40, tuned=(0.30, True))) == {}  # at the limit and below the base: not above either


def test_a_grounded_model_is_never_warned() -> None:
    assert _warned(_models(0.10, tuned=(0.90, False))) == {}
    # metrics.json from before closed_book was recorded: not judged
    assert _warned(_models(0.10, tuned=(0.90, None))) == {}


def test_the_base_is_never_warned() -> None:
    assert _warned({"base": _model(0.95)}) == {}
    assert _warned(_models(0.95, tuned=(0.05, True))) == {}
    # the base is whichever model comes first, whatever its name
    assert _warned({"tuned": _model(0.9), "base": _model(0.1)}) == {}


def test_each_tuned_model_is_judged_against_the_first() -> None:
    models = _models(0.20, tuned=(0.25, True), dpo=(0.15, True), rag=(0.8, False), big=(0.31, True))
    assert _warned(models) == {"tuned": ["above_base"], "big": ["above_limit", "above_base"]}


def test_a_missing_rate_is_not_judged_and_a_missing_base_rate_leaves_the_limit() -> None:
    assert _warned(_models(0.10, tuned=(None, True))) == {}
    assert _warned(_models(None, tuned=(0.25, True), big=(0.5, True))) == {"big": ["above_limit"]}
    (w,) = closed_book_warnings(_models(None, big=(0.5, True)))
    assert w["base_unsupported_rate"] is None and "None" not in w["message"]


def test_closed_book_means_no_prompt_carried_passages() -> None:
    qs = [{"question": "a", "input": ""}, {"question": "b", "input": ""}]
    assert asked_closed_book(qs, ["", ""])
    assert not asked_closed_book(qs, ["", "[문서 1] 본문"])               # retrieved (--context) or its own context
    assert not asked_closed_book([qs[0], {"question": "b", "input": "[문서 1] 본문"}], ["", ""])  # a record's passages
    assert asked_closed_book([{"question": "a", "input": "  "}], [" "])


# ---------------------------------------------------------------- metrics.json → report
def _metrics(base: float, tuned: float, *, closed_book: bool = True) -> dict:
    models = {"base": _model(base, closed_book), "tuned": _model(tuned, closed_book)}
    return {"models": models, "questions": 4, "context": None, "warnings": closed_book_warnings(models)}


def test_the_report_shows_the_warning_at_the_top() -> None:
    metrics = _metrics(0.2, 0.45)
    (w,) = metrics["warnings"]
    report = build_report(metrics, [])
    assert [(a.model, a.kind, a.message) for a in report.warnings] == [("tuned", KIND, w["message"])]

    md = render_markdown(metrics, [])
    assert WARNINGS_TITLE in md
    line = next(l for l in md.splitlines() if l.startswith("> ⚠"))
    # Markdown escapes (closed\_book, unsupported\_rate); the text is the message.
    assert line.replace("\\", "") == "> ⚠ " + w["message"]
    first_table = next(i for i, l in enumerate(md.splitlines()) if l.startswith("| "))
    assert md.splitlines().index(line) < first_table

    page = render_html(metrics, [])
    assert 'id="warnings" class="callout" role="alert"' in page
    assert page.index('id="warnings"') < page.index('id="metrics"')
    assert "kotune train --template rag" in page and "문서 기반 답변" in page
    assert "<script" not in page and not any(f"{a}=\"http" in page for a in ("href", "src"))  # no external assets


def test_no_warning_no_callout() -> None:
    metrics = _metrics(0.2, 0.1)
    assert metrics["warnings"] == []
    assert WARNINGS_TITLE not in render_markdown(metrics, []) and 'id="warnings"' not in render_html(metrics, [])
    assert 'id="warnings"' not in render_html(_metrics(0.1, 0.9, closed_book=False), [])


def test_warning_text_is_escaped_in_both_renderers() -> None:
    metrics = {"models": {"base": _model(0.1), "<b>x|y</b>": _model(0.9)}, "questions": 1}
    metrics["warnings"] = closed_book_warnings(metrics["models"])
    assert "<b>x|y</b>" not in render_html(metrics, []) and "&lt;b&gt;x|y&lt;/b&gt;" in render_html(metrics, [])
    md = render_markdown(metrics, [])
    assert "\\<b\\>x\\|y\\</b\\>" in md


# ---------------------------------------------------------------- kotune doctor
def _eval_dir(tmp_path: Path, metrics: dict, name: str = "eval") -> Path:
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")
    return d


def test_doctor_eval_alone_warns_without_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kotune.train.doctor as doctor

    def no_model(*a, **k):
        raise AssertionError("kotune doctor --eval alone must not read a model")

    monkeypatch.setattr(doctor, "diagnose", no_model)
    monkeypatch.setenv("COLUMNS", "400")
    metrics = _metrics(0.2, 0.45)
    d = _eval_dir(tmp_path, metrics)
    res = call_cli(["doctor", "--eval", d])
    assert res.code == 0, res.err          # a warning, not a problem
    assert "closed_book_unsupported" in res.err and "warn" in res.err
    assert "1 warning(s)" in res.err
    for part in ("closed-book", "0.450", "0.200", "--grounded", "--template", "chunks.jsonl", "…"):
        assert (part in res.err) == (part != "…"), (part, res.err)   # the whole message, nothing cut
    (f,) = eval_findings(d)
    assert (f.code, f.ok, f.severity) == (KIND, False, "warning")
    assert f.message == metrics["warnings"][0]["message"]


def test_doctor_eval_passes_with_the_measured_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    d = _eval_dir(tmp_path, _metrics(0.2, 0.1))
    res = call_cli(["doctor", "--eval", d])
    assert res.code == 0 and "no pitfalls found" in res.err and "warning(s)" not in res.err
    (f,) = eval_findings(d)
    assert f.ok and "base 0.200" in f.message and "tuned 0.100" in f.message
    (g,) = eval_findings(_eval_dir(tmp_path, _metrics(0.2, 0.9, closed_book=False), "grounded"))
    assert g.ok and "asked with passages" in g.message and "tuned 0.900" in g.message


def test_doctor_eval_errors(tmp_path: Path) -> None:
    res = call_cli(["doctor", "--eval", tmp_path / "nope"])
    assert res.code != 0 and "no such folder" in res.err
    (tmp_path / "empty").mkdir()
    res = call_cli(["doctor", "--eval", tmp_path / "empty"])
    assert res.code != 0 and "no metrics.json" in res.err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json", encoding="utf-8")
    res = call_cli(["doctor", "--eval", bad])
    assert res.code != 0 and "invalid metrics.json" in res.err
    res = call_cli(["doctor"])
    assert res.code != 0 and "--eval" in res.err
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    res = call_cli(["doctor", "--eval", bad, "--data", data])   # --data alone is never silently ignored
    assert res.code != 0 and "--data is checked with a model" in res.err


def test_doctor_finds_the_eval_of_a_recipe_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``kotune doctor OUT/model`` of a ``kotune run`` output also checks OUT/eval (the model
    checks are stubbed: they read a tokenizer)."""
    import kotune.train.doctor as doctor
    from kotune.options import DoctorOptions
    from kotune.recipe import steps

    out = tmp_path / "out"
    model = out / "model"
    model.mkdir(parents=True)
    (model / "kotune.json").write_text("{}", encoding="utf-8")
    assert eval_next_to(model) is None                       # no eval yet
    d = _eval_dir(out, _metrics(0.2, 0.45))
    assert eval_next_to(model) is None                       # not a kotune run output (no run.json)
    (out / "run.json").write_text("{}", encoding="utf-8")
    assert eval_next_to(model) == d.resolve()

    seen: list = []
    monkeypatch.setattr(doctor, "diagnose", lambda setup, log=print: seen.append(setup) or [])
    monkeypatch.setenv("COLUMNS", "400")
    res = call_cli(["doctor", model])
    assert res.code == 0 and "closed_book_unsupported" in res.err and "1 warning(s)" in res.err, res.err
    assert seen and seen[0].run_dir == str(model)
    assert steps.doctor(model, DoctorOptions()) == 0
    checked = eval_findings(d, run_dir=model)
    assert [(f.code, f.ok) for f in checked] == [(KIND, False)]
    # An eval older than the run did not evaluate it: not judged.
    old = (model / "kotune.json").stat().st_mtime - 60
    os.utime(d / "metrics.json", (old, old))
    (f,) = eval_findings(d, run_dir=model)
    assert f.ok and "older than this run" in f.message


# ---------------------------------------------------------------- kotune eval, through a canned endpoint
QUESTIONS = [
    {"question": "총사업비는 얼마인가요?", "reference": "총사업비는 3조 원입니다."},
    {"question": "위원장은 누구인가요?", "reference": "과학기술정보통신부 장관이 위원장을 맡습니다."},
]
ANSWERS = {  # the base repeats the reference; the tuned model invents
    "base": ["총사업비는 3조 원입니다.", "과학기술정보통신부 장관이 위원장을 맡습니다."],
    "tuned": ["총사업비는 7조 원이며 국무총리가 매년 기획재정부와 협의하여 증액합니다.",
              "위원장은 국무총리이고 부위원장은 서울특별시장이 맡습니다."],
}


def _eval(tmp_path: Path, questions: list[dict], name: str):
    qfile = tmp_path / f"{name}.jsonl"
    qfile.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    with canned_openai(ANSWERS, [q["question"] for q in QUESTIONS]) as url:
        res = call_cli(["eval", "--questions", qfile, "--models", f"base=openai:{url}#base",
                        f"tuned=openai:{url}#tuned", "-o", tmp_path / name])
    assert res.code == 0, res.err
    return res, json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8"))


def test_eval_records_closed_book_and_warns(tmp_path: Path) -> None:
    res, metrics = _eval(tmp_path, QUESTIONS, "closed")
    models = metrics["models"]
    assert metrics["context"] is None and models["base"]["closed_book"] is True and models["tuned"]["closed_book"] is True
    rate = models["tuned"]["overall"]["unsupported_rate"]
    assert rate > UNSUPPORTED_LIMIT and models["base"]["overall"]["unsupported_rate"] == 0
    (w,) = metrics["warnings"]
    assert (w["model"], w["kind"], w["unsupported_rate"], w["base_unsupported_rate"]) == ("tuned", KIND, rate, 0)
    assert w["reasons"] == ["above_limit", "above_base"]
    assert "warning:" in res.err and "closed-book" in res.err           # said at the end of kotune eval too
    md = (tmp_path / "closed" / "report.md").read_text(encoding="utf-8")
    assert WARNINGS_TITLE in md and md.index(WARNINGS_TITLE) < md.index("## Metrics")
    page = (tmp_path / "closed" / "report.html").read_text(encoding="utf-8")
    assert 'id="warnings"' in page and page.index('id="warnings"') < page.index('id="metrics"')
    # kotune doctor on the same folder: the same message, no model read
    (f,) = eval_findings(tmp_path / "closed")
    assert not f.ok and f.message == w["message"]


def test_eval_with_passages_is_grounded_and_not_warned(tmp_path: Path) -> None:
    passages = [dict(q, input=f"[문서 1]\n{q['reference']}") for q in QUESTIONS]
    res, metrics = _eval(tmp_path, passages, "grounded")
    assert metrics["models"]["tuned"]["closed_book"] is False and metrics["warnings"] == []
    assert metrics["models"]["tuned"]["overall"]["unsupported_rate"] > UNSUPPORTED_LIMIT
    assert WARNINGS_TITLE not in (tmp_path / "grounded" / "report.md").read_text(encoding="utf-8")
