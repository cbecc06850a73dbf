"""Chunks → QA records through a teacher, with a crash-safe journal.

A teacher turns one chunk into records. ``RuleTeacher`` (the default) needs no
model: it mines definition, number/goal, agency-role, law, industry and
heading questions whose answers are sentences of the chunk, so the whole
pipeline runs offline and every answer is grounded by construction. LLM
teachers (a local model, an OpenAI-compatible server: ``kotune.data.teachers``)
implement the same ``Teacher`` interface; a teacher that talks to a server is an
``AsyncTeacher`` and runs many chunks at once.

Every finished chunk is appended to a journal (one JSON line, flushed and
fsynced, by one writer) before the final output is written atomically, so a
crash loses at most the chunks in flight and ``--resume`` skips finished
chunks. Whatever order chunks finish in, the output is in chunk order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

from kotune.data.chunk import match_heading
from kotune.errors import KotuneError
from kotune.io import dumps, read_jsonl
from kotune.korean import split_sentences, tokenize
from kotune.records import Record, normalize, write_records


@dataclass
class TeacherStats:
    """Live counters of an LLM teacher, shown on the progress bar and in the summary.

    ``errors`` counts failed requests (HTTP errors, dropped connections,
    timeouts, malformed replies); ``retries`` counts requests sent again after
    one; ``rejected`` counts generated answers that failed validation, by reason.
    """

    requests: int = 0
    retries: int = 0
    errors: int = 0
    reasks: int = 0
    token_limit_retries: int = 0   # requests asked again within a max_tokens limit the server stated
    accepted: int = 0
    failed_chunks: int = 0
    rejected: Counter = field(default_factory=Counter)
    on_change: Callable[["TeacherStats"], None] | None = field(default=None, repr=False, compare=False)

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:  # validation runs in worker threads
            setattr(self, name, getattr(self, name) + n)
        if self.on_change:
            self.on_change(self)

    def reject(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.rejected[reason] += n
        if self.on_change:
            self.on_change(self)

    def summary(self) -> str:
        parts = [f"{self.requests} requests", f"{self.retries} retries", f"{self.errors} errors"]
        if self.reasks:
            parts.append(f"{self.reasks} re-asks")
        if self.token_limit_retries:
            parts.append(f"{self.token_limit_retries} asked again within the server's max_tokens limit")
        line = ", ".join(parts) + f"; {self.accepted} answers accepted"
        if self.rejected:
            line += ", rejected: " + ", ".join(f"{k} {v}" for k, v in self.rejected.most_common())
        return line


class Teacher(ABC):
    """Turns one chunk (``{"chunk_id", "text", "metadata"}``) into QA records."""

    name: str = "teacher"
    batch_size: int = 1                 # chunks handed to generate_batch at once
    stats: TeacherStats | None = None   # LLM teachers count requests, retries, rejections

    @abstractmethod
    def generate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        """At most ``n`` records for ``chunk``; each keeps ``chunk_id`` and ``source``."""

    def generate_batch(self, chunks: list[dict[str, Any]], n: int) -> list[list[Record]]:
        """Records for several chunks at once (a local model batches its prompts)."""
        return [self.generate(c, n) for c in chunks]


class ChunkFailed(Exception):
    """A chunk the teacher could not finish (requests kept failing); it stays
    out of the journal so ``--resume`` tries it again."""


class AsyncTeacher(Teacher):
    """A teacher that waits on a server: ``workers`` chunks are generated at once."""

    workers: int = 1

    def running(self) -> Any:
        """Async context manager around a whole run (opens the HTTP client)."""
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def _noop() -> AsyncIterator[None]:
            yield

        return _noop()

    @abstractmethod
    async def agenerate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        """Like ``generate``; raises ``ChunkFailed`` when the chunk cannot be finished now."""

    def generate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        async def one() -> list[Record]:
            async with self.running():
                return await self.agenerate(chunk, n)

        return asyncio.run(one())


# ---------------------------------------------------------------- Korean josa
def has_batchim(word: str) -> bool:
    """Whether the last syllable has a final consonant (decides 은/는, 이/가 ...)."""
    word = re.sub(r"[\s)\]」』'\"”’]+$", "", word)
    if not word:
        return False
    ch = word[-1]
    if "가" <= ch <= "힣":
        return (ord(ch) - 0xAC00) % 28 != 0
    if ch.isdigit():
        return ch in "013678"  # 영, 일, 삼, 육, 칠, 팔 end in a consonant
    return ch.lower() in "lmnr"


def josa(word: str, pair: str) -> str:
    """``josa("계획", "은/는")`` → ``"계획은"``."""
    with_b, without_b = pair.split("/")
    return word + (with_b if has_batchim(word) else without_b)


# ---------------------------------------------------------------- rule teacher
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
# A quantity: a number with a unit (plain numbers such as "제5조" or "3월" are not goals).
_QUANTITY = re.compile(r"\d[\d,.]*\s*(?:%|퍼센트|명|억|조|만|개|곳|건|대|배|회|시간|페타플롭스|엑사플롭스|PF|EF|년까지|위)")
_MONEY = re.compile(r"\d[\d,.]*\s*(?:억|조|만)\s*원")
_GOAL = re.compile(r"(\d{4})년까지")
_INDUSTRY = re.compile(r"산업|기업|제조|바이오|반도체|자동차|스타트업|중소")
_NOUN_TAGS = frozenset({"NNG", "NNP", "XPN", "XSN", "SL", "SH"})
_ROUTINE_NOUNS = frozenset({"정부", "이상", "이하", "계획", "추진", "수준", "위", "등", "것", "바", "수", "기반", "기준",
                            "문제", "경우", "결과", "이후", "현재", "전체", "절반", "기존"})


def _topic(breadcrumbs: str) -> str:
    """Last heading without its numbering: "Ⅲ. 추진 전략 > 1. 인프라 확충" → "인프라 확충"."""
    last = breadcrumbs.split(" > ")[-1] if breadcrumbs else ""
    last = re.sub(r"^(?:[ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ]+|\d{1,2}|[가-하]|#+)\s*[.．)]?\s*", "", last)
    last = re.sub(r"^제\s*\d+\s*[장절조]\s*", "", last).strip("() ")
    last = re.sub(r"^(?:추진과제|전략|과제)\s*[\d-]+\s*[:：.]\s*", "", last)
    return last.strip()


def _noun_runs(sentence: str) -> list[tuple[str, str, str]]:
    """``(phrase, next_tag, next_form)`` for each run of nouns (Kiwi), e.g. "국가 인공지능 컴퓨팅 센터"."""
    tokens = tokenize(sentence)  # teacher workers call this from threads: under Kiwi's lock
    runs: list[tuple[str, str, str]] = []
    i = 0
    while i < len(tokens):
        if tokens[i].tag not in _NOUN_TAGS:
            i += 1
            continue
        j = i
        while j + 1 < len(tokens) and tokens[j + 1].tag in _NOUN_TAGS and tokens[j + 1].start - (tokens[j].start + tokens[j].len) <= 1:
            j += 1
        phrase = sentence[tokens[i].start: tokens[j].start + tokens[j].len].strip()
        nxt = tokens[j + 1] if j + 1 < len(tokens) else None
        runs.append((phrase, nxt.tag if nxt else "", nxt.form if nxt else ""))
        i = j + 1
    return runs


def _focus(sentence: str, avoid: str = "") -> str:
    """What the sentence is about: its subject/topic noun phrase unless routine
    ("정부는"), else its object, else its longest noun phrase."""
    runs = [(p, t, f) for p, t, f in _noun_runs(sentence) if p not in _ROUTINE_NOUNS and p != avoid and len(p) >= 2]
    for phrase, tag, _ in runs:
        if tag in ("JX", "JKS", "JKB"):
            return phrase
        break
    objects = [p for p, t, _ in runs if t == "JKO"]
    if objects:
        return objects[-1]
    return max((p for p, _, _ in runs), key=len, default="")


def _keywords(answer: str, limit: int = 3) -> list[str]:
    """Expected keywords for evaluation (the policy seed's 키워드 반영률): quantities
    first ("2030년", "600페타플롭스"), then the longest noun phrases of the answer."""
    found: list[str] = []
    for m in _QUANTITY.finditer(answer):
        q = m.group(0).strip()
        if q not in found:
            found.append(q)
    phrases = sorted({p for p, _, _ in _noun_runs(answer) if len(p) >= 3 and p not in _ROUTINE_NOUNS},
                     key=lambda p: (-len(p), answer.find(p)))
    for p in phrases:
        if all(p not in f and f not in p for f in found):
            found.append(p)
    return found[:limit]


@dataclass
class _Candidate:
    rule: str
    question: str
    answer: str
    category: str
    difficulty: str


class RuleTeacher(Teacher):
    """Deterministic, model-free QA from a chunk's own sentences."""

    name = "rule"
    RULE_ORDER = ("definition", "number", "agency", "law", "industry", "heading")

    def candidates(self, chunk: dict[str, Any]) -> list[_Candidate]:
        meta = chunk.get("metadata") or {}
        topic = _topic(meta.get("breadcrumbs", "")) or meta.get("title", "") or "이 문서"
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
        out: list[_Candidate] = []
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
        if _QUANTITY.search(s):
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
        # Round-robin over rules so a chunk's records cover several question types.
        by_rule: dict[str, list[_Candidate]] = {r: [] for r in self.RULE_ORDER}
        for c in cands:
            by_rule[c.rule].append(c)
        picked: list[_Candidate] = []
        seen_q: set[str] = set()
        while len(picked) < n and any(by_rule.values()):
            for rule in self.RULE_ORDER:
                if by_rule[rule] and len(picked) < n:
                    c = by_rule[rule].pop(0)
                    if c.question not in seen_q:
                        seen_q.add(c.question)
                        picked.append(c)
        meta = chunk.get("metadata") or {}
        return [
            Record(
                instruction=c.question,
                output=c.answer,
                category=c.category,
                difficulty=c.difficulty,
                source=meta.get("source", ""),
                chunk_id=chunk["chunk_id"],
                extra={"generator": f"rule:{c.rule}", "keywords": _keywords(c.answer)},
            )
            for c in picked
        ]


def make_teacher(spec: str, model: str | None = None, **options: Any) -> Teacher:
    """``rule``; ``hf:PATH`` (a local model); ``http(s)://...`` (an OpenAI-compatible server).

    ``options`` go to the LLM teachers: ``workers``, ``api_keys``, ``max_retries``,
    ``rpm``, ``timeout``, ``max_tokens`` (``kotune.data.teachers.OpenAITeacher``);
    ``workers`` (batch size) and ``max_tokens`` (``LocalTeacher``).
    """
    if spec == "rule":
        return RuleTeacher()
    if spec.startswith("hf:"):
        from kotune.data.teachers import LocalTeacher

        path = spec[3:].strip()
        if not path:
            raise KotuneError("--teacher hf:PATH needs a model, e.g. hf:builtin:tiny-ko or hf:beomi/Llama-3-Open-Ko-8B")
        return LocalTeacher(path, batch_size=options.get("workers") or 8, max_new_tokens=options.get("max_tokens"))
    if spec.startswith(("http://", "https://")):
        from kotune.data.teachers import OpenAITeacher

        return OpenAITeacher(spec, model, **options)
    raise KotuneError(f"unknown teacher {spec!r}; use rule, hf:PATH or an OpenAI-compatible URL")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"2/4"`` → ``(2, 4)``; shard i of n takes the chunks whose index % n == i-1."""
    if not spec:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise KotuneError(f"--shard expects I/N with 1 <= I <= N (e.g. 1/4), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_chunks(chunks: list[dict[str, Any]], shard: tuple[int, int] | None) -> list[dict[str, Any]]:
    """Every n-th chunk starting at i-1: shards are disjoint, cover all chunks, and do
    not depend on anything but the chunk order."""
    if shard is None:
        return chunks
    i, n = shard
    return [c for k, c in enumerate(chunks) if k % n == i - 1]


# ---------------------------------------------------------------- journal
def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def read_journal(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished chunks from a journal; a torn last line (crash mid-write) is ignored."""
    done: dict[str, list[dict[str, Any]]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                done[entry["chunk_id"]] = list(entry["records"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # only the last line can be torn: appends are sequential
    return done


def load_chunks(path: str | Path) -> list[dict[str, Any]]:
    chunks = []
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj.get("chunk_id"), str) or not isinstance(obj.get("text"), str):
            raise KotuneError('not a chunk: needs "chunk_id" and "text"', path=path, line=lineno)
        if not isinstance(obj.get("metadata") or {}, dict):
            raise KotuneError('not a chunk: "metadata" must be an object', path=path, line=lineno)
        chunks.append(obj)
    if not chunks:
        raise KotuneError("no chunks found", path=path)
    return chunks


def generate_file(
    chunks: list[dict[str, Any]],
    teacher: Teacher,
    out: Path,
    *,
    per_chunk: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    input_context: bool = False,
) -> list[Record]:
    """Run ``teacher`` over ``chunks`` into ``out`` with a resumable journal.

    ``on_start(k)`` is told how many chunks the journal already holds (they are
    skipped, and reported to ``on_chunk`` at once); ``on_chunk(1)`` then follows
    every chunk as it finishes. ``input_context`` stores the source chunk as each
    record's ``input``, formatted exactly as retrieval formats it at inference
    (``--template rag`` then trains on the prompts eval and serve will build).
    """
    jpath = journal_path(out)
    if jpath.exists() and not (resume or overwrite):
        raise KotuneError(f"an unfinished run left {jpath.name}; pass --resume to continue it or --overwrite to start over", path=out)
    if overwrite and jpath.exists():
        jpath.unlink()
    done = read_journal(jpath) if resume else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    if resume and jpath.exists() and jpath.stat().st_size:
        with open(jpath, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # end the torn line, or the next entry would be glued onto it and lost
            with open(jpath, "a", encoding="utf-8") as f:
                f.write("\n")
    failures: list[tuple[dict[str, Any], BaseException]] = []
    try:
        with open(jpath, "a", encoding="utf-8") as journal:

            def finish(chunk: dict[str, Any], recs: list[Record]) -> None:
                """The one writer: a chunk is finished once its line is on disk."""
                if input_context:
                    from kotune.retrieval import format_context

                    context = format_context([(chunk, 0.0)])
                    for r in recs:
                        r.input = r.input or context
                rows = [r.to_dict() for r in recs]
                journal.write(dumps({"chunk_id": chunk["chunk_id"], "records": rows}) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                done[chunk["chunk_id"]] = rows
                if on_chunk:
                    on_chunk(1)

            todo = [c for c in chunks if c["chunk_id"] not in done]
            if on_start:
                on_start(len(chunks) - len(todo))
            if on_chunk and len(todo) < len(chunks):
                on_chunk(len(chunks) - len(todo))
            if isinstance(teacher, AsyncTeacher):
                if todo:  # a finished run resumes without asking the server anything
                    asyncio.run(_run_async(todo, teacher, per_chunk, finish, failures))
            else:
                size = max(1, int(teacher.batch_size or 1))
                for start in range(0, len(todo), size):
                    batch = todo[start:start + size]
                    for chunk, recs in zip(batch, teacher.generate_batch(batch, per_chunk)):
                        finish(chunk, recs)
    except BaseException:
        if jpath.exists() and jpath.stat().st_size == 0:
            jpath.unlink()  # nothing finished: no journal to --resume from
        raise
    if failures:
        msg = f"{len(failures)} of {len(chunks)} chunks failed (last error: {failures[-1][1]})"
        if jpath.stat().st_size == 0:
            jpath.unlink()
            raise KotuneError(msg + "; nothing was finished", path=out)
        raise KotuneError(msg + f"; the {len(done)} finished chunks are kept in {jpath.name}: "
                          "run the same command with --resume to retry the rest", path=out)
    # Output in chunk order, whatever order the journal was written in.
    records = [normalize(d) for c in chunks for d in done.get(c["chunk_id"], [])]
    write_records(out, records)
    jpath.unlink()
    return records


async def _run_async(
    todo: list[dict[str, Any]],
    teacher: AsyncTeacher,
    per_chunk: int,
    finish: Callable[[dict[str, Any], list[Record]], None],
    failures: list[tuple[dict[str, Any], BaseException]],
) -> None:
    """``teacher.workers`` tasks take chunks from a queue; finished chunks go through
    a second queue to the single journal writer. A fatal error (bad key, unknown
    model) stops the workers, but the writer still journals what had finished."""
    pending: asyncio.Queue = asyncio.Queue()
    for c in todo:
        pending.put_nowait(c)
    results: asyncio.Queue = asyncio.Queue()

    async def worker() -> None:
        while not writing.done():  # a writer that died (disk full) stops the run
            try:
                chunk = pending.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                recs = await teacher.agenerate(chunk, per_chunk)
            except ChunkFailed as e:
                failures.append((chunk, e))
                if teacher.stats is not None:
                    teacher.stats.bump("failed_chunks")
                continue
            await results.put((chunk, recs))

    async def writer() -> None:
        while True:
            item = await results.get()
            if item is None:
                return
            finish(*item)

    writing = asyncio.create_task(writer())
    try:
        async with teacher.running():
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, min(int(teacher.workers or 1), len(todo) or 1))):
                    group.create_task(worker())
    except BaseExceptionGroup as eg:
        # Surface the first real error (a KotuneError prints as one line).
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        await results.put(None)
        await writing
