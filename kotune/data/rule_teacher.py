"""The rule teacher: deterministic, model-free QA from a chunk's own sentences.

``RuleTeacher`` (the default teacher) writes **fact-level** questions
(:mod:`kotune.data.facts`): each amount, ratio, count, date, law and
organisation's role in the chunk, asked in ``phrasings`` ways (3 by default),
the answer a short sentence holding the fact. Definitions are asked too. Only a
chunk without any fact falls back to the older sentence rules (number, agency,
law, industry and a heading question), so every chunk still yields records.
Everything runs offline and every answer is grounded by construction.

``per_chunk`` counts records: facts are taken whole (all their phrasings),
round-robin over fact kinds so a chunk's records cover amounts, dates and
organisations alike, until the count is reached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from kotune.data.chunk import match_heading
from kotune.data.facts import PHRASINGS, find_facts, value_keyword
from kotune.data.teacher import Teacher
from kotune.korean import QUANTITY, ROUTINE_NOUNS, answer_keywords, josa, noun_runs, split_sentences
from kotune.records import Record

__all__ = ["RuleTeacher"]

_BULLET = re.compile(r"^(?:[○●◦▪■□◆◇※•·\-–*]|\d+\)|[①-⑳])\s*")
_DEFINITION = re.compile(
    r"^[「“\"']?(?P<term>[^\s,.「」]{1,12}(?:\s[^\s,.「」]{1,12}){0,3}?)[」”\"']?"
    r"(?:\([^)]{1,30}\))?\s*(?:이란|란|이라\s*함은|라\s*함은|은|는)\s+(?P<body>.+(?:말한다|의미한다|뜻한다|일컫는다|정의한다)\.)$"
)
_LAW = re.compile(r"「([^」]{2,40}(?:법|법률|령|규칙|규정|조례))」")
_AGENCY = re.compile(
    r"^(?P<agency>[가-힣A-Za-z·]{2,25}(?:부|처|청|원|위원회|센터|공단|재단|연구소|진흥원|협의회))"
    r"(?:\s?\([A-Za-z가-힣]{2,10}\))?(?:은|는|이|가)\s"
)
_AGENCY_WORDS = ("담당", "총괄", "운영", "지원", "수행", "추진", "관리", "심의", "조정", "주관", "협력")
_MONEY = re.compile(r"\d[\d,.]*\s*(?:억|조|만)\s*원")
_GOAL = re.compile(r"(\d{4})년까지")
_INDUSTRY = re.compile(r"산업|기업|제조|바이오|반도체|자동차|스타트업|중소")


def _topic(breadcrumbs: str) -> str:
    """Last heading without its numbering: "Ⅲ. 추진 전략 > 1. 인프라 확충" → "인프라 확충"."""
    last = breadcrumbs.split(" > ")[-1] if breadcrumbs else ""
    last = re.sub(r"^(?:[ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ]+|\d{1,2}|[가-하]|#+)\s*[.．)]?\s*", "", last)
    last = re.sub(r"^제\s*\d+\s*[장절조]\s*", "", last).strip("() ")
    last = re.sub(r"^(?:추진과제|전략|과제)\s*[\d-]+\s*[:：.]\s*", "", last)
    return last.strip()


def _focus(sentence: str, avoid: str = "") -> str:
    """What the sentence is about: its subject/topic noun phrase unless routine
    ("정부는"), else its object, else its longest noun phrase."""
    runs = [(p, t, f) for p, t, f in noun_runs(sentence) if p not in ROUTINE_NOUNS and p != avoid and len(p) >= 2]
    for phrase, tag, _ in runs:
        if tag in ("JX", "JKS", "JKB"):
            return phrase
        break
    objects = [p for p, t, _ in runs if t == "JKO"]
    if objects:
        return objects[-1]
    return max((p for p, _, _ in runs), key=len, default="")


@dataclass
class _Candidate:
    rule: str
    question: str
    answer: str
    category: str
    difficulty: str
    group: int = -1                 # the fact this phrasing asks (-1: a single question)
    keyword: str = ""               # the fact as written ("1,200명"): the eval's key fact


# Fact kind → record category (the categories the split stratifies and the report groups by).
_FACT_CATEGORY = {"money": "수치", "ratio": "수치", "count": "수치", "measure": "수치", "duration": "일정",
                  "period": "일정", "until": "일정", "date": "일정", "law": "법령", "agency": "기관"}


class RuleTeacher(Teacher):
    """Deterministic, model-free QA from a chunk's own sentences."""

    name = "rule"
    # Every fact of the chunk: a fact left out is one the model can never answer, and the
    # rule teacher costs nothing per record.
    default_per_chunk = 10_000
    RULE_ORDER = ("definition", "number", "agency", "law", "industry", "heading")

    def __init__(self, phrasings: int = PHRASINGS):
        self.phrasings = phrasings

    def _sentences(self, chunk: dict[str, Any]) -> tuple[list[str], list[str]]:
        meta = chunk.get("metadata") or {}
        crumbs = meta.get("breadcrumbs", "")
        own_heading = crumbs.split(" > ")[-1] if crumbs else ""
        sentences: list[str] = []
        # The heading question's answer: the first sentences of the chunk's own
        # section (after its heading, so not the overlap carried from the
        # previous section), and only sentences that stand next to each other.
        summary: list[str] = []
        summary_open = True
        for line in chunk.get("text", "").split("\n"):
            if not line.strip():
                continue
            if match_heading(line):
                if own_heading and line.strip() == own_heading:
                    summary, summary_open = [], True
                elif summary:
                    summary_open = False
                continue
            for s in split_sentences(line):
                s = s if s.startswith("※") else _BULLET.sub("", s).strip()
                if s.startswith("※") or len(s) < 15 or not s.endswith((".", "다")):
                    # Notes and disclaimers are not content; fragments are not answers.
                    if summary:
                        summary_open = False
                    continue
                sentences.append(s)
                if summary_open and len(summary) < 2:
                    summary.append(s)
        return sentences, summary

    def candidates(self, chunk: dict[str, Any]) -> list[_Candidate]:
        meta = chunk.get("metadata") or {}
        topic = _topic(meta.get("breadcrumbs", "")) or meta.get("title", "") or "이 문서"
        sentences, summary = self._sentences(chunk)
        out: list[_Candidate] = []
        title = meta.get("title", "")
        group = 0
        for s in sentences:
            m = _DEFINITION.match(s)
            if m:
                out.extend(self._from_sentence(s, topic))
            for fact in find_facts(s, title=title, phrasings=self.phrasings):
                for q, a in zip(fact.questions, fact.answers):
                    out.append(_Candidate(f"fact:{fact.kind}", q, a, _FACT_CATEGORY[fact.kind], "중급",
                                          group=group, keyword=value_keyword(fact)))
                group += 1
        if out:
            return out
        # No fact in this chunk: the sentence rules, so every chunk yields records.
        for s in sentences:
            out.extend(self._from_sentence(s, topic))
        if summary:
            out.append(_Candidate("heading", f"{josa(topic, '과/와')} 관련된 주요 내용은 무엇인가요?", " ".join(summary), "개요", "중급"))
        return out

    def _from_sentence(self, s: str, topic: str) -> Iterable[_Candidate]:
        m = _DEFINITION.match(s)
        if m:
            term = m.group("term").strip("「」“”\"' ")
            yield _Candidate("definition", f"{josa(term, '이란/란')} 무엇인가요?", s, "정의", "초급")
            return
        law = _LAW.search(s)
        if law:
            name = law.group(1)
            subject = _focus(s[: law.start()]) if law.start() > 0 else ""
            if subject and not subject.startswith("「"):
                q = f"「{name}」에 따라 {josa(subject, '은/는')} 무엇을 하나요?"
            else:
                q = f"「{name}」에서는 어떤 내용을 정하고 있나요?"
            yield _Candidate("law", q, s, "법령", "중급")
            return
        ag = _AGENCY.match(s)
        if ag and any(w in s for w in _AGENCY_WORDS):
            agency = ag.group("agency")
            if "역할" in topic or "체계" in topic or not topic:
                q = f"{josa(agency, '은/는')} 어떤 역할을 맡나요?"
            else:
                q = f"{topic} 과제에서 {josa(agency, '은/는')} 어떤 역할을 맡나요?"
            yield _Candidate("agency", q, s, "기관", "중급")
            return
        if QUANTITY.search(s):
            focus = _focus(s, avoid=topic) or topic
            if _MONEY.search(s):
                q = f"{focus}에 투입되는 예산은 얼마인가요?"
            elif (g := _GOAL.search(s)) is not None:
                q = f"{g.group(1)}년까지 {josa(focus, '과/와')} 관련한 목표는 무엇인가요?"
            elif "%" in s or "퍼센트" in s:
                q = f"{focus}의 비율은 어느 정도인가요?"
            else:
                q = f"{focus}의 규모나 목표 수치는 어떻게 되나요?"
            yield _Candidate("number", q, s, "수치", "중급")
            return
        if _INDUSTRY.search(s):
            focus = _focus(s, avoid=topic) or topic
            yield _Candidate("industry", f"{josa(focus, '과/와')} 관련하여 무엇을 추진하나요?", s, "산업", "고급")

    def generate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        cands = self.candidates(chunk)
        # Units: a fact's phrasings together, or one sentence-rule question. Round-robin
        # over rules (fact kinds included) so a chunk's records cover several kinds.
        units: dict[str, list[list[_Candidate]]] = {}
        by_group: dict[int, list[_Candidate]] = {}
        for c in cands:
            if c.group >= 0:
                if c.group not in by_group:
                    by_group[c.group] = []
                    units.setdefault(c.rule, []).append(by_group[c.group])
                by_group[c.group].append(c)
            else:
                units.setdefault(c.rule, []).append([c])
        picked: list[_Candidate] = []
        seen_q: set[str] = set()
        while len(picked) < n and any(units.values()):
            for rule in list(units):
                if units[rule] and len(picked) < n:
                    for c in units[rule].pop(0)[:n - len(picked)]:   # n is a hard cap
                        if c.question not in seen_q:
                            seen_q.add(c.question)
                            picked.append(c)
        meta = chunk.get("metadata") or {}
        out = []
        for c in picked:
            extra: dict[str, Any] = {"generator": f"rule:{c.rule}",
                                     "keywords": [c.keyword] if c.keyword else answer_keywords(c.answer)}
            if c.group >= 0:
                extra["fact"] = f"{chunk['chunk_id']}#{c.group}"
            out.append(Record(instruction=c.question, output=c.answer, category=c.category, difficulty=c.difficulty,
                              source=meta.get("source", ""), chunk_id=chunk["chunk_id"], extra=extra))
        return out
