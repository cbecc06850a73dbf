"""What the LLM teachers share: the generation prompt, reply parsing and answer acceptance.

Both LLM teachers (``OpenAITeacher``, ``LocalTeacher``) ask with the insurance
seed's RAG-style generation prompt (the chunk as context, "answer only from the
document", cite the article: ``build_messages``), parse the reply robustly (a
JSON list, JSON lines, code fences, ``질문:/답변:`` text: ``parse_qa``), and
validate every answer against its own chunk before keeping it
(``accept_pairs``), with the checks ``kotune validate`` runs:

- it ends like a sentence (not cut off) and is at least 10 characters;
- it is not evasive ("문서에 명시되어 있지 않습니다" ...);
- it is grounded: ``grounding_score(answer, chunk) >= 0.5`` (Kiwi morphemes).

Passing answers are kept; a chunk whose answers all fail is asked again (up to
``reask`` times, with a note that the last answers were not grounded) — the
seed's validation-and-retry loop. ``distillation_records`` turns QA records into
training data for a model that answers this very request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kotune.data.facts import PHRASINGS
from kotune.data.teacher import TeacherStats
from kotune.data.validate import MorphemeCache, grounding_problem, text_problem
from kotune.korean import answer_keywords
from kotune.records import Record

__all__ = [
    "CATEGORIES", "DEFAULT_CATEGORY", "DIFFICULTIES", "SYSTEM_PROMPT", "accept_pairs", "answer_problem",
    "build_instruction", "build_messages", "distillation_records", "format_document", "parse_qa",
]

CATEGORIES = ("사실", "절차", "조건", "예외")
DIFFICULTIES = ("초급", "중급", "고급")
DEFAULT_CATEGORY = "teacher"

SYSTEM_PROMPT = (
    "당신은 주어진 문서만을 근거로 학습용 질문-답변 데이터를 만드는 전문가입니다. "
    "문서에 없는 내용은 절대 지어내지 않습니다."
)

# The seed's generate_data_v2 prompt ("당신은 보험 약관 전문가입니다. 아래 제공된
# [보험 약관] 내용을 바탕으로... [요구사항] 1. 질문 2. 답변"), for any domain, asking
# for several pairs at once as JSON.
_INSTRUCTION = """아래 제공된 [문서] 내용을 바탕으로 질문-답변 쌍 {n}개를 만드세요.

[요구사항]
1. 사실 단위로 만드세요: [문서]에서 사용자가 물어볼 구체적인 사실 {facts}개(금액·예산, 수치·비율, 날짜·기간·목표 시점, 기관과 그 역할, 법령, 대상·목록, 정의)를 고르고, 사실마다 서로 다른 표현의 질문을 {phrasings}개씩 만드세요(어순, 의문사, 존댓말 어미를 바꾸어). 질문만 읽어도 무엇을 묻는지 알 수 있게 주어와 대상을 밝히세요.
2. 답변: 그 사실을 담은 짧고 완결된 문장(한두 문장)으로, 반드시 [문서]에 명시된 표현과 수치 그대로 답하세요. 같은 사실의 답변도 표현을 조금씩 바꾸세요. 문서에 조항이나 근거(예: "제N조에 따르면")가 있으면 언급하세요.
3. 문서에 없는 내용은 추측하지 말고, 문서로 답할 수 없는 질문은 만들지 마세요.
4. 유형: {categories} 중 하나.

[출력 형식]
다른 설명 없이 JSON 배열 하나만 출력하세요.
[{{"질문": "...", "답변": "...", "유형": "사실"}}]"""

_REASK_NOTE = ("\n\n[주의] 이전에 만든 답변은 문서에 근거하지 않았거나 형식이 맞지 않아 모두 버려졌습니다. "
               "문서의 문장과 표현을 그대로 활용하여, 문서로 답할 수 있는 질문만 다시 만드세요.")


def format_document(chunk: dict[str, Any]) -> str:
    """The ``[문서]`` block of the request: where the chunk sits (breadcrumbs or title), then its text."""
    meta = chunk.get("metadata") or {}
    where = meta.get("breadcrumbs") or meta.get("title") or ""
    head = f"위치: {where}\n" if where else ""
    return f"[문서]\n{head}{chunk.get('text', '')}"


def build_instruction(n: int, reask: bool = False, phrasings: int = PHRASINGS) -> str:
    """The generation request without the document: ``n`` pairs, as facts × ``phrasings``
    questions each (the rule teacher's shape, :mod:`kotune.data.facts`)."""
    phrasings = max(1, min(phrasings, n))
    return _INSTRUCTION.format(n=n, facts=max(1, n // phrasings), phrasings=phrasings,
                               categories="/".join(CATEGORIES)) + (_REASK_NOTE if reask else "")


def build_messages(chunk: dict[str, Any], n: int, reask: bool = False,
                   phrasings: int = PHRASINGS) -> list[dict[str, str]]:
    """Chat messages asking for ``n`` QA pairs grounded in ``chunk`` (document last)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": build_instruction(n, reask, phrasings) + "\n\n" + format_document(chunk)},
    ]


def distillation_records(chunks: list[dict[str, Any]], records: list[Record]) -> list[Record]:
    """Records that teach a model to answer this module's generation request.

    One record per chunk that has QA records: the instruction is exactly the user
    message an ``OpenAITeacher`` sends for that chunk, the output its QA pairs as
    ``질문: …`` / ``답변: …`` lines (which :func:`parse_qa` reads). Trained with the
    ``kotune`` template and served with ``kotune serve``, the model becomes a local
    teacher for ``kotune generate --teacher URL``: the way to distil a large
    teacher's accepted answers (or the rule teacher's) into a small one.
    """
    by_chunk: dict[str, list[Record]] = {}
    for r in records:
        by_chunk.setdefault(r.chunk_id, []).append(r)
    out = []
    for chunk in chunks:
        pairs = by_chunk.get(chunk["chunk_id"])
        if not pairs:
            continue
        text = "\n".join(f"질문: {r.instruction}\n답변: {r.output}" for r in pairs)
        out.append(Record(instruction=build_messages(chunk, len(pairs))[-1]["content"], output=text,
                          category=pairs[0].category, source=pairs[0].source, chunk_id=chunk["chunk_id"]))
    return out


# ---------------------------------------------------------------- parsing
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?|```")
_THINK = re.compile(r"<think>.*?</think>", re.S)
_Q_KEYS = ("질문", "question", "instruction", "q", "query", "문제")
_A_KEYS = ("답변", "answer", "output", "a", "response", "답")
_C_KEYS = ("유형", "category", "type", "분류", "카테고리")
_D_KEYS = ("난이도", "difficulty", "level")
_LIST_KEYS = ("qa", "qas", "pairs", "items", "data", "questions", "results", "질문답변", "qa_pairs")
_TEXT_PAIR = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:\*\*)?(?:질문|Q)\s*\d*\s*(?:\*\*)?\s*[:：]\s*(?P<q>.+?)\s*\n\s*(?:\*\*)?(?:답변|답|A)\s*\d*\s*(?:\*\*)?\s*[:：]\s*"
    r"(?P<a>.+?)(?=\n\s*(?:\d+[.)]\s*)?(?:\*\*)?(?:질문|Q)\s*\d*\s*(?:\*\*)?\s*[:：]|\Z)",
    re.S,
)


def _pick(obj: dict[str, Any], keys: tuple[str, ...]) -> str:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for k in keys:
        v = lowered.get(k)
        if isinstance(v, (str, int, float)) and str(v).strip():
            return str(v).strip()
    return ""


def _pairs_from(obj: Any) -> list[dict[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).strip().lower() in _LIST_KEYS and isinstance(v, list):
                return _pairs_from(v)
        q, a = _pick(obj, _Q_KEYS), _pick(obj, _A_KEYS)
        if q and a:
            return [{"question": q, "answer": a, "category": _pick(obj, _C_KEYS), "difficulty": _pick(obj, _D_KEYS)}]
        return []
    if isinstance(obj, list):
        return [p for item in obj for p in _pairs_from(item)]
    return []


def parse_qa(text: str) -> list[dict[str, str]]:
    """QA pairs from a teacher's reply: ``{"question", "answer", "category", "difficulty"}``.

    Tolerates code fences, ``<think>`` blocks, prose around the JSON, a JSON
    list or object, JSON lines, trailing commas, and plain ``질문: ... 답변: ...``
    text. Returns [] when nothing QA-shaped is found.
    """
    text = _THINK.sub("", text or "")
    text = _FENCE.sub("\n", text).strip()
    if not text:
        return []
    candidates = [text]
    lo, hi = text.find("["), text.rfind("]")
    if 0 <= lo < hi:
        candidates.append(text[lo:hi + 1])
    for cand in candidates:
        for attempt in (cand, re.sub(r",\s*([\]}])", r"\1", cand)):
            try:
                pairs = _pairs_from(json.loads(attempt))
            except json.JSONDecodeError:
                continue
            if pairs:
                return pairs
    # JSON lines, or objects scattered in prose: decode every {...} that parses.
    decoder = json.JSONDecoder()
    pairs: list[dict[str, str]] = []
    i = text.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        pairs.extend(_pairs_from(obj))
        i = text.find("{", end)
    if pairs:
        return pairs
    for m in _TEXT_PAIR.finditer(text):
        q = m.group("q").strip().strip('"*').strip()
        a = m.group("a").strip().strip('"*').strip()
        if q and a:
            pairs.append({"question": q, "answer": a, "category": "", "difficulty": ""})
    return pairs


# ---------------------------------------------------------------- acceptance
_WS = re.compile(r"\s+")


def answer_problem(question: str, answer: str, source: str, *, min_grounding: float = 0.5,
                   min_answer_chars: int = 10, cache: MorphemeCache | None = None) -> str | None:
    """Why an answer must not be kept (a ``kotune validate`` reason), or None.

    The checks ``kotune validate`` runs, in its order and through the same code
    (``validate.text_problem``, ``validate.grounding_problem``): missing fields,
    too short, incomplete (does not end like a sentence), evasive, ungrounded in
    ``source``. Unlike ``kotune validate``, an answer whose grounding cannot be
    scored (no content morphemes) is ungrounded. ``cache`` keeps the source's
    morphemes between the answers of one chunk.
    """
    reason = text_problem(question, answer, min_answer_chars=min_answer_chars)
    if reason:
        return reason
    reason, _ = grounding_problem(answer.strip(), source, min_grounding=min_grounding, cache=cache, require_score=True)
    return reason


def accept_pairs(chunk: dict[str, Any], pairs: list[dict[str, str]], n: int, generator: str,
                 stats: TeacherStats, min_grounding: float = 0.5) -> list[Record]:
    """Records for the pairs that pass validation (at most ``n``, questions unique)."""
    meta = chunk.get("metadata") or {}
    source_text = chunk.get("text", "")
    cache = MorphemeCache()  # the chunk is tokenised once, not once per answer
    out: list[Record] = []
    seen: set[str] = set()
    for p in pairs:
        if len(out) >= n:
            break
        q, a = p["question"].strip(), p["answer"].strip()
        reason = answer_problem(q, a, source_text, min_grounding=min_grounding, cache=cache)
        if reason is None and _WS.sub("", q) in seen:
            reason = "duplicate"
        if reason:
            stats.reject(reason)
            continue
        seen.add(_WS.sub("", q))
        category = p.get("category", "").strip()
        difficulty = p.get("difficulty", "").strip()
        out.append(Record(
            instruction=q,
            output=a,
            category=category if category in CATEGORIES else DEFAULT_CATEGORY,
            difficulty=difficulty if difficulty in DIFFICULTIES else "",
            source=meta.get("source", ""),
            chunk_id=chunk["chunk_id"],
            extra={"generator": generator, "keywords": answer_keywords(a)},
        ))
    stats.bump("accepted", len(out))
    return out
