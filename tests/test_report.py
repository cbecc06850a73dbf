"""The evaluation report: self-contained HTML with SVG charts, Markdown, and a real browser render."""

from __future__ import annotations

import ast
import copy
import fnmatch
import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from kotune.eval.report import build_report, render_html, render_markdown

CATEGORIES = ("법령", "기관", "산업")
ERRORS = ("정보 누락", "수치 오류", "기관 오용", "반복·미종료", "근거 없음")


def _group(n: int, r1: float, r2: float, rl: float, bleu: float, chrf: float,
           kw: float, eos: float, rep: float, uns: float) -> dict:
    return {"n": n, "n_reference": n, "rouge1": r1, "rouge2": r2, "rougeL": rl, "bleu": bleu, "chrf": chrf,
            "keyword_coverage": kw, "eos_rate": eos, "repetition": rep, "unsupported_rate": uns}


def example() -> tuple[dict, list[dict]]:
    """A base vs tuned evaluation as ``kotune eval`` writes it (metrics.json, responses.jsonl)."""
    sig = "nrefs:1|case:mixed|eff:no|tok:kiwi-morphemes|smooth:exp|version:2.5.6"
    metrics = {
        "models": {
            "base": {
                "overall": _group(9, 21.4, 8.2, 18.9, 4.1, 17.6, 0.296, 0.333, 0.412, 0.571),
                "by_category": {
                    "법령": _group(3, 18.0, 6.1, 15.2, 3.0, 15.9, 0.222, 0.333, 0.45, 0.61),
                    "기관": _group(3, 25.3, 10.4, 22.8, 5.5, 19.8, 0.389, 0.667, 0.31, 0.48),
                    "산업": _group(3, 20.9, 8.1, 18.7, 3.9, 17.1, 0.278, 0.0, 0.476, 0.623),
                },
                "error_types": dict(zip(ERRORS, (7, 3, 2, 6, 6))),
                "notes": [], "skipped": [], "n_rows": 9, "tokenization": "kiwi-morphemes", "bleu_signature": sig,
            },
            "tuned": {
                "overall": _group(9, 58.7, 39.5, 54.2, 31.6, 48.3, 0.815, 1.0, 0.021, 0.118),
                "by_category": {
                    "법령": _group(3, 61.2, 44.0, 57.9, 35.2, 51.0, 0.889, 1.0, 0.0, 0.09),
                    "기관": _group(3, 55.0, 35.1, 50.3, 28.7, 45.2, 0.722, 1.0, 0.05, 0.14),
                    "산업": _group(3, 59.9, 39.4, 54.4, 30.9, 48.7, 0.833, 1.0, 0.013, 0.124),
                },
                "error_types": dict(zip(ERRORS, (2, 1, 0, 0, 1))),
                "notes": [], "skipped": [], "n_rows": 9, "tokenization": "kiwi-morphemes", "bleu_signature": sig,
            },
        },
        "questions": 9,
        "tokenization": "kiwi-morphemes",
        "bleu_signature": sig,
    }
    qa = [
        ("법령", "기본계획은 어떤 법률에 따라 수립하나요?",
         "「국가초고성능컴퓨터 활용 및 육성에 관한 법률」 제5조에 따라 5년마다 수립합니다.",
         "기본계획은 여러 법률과 관련이 있으며 정부가 필요할 때마다 수립하는 것으로 알려져 있습니다. 기본계획은 여러 법률과 관련이 있으며",
         "「국가초고성능컴퓨터 활용 및 육성에 관한 법률」 제5조에 따라 5년마다 수립합니다."),
        ("법령", "의료·유전체 데이터를 분석할 때 지켜야 할 법은?",
         "「개인정보 보호법」에 따라 가명 처리와 접근 통제 등 안전 조치를 갖추어야 합니다.",
         "데이터 분석에는 <script>alert('x')</script> 특별한 규정이 없습니다.",
         "「개인정보 보호법」에 따라 가명 처리와 접근 통제 등 안전 조치를 갖추어야 합니다."),
        ("법령", "법 개정으로 무엇이 지원 대상에 포함되나요?",
         "인공지능 컴퓨팅 자원이 법의 지원 대상에 명시적으로 포함됩니다.",
         "초고성능컴퓨터가 포함됩니다",
         "법을 개정하여 인공지능 컴퓨팅 자원을 지원 대상에 명시적으로 포함합니다."),
        ("기관", "국가센터의 역할은 무엇인가요?",
         "한국과학기술정보연구원(KISTI)이 국가센터로서 플래그십 시스템과 통합 자원배분 플랫폼을 구축하고 운영합니다.",
         "국가센터는 기상청이 운영하며 날씨를 예보합니다.",
         "KISTI가 국가센터로서 플래그십 시스템과 통합 자원배분 플랫폼을 구축·운영합니다."),
        ("기관", "위원회의 위원장은 누구인가요?",
         "과학기술정보통신부 장관이 위원장을 맡습니다.",
         "위원장은 국무총리입니다.",
         "과학기술정보통신부 장관이 위원장을 맡습니다."),
        ("기관", "중소기업의 이용료는 어느 부처가 지원하나요?",
         "중소벤처기업부가 바우처 방식으로 지원합니다.",
         "산업통상자원부가 지원하고 산업통상자원부가 지원하고 산업통상자원부가 지원하고",
         "중소벤처기업부가 계산 자원 이용료를 바우처 방식으로 지원합니다."),
        ("산업", "국내 기업의 하드웨어 시장 점유율은 얼마인가요?",
         "국내 기업의 점유율은 5% 미만입니다.",
         "약 30% 수준입니다.",
         "국내 기업의 하드웨어 시장 점유율은 5% 미만입니다."),
        ("산업", "신차 개발 기간은 얼마나 단축하나요?",
         "평균 18개월에서 12개월로 단축하는 것이 목표입니다.",
         "자동차 분야에서는 충돌 해석을 지원하여",
         "자동차 분야의 신차 개발 기간을 평균 18개월에서 12개월로 단축하는 것을 목표로 합니다."),
        ("산업", "육성할 소프트웨어·서비스 기업은 몇 곳인가요?",
         "2030년까지 100곳을 집중 육성합니다.",
         "기업을 많이 육성합니다. 기업을 많이 육성합니다. 기업을 많이 육성합니다. 기업을 많이 육성합니다.",
         "2030년까지 초고성능컴퓨팅 관련 소프트웨어 및 서비스 기업 100곳을 집중 육성합니다."),
    ]
    base_errors = [["정보 누락", "반복·미종료", "근거 없음"], ["정보 누락", "근거 없음"], ["정보 누락", "반복·미종료"],
                   ["정보 누락", "기관 오용", "근거 없음"], ["수치 오류", "근거 없음"], ["기관 오용", "반복·미종료"],
                   ["수치 오류", "근거 없음"], ["정보 누락", "반복·미종료"], ["정보 누락", "수치 오류", "반복·미종료", "근거 없음"]]
    base_finish = ["length", "eos", "length", "eos", "eos", "length", "eos", "length", "length"]
    responses = []
    for i, ((cat, q, ref, base, tuned), errs, fin) in enumerate(zip(qa, base_errors, base_finish), 1):
        responses.append({
            "id": f"q{i:04d}", "question": q, "category": cat, "reference": ref, "keywords": [],
            "answers": {
                "base": {"text": base, "finish_reason": fin, "errors": errs, "retrieved": [], "rougeL": 12.5},
                "tuned": {"text": tuned, "finish_reason": "eos", "errors": ["수치 오류"] if i == 7 else [],
                          "retrieved": ["4a1f0c2e9b7d3a10", "c0ffee00deadbeef"], "rougeL": 71.0},
            },
        })
    return metrics, responses


@pytest.fixture(scope="module")
def html_report() -> str:
    metrics, responses = example()
    return render_html(metrics, responses, title="정책 QA: base vs tuned")


def test_html_is_a_self_contained_utf8_page(html_report):
    assert html_report.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in html_report
    assert "Noto Sans CJK KR" in html_report and "Malgun Gothic" in html_report
    assert "<script" not in html_report.lower()
    # No external resources: the only URL is the SVG namespace.
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'<>)]*", html_report))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html_report)


def test_html_has_the_metrics_table_with_best_values(html_report):
    table = re.search(r'<table class="metrics">.*?</table>', html_report, re.S).group(0)
    for head in ("ROUGE-L", "BLEU", "chrF", "keyword coverage", "EOS rate", "unsupported rate"):
        assert head in table
    assert ">base</td>" in table.replace("</span> ", ">") and "tuned" in table
    best = re.findall(r'<td class="best">([^<]*)</td>', table)
    # tuned is best on every column: higher ROUGE/BLEU/coverage/EOS, lower repetition/unsupported.
    assert "54.2" in best and "0.021" in best and "0.118" in best and "18.9" not in best
    assert "kiwi-morphemes" in html_report and "tok:kiwi-morphemes" in html_report


def test_html_has_one_chart_per_headline_metric_and_error_chart(html_report):
    for key in ("rougeL", "keyword_coverage", "eos_rate", "unsupported_rate"):
        fig = re.search(rf'<figure data-metric="{key}">(.*?)</figure>', html_report, re.S)
        assert fig and fig.group(1).startswith("<svg"), key
        svg = fig.group(1)
        assert svg.count("<rect") >= 2 * 4 + 2  # 2 models × (overall + 3 categories) + legend swatches
        for cat in CATEGORIES:
            assert f">{cat}</text>" in svg
        assert ">category</text>" in svg and ">base</text>" in svg and ">tuned</text>" in svg
    assert html_report.count("<svg") == 5
    errors = html_report[html_report.index('<section id="errors">'):]
    for err in ERRORS:
        assert html.escape(err) in errors
    assert "Error types (answers tagged)" in errors


def test_html_shows_every_question_side_by_side(html_report):
    metrics, responses = example()
    for r in responses:
        assert html.escape(r["question"]) in html_report
        assert html.escape(r["reference"]) in html_report
    assert html_report.count('<article class="q"') == len(responses)
    assert "국가센터의 역할은 무엇인가요?" in html_report
    assert 'class="badge finish-cut">length<' in html_report and 'class="badge finish-ok">eos<' in html_report
    assert ">반복·미종료</span>" in html_report
    assert "4a1f0c2e9b7d3a10" in html_report  # retrieved chunk ids


def test_html_escapes_answer_text(html_report):
    assert "<script>alert" not in html_report
    # Jinja's autoescape writes ' as &#39; (html.escape wrote &#x27;): the same character.
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html_report
    texts = [html.unescape(t) for t in re.findall(r'<div class="text">(.*?)</div>', html_report, re.S)]
    assert "데이터 분석에는 <script>alert('x')</script> 특별한 규정이 없습니다." in texts


def test_hostile_names_are_escaped_everywhere():
    metrics, responses = example()
    evil = '<img src=x onerror="alert(1)">'
    metrics["models"][evil] = metrics["models"].pop("tuned")
    metrics["models"][evil]["by_category"][evil] = metrics["models"][evil]["by_category"].pop("산업")
    for r in responses:
        r["answers"][evil] = r["answers"].pop("tuned")
        r["category"] = evil
    out = render_html(metrics, responses, title=evil)
    assert evil not in out and "<img" not in out
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in out
    md = render_markdown(metrics, responses, title=evil)
    assert re.search(r"(?<!\\)<img", md) is None and "\\<img" in md


def test_missing_values_and_single_model_render():
    metrics, responses = example()
    del metrics["models"]["tuned"]
    for r in responses:
        del r["answers"]["tuned"]
        r["reference"] = ""
    base = metrics["models"]["base"]
    for g in [base["overall"], *base["by_category"].values()]:
        g.update(rouge1=None, rouge2=None, rougeL=None, bleu=None, chrf=None, keyword_coverage=None)
    base["skipped"] = [{"metric": "keyword_coverage", "reason": "no row has keywords"}]
    out = render_html(metrics, responses)
    assert "keyword coverage</b>: not computed — no row has keywords" in out
    assert 'class="best"' not in out  # nothing to compare against
    assert "—" in out
    assert render_markdown(metrics, responses).startswith("# kotune eval\n")


def test_empty_inputs_render():
    assert "<html" in render_html({"models": {}}, [])
    assert render_markdown({"models": {}}, []).startswith("# kotune eval")


def test_rendering_is_deterministic():
    a, b = example(), example()
    assert render_html(*a) == render_html(*b)
    assert render_markdown(*a) == render_markdown(*b)


def test_markdown_tables_and_answers():
    metrics, responses = example()
    md = render_markdown(metrics, responses, title="정책 QA")
    lines = md.splitlines()
    assert lines[0] == "# 정책 QA"
    header = next(i for i, l in enumerate(lines) if l.startswith("| model | n | ROUGE-1"))
    assert lines[header + 1].startswith("| --- | ---: |")
    tuned_row = next(l for l in lines[header:] if l.startswith("| tuned |"))
    assert "**54.2**" in tuned_row and "**0.118**" in tuned_row
    assert "| model | overall | 법령 | 기관 | 산업 |" in md
    assert "| model | answers | 정보 누락 | 수치 오류 | 기관 오용 | 반복·미종료 | 근거 없음 | total tags |" in md
    assert "### 4. [기관] 국가센터의 역할은 무엇인가요?" in md
    assert "**base** — finish: length · errors: 정보 누락, 반복·미종료, 근거 없음" in md
    assert "tok:kiwi-morphemes" in md
    # Markup in answers is inert: escaped, not live HTML.
    assert "<script>" not in md and r"\<script\>" in md


def test_report_renders_scores_from_metrics_module():
    """The real scorer's output (with its own keys and error types) goes straight into the report."""
    from kotune.eval.metrics import score_rows

    metrics, responses = example()
    real = {"models": {}}
    for name in ("base", "tuned"):
        rows = [{"answer": r["answers"][name]["text"], "reference": r["reference"], "category": r["category"],
                 "finish_reason": r["answers"][name]["finish_reason"], "question": r["question"]} for r in responses]
        real["models"][name] = score_rows(rows)
        real["models"][name].pop("per_row")
    out = render_html(real, responses)
    assert '<table class="metrics">' in out
    # No keywords in these rows: keyword coverage gets a note instead of an empty chart.
    assert out.count("<svg") == 4 and "keyword coverage</b>: not computed — no row has keywords" in out
    assert "| model | n | ROUGE-1" in render_markdown(real, responses)


# --------------------------------------------------------------------------- one model, two renderers

PIPE_NAME = "x|<y>"  # a model name that is both a Markdown table separator and markup


def full_example() -> tuple[dict, list[dict]]:
    """example() plus a third model with a hostile name, notes, a judge section and a pipe in an answer."""
    metrics, responses = example()
    third = copy.deepcopy(metrics["models"]["base"])
    third["overall"]["rougeL"] = 54.2  # ties tuned: both best
    third["notes"] = ["scored | on 9 rows <only>"]
    metrics["models"][PIPE_NAME] = third
    metrics["judge"] = {"judge_model": "judge-7b", "baseline": "base",
                        "pairs": {"tuned": {"win_rate": 0.778, "loss_rate": 0.111, "tie_rate": 0.111,
                                            "order_disagreement": 0.2},
                                  PIPE_NAME: {"win_rate": None, "loss_rate": 0.5, "tie_rate": 0.5,
                                              "order_disagreement": 0.0}}}
    for r in responses:
        r["answers"][PIPE_NAME] = {"text": "표 | 아님\n| --- |\n두 번째 줄", "finish_reason": "stop", "errors": []}
    return metrics, responses


class _Tables(HTMLParser):
    """Every <table> of a page: title (caption, else the section's <h2>), cells as (text, best); and the notes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self.notes: list[str] = []
        self._h2 = ""
        self._open: list[str] = []  # what the current text goes to: h2, caption, cell, note
        self._buf = ""
        self._best = False

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag == "table":
            self.tables.append({"title": self._h2, "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        if tag in ("h2", "caption", "td", "th") or (tag == "p" and cls == "note"):
            self._open.append(tag)
            self._buf, self._best = "", cls == "best"

    def handle_endtag(self, tag):
        if not self._open or self._open[-1] != tag:
            return
        self._open.pop()
        text = self._buf.strip()
        if tag == "h2":
            self._h2 = text
        elif tag == "caption":
            self.tables[-1]["title"] = text
        elif tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append((text, self._best))
        else:
            self.notes.append(text)

    def handle_data(self, data):
        if self._open:
            self._buf += data


def _md_unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _md_tables(md: str) -> list[dict]:
    """Every pipe table: title (the heading above it), cells as (text, best), and the "- " notes after it."""
    tables, heading, lines = [], "", md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = _md_unescape(line.lstrip("#").strip())
        if not line.startswith("|"):
            i += 1
            continue
        rows = []
        while i < len(lines) and lines[i].startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]]
            if not all(re.fullmatch(r"-+:?", c) for c in cells):
                rows.append([(_md_unescape(c[2:-2] if c.startswith("**") else c), c.startswith("**")) for c in cells])
            i += 1
        notes = []  # "- " lines up to the next heading or table
        while i < len(lines) and not lines[i].startswith(("#", "|")):
            if lines[i].startswith("- "):
                notes.append(_md_unescape(lines[i][2:]))
            i += 1
        tables.append({"title": heading, "rows": rows, "notes": notes})
    return tables


def test_each_table_shows_the_same_cells_in_html_and_markdown():
    metrics, responses = full_example()
    report = build_report(metrics, responses, title="정책 QA")
    expected = [{"title": t.title, "rows": [[(c.text, c.best) for c in row] for row in (t.header, *t.rows)]}
                for t in report.tables]
    # metrics, four headline metrics by category, error types, judge
    assert len(expected) == 7 and [t["title"] for t in expected][-2:] == ["Error types", "LLM judge"]

    page = _Tables()
    page.feed(render_html(metrics, responses, title="정책 QA"))
    md_tables = _md_tables(render_markdown(metrics, responses, title="정책 QA"))
    assert [{"title": t["title"], "rows": t["rows"]} for t in page.tables] == expected
    assert [{"title": t["title"], "rows": t["rows"]} for t in md_tables] == expected
    for table, md_table in zip(report.tables, md_tables):
        assert md_table["notes"] == list(table.notes)
        assert all(note in page.notes for note in table.notes)

    metrics_rows = {row[0][0]: row for row in expected[0]["rows"][1:]}
    assert set(metrics_rows) == {"base", "tuned", PIPE_NAME}
    rouge_l = [c[0] for c in expected[0]["rows"][0]].index("ROUGE-L ↑")
    assert metrics_rows["tuned"][rouge_l] == ("54.2", True) and metrics_rows[PIPE_NAME][rouge_l] == ("54.2", True)
    assert metrics_rows["base"][rouge_l] == ("18.9", False)
    judge = {row[0][0]: [c[0] for c in row[1:]] for row in expected[-1]["rows"][1:]}
    assert judge == {"tuned": ["0.778", "0.111", "0.111", "0.200"], PIPE_NAME: ["—", "0.500", "0.500", "0.000"]}
    assert "scored | on 9 rows <only>" in report.metrics.notes


def test_metric_labels_and_descriptions_come_from_the_catalogue():
    from kotune.eval import report as report_module
    from kotune.eval.metrics import ABSTAIN_METRICS, CATALOGUE, CITATION_METRICS, REFERENCE_METRICS, ROW_METRICS

    assert [m.key for m in CATALOGUE] == [*REFERENCE_METRICS, *ROW_METRICS, *ABSTAIN_METRICS, *CITATION_METRICS]
    assert report_module.METRICS == tuple((m.key, m.label, m.vmax, m.higher_is_better) for m in CATALOGUE)
    # No question marked unanswerable and none asked with numbered passages: no abstention
    # columns (tests/test_abstention.py), no citation columns (tests/test_citations.py).
    metrics, responses = example()
    shown = [m for m in CATALOGUE if m.key not in ABSTAIN_METRICS and m.key not in CITATION_METRICS]
    header = build_report(metrics, responses).metrics.header[2:]
    assert [(c.text, c.hint) for c in header] == [
        (f"{m.label} {'↑' if m.higher_is_better else '↓'}", m.description) for m in shown]
    page = render_html(metrics, responses)
    for m in shown:
        assert f"<li><b>{m.label}</b> ({m.scale}, {m.direction} is better): {m.description}</li>" in page


def test_script_in_an_answer_is_inert_in_the_html():
    metrics, responses = example()
    attack = '</div><script>alert("pwn")</script><img src=x onerror=alert(1)> & 끝'
    responses[0]["answers"]["tuned"]["text"] = attack
    responses[1]["question"] = attack
    responses[2]["reference"] = attack
    out = render_html(metrics, responses)
    assert "<script" not in out.lower() and "<img" not in out.lower()
    shown = [html.unescape(t) for t in re.findall(r'<div class="text">(.*?)</div>', out, re.S)]
    assert attack in shown
    assert html.unescape(re.search(r'<span class="question">(.*?)</span>', out[out.index('id="q-2"'):]).group(1)) == attack
    assert f'<div class="body">{html.escape(attack, quote=False)}</div>' in out.replace("&#34;", '"')


def test_markdown_escapes_pipes_in_answers_and_names():
    metrics, responses = full_example()
    md = render_markdown(metrics, responses)
    # Each answer line is quoted with its pipes escaped, so it can never open a table.
    assert "> 표 \\| 아님\n> \\| --- \\|\n> 두 번째 줄" in md
    assert "**x\\|\\<y\\>** — finish: stop" in md
    # Every row of every pipe table has as many (unescaped) columns as its header.
    for t in _md_tables(md):
        assert len({len(row) for row in t["rows"]}) == 1, t["title"]
    assert "| x\\|\\<y\\> | 9 |" in md


def test_template_ships_as_package_data():
    template = resources.files("kotune") / "assets" / "report.html.j2"
    assert template.is_file()
    text = template.read_text(encoding="utf-8")
    assert "<!DOCTYPE html>" in text and "{{ r.title }}" in text
    # The wheel (and an editable install) carries it: pyproject's package-data globs match the path.
    # (read by hand: tomllib is 3.11+ and kotune supports 3.10; a TOML string array is a Python literal)
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    globs = ast.literal_eval(re.search(r"^kotune\s*=\s*(\[.*?\])", section, re.M | re.S).group(1))
    assert any(fnmatch.fnmatch("assets/report.html.j2", g) for g in globs), globs
    from kotune.eval.report import _template

    assert _template().environment.autoescape is True


# --------------------------------------------------------------------------- real browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium not found: run scripts/install-system-deps.sh (apt-get install chromium fonts-noto-cjk)")


def _korean_font_installed() -> bool:
    fc = shutil.which("fc-list")
    if not fc:
        return False
    out = subprocess.run([fc, ":lang=ko", "family"], capture_output=True, text=True).stdout
    return bool(out.strip())


def screenshot(html_path: Path, png: Path, profile: Path, size: str = "1280,2000") -> None:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}",
           html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}"


def test_report_renders_in_headless_chromium(tmp_path):
    _chromium()
    assert _korean_font_installed(), "no Korean font (fc-list :lang=ko is empty): run scripts/install-system-deps.sh"
    metrics, responses = example()
    page = tmp_path / "report.html"
    page.write_text(render_html(metrics, responses, title="정책 QA: base vs tuned"), encoding="utf-8")
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "profile")

    from PIL import Image  # installed with tensorboard

    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 2000)
    small = img.resize((320, 500))
    colours = small.getcolors(maxcolors=1 << 20)
    assert colours and len(colours) > 200, f"only {len(colours or [])} colours: blank page?"
    non_white = sum(n for n, c in colours if c != (255, 255, 255))
    assert non_white > 0.05 * 320 * 500, "the page is almost all white"
    # The model colours of the charts (Tableau blue and orange) are on screen.
    full = dict((c, n) for n, c in img.getcolors(maxcolors=1 << 22))
    assert full.get((0x4E, 0x79, 0xA7), 0) > 500 and full.get((0xF2, 0x8E, 0x2B), 0) > 500

