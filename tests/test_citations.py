"""Citations, checked: an answer's ``[문서 n]`` citations read, the prompt's numbered passages
split out, each cited passage checked for the reference answer's key facts; per row
``citations`` / ``citation_correct`` / ``cited_passages``, overall and by category
``citation_accuracy`` and ``cited_rate``, the cited passages next to the answer in
report.md / report.html and on the studio's eval page, and ``kotune score`` / ``kotune eval``
passing the passages through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kotune.eval.metrics as m
from conftest import call_cli, read_jsonl
from helpers.canned import canned_openai
from kotune.eval.report import PREVIEW_CHARS, Cited, build_report, cited_passages, render_html, render_markdown
from kotune.model.retrieval import cite, format_context
from kotune.model.templates import ABSTENTION

CHUNKS = [
    {"chunk_id": "plan", "text": "정부는 2023년 3월에 국가 인공지능 전략을 발표했다.", "metadata": {"breadcrumbs": "추진 경과"}},
    {"chunk_id": "budget", "text": "총사업비는 4,500억 원이며 2030년까지 단계적으로 투입된다.",
     "metadata": {"breadcrumbs": "예산"}},
    {"chunk_id": "roles", "text": "과학기술정보통신부가 사업을 총괄하고 정보통신산업진흥원이 실무를 맡는다.",
     "metadata": {"breadcrumbs": "기관별 역할"}},
]
# The three passages exactly as a grounded prompt holds them: [문서 1]..[문서 3].
CTX = format_context([(c, 0.0) for c in CHUNKS])
BUDGET = "총사업비는 4,500억 원입니다"       # its key facts (from the reference): 4,500억, 사업비 → passage 2
ROLES = "과학기술정보통신부가 사업을 총괄합니다"  # key facts given as keywords → passage 3


def _row(answer: str, category: str, *, reference: str | None = cite(BUDGET, 2), context: str = CTX, **kw) -> dict:
    return {"answer": answer, "reference": reference, "context": context, "category": category, **kw}


ROWS = [
    _row(cite(BUDGET, 2), "수치"),                                   # 0 right citation
    _row(cite(BUDGET, 1), "수치"),                                   # 1 wrong passage
    _row(cite(BUDGET, 7), "수치"),                                   # 2 [문서 7] of 3: no passage, wrong
    _row(BUDGET + ".", "수치"),                                      # 3 cites nothing
    _row(f"{ROLES} [문서 1][문서 3]", "기관", reference=cite(ROLES, 3),
         keywords=["과학기술정보통신부", "총괄"]),                    # 4 two passages: 1 wrong, 3 right
    _row(cite(ROLES, 3), "기관", reference=None),                    # 5 no reference, no keywords: unchecked
    _row(cite(BUDGET, 1), "기타", context="총사업비는 4,500억 원이다."),  # 6 no numbered passages
    _row(cite(ABSTENTION, 2), "기타"),                               # 7 abstained: excluded
    _row(cite("2040년 예산은 5조 원입니다", 2), "기타", reference=ABSTENTION, answerable=False),  # 8 unanswerable
]


# ---------------------------------------------------------------- parsing
def test_citations_in_an_answer() -> None:
    assert m.citations(cite(BUDGET, 2)) == [2]
    assert m.citations("… [문서 1][문서 3]") == [1, 3]
    assert m.citations("… [문서 1, 3] 그리고 [문서1,2]") == [1, 3, 2]  # list form; each number once
    assert m.citations("… [문서 2] … [문서 2]") == [2]
    assert m.citations("… [문서3]") == [3]
    # Not citations: a bare number, no brackets, a range, an empty answer.
    assert m.citations("… [1] 문서 2 [문서 1-3] [문서]") == []
    assert m.citations("") == m.citations(None) == []
    assert m.strip_cited("4,500억 원입니다 [문서 1, 3] [문서 2]") == "4,500억 원입니다"


def test_numbered_passages_are_the_ones_format_context_writes() -> None:
    passages = m.numbered_passages(CTX)
    assert list(passages) == [1, 2, 3]
    assert passages[2] == "(예산)\n총사업비는 4,500억 원이며 2030년까지 단계적으로 투입된다."
    # A label inside a line is text; text before the first label belongs to no passage.
    assert m.numbered_passages("머리말\n[문서 1]\n가 [문서 2] 나\n[문서 2]\n다") == {1: "가 [문서 2] 나", 2: "다"}
    assert m.numbered_passages("총사업비는 4,500억 원이다.") == {}
    assert m.numbered_passages(None) == {}


def test_key_facts_and_the_threshold() -> None:
    assert m.key_facts(None, cite(BUDGET, 2)) == m.key_facts(None, BUDGET) == ["4,500억", "사업비"]
    assert m.key_facts("과학기술정보통신부, 총괄", cite(ROLES, 3)) == ["과학기술정보통신부", "총괄"]  # keywords first
    assert m.key_facts(None, None) == [] and m.key_facts([], "  ") == []
    passage = m.numbered_passages(CTX)[3]
    # Morpheme match: "총괄하고" holds 총괄, "맡는다" holds 맡다.
    assert m.holds_facts(passage, ["총괄", "맡다"])
    assert m.holds_facts(passage, ["총괄", "예산"])                  # 1 of 2 = 0.5: enough
    assert not m.holds_facts(passage, ["총괄", "예산", "2030년"])    # 1 of 3
    assert m.CITATION_KEY_FACTS == 0.5 and not m.holds_facts(passage, [])


# ---------------------------------------------------------------- per row and rates
def test_each_row_and_the_exact_rates() -> None:
    out = m.score_rows(ROWS)
    rows = out["per_row"]
    assert [r["citations"] for r in rows] == [[2], [1], [7], [], [1, 3], [3], [1], [2], [2]]
    assert [r["citation_correct"] for r in rows] == [True, False, False, None, False, None, None, None, None]
    assert [r["cited_correct"] for r in rows][:6] == [[True], [False], [False], [], [False, True], [None]]
    assert rows[0]["cited_passages"] == [m.numbered_passages(CTX)[2]]
    assert rows[2]["cited_passages"] == [None]                  # [문서 7]: no such passage
    assert rows[6]["cited_passages"] == [None]                  # no numbered passages at all
    assert rows[7]["abstained"] and rows[7]["cited_correct"] == [None]

    overall = out["overall"]
    # 5 passages checked in 4 answers (rows 0, 1, 2, 4): correct are row 0's and row 4's [문서 3].
    assert (overall["n_citing"], overall["n_cited"]) == (4, 5)
    assert overall["citation_accuracy"] == 0.4
    # Answered, answerable, asked with numbered passages: rows 0-5; all but row 3 cite.
    assert overall["n_citable"] == 6 and overall["cited_rate"] == round(5 / 6, 4)
    cats = out["by_category"]
    assert (cats["수치"]["citation_accuracy"], cats["수치"]["cited_rate"]) == (round(1 / 3, 4), 0.75)
    assert (cats["기관"]["citation_accuracy"], cats["기관"]["cited_rate"]) == (0.5, 1.0)
    assert (cats["기타"]["citation_accuracy"], cats["기타"]["cited_rate"]) == (None, None)


def test_passages_come_from_the_input_when_there_is_no_context() -> None:
    rows = [{"answer": cite(BUDGET, 2), "reference": BUDGET, "input": CTX},
            {"answer": cite(BUDGET, 2), "reference": BUDGET, "input": "총사업비는 4,500억 원이다."}]
    out = m.score_rows(rows)
    assert [r["citation_correct"] for r in out["per_row"]] == [True, None]
    assert out["overall"]["citation_accuracy"] == 1.0 and out["overall"]["cited_rate"] == 1.0


def test_no_row_cites_or_has_passages() -> None:
    closed = m.score_rows([{"answer": BUDGET, "reference": BUDGET}, {"answer": cite(BUDGET, 1), "reference": BUDGET}])
    assert closed["overall"]["citation_accuracy"] is None and closed["overall"]["cited_rate"] is None
    silent = m.score_rows([_row(BUDGET, "수치"), _row(ABSTENTION, "수치")])
    assert silent["overall"]["citation_accuracy"] is None and silent["overall"]["cited_rate"] == 0.0


def test_the_metrics_are_in_the_catalogue() -> None:
    info = {c.key: c for c in m.CATALOGUE}
    for key in m.CITATION_METRICS:
        assert info[key].vmax == 1.0 and info[key].higher_is_better


# ---------------------------------------------------------------- kotune score
def test_score_reports_citation_accuracy(tmp_path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    res = call_cli(["score", preds, "-o", tmp_path / "s.json"])
    assert res.code == 0, res.err
    overall = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["models"]["model"]["overall"]
    assert overall["citation_accuracy"] == 0.4 and overall["cited_rate"] == round(5 / 6, 4)
    assert "citation" in res.out + res.err  # the terminal table has the columns


# ---------------------------------------------------------------- report
def _report_inputs(rows: list[dict]) -> tuple[dict, list[dict]]:
    scored = m.score_rows(rows)
    per_row = scored.pop("per_row")
    responses = [{"id": f"q{i}", "question": f"질문 {i}", "category": r.get("category", ""),
                  "reference": r.get("reference") or "", "answerable": r.get("answerable", True),
                  "answers": {"tuned": {"text": r["answer"], "finish_reason": "stop", **p}}}
                 for i, (r, p) in enumerate(zip(rows, per_row))]
    return {"models": {"tuned": scored}}, responses


def test_markdown_report_shows_the_cited_passage_and_its_check() -> None:
    metrics, responses = _report_inputs(ROWS[:5])
    header = [c.text for c in build_report(metrics, responses).metrics.header]
    assert "citation accuracy ↑" in header and "cited rate ↑" in header
    md = render_markdown(metrics, responses)
    # Rows 0-4: 2 of 5 cited passages correct; 4 of 5 answers cite; every answer ends on its own.
    assert "| 1.000 | 0.000 | 0.075 | 0.400 | 0.800 |" in md
    assert "- cited \\[문서 2\\] ✓: (예산) 총사업비는 4,500억 원이며 2030년까지 단계적으로 투입된다." in md
    assert "- cited \\[문서 1\\] ✗: (추진 경과) 정부는 2023년 3월에 국가 인공지능 전략을 발표했다." in md
    assert "- cited \\[문서 7\\] ✗: *(not a passage of the prompt)*" in md
    assert "- cited \\[문서 3\\] ✓: (기관별 역할)" in md
    assert "citation accuracy: a cited passage is correct when it holds at least half" in md
    # The passage comes right after the answer it backs.
    q1 = md.index("### 1. [수치] 질문 0")
    assert md.index("> 총사업비는 4,500억 원입니다 \\[문서 2\\]", q1) < md.index("- cited \\[문서 2\\] ✓", q1)


def test_html_report_shows_the_cited_passage_collapsed() -> None:
    metrics, responses = _report_inputs(ROWS[:3])
    page = render_html(metrics, responses)
    assert page.count('<details class="cited">') == 3
    assert ('<summary>cited [문서 2] <span class="cite-ok" title="holds the key facts">✓</span></summary>'
            '<div class="passage">(예산)\n총사업비는 4,500억 원이며') in page
    assert '<span class="cite-bad" title="does not hold the key facts">✗</span>' in page
    assert "not a passage of the prompt" in page
    assert "citation accuracy" in page


def test_report_without_citations_has_no_citation_columns() -> None:
    metrics, responses = _report_inputs([{"answer": BUDGET, "reference": BUDGET}])
    header = [c.text for c in build_report(metrics, responses).metrics.header]
    assert not any("cit" in h for h in header)
    md = render_markdown(metrics, responses)
    assert "citation" not in md and "cited" not in md


def test_long_passages_are_cut_in_markdown_and_old_responses_cite_nothing() -> None:
    long = Cited(2, "가" * (PREVIEW_CHARS + 50), True)
    assert long.preview == "가" * PREVIEW_CHARS + "…" and long.mark == "✓" and long.label == "[문서 2]"
    assert Cited(7, None, None).mark == ""
    assert cited_passages({"text": "예전 평가의 답변"}) == ()
    assert cited_passages({"citations": [2, 7], "cited_passages": ["본문"], "cited_correct": [True]}) == (
        Cited(2, "본문", True), Cited(7, None, None))


# ---------------------------------------------------------------- the studio's eval page
def test_studio_eval_page_shows_the_cited_passage(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from kotune.studio.app import create_app

    metrics, responses = _report_inputs(ROWS[:3])
    for r in responses:  # a second model, so the page has two to compare
        r["answers"]["base"] = {"text": BUDGET + ".", "finish_reason": "stop"}
    folder = tmp_path / "root" / "ev"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"models": {"base": {}, **metrics["models"]}}, ensure_ascii=False),
                                         encoding="utf-8")
    (folder / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in responses),
                                            encoding="utf-8")
    page = TestClient(create_app(tmp_path / "root"), base_url="http://127.0.0.1").get("/eval?path=ev&lang=en")
    assert page.status_code == 200, page.text
    assert page.text.count('<details class="cited">') == 3
    assert '<div class="passage">(예산)\n총사업비는 4,500억 원이며' in page.text
    assert ">✓</span>" in page.text and ">✗</span>" in page.text and "not a passage of the prompt" in page.text


# ---------------------------------------------------------------- kotune eval, no model needed
QUESTIONS = [  # a grounded test split: the passages are the question's input
    {"question": "총사업비는 얼마인가요?", "input": CTX, "reference": cite(BUDGET, 2), "category": "수치"},
    {"question": "사업은 누가 총괄하나요?", "input": CTX, "reference": cite(ROLES, 3), "category": "기관"},
]
ANSWERS = [cite(BUDGET, 2), cite(ROLES, 1)]


@pytest.fixture()
def canned_url():
    with canned_openai({"tuned": ANSWERS}, [q["question"] for q in QUESTIONS]) as url:
        yield url


def test_eval_checks_citations_against_the_questions_passages(tmp_path: Path, canned_url: str) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    res = call_cli(["eval", "--questions", questions, "--models", f"tuned=openai:{canned_url}#tuned",
                    "-o", tmp_path / "ev"])
    assert res.code == 0, res.err
    overall = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["models"]["tuned"]["overall"]
    assert overall["citation_accuracy"] == 0.5 and overall["cited_rate"] == 1.0
    answers = [r["answers"]["tuned"] for r in read_jsonl(tmp_path / "ev" / "responses.jsonl")]
    assert [a["citations"] for a in answers] == [[2], [1]]
    assert [a["citation_correct"] for a in answers] == [True, False]
    assert answers[0]["cited_passages"] == [m.numbered_passages(CTX)[2]]
    assert CTX in answers[0]["prompt"][-1]["content"]  # asked with the question's input, as cited
    md = (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
    assert "- cited \\[문서 2\\] ✓: (예산) 총사업비는" in md and "- cited \\[문서 1\\] ✗: (추진 경과)" in md
    assert '<details class="cited">' in (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
