"""Abstention, end to end: one sentence (configurable, recorded in the run), questions marked
``answerable: false``, every answer marked ``abstained``, abstain_rate / false_abstain_rate and
two error types in metrics.json, and the marks in report.md / report.html."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kotune.eval.metrics as m
from conftest import call_cli, read_jsonl
from helpers.canned import canned_openai
from helpers.cli import one_error_line
from kotune.eval.evaluate import abstention_sentence, load_questions
from kotune.eval.report import ABSTAINED, UNANSWERABLE, build_report, render_html, render_markdown
from kotune.model.runinfo import RunInfo
from kotune.model.templates import ABSTENTION, RAG_INSTRUCTION
from kotune.options import EvalOptions, ScoreOptions, TrainOptions

CUSTOM = "자료에서 확인되지 않는 질문입니다."  # a run's own sentence: no refusal phrase of metrics.REFUSALS


# ---------------------------------------------------------------- one sentence, decided once
def test_the_sentence_is_decided_once_and_the_rag_instruction_is_unchanged() -> None:
    from kotune.train.sft import TrainConfig

    assert ABSTENTION == "문서에 해당 내용이 없습니다."
    assert EvalOptions.default("abstention") == TrainOptions.default("abstention") == ScoreOptions.default("abstention")
    assert TrainConfig("b", "d", "o").abstention == ABSTENTION
    # The rag template's instruction names the same sentence, byte for byte as before.
    assert RAG_INSTRUCTION == (
        "아래 제공된 [참고 문서]를 참고하여 사용자의 질문에 답변하세요. 문서에 명시된 내용에 근거하여 답변해야 하며, "
        "문서에 없는 내용은 추측하지 말고 '문서에 해당 내용이 없습니다'라고 답변하세요.")


def test_the_run_records_its_sentence_and_eval_prefers_it() -> None:
    from kotune.train.sft import TrainConfig

    run = RunInfo(status="complete", base_model="builtin:tiny-ko", abstention=CUSTOM)
    assert RunInfo.model_validate(run.to_dict()).abstention == CUSTOM
    assert "abstention" not in RunInfo(base_model="x").to_dict()  # older records read as before
    options = EvalOptions(abstention="모르는 내용입니다.")
    assert abstention_sentence(run, options) == CUSTOM
    assert abstention_sentence(RunInfo(base_model="x"), options) == "모르는 내용입니다."  # a run without one
    assert abstention_sentence(None, options) == "모르는 내용입니다."                      # a plain base
    # The sentence changes no weight: a run started before it existed stays resumable.
    assert "abstention" not in TrainConfig("b", "d", "o", abstention=CUSTOM).fingerprint()


@pytest.mark.parametrize("command", ["eval", "score", "train"])
def test_a_blank_abstention_is_one_error_line(command, tmp_path) -> None:
    args = {"eval": ["eval", "--questions", tmp_path / "q.txt", "--models", "builtin:tiny-ko", "-o", tmp_path / "ev"],
            "score": ["score", tmp_path / "p.jsonl", "-o", tmp_path / "s.json"],
            "train": ["train", "--data", tmp_path / "d.jsonl", "-o", tmp_path / "run"]}[command]
    one_error_line(call_cli([*args, "--abstention", " ... "]), "--abstention", "sentence")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- recognition
@pytest.mark.parametrize("answer", [
    "문서에 해당 내용이 없습니다.",                                  # the sentence itself
    "문서에 해당  내용이 없 습니다!",                                # spacing and punctuation do not matter
    "죄송합니다. 문서에 해당 내용이 없습니다.",                       # the sentence anywhere in the answer
    "제공된 문서에서는 해당 정보를 찾을 수 없습니다.",
    "주어진 문서에서는 찾을 수 없네요.",
    "찾을수없습니다",
    "해당 정보는 문서에 나와 있지 않아요.",
    "2040년 예산은 문서에 명시되어 있지 않으며, 추가 확인이 필요합니다.",
    "센터의 직원 수는 본문에 언급되어 있지 않습니다. 다만 약 500명으로 알려져 있습니다.",  # opens with a refusal
    "질문하신 내용은 제공된 자료에 포함되어 있지 않습니다.",
    "해당 내용이 없어 답변드리기 어렵습니다.",
    "문서에서 그 정보를 찾을 수 없었습니다.",
])
def test_refusals_count_as_abstaining(answer: str) -> None:
    assert m.abstains(answer)


@pytest.mark.parametrize("answer", [
    "찾을 수 없는 경우에는 콜센터에 문의합니다.",                     # adnominal: part of a fact
    "명시되어 있지 않은 사항은 시행령을 따릅니다.",
    "카드를 찾을 수 없을 경우 재발급을 신청하면 됩니다.",
    "약관에 나와 있지 않으면 상법을 따릅니다.",                        # a condition
    "분실한 카드를 찾을 수 없다면 즉시 정지를 신청하세요.",
    "계약서에 명시되어 있지 않아도 법정 이율이 적용됩니다.",            # a concession
    "총사업비는 3조 원입니다. 세부 일정은 문서에 나와 있지 않습니다.",   # answers first; only the first sentence counts
    "해당 내용이 없다는 민원이 많아 안내문을 고쳤습니다.",
    "잘 모르겠습니다.",                                                # not on the list: a non-answer, not an abstention
    "",
])
def test_near_misses_are_answers(answer: str) -> None:
    assert not m.abstains(answer)


def test_the_models_own_sentence_is_recognised() -> None:
    assert not m.abstains(CUSTOM)
    assert m.abstains(CUSTOM, CUSTOM) and m.abstains("자료에서 확인되지 않는 질문입니다", CUSTOM)
    assert m.abstains("문서에서 찾을 수 없습니다.", CUSTOM)  # the refusal phrases hold for every sentence
    assert not m.abstains("총사업비는 3조 원입니다.", "...")  # a sentence without words matches nothing


def test_error_types_of_abstention() -> None:
    ref = "과학기술정보통신부 장관이 위원장을 맡습니다."
    refusal = "문서에서 해당 정보를 찾을 수 없습니다."
    assert m.error_types(refusal, reference=ref) == [m.ERR_FALSE_ABSTAIN]  # not also 정보 누락
    assert m.error_types(refusal, reference=ABSTENTION, answerable=False) == []
    assert m.error_types("위원장은 국무총리입니다.", reference=ABSTENTION, answerable=False) == [m.ERR_ANSWERED_UNANSWERABLE]
    assert m.error_types(ABSTENTION, answerable=False, finish_reason="length") == [m.ERR_LOOP]
    assert m.ERROR_TYPES[-2:] == ("근거 없이 답함", "잘못 거절")


# ---------------------------------------------------------------- metrics
def test_abstain_rates_on_hand_made_rows() -> None:
    rows = [
        # 정책: 2 answerable (one abstains: a false abstention), 2 unanswerable (one abstains)
        {"answer": "총사업비는 3조 원입니다.", "reference": "총사업비는 3조 원입니다.", "category": "정책"},
        {"answer": "문서에서 해당 정보를 찾을 수 없습니다.", "reference": "위원장은 장관입니다.", "category": "정책"},
        {"answer": ABSTENTION, "reference": ABSTENTION, "answerable": False, "category": "정책"},
        {"answer": "2040년 예산은 5조 원입니다.", "reference": ABSTENTION, "answerable": False, "category": "정책"},
        # 기관: 1 answerable, answered; 1 unanswerable without a reference, abstained in other words
        {"answer": "KISTI가 국가센터입니다.", "reference": "KISTI가 국가센터입니다.", "answerable": True, "category": "기관"},
        {"answer": "직원 수는 문서에 나와 있지 않습니다.", "answerable": False, "category": "기관"},
    ]
    out = m.score_rows(rows)
    overall, policy, agency = out["overall"], out["by_category"]["정책"], out["by_category"]["기관"]
    assert (overall["answerable"], overall["unanswerable"]) == (3, 3)
    assert overall["abstain_rate"] == round(2 / 3, 4) and overall["false_abstain_rate"] == round(1 / 3, 4)
    assert (policy["answerable"], policy["unanswerable"], policy["abstain_rate"], policy["false_abstain_rate"]) == (2, 2, 0.5, 0.5)
    assert (agency["answerable"], agency["unanswerable"], agency["abstain_rate"], agency["false_abstain_rate"]) == (1, 1, 1.0, 0.0)
    assert [r["abstained"] for r in out["per_row"]] == [False, True, True, False, False, True]
    assert [r["answerable"] for r in out["per_row"]] == [True, True, False, False, True, False]
    assert out["error_types"][m.ERR_ANSWERED_UNANSWERABLE] == 1 and out["error_types"][m.ERR_FALSE_ABSTAIN] == 1
    assert [r["errors"] for r in out["per_row"]] == [[], [m.ERR_FALSE_ABSTAIN], [], [m.ERR_ANSWERED_UNANSWERABLE], [], []]
    # Reference metrics only where a reference exists (the abstention sentence counts as one).
    assert overall["n_reference"] == 5 and out["per_row"][2]["rougeL"] == 100.0 and out["per_row"][5]["rougeL"] is None
    # An abstention states no fact: no unsupported content.
    assert [r["unsupported_rate"] is None for r in out["per_row"]] == [False, True, True, False, False, True]


def test_without_unanswerable_questions_abstain_rate_is_null() -> None:
    out = m.score_rows([{"answer": "총사업비는 3조 원입니다.", "reference": "총사업비는 3조 원입니다."},
                        {"answer": "찾을 수 없습니다.", "reference": "위원장은 장관입니다."}])
    assert out["overall"]["abstain_rate"] is None and out["overall"]["unanswerable"] == 0
    assert out["overall"]["false_abstain_rate"] == 0.5


def test_score_rows_uses_the_given_sentence() -> None:
    rows = [{"answer": CUSTOM, "answerable": False}, {"answer": ABSTENTION, "answerable": False}]
    assert [r["abstained"] for r in m.score_rows(rows, abstention=CUSTOM)["per_row"]] == [True, True]  # 2nd: its phrase
    assert [r["abstained"] for r in m.score_rows(rows)["per_row"]] == [False, True]


# ---------------------------------------------------------------- questions
def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_questions_carry_answerable(tmp_path) -> None:
    q = _write(tmp_path / "q.jsonl", [{"question": "a?"}, {"question": "b?", "answerable": False},
                                      {"question": "c?", "answerable": True}, {"question": "d?", "answerable": None}])
    assert [r["answerable"] for r in load_questions(q)] == [True, False, True, True]
    j = tmp_path / "q.json"
    j.write_text(json.dumps([{"question": "a?", "answerable": False}, {"question": "b?"}], ensure_ascii=False),
                 encoding="utf-8")
    assert [r["answerable"] for r in load_questions(j)] == [False, True]
    t = tmp_path / "q.txt"
    t.write_text("a?\nb?\n", encoding="utf-8")
    assert [r["answerable"] for r in load_questions(t)] == [True, True]


def test_csv_answerable_forms(tmp_path) -> None:
    c = tmp_path / "q.csv"
    cells = ["true", "FALSE", "1", "0", "예", "아니오", " 아니요 ", ""]
    c.write_text("question,answerable\n" + "".join(f"질문 {i}?,{v}\n" for i, v in enumerate(cells)), encoding="utf-8")
    assert [r["answerable"] for r in load_questions(c)] == [True, False, True, False, True, False, False, True]


@pytest.mark.parametrize("name,body,needles", [
    ("q.jsonl", '{"question": "a?"}\n{"question": "b?"}\n{"question": "c?", "answerable": "yes"}\n',
     ["q.jsonl line 3", '"answerable" must be true or false', 'got "yes"']),
    ("q.jsonl", '{"question": "a?", "answerable": "false"}\n', ["q.jsonl line 1", 'got "false"']),  # JSON has booleans
    ("q.jsonl", '{"question": "a?", "answerable": 0}\n', ["q.jsonl line 1", "got 0"]),
    ("q.json", '[{"question": "a?"}, {"question": "b?", "answerable": "no"}]', ["q.json", "item 2", 'got "no"']),
    ("q.csv", "question,answerable\n가?,true\n나?,maybe\n", ["q.csv line 3", '"answerable"', 'got "maybe"']),
])
def test_a_bad_answerable_is_one_error_line_and_nothing_is_written(name, body, needles, tmp_path) -> None:
    q = tmp_path / name
    q.write_text(body, encoding="utf-8")
    res = call_cli(["eval", "--questions", q, "--models", "builtin:tiny-ko", "-o", tmp_path / "ev"])
    one_error_line(res, *needles)
    assert not (tmp_path / "ev").exists()


def test_score_passes_answerable_through(tmp_path) -> None:
    preds = _write(tmp_path / "p.jsonl", [
        {"answer": "총사업비는 3조 원입니다.", "reference": "총사업비는 3조 원입니다."},
        {"answer": "문서에 해당 내용이 없습니다.", "answerable": False},
        {"answer": "2040년 예산은 5조 원입니다.", "answerable": False},
    ])
    res = call_cli(["score", preds, "-o", tmp_path / "s.json"])
    assert res.code == 0, res.err
    scored = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["models"]["model"]
    assert scored["overall"]["unanswerable"] == 2 and scored["overall"]["abstain_rate"] == 0.5
    assert scored["overall"]["false_abstain_rate"] == 0.0 and scored["abstention"] == ABSTENTION
    assert scored["error_types"]["근거 없이 답함"] == 1
    bad = _write(tmp_path / "bad.jsonl", [{"answer": "가"}, {"answer": "나", "answerable": "아니오"}])
    one_error_line(call_cli(["score", bad, "-o", tmp_path / "t.json"]), "bad.jsonl line 2", 'got "아니오"')
    assert not (tmp_path / "t.json").exists()


# ---------------------------------------------------------------- report
def _report_inputs(unanswerable: bool) -> tuple[dict, list[dict]]:
    rows = [{"answer": "총사업비는 3조 원입니다.", "reference": "총사업비는 3조 원입니다."},
            {"answer": ABSTENTION, "reference": ABSTENTION, "answerable": not unanswerable}]
    scored = m.score_rows(rows)
    per_row = scored.pop("per_row")
    responses = [{"id": f"q{i}", "question": q, "reference": r["reference"], "answerable": r.get("answerable", True),
                  "answers": {"tuned": {"text": r["answer"], "finish_reason": "eos", **p}}}
                 for i, (q, r, p) in enumerate(zip(["총사업비는?", "2040년 예산은?"], rows, per_row), 1)]
    return {"models": {"tuned": scored}}, responses


def test_report_shows_rates_marks_and_error_types() -> None:
    metrics, responses = _report_inputs(unanswerable=True)
    report = build_report(metrics, responses)
    header = [c.text for c in report.metrics.header]
    assert "abstain rate ↑" in header and "false abstain rate ↓" in header
    assert {"근거 없이 답함", "잘못 거절"} <= {c.text for c in report.errors.header}
    md = render_markdown(metrics, responses)
    assert f"**{ABSTAINED}**" in md and UNANSWERABLE in md and "abstain rate" in md
    page = render_html(metrics, responses)
    assert f'<span class="badge abstained">{ABSTAINED}</span>' in page
    assert f'<span class="unanswerable">{UNANSWERABLE}</span>' in page
    assert "근거 없이 답함" in page and "잘못 거절" in page and page.count(ABSTAINED) == 1


def test_report_without_unanswerable_questions_has_no_rate_columns() -> None:
    metrics, responses = _report_inputs(unanswerable=False)
    header = [c.text for c in build_report(metrics, responses).metrics.header]
    assert not any("abstain" in h for h in header)
    assert UNANSWERABLE not in render_markdown(metrics, responses)
    assert ABSTAINED in render_markdown(metrics, responses)  # the answer still declined (a false abstention)


# ---------------------------------------------------------------- end to end: kotune eval, no model needed
QUESTIONS = [  # 3 answerable + 2 unanswerable
    {"question": "총사업비는 얼마인가요?", "reference": "총사업비는 3조 원입니다.", "category": "수치"},
    {"question": "위원장은 누구인가요?", "reference": "과학기술정보통신부 장관이 위원장을 맡습니다.", "category": "기관"},
    {"question": "국가센터는 어디인가요?", "reference": "KISTI가 국가센터입니다.", "category": "기관"},
    {"question": "2040년 예산은 얼마인가요?", "reference": ABSTENTION, "answerable": False, "category": "수치"},
    {"question": "센터의 직원 수는 몇 명인가요?", "answerable": False, "category": "기관"},
]
OPTION = "모르는 내용입니다."  # kotune eval --abstention: for the model without a run
ANSWERS = {
    "plain": ["총사업비는 3조 원입니다.", "문서에서 해당 정보를 찾을 수 없습니다.", "KISTI가 국가센터입니다.",
              OPTION, "직원은 500명입니다."],
    "tuned": ["총사업비는 3조 원입니다.", "과학기술정보통신부 장관이 위원장을 맡습니다.", "KISTI가 국가센터입니다.",
              CUSTOM, CUSTOM],
}


def test_eval_marks_abstentions_with_each_models_sentence(tmp_path) -> None:
    run = tmp_path / "run"  # a finished run that records its own sentence, served behind the endpoint
    run.mkdir()
    RunInfo(status="complete", base_model="builtin:tiny-ko", method="lora", template={"name": "kotune"},
            abstention=CUSTOM).write(run)
    questions = _write(tmp_path / "q.jsonl", QUESTIONS)
    with canned_openai(ANSWERS, [q["question"] for q in QUESTIONS]) as url:
        res = call_cli(["eval", "--questions", questions, "--models", f"plain=openai:{url}#plain",
                        f"tuned=openai:{url}#tuned@{run}", "-o", tmp_path / "ev", "--abstention", OPTION])
    assert res.code == 0, res.err

    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    plain, tuned = metrics["models"]["plain"], metrics["models"]["tuned"]
    assert plain["abstention"] == OPTION and tuned["abstention"] == CUSTOM  # the run's sentence wins
    for model in (plain, tuned):
        assert (model["overall"]["answerable"], model["overall"]["unanswerable"]) == (3, 2)
        assert {"abstain_rate", "false_abstain_rate"} <= set(model["by_category"]["기관"])
    assert plain["overall"]["abstain_rate"] == 0.5 and plain["overall"]["false_abstain_rate"] == round(1 / 3, 4)
    assert tuned["overall"]["abstain_rate"] == 1.0 and tuned["overall"]["false_abstain_rate"] == 0.0
    assert plain["by_category"]["기관"]["abstain_rate"] == 0.0 and plain["by_category"]["수치"]["abstain_rate"] == 1.0
    assert plain["error_types"]["근거 없이 답함"] == 1 and plain["error_types"]["잘못 거절"] == 1
    assert tuned["error_types"]["근거 없이 답함"] == 0 and tuned["error_types"]["잘못 거절"] == 0

    rows = read_jsonl(tmp_path / "ev" / "responses.jsonl")
    assert [r["answerable"] for r in rows] == [True, True, True, False, False]
    assert [r["answers"]["plain"]["abstained"] for r in rows] == [False, True, False, True, False]
    assert [r["answers"]["tuned"]["abstained"] for r in rows] == [False, False, False, True, True]
    md = (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
    assert "abstain rate ↑" in md and md.count(ABSTAINED) == 4
    assert "잘못 거절" in (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
