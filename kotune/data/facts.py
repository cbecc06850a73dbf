"""Fact-level questions from a document's own sentences, with no LLM.

A fine-tuned model can answer "총사업비는 얼마인가요?" only when the training data asked
for that fact, and in more than one phrasing (Allen-Zhu & Li, "Physics of Language
Models 3.1": a fact seen in one phrasing is memorised but not extractable). The rule
teacher's older questions were generic ("…와 관련된 주요 내용은 무엇인가요?"); this
module finds the facts users ask about and writes, for each, several questions whose
answer is a short sentence holding the fact.

**What is a fact** (:data:`KINDS`, found on a sentence's surface text):

* amounts of money (``4,500억 원``), ratios (``1.5%``), counts with a counter
  (``1,200명``, ``10곳``, ``12대``, ``500권``), measures (``150페타플롭스``), durations and
  intervals (``5년간``, ``5년마다``, ``14일``), dates and periods (``2030년까지``,
  ``2026년부터 2030년까지``, ``2027년 2월에``, ``2027년 하반기에``; a bare year is the
  plan's frame and is not asked);
* laws (``「…법률」 제5조``);
* an organisation that is the subject of a sentence saying what it does
  (``한국과학기술정보연구원(KISTI)은 … 운영을 총괄한다``).

**How a question is written** (Kiwi morphemes; ``Kiwi.join`` conjugates): the sentence
is cut into clauses at a connective ending followed by a comma ("…추산되며, …"). In
the clause holding the fact, the fact becomes its question word (``얼마``, ``몇 명``,
``언제까지``, ``어떤 법률``, ``어느 기관``; the particle after it follows the new word:
``얼마를``), the clause is cut after the first predicate that follows the fact (an
auxiliary chain such as "머물러 있다" stays whole; a predicate that only modifies a
noun, "참여한 기획위원회", is passed over), and that predicate takes a question ending
in the sentence's tense ("늘어났나요"). A clause without its own subject borrows the
sentence's ("이 계획은 …되었으며, 2026년부터 …"); a subject that only points ("이
계획") is replaced by the document's title, so the question is answerable from its
chunk alone. Each fact gets up to :data:`PHRASINGS` questions: the "-나요?" cloze; what
the subject is ("…전문인력 규모는 얼마나 되나요?") when the fact is its value, the thing
counted in a relative clause ("…이 지정한 전문센터는 몇 곳인가요?") when the fact counts
an object, else the formal "-ㅂ니까?" cloze; and a request ("…규모를 알려 주세요.",
"…했는지 알려 주세요."). The answers vary too: the clause in polite form ("…약 1,200명으로
추산됩니다.") and the whole sentence. A clause with no subject anywhere in its sentence keeps the clauses before it ("…배움터를
운영하고, 몇 명에게 교육을 제공하나요?"). A list under one copula ("국비는 8,600억 원, 지방비는
3,800억 원이다") is asked item by item; a fact in a condition ("…세어 보면") or a time that
only qualifies a copula's value is not asked.

Known limits: numbers written in words ("두 차례"), facts in a table row, and lists
without a number are not found; a sentence the rules cannot cut cleanly (no
predicate after the fact) gives no question rather than a broken one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kotune.korean import KIWI_LOCK, ROUTINE_NOUNS, josa, kiwi, tokenize

__all__ = ["KINDS", "PHRASINGS", "Fact", "find_facts", "value_keyword"]

PHRASINGS = 3
"""Questions written for each fact (the default of ``kotune generate --phrasings``)."""

# ------------------------------------------------------------------ fact patterns
_NUM = r"(?<![\d,.])\d[\d,]*(?:\.\d+)?"
_APPROX = r"(?:약|총|최대|최소|연간|매년|연|월)?\s*"
# A number with its Korean place words: "1조 2,000억", "14만 5천", "2,300".
_BIG = rf"{_NUM}(?:\s*(?:조|억|천만|백만|만|천|백)(?:\s*\d[\d,]*(?:\.\d+)?\s*(?:억|천만|백만|만|천|백))*)?"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("law", re.compile(r"「[^」]{2,60}」(?:\s*제\s*\d+\s*조(?:의\s*\d+)?(?:\s*제\s*\d+\s*항)?)?")),
    ("period", re.compile(rf"(?:{_APPROX})?\d{{4}}년(?:\s*\d{{1,2}}월)?\s*부터\s*\d{{4}}년(?:\s*\d{{1,2}}월)?\s*까지")),
    ("until", re.compile(r"(?<![\d,.])\d{4}년(?:\s*(?:상반기|하반기|\d{1,2}월(?:\s*\d{1,2}일)?))?\s*(?:까지|부터)")),
    # A month or half of a year when something happens ("2027년 2월에", "2027년 하반기에"); a bare
    # year is mostly the plan's frame, not a fact asked for.
    ("date", re.compile(r"(?<![\d,.])\d{4}년\s*(?:상반기|하반기|\d{1,2}월(?:\s*\d{1,2}일)?)(?=에\s)")),
    ("money", re.compile(rf"{_APPROX}{_BIG}\s*원")),
    ("ratio", re.compile(rf"{_APPROX}{_NUM}\s*(?:%p|%|퍼센트포인트|퍼센트)")),
    ("measure", re.compile(rf"{_APPROX}{_BIG}\s*(?:페타플롭스|엑사플롭스|테라플롭스|페타바이트|테라바이트|"
                           r"메가와트|기가와트|MW|GW|PF|EF|톤|㎡|제곱미터|킬로미터|km|kg|리터|헥타르|ha)")),
    ("duration", re.compile(rf"{_APPROX}(?<![\d,.])\d{{1,3}}\s*(?:년|개월|주|일|시간)(?:\s*(?:간|마다|동안|이내))?(?![가-힣]*(?:부터|까지))")),
    ("count", re.compile(rf"{_APPROX}{_BIG}\s*(?:명|개소|개국|개사|개교|개|곳|군데|건|배|회|차례|종|편|가구|세대|팀|기관|분야|과제|척|채|그루|마리|쪽|권(?!역|리|한|고|장|익|위|력)|대(?=[이을를은는가와과로의에도만,.\s]*[이을를은는가와과로의에도만,.]))")),
]
KINDS = ("money", "ratio", "count", "measure", "duration", "period", "until", "date", "law", "agency")

_AGENCY_END = re.compile(r"(?:부|처|청|원|위원회|센터|공단|재단|연구소|진흥원|협의회|공사|협회|본부|기관)$")
_AGENCY_WORDS = ("담당", "총괄", "운영", "지원", "수행", "추진", "관리", "심의", "조정", "주관", "협력", "제공", "구축", "평가",
                 "맡", "실시", "선정")
_CONNECTIVE = re.compile(r"^(?:이에 따라|이를 위해|이를 위하여|이와 함께|이 가운데|이 중|이에|또한|한편|특히|아울러|그러나|다만|따라서|이 밖에도|이 밖에)\s*,?\s+")
# "「법」에 따라", "…에 의해": a predicate that only links an adverbial, not what the clause says.
_LINKING = {"따르", "의하", "근거하", "의거하", "위하", "비롯하", "통하", "대하", "관하", "걸치"}
# Connective endings of a condition or purpose: the clause they end is not a statement.
_CONDITIONAL = {"면", "으면", "도록", "려고", "으려고", "려면", "으려면", "거든", "더라도", "어도", "아도", "여도"}
_PREDICATE = {"VV", "VA", "VX", "XSV", "XSA", "VCP", "VCN"}
_DEMONSTRATIVE = re.compile(r"^(?:이|본|해당|동)\s")
_TITLE_TAIL = re.compile(r"\s*[(（][^)）]*[)）]\s*$")
_PAST = {"었", "았", "였", "ᆻ"}


@dataclass
class Fact:
    """One fact of a sentence and the questions and answers written for it."""

    kind: str
    value: str                       # the fact as the sentence says it ("약 1,200명")
    sentence: str
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)   # answers[i] answers questions[i]


def _join(morphs: list[tuple[str, str]]) -> str:
    with KIWI_LOCK:
        return kiwi().join(morphs)


def _wh(kind: str, value: str) -> str:
    """The question word that stands for a fact: "약 1,200명" → "몇 명"."""
    core = re.sub(rf"^{_APPROX}", "", value).strip()
    if kind in ("money", "measure"):
        return "얼마"
    if kind == "ratio":
        return "몇 퍼센트포인트" if core.endswith(("%p", "퍼센트포인트")) else "몇 퍼센트"
    if kind == "period":
        return "언제부터 언제까지"
    if kind == "until":
        return "언제" + ("까지" if core.endswith("까지") else "부터")
    if kind == "date":
        return "언제"
    if kind == "law":
        name = re.search(r"「([^」]+)」", value).group(1)  # type: ignore[union-attr]
        return "어떤 " + ("조례" if name.endswith("조례") else "법령" if name.endswith(("령", "규칙", "규정")) else "법률")
    m = re.match(rf"{_BIG}\s*(.+)$", core)
    unit = m.group(1).strip() if m else ""
    if kind == "duration":
        if unit.startswith("일"):
            return "며칠" + unit[1:]
        return "몇 " + unit
    return "몇 " + unit if unit else "얼마"


def _what(noun: str, kind: str, value: str) -> str:
    """The noun phrase a request or a "얼마나 되나요?" question names: "국내 전문인력 규모"."""
    if noun.endswith(("율", "률", "비중", "비율", "규모", "금액", "예산", "사업비", "기간", "수")):
        return noun
    unit = re.sub(rf"^{_APPROX}{_BIG}\s*", "", value).strip()
    if kind == "ratio":
        return f"{noun}의 비율"
    if kind == "duration":
        return f"{noun}의 기간"
    if kind == "count" and unit not in ("명", "가구", "팀"):
        return f"{noun}의 수"
    return f"{noun} 규모"


def _particle(after: str, word: str) -> str:
    """The particle ``after`` (as written after the fact) in the form ``word`` takes."""
    # A question word takes no topic particle: "「법」은 …" → "어떤 법률이 …".
    pairs = {"을": "을/를", "를": "을/를", "이": "이/가", "가": "이/가", "은": "이/가", "는": "이/가",
             "과": "과/와", "와": "과/와"}
    if after in pairs:
        return josa(word, pairs[after])[len(word):]
    if after in ("으로", "로"):
        last = word[-1:]
        rieul = "가" <= last <= "힣" and (ord(last) - 0xAC00) % 28 == 8
        return "로" if rieul else josa(word, "으로/로")[len(word):]
    return after


class _Sentence:
    """A sentence's Kiwi tokens and its clauses (start, end) as token index ranges."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.clauses: list[tuple[int, int]] = []
        start = 0
        for i, t in enumerate(self.tokens):
            nxt = self.tokens[i + 1] if i + 1 < len(self.tokens) else None
            if t.tag == "EC" and nxt is not None and nxt.form == "," and i > start:
                self.clauses.append((start, i + 1))
                start = i + 2
        self.clauses.append((start, len(self.tokens)))
        self.past = any(t.tag == "EP" and t.form in _PAST for t in self.tokens[-4:])

    def at(self, char: int) -> int:
        """Index of the token covering (or first after) character ``char``."""
        for i, t in enumerate(self.tokens):
            if t.start + t.len > char:
                return i
        return len(self.tokens)

    def clause_of(self, tok: int) -> tuple[int, int]:
        for a, b in self.clauses:
            if a <= tok < b:
                return a, b
        return self.clauses[-1]

    def surface(self, a: int, b: int) -> str:
        """Text of tokens a..b-1 as written."""
        if a >= b:
            return ""
        return self.text[self.tokens[a].start:self.tokens[b - 1].start + self.tokens[b - 1].len]

    def content_start(self, a: int, b: int) -> int:
        """First token of the clause after a leading connective ("이에", "이를 위해", "또한")."""
        rest = self.text[self.tokens[a].start:] if a < len(self.tokens) else ""
        m = _CONNECTIVE.match(rest)
        if not m:
            return a
        return self.at(self.tokens[a].start + m.end())

    def subject(self, a: int, b: int, before: int) -> tuple[int, int] | None:
        """Tokens of the clause's topic/subject phrase (from its start, leading conjunctions
        skipped, up to and including its first 은/는/이/가 before token ``before``)."""
        start = a
        while start < b and self.tokens[start].tag in ("MAJ", "SP"):
            start += 1
        for i in range(start, min(before, b)):
            t = self.tokens[i]
            if (t.tag == "JX" and t.form in ("은", "는")) or t.tag == "JKS":
                # A subject inside a modifier ("부문이 보유한 …") is not the clause's.
                if t.tag == "JKS" and self._modifies(i):
                    continue
                return start, i + 1
        return None

    def _modifies(self, i: int) -> bool:
        """Whether the subject particle at ``i`` belongs to a modifier ("부문이 보유한 …")."""
        for t in self.tokens[i + 1:i + 6]:
            if t.tag == "ETM":
                return True
            if t.tag.startswith(("J", "EC", "EF", "SP", "SF")):
                return False
        return False

    def predicate_after(self, tok: int, b: int) -> tuple[int, int] | None:
        """(first token of the predicate, index of its ending) for the first predicate after
        token ``tok`` in the clause that ends a clause (EC/EF), not a modifier (ETM)."""
        i = tok
        while i < b:
            t = self.tokens[i]
            if t.tag in _PREDICATE and (t.form in _LINKING or (t.tag in ("XSV",) and i > 0 and self.tokens[i - 1].form + t.form in _LINKING)):
                i += 1
                continue
            if t.tag in _PREDICATE:
                j = i
                # The chain: stems, pre-final endings, and 어/게/고/지 before an auxiliary.
                while j + 1 < b:
                    n = self.tokens[j + 1]
                    if n.tag in _PREDICATE or n.tag == "EP":
                        j += 1
                    elif n.tag == "EC" and j + 2 < b and self.tokens[j + 2].tag == "VX":
                        j += 1
                    elif n.form == "지" and n.tag == "EC" and j + 3 < b and self.tokens[j + 2].form == "못" \
                            and self.tokens[j + 3].form == "하":
                        j += 2          # "미치지 못하였다": the negation stays in the question
                    else:
                        break
                end = j + 1
                if end < len(self.tokens) and self.tokens[end].tag == "EC" and self.tokens[end].form in _CONDITIONAL:
                    return None        # "…세어 보면": a fact in a condition is not what the sentence says
                if end < len(self.tokens) and self.tokens[end].tag in ("EC", "EF") and end < b + 1:
                    start = i
                    if self.tokens[i].tag in ("XSV", "XSA") and i > tok:
                        start = i - 1          # "추산" + "되": the noun is part of the predicate
                        if start > tok and self.tokens[start - 1].tag in ("XPN",):
                            start -= 1
                    if self.tokens[i].tag == "VCP" or start > tok or self.tokens[i].tag in ("VV", "VA", "VX"):
                        return start, end
                i = end
                continue
            i += 1
        return None

    def conjugate(self, p: int, e: int, ending: str) -> str:
        """The predicate tokens p..e-1 with ``ending`` (an EF), in the sentence's tense."""
        morphs = [(t.form, t.tag) for t in self.tokens[p:e]]
        if self.past and not any(t == "EP" for _, t in morphs):
            morphs.append(("었", "EP"))
        return _join(morphs + [(ending, "EF")])


def _title(title: str) -> str:
    return _TITLE_TAIL.sub("", title or "").strip()


def find_facts(sentence: str, *, title: str = "", phrasings: int = PHRASINGS) -> list[Fact]:
    """The facts of one sentence, each with up to ``phrasings`` (question, answer) pairs."""
    if len(sentence) < 10:
        return []
    s = _Sentence(sentence)
    spans: list[tuple[int, int, str]] = []
    for kind, pat in _PATTERNS:
        for m in pat.finditer(sentence):
            a, b = m.start(), m.end()
            while a < b and sentence[a] == " ":
                a += 1
            if sentence[b:b + 1] == "급" or (kind == "measure" and re.match(r" (?!수준|이상|이하|미만|규모|가량|정도|내외)[가-힣]+(?:\s|$)", sentence[b:])):
                continue   # "300페타플롭스급 …", "40리터 자루": describes a noun, not a value asked for
            if any(not (b <= x or a >= y) for x, y, _ in spans):
                continue   # inside a fact already found ("2030년까지" of a period)
            if kind == "duration" and re.match(r"\d{4}", sentence[a:b].lstrip("약총최대소연간매년월 ")):
                continue   # a year, not a duration
            spans.append((a, b, kind))
    facts: list[Fact] = []
    for a, b, kind in sorted(spans):
        fact = _write(s, a, b, kind, title, phrasings)
        if fact is not None:
            facts.append(fact)
    agency = _agency(s, phrasings)
    if agency is not None:
        facts.append(agency)
    return facts


def _subject_text(s: _Sentence, span: tuple[int, int] | None, title: str) -> str:
    """The subject phrase with its particle, a pointing subject ("이 계획은") replaced by the title."""
    if span is None:
        return ""
    text = s.surface(*span)
    # "이 계획은" → "<title>은"; "이 계획의 총사업비는" → "<title>의 총사업비는".
    m = re.match(r"^(?:이|본|해당|동)\s+[가-힣A-Za-z]+?(?P<rest>의\s.+|은|는|이|가)$", text)
    if m and _title(title):
        rest = m.group("rest")
        if rest in ("은", "는", "이", "가"):
            return josa(_title(title), "은/는" if rest in ("은", "는") else "이/가")
        return _title(title) + rest
    return text


def _bare(subject: str) -> str:
    """"국내 전문인력은" → "국내 전문인력"."""
    return re.sub(r"(?:은|는|이|가)$", "", subject).strip()


_VALUE_TAIL = re.compile(r"^\s*(?:이상|이하|미만|초과|수준|가량|정도|내외|남짓)?\s*(?:으로|로|에)?\s*$")


def _write(s: _Sentence, a: int, b: int, kind: str, title: str, phrasings: int) -> Fact | None:
    """The questions for the fact at characters a..b of the sentence (see the module doc)."""
    value = s.text[a:b]
    first, last = s.at(a), s.at(b - 1)
    ca, cb = s.clause_of(first)
    pred = s.predicate_after(last + 1, cb)
    if pred is None:
        return None
    p, e = pred
    start = s.content_start(ca, cb)
    subj = s.subject(start, cb, first)
    lead = ""
    if subj is None and (ca, cb) != s.clauses[0]:
        # A clause without its own subject borrows the sentence's.
        a0, b0 = s.clauses[0]
        borrowed = s.subject(s.content_start(a0, b0), b0, b0)
        name = _bare(s.surface(*borrowed)) if borrowed is not None else ""
        # Borrowed unless the clause has its own object and the sentence's subject is not
        # who acts ("전력효율은 …높이고, 재생에너지 비율을 …높인다": the second is not the first's).
        acts = _DEMONSTRATIVE.match(name) or name.endswith("정부") or _AGENCY_END.search(name)
        own_object = any(t.tag == "JKO" for t in s.tokens[ca:p])
        if borrowed is not None and (acts or not own_object):
            lead = _subject_text(s, borrowed, title) + " "
            subj_text = _subject_text(s, borrowed, title)
        else:
            subj_text = ""
            if borrowed is None:
                # No subject anywhere ("…배움터를 도서관 안에 운영하고, 연간 4만 명에게 교육을
                # 제공한다"): the clauses before say what the question is about; without them
                # "몇 명에게 교육을 제공하나요?" could be about anything.
                lead = s.text[s.tokens[s.clauses[0][0]].start:s.tokens[ca].start].strip() + " "
    elif subj is not None:
        subj_text = _subject_text(s, subj, title)
        if subj_text != s.surface(*subj):     # "이 계획은" → the title
            lead, start = subj_text + " ", subj[1]
    else:
        subj_text = ""
    if first < start or (subj is not None and first < subj[1]):
        return None                      # the fact is (inside) the subject itself
    if kind in ("period", "until", "duration", "date") and s.tokens[p].tag == "VCP" \
            and not (kind == "duration" and _VALUE_TAIL.match(s.text[b:s.tokens[p].start])):
        # "…총사업비는 2026년부터 2030년까지 5년간 1조 원이다": the time only qualifies the value;
        # "대출 기간은 14일이며": the duration is the value, and is asked.
        return None
    wh = _wh(kind, value)
    after_i = last + 1
    after = s.tokens[after_i] if after_i < len(s.tokens) else None
    if kind == "date" and after is not None and after.form == "에" and after_i < p:
        wh_part, rest_from = wh, after.start + after.len          # "2027년 2월에" → "언제"
    elif after is not None and after.tag.startswith("J") and after.start == b and after_i < p:
        wh_part, rest_from = wh + _particle(after.form, wh), after.start + after.len
    else:
        wh_part, rest_from = wh, b
    p_start = s.tokens[p].start
    begin = s.tokens[start].start
    stem = s.tokens[p]
    if stem.tag == "VCP" and "," in s.text[begin:a] + s.text[b:b + 1]:
        # A list of values under one copula ("국비는 8,600억 원, 지방비는 3,800억 원이다"):
        # each item is asked on its own ("국비는 얼마인가요?").
        begin = max(begin, s.text.rfind(",", begin, a) + 1)
        while s.text[begin:begin + 1] == " ":
            begin += 1
        if s.text[b:b + 1] == ",":
            rest_from = p_start = b
        lead = ""
    before = s.text[begin:a]
    middle = s.text[rest_from:p_start]
    # 있다/없다 ("넣을 수 있다") ask like verbs: "있나요", "있는지".
    adjective = stem.tag in ("VA", "XSA", "VCP", "VCN") and s.tokens[e - 1].form not in ("있", "없")
    cloze = f"{lead}{before}{wh_part}{middle}"
    q1 = cloze + s.conjugate(p, e, "ᆫ가요" if adjective else "나요") + "?"
    polite = f"{lead}{s.text[begin:p_start]}{s.conjugate(p, e, 'ᆸ니다')}."
    # "도서관 안에는 …": a place or time made the topic is no noun to ask about ("도서관 안에가 …").
    adverbial = subj is not None and subj[1] >= 2 and s.tokens[subj[1] - 2].tag == "JKB"
    noun = "" if adverbial else _bare(subj_text)
    # Second phrasing: what the subject *is* ("…시스템의 수는 얼마나 되나요?") when the fact is
    # the subject's value; the thing counted, in a relative clause ("…이 지정한 전문센터는
    # 몇 곳인가요?") when the fact counts an object; else the formal cloze.
    direct = None
    # The fact is the subject's value: nothing but the fact between the subject and the
    # predicate ("…인력은 약 1,200명으로 추산된다", "…시스템은 12대이며").
    gap = s.text[s.tokens[subj[1]].start:a] if subj is not None and subj[1] < len(s.tokens) else before
    is_value = bool(_VALUE_TAIL.match(middle)) and not gap.strip(" 전체의") and not lead
    # The noun run right before the fact ("전문센터 10곳을"): the thing counted.
    head_i = first - 1
    while head_i - 1 >= start and s.tokens[head_i - 1].tag in ("NNG", "NNP", "XPN", "XSN") \
            and s.tokens[head_i - 1].start + s.tokens[head_i - 1].len == s.tokens[head_i].start:
        head_i -= 1
    # What the subject's value is called ("…전문인력 규모"), when the fact is that value.
    what = _what(noun, kind, value) if noun and not _routine(noun) and is_value else None
    if what and kind not in ("law", "period", "until"):
        direct = f"{josa(what, '은/는')} 얼마나 되나요?" if kind not in ("duration",) else f"{josa(what, '은/는')} 어떻게 되나요?"
    elif (after is not None and after.tag == "JKO" and head_i >= start and s.tokens[head_i].tag in ("NNG", "NNP")
          and noun and kind not in ("law", "period", "until")):
        head = s.text[s.tokens[head_i].start:s.tokens[first - 1].start + s.tokens[first - 1].len]
        mod = _join([(t.form, t.tag) for t in s.tokens[p:e] if t.tag != "EP"] + [("ᆫ" if s.past else "는", "ETM")])
        between = s.text[s.tokens[subj[1]].start:s.tokens[head_i].start].strip() if subj else ""
        direct = f"{_josa(noun, '이/가')} {between + ' ' if between else ''}{mod} {_josa(head, '은/는')} {wh}인가요?"
    if direct is None:
        direct = cloze + s.conjugate(p, e, "ᆸ니까") + "?"
    # Third phrasing: a request.
    if what and kind not in ("period", "until"):
        request = f"{josa(what, '을/를')} 알려 주세요."
    else:
        morphs = [(t.form, t.tag) for t in s.tokens[p:e]]
        if s.past and not any(t == "EP" for _, t in morphs):
            morphs.append(("었", "EP"))
        request = f"{cloze}{_join(morphs + [('는지' if not adjective else 'ᆫ지', 'EC')])} 알려 주세요."
    questions = [_tidy(q) for q in (q1, direct, request)]
    answers = [_tidy(polite), _tidy(polite), s.text.strip()]
    questions, answers = questions[:phrasings], answers[:phrasings]
    if len(set(questions)) < len(questions):
        return None
    return Fact(kind=kind, value=value.strip(), sentence=s.text, questions=questions, answers=answers)


def _josa(word: str, pair: str) -> str:
    """:func:`josa` that reads past a trailing parenthesis: "기본계획(2021~2025)" + 이/가 → "…이"."""
    bare = re.sub(r"\s*\([^)]*\)$", "", word)
    return word + josa(bare, pair)[len(bare):]


def _routine(noun: str) -> bool:
    return noun in ROUTINE_NOUNS or len(noun) < 2


def _tidy(q: str) -> str:
    q = re.sub(r"\s+", " ", q).strip()
    q = re.sub(r"\s+([?.,])", r"\1", q)
    return q


def _agency(s: _Sentence, phrasings: int) -> Fact | None:
    """"X(기관)은 …을 총괄한다" → "어느 기관이 …을 총괄하나요?" and its phrasings."""
    a, b = s.clauses[0]
    subj = s.subject(s.content_start(a, b), b, b)
    if subj is None:
        return None
    if any(t.tag not in ("NNG", "NNP", "XPN", "XSN", "SL", "SSO", "SSC", "SN", "SP") for t in s.tokens[subj[0]:subj[1] - 1]) \
            or subj[1] - subj[0] > 8 or re.search(r"(?:이란|란|이라 함은)\s", s.text):
        return None
    name = s.surface(subj[0], subj[1] - 1).strip()
    bare = re.sub(r"\s*\([^)]*\)$", "", name)
    if not _AGENCY_END.search(bare) or not any(w in s.text for w in _AGENCY_WORDS) or _DEMONSTRATIVE.match(name):
        return None
    if bare in ("정부", "기관") or len(bare) < 3:
        return None
    pred = s.predicate_after(subj[1], b)
    if pred is None:
        return None
    p, e = pred
    rest = s.text[s.tokens[subj[1]].start:s.tokens[p].start].strip()
    if not rest:
        return None
    q1 = f"어느 기관이 {rest} {s.conjugate(p, e, '나요')}?"
    q2 = f"{rest} {_join([(t.form, t.tag) for t in s.tokens[p:e]] + [('는', 'ETM')])} 기관은 어디입니까?"
    q3 = f"{josa(name, '은/는')} 어떤 역할을 맡고 있나요?"
    polite = f"{josa(name, '은/는')} {rest} {s.conjugate(p, e, 'ᆸ니다')}."
    qs = [_tidy(q1), _tidy(q2), _tidy(q3)][:phrasings]
    ans = [_tidy(polite), _tidy(polite), s.text.strip()][:phrasings]
    return Fact(kind="agency", value=name, sentence=s.text, questions=qs, answers=ans)


def value_keyword(fact: Fact) -> str:
    """The fact as an eval key fact: "약 1,200명" → "1,200명", "「법」 제5조" → "법"."""
    if fact.kind == "law":
        m = re.search(r"「([^」]+)」", fact.value)
        return m.group(1) if m else fact.value
    if fact.kind == "agency":
        return re.sub(r"\s*\([^)]*\)$", "", fact.value)
    return re.sub(rf"^{_APPROX}", "", fact.value).strip()
