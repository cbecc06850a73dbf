"""Korean metrics: ROUGE/BLEU/chrF on Kiwi morphemes, keywords, repetition, grounding,
error types and the per-category roll-up of ``score_rows``."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from kotune.eval import metrics as m

REF_POLICY = ("과학기술정보통신부는 2023년부터 2027년까지 국가초고성능컴퓨팅 육성 기본계획을 추진하며, "
              "국가센터를 중심으로 초고성능컴퓨터 자원을 확충하고 1,200억 원을 투자한다.")
CTX_POLICY = ("제3차 국가초고성능컴퓨팅 육성 기본계획(2023~2027)은 과학기술정보통신부가 수립하였다. "
              "한국과학기술정보연구원(KISTI)이 국가센터 역할을 맡아 초고성능컴퓨터를 운영한다.")
KEYWORDS_POLICY = ["국가센터", "초고성능컴퓨터", "기본계획"]

# 22 policy-style (prediction, reference) pairs: paraphrases, particle changes,
# numbers, acronyms, partial and no overlap.
PAIRS = [
    ("국가센터는 초고성능컴퓨터 자원을 확충한다.", "국가센터가 초고성능컴퓨터 자원을 확충합니다."),
    ("과학기술정보통신부가 기본계획을 수립했다.", "기본계획은 과학기술정보통신부가 수립하였다."),
    ("2027년까지 1,200억 원을 투자할 예정입니다.", "정부는 2027년까지 총 1,200억 원을 투자한다."),
    ("한국과학기술정보연구원(KISTI)이 국가센터 역할을 맡는다.", "KISTI는 국가초고성능컴퓨팅센터로 지정되어 있다."),
    ("전문센터는 분야별 수요를 반영하여 지정된다.", "분야별 전문센터를 지정해 수요를 반영한다."),
    ("초고성능컴퓨팅 전문인력을 양성하는 것이 목표입니다.", "전문인력 양성을 위해 교육 프로그램을 확대한다."),
    ("민간 클라우드와 연계해 자원을 공동 활용한다.", "공공과 민간의 초고성능컴퓨팅 자원을 공동으로 활용한다."),
    ("보험금 청구는 사고 발생일로부터 3년 이내에 해야 합니다.", "보험금 청구권은 3년간 행사하지 않으면 소멸시효가 완성된다."),
    ("피보험자는 계약 전 알릴 의무를 지닌다.", "계약자와 피보험자는 청약 시 계약 전 알릴 의무가 있다."),
    ("임대차 계약이 끝나면 보증금을 돌려받을 수 있다.", "임대인은 계약 종료 시 보증금을 반환해야 한다."),
    ("개인정보 처리 목적을 명확히 해야 한다.", "개인정보처리자는 개인정보의 처리 목적을 명확하게 하여야 한다."),
    ("양자컴퓨팅 기술 개발에 5년간 3,000억 원을 투입한다.", "양자컴퓨팅 기술 확보를 위해 5년간 3,000억 원이 투입된다."),
    ("AI 반도체 실증 사업을 추진한다.", "국산 AI 반도체를 활용한 실증 사업이 추진된다."),
    ("슈퍼컴퓨터 6호기를 2025년에 도입한다.", "국가센터는 2025년 슈퍼컴퓨터 6호기를 도입할 계획이다."),
    ("법령 개정은 국회의 의결을 거쳐야 한다.", "법률의 개정은 국회 의결로 확정된다."),
    ("지역 거점센터를 통해 산업계 지원을 강화한다.", "산업계의 초고성능컴퓨팅 활용을 늘리기 위해 지역 거점센터를 운영한다."),
    ("잘 모르겠습니다.", "시행령은 대통령령으로 정한다."),
    ("데이터 공유 체계를 마련한다.", "연구 데이터의 공유와 활용 체계를 구축한다."),
    ("기후변화 예측에 초고성능컴퓨터를 활용한다.", "기상청은 기후변화 예측과 수치예보에 초고성능컴퓨터를 활용한다."),
    ("소프트웨어 국산화를 위해 연구개발을 지원한다.", "초고성능컴퓨팅 소프트웨어의 국산화 연구개발을 지원한다."),
    ("위원회는 매년 시행계획을 심의한다.", "국가초고성능컴퓨팅위원회는 연도별 시행계획을 심의·확정한다."),
    ("계획 계획 계획을 세운다.", "계획을 세운다."),
]

_PUNCT = {"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB"}


class DirectKiwiTokenizer:
    """A Kiwi tokenizer object for rouge_score, built straight on kiwipiepy (not on
    kotune.eval.metrics): morpheme forms without punctuation."""

    def __init__(self):
        from kiwipiepy import Kiwi

        self.kiwi = Kiwi()

    def tokenize(self, text):
        return ["".join(t.form.split()) for t in self.kiwi.tokenize(text) if t.tag not in _PUNCT]


@pytest.fixture(scope="module")
def direct_tok():
    return DirectKiwiTokenizer()


# Hand-written ROUGE, deliberately a different algorithm from kotune's (list removal
# for n-gram overlap, memoised recursion for the LCS).
def _hand_ngram_f1(pred, ref, n):
    pg = [tuple(pred[i:i + n]) for i in range(len(pred) - n + 1)]
    rg = [tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)]
    pool, hits = list(pg), 0
    for g in rg:
        if g in pool:
            pool.remove(g)
            hits += 1
    p = hits / len(pg) if pg else 0.0
    r = hits / len(rg) if rg else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def _hand_lcs_f1(pred, ref):
    @functools.lru_cache(maxsize=None)
    def lcs(i, j):
        if i == len(pred) or j == len(ref):
            return 0
        if pred[i] == ref[j]:
            return 1 + lcs(i + 1, j + 1)
        return max(lcs(i + 1, j), lcs(i, j + 1))

    if not pred or not ref:
        return 0.0
    k = lcs(0, 0)
    p, r = k / len(pred), k / len(ref)
    return 2 * p * r / (p + r) if p + r else 0.0


# --------------------------------------------------------------------------- tokenization / ROUGE


def test_tokenize_morphemes_numbers_whole_no_punctuation():
    toks = m.tokenize("2030년까지 1,200억 원을 투자하고, 계획을 3.5% 늘린다.")
    assert toks[:4] == ["2030", "년", "까지", "1,200"]
    assert "3.5" in toks and "계획" in toks and "을" in toks
    assert not any(t in {",", ".", "%"} or " " in t for t in toks)
    assert m.tokenize("   ") == []
    assert m.TOKENIZATION == "kiwi-morphemes"


def test_identical_korean_scores_100():
    s = "국가센터는 2027년까지 초고성능컴퓨터 자원을 확충한다."
    assert m.rouge(s, s) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    assert m.sentence_bleu(s, s) == pytest.approx(100.0)
    assert m.bleu([s, REF_POLICY], [s, REF_POLICY])[0] == pytest.approx(100.0)
    assert m.chrf([s], [s]) == pytest.approx(100.0)


def test_default_rouge_score_tokenizer_zeroes_identical_korean():
    """The bug kotune avoids: rouge_score's default tokenizer drops all Hangul."""
    from rouge_score import rouge_scorer

    s = "국가센터는 초고성능컴퓨터 자원을 확충한다."
    default = rouge_scorer.RougeScorer(["rouge1", "rougeL"]).score(s, s)
    assert default["rougeL"].fmeasure == 0.0 and default["rouge1"].fmeasure == 0.0
    assert m.rouge(s, s)["rougeL"] == 100.0


def test_rouge_matches_rouge_score_with_kiwi_tokenizer(direct_tok):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=direct_tok)
    assert len(PAIRS) >= 20
    for pred, ref in PAIRS:
        assert m.tokenize(pred) == direct_tok.tokenize(pred)
        ours = m.rouge(pred, ref)
        theirs = scorer.score(ref, pred)  # rouge_score takes (target, prediction)
        prf = m.rouge_prf(m.tokenize(pred), m.tokenize(ref))
        for k in ("rouge1", "rouge2", "rougeL"):
            assert ours[k] / 100 == pytest.approx(theirs[k].fmeasure, abs=1e-6), (k, pred)
            assert prf[k][0] == pytest.approx(theirs[k].precision, abs=1e-6)
            assert prf[k][1] == pytest.approx(theirs[k].recall, abs=1e-6)
    # The pairs are not all trivial: a spread of scores is covered.
    rl = [m.rouge(p, r)["rougeL"] for p, r in PAIRS]
    assert min(rl) == 0.0 and max(rl) > 60 and len({round(x, 3) for x in rl}) > 15


def test_rouge_matches_hand_written_implementation(direct_tok):
    for pred, ref in PAIRS:
        pt, rt = direct_tok.tokenize(pred), direct_tok.tokenize(ref)
        ours = m.rouge(pred, ref)
        assert ours["rouge1"] / 100 == pytest.approx(_hand_ngram_f1(pt, rt, 1), abs=1e-6)
        assert ours["rouge2"] / 100 == pytest.approx(_hand_ngram_f1(pt, rt, 2), abs=1e-6)
        assert ours["rougeL"] / 100 == pytest.approx(_hand_lcs_f1(pt, rt), abs=1e-6)


def test_digit_only_overlap_does_not_score_high():
    from rouge_score import rouge_scorer

    pred = "2030년 600 1,200"
    ref = ("정부는 2030년까지 전국 600개 중소기업의 디지털 전환을 돕기 위해 총 1,200억 원 규모의 "
           "예산을 단계적으로 편성하고 집행할 계획이다.")
    assert m.rouge(pred, ref)["rougeL"] < 30
    # rouge_score's default tokenizer keeps only the digits and calls them a match.
    assert rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure > 0.9


def test_particles_do_not_break_rouge():
    assert m.rouge("계획을 수립한다", "계획이 수립된다")["rouge1"] > 0
    assert m.rouge("보증금을 돌려준다", "보증금은 돌려준다")["rougeL"] > 70


# --------------------------------------------------------------------------- BLEU / chrF


def test_bleu_on_kiwi_morphemes_with_signature():
    from sacrebleu.metrics import BLEU

    preds = [p for p, _ in PAIRS]
    refs = [r for _, r in PAIRS]
    score, sig = m.bleu(preds, refs)
    manual = BLEU(tokenize="none").corpus_score([" ".join(m.tokenize(p)) for p in preds],
                                                [[" ".join(m.tokenize(r)) for r in refs]])
    assert score == pytest.approx(manual.score, abs=1e-9)
    assert "tok:none+kiwi" in sig and sig.startswith("nrefs:1") and sig == m.bleu_signature()
    # Morphemes let 계획을/계획이 share tokens; sacrebleu's own 13a word split does not.
    p, r = "국가센터가 기본계획을 추진하고 있다", "국가센터는 기본계획을 추진하고 있다"
    assert m.sentence_bleu(p, r) > BLEU(effective_order=True).sentence_score(p, [r]).score
    with pytest.raises(ValueError):
        m.bleu(["a"], [])


def test_chrf_on_raw_text():
    from sacrebleu.metrics import CHRF

    preds = [p for p, _ in PAIRS[:6]]
    refs = [r for _, r in PAIRS[:6]]
    assert m.chrf(preds, refs) == pytest.approx(CHRF().corpus_score(preds, [refs]).score)
    assert 0 < m.chrf(preds, refs) < 100


# --------------------------------------------------------------------------- keywords


def test_keyword_matching_ignores_particles():
    assert m.keyword_coverage("기본 계획을 수립했다.", ["계획"]) == 1.0
    assert m.keyword_coverage("계획이 마련되었다.", ["계획"]) == 1.0
    assert m.keyword_coverage("계획이 마련되었다.", "계획 | 예산") == 0.5
    assert m.keyword_coverage("사업을 추진한다.", ["추진하다"]) == 1.0


def test_multi_morpheme_keywords():
    ans = "국가 센터가 초고성능 컴퓨터를 운영하고, 기본계획에 따라 인력을 양성한다."
    assert m.keyword_coverage(ans, "국가센터, 초고성능컴퓨터, 기본계획") == 1.0
    assert m.keyword_coverage("국가센터는 초고성능컴퓨터를 운영한다.", KEYWORDS_POLICY) == pytest.approx(2 / 3)
    assert m.keyword_coverage("예산을 편성한다.", ["국가센터"]) == 0.0
    assert m.keyword_coverage("아무 답", []) is None
    assert m.keyword_coverage("아무 답", " , ") is None
    assert m.split_keywords("국가센터, 초고성능컴퓨터|국가센터 ; 인력") == ["국가센터", "초고성능컴퓨터", "인력"]


# --------------------------------------------------------------------------- repetition / loops


def test_looping_answer_is_flagged():
    loop = "총 예산은 " + "원,000억 " * 25
    rep = m.repetition(loop)
    assert rep > 0.5
    assert m.ERR_LOOP in m.error_types(loop, reference=REF_POLICY, keywords=KEYWORDS_POLICY, context=CTX_POLICY)
    assert m.repetition("국가센터를 지정한다.") == 0.0  # too short to judge
    assert m.repetition(REF_POLICY) < 0.1


def test_length_stop_is_flagged_and_thresholds_apply():
    ans = "과학기술정보통신부는 2027년까지 국가센터를 중심으로 초고성능컴퓨터 자원을"
    tags = m.error_types(ans, reference=REF_POLICY, keywords=KEYWORDS_POLICY, context=CTX_POLICY,
                         finish_reason="length")
    assert tags == [m.ERR_LOOP]
    assert not m.is_eos(ans, "length") and m.is_eos(ans, "stop")
    assert not m.is_eos(ans) and m.is_eos("기본계획을 추진한다.")
    loop = "총 예산은 " + "원,000억 " * 25
    lenient = m.Thresholds(repetition=0.99)
    assert m.ERR_LOOP not in m.error_types(loop, reference=REF_POLICY, thresholds=lenient)
    assert m.DEFAULT_THRESHOLDS == m.Thresholds(0.5, 0.3, 0.3, 0.4)


# --------------------------------------------------------------------------- grounding / errors


FABRICATED = "한국에너지공단은 2030년까지 5,000억 원을 투입해 양자컴퓨터 클러스터를 조성할 예정입니다."
FAITHFUL = ("과학기술정보통신부는 2027년까지 국가센터를 중심으로 초고성능컴퓨터 자원을 확충하고 "
            "1,200억 원을 투자하는 기본계획을 추진합니다.")


def test_fabricated_agency_and_number():
    tags = m.error_types(FABRICATED, reference=REF_POLICY, keywords=KEYWORDS_POLICY, context=CTX_POLICY)
    assert m.ERR_AGENCY in tags and m.ERR_NUMBER in tags and m.ERR_UNSUPPORTED in tags
    assert m.agency_errors(FABRICATED, REF_POLICY, CTX_POLICY) == ["한국에너지공단"]
    assert set(m.number_errors(FABRICATED, REF_POLICY, CTX_POLICY)) == {"2030", "5000"}
    assert m.unsupported_rate(FABRICATED, REF_POLICY, CTX_POLICY) > 0.7


def test_faithful_answer_has_no_error_tags():
    assert m.error_types(FAITHFUL, reference=REF_POLICY, keywords=KEYWORDS_POLICY, context=CTX_POLICY,
                         finish_reason="stop") == []
    assert m.unsupported_rate(FAITHFUL, REF_POLICY, CTX_POLICY) < 0.1
    # Agency from the context only (not the reference) is grounded too.
    ans = "한국과학기술정보연구원이 국가센터 역할을 맡아 초고성능컴퓨터를 운영합니다."
    assert m.agency_errors(ans, REF_POLICY, CTX_POLICY) == []


def test_changed_number_for_a_reference_quantity():
    ref = "정부는 2025년까지 600억 원을 투자한다."
    ctx = "관련 예산은 2024년 1,200억 원 규모였다. 정부는 2025년까지 600억 원을 투자한다."
    assert m.number_errors("정부는 2025년까지 1,200억 원을 투자한다.", ref, ctx) == ["1200"]
    assert m.number_errors("정부는 2025년까지 600억 원을 투자한다.", ref, ctx) == []
    assert m.number_errors("1,200억원 투자", "1200억 원 투자", None) == []  # 1,200 == 1200
    assert m.number_errors("1. 첫째 예산\n2. 둘째 인력", "예산과 인력", None) == []  # list markers


def test_organisation_detection():
    text = ("과학기술정보통신부, 정보통신산업진흥원, 국가초고성능컴퓨팅센터, 한국연구재단, 교육부, "
            "예산 지원을 요청, 공무원, 양자컴퓨터 클러스터")
    orgs = m.organisations(text)
    assert {"과학기술정보통신부", "정보통신산업진흥원", "국가초고성능컴퓨팅센터", "한국연구재단", "교육부"} <= set(orgs)
    assert not {"지원", "요청", "공무원", "클러스터"} & set(orgs)


def test_unsupported_rate_weights_and_none():
    # 정부 (1, supported) + 500 (3, unsupported) + 투자 (1, supported) → 3/5.
    assert m.unsupported_rate("정부는 500억 원을 투자한다.", "정부는 투자한다.", None) == pytest.approx(0.6)
    assert m.unsupported_rate("정부는 투자한다.", None, None) is None
    assert m.unsupported_rate("정부는 투자한다.", None, ["관련 문단", "정부가 투자한다."]) == 0.0


def test_missing_information_without_keywords_uses_reference_recall():
    assert m.error_types("잘 모르겠습니다.", reference="시행령은 대통령령으로 정한다.") == [m.ERR_MISSING, m.ERR_UNSUPPORTED]
    assert m.ERR_MISSING not in m.error_types(FAITHFUL, reference=REF_POLICY)


# --------------------------------------------------------------------------- score_rows


def test_score_rows_per_category_hand_computed():
    from sacrebleu.metrics import CHRF

    a_ref = "개인정보처리자는 개인정보의 처리 목적을 명확하게 하여야 한다."
    b_ans, b_ref = "잘 모르겠습니다.", "시행령은 대통령령으로 정한다."
    c_ans = "과학기술정보통신부가 담당합니다."
    rows = [
        {"answer": a_ref, "reference": a_ref, "keywords": "개인정보, 처리 목적", "category": "법령", "finish_reason": "stop"},
        {"answer": b_ans, "reference": b_ref, "keywords": ["대통령령", "시행령"], "category": "법령", "finish_reason": "length"},
        {"answer": c_ans, "keywords": "과학기술정보통신부", "category": "기관", "finish_reason": "stop",
         "context": "초고성능컴퓨팅 정책은 과학기술정보통신부가 담당한다."},
        {"answer": REF_POLICY, "reference": REF_POLICY, "finish_reason": "stop"},
    ]
    out = m.score_rows(rows)
    law, agency, none = out["by_category"]["법령"], out["by_category"]["기관"], out["by_category"]["(none)"]

    assert law["n"] == 2 and law["n_reference"] == 2
    assert law["rougeL"] == 50.0 and law["rouge1"] == 50.0  # 100 and 0, averaged
    assert law["keyword_coverage"] == 0.5 and law["eos_rate"] == 0.5
    assert law["unsupported_rate"] == 0.5  # 0 and 1
    assert law["bleu"] == round(m.bleu([a_ref, b_ans], [a_ref, b_ref])[0], 2)
    assert law["chrf"] == round(CHRF().corpus_score([a_ref, b_ans], [[a_ref, b_ref]]).score, 2)

    assert agency["n"] == 1 and agency["n_reference"] == 0
    assert agency["rougeL"] is None and agency["bleu"] is None and agency["chrf"] is None
    assert agency["keyword_coverage"] == 1.0 and agency["eos_rate"] == 1.0 and agency["unsupported_rate"] == 0.0
    assert none["n"] == 1 and none["rougeL"] == 100.0 and none["keyword_coverage"] is None

    overall = out["overall"]
    assert overall["n"] == 4 and overall["n_reference"] == 3
    assert overall["rougeL"] == round(200 / 3, 2)
    assert overall["keyword_coverage"] == round(2 / 3, 4) and overall["eos_rate"] == 0.75
    assert out["error_types"] == {m.ERR_MISSING: 1, m.ERR_NUMBER: 0, m.ERR_AGENCY: 0, m.ERR_LOOP: 1,
                                  m.ERR_UNSUPPORTED: 1, m.ERR_ANSWERED_UNANSWERABLE: 0, m.ERR_FALSE_ABSTAIN: 0}
    assert [r["errors"] for r in out["per_row"]] == [[], [m.ERR_MISSING, m.ERR_LOOP, m.ERR_UNSUPPORTED], [], []]
    assert [r["eos"] for r in out["per_row"]] == [True, False, True, True]
    assert out["per_row"][1]["rougeL"] == 0.0 and out["per_row"][2]["rougeL"] is None
    assert out["tokenization"] == m.TOKENIZATION and "tok:none+kiwi" in out["bleu_signature"]
    assert out["skipped"] == [] and out["notes"] and "3 of 4" in out["notes"][0]
    for g in (overall, law, agency, none):
        assert {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "keyword_coverage", "eos_rate",
                "repetition", "unsupported_rate", "n"} <= set(g)


def test_score_rows_without_references_skips_reference_metrics():
    rows = [
        {"answer": FAITHFUL, "keywords": KEYWORDS_POLICY, "context": CTX_POLICY, "category": "산업"},
        {"answer": "총 예산은 " + "원,000억 " * 25, "keywords": "국가센터|기본계획", "category": "추론",
         "finish_reason": "length"},
    ]
    out = m.score_rows(rows)
    skipped = {s["metric"]: s["reason"] for s in out["skipped"]}
    assert set(m.REFERENCE_METRICS) <= set(skipped) and all("reference" in skipped[k] for k in m.REFERENCE_METRICS)
    for k in m.REFERENCE_METRICS:
        assert out["overall"][k] is None
    assert out["overall"]["keyword_coverage"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["overall"]["eos_rate"] == 0.5
    assert out["overall"]["repetition"] > 0.25
    assert out["by_category"]["산업"]["unsupported_rate"] is not None
    assert out["by_category"]["추론"]["unsupported_rate"] is None  # no reference, no context
    assert m.ERR_LOOP in out["per_row"][1]["errors"]
    assert all(isinstance(v, (int, float)) for v in out["error_types"].values())


def test_score_rows_rounding_and_empty():
    out = m.score_rows([{"answer": PAIRS[0][0], "reference": PAIRS[0][1]}])
    for k in ("rouge1", "rouge2", "rougeL", "bleu", "chrf"):
        assert out["overall"][k] == round(out["overall"][k], 2)
    assert list(out["by_category"]) == [m.NO_CATEGORY]
    empty = m.score_rows([])
    assert empty["overall"]["n"] == 0 and empty["per_row"] == [] and empty["skipped"] == []
