"""LLM teachers: an OpenAI-compatible server and a local model.

Both ask with the insurance seed's RAG-style generation prompt (the chunk as
context, "answer only from the document", cite the article), parse the reply
robustly (a JSON list, JSON lines, code fences, ``질문:/답변:`` text), and
validate every answer against its own chunk before keeping it:

- it ends like a sentence (not cut off) and is at least 10 characters;
- it is not evasive ("문서에 명시되어 있지 않습니다" ...);
- it is grounded: ``grounding_score(answer, chunk) >= 0.5`` (Kiwi morphemes).

Passing answers are kept; a chunk whose answers all fail is asked again (up to
``reask`` times, with a note that the last answers were not grounded) — the
seed's validation-and-retry loop.

``OpenAITeacher`` runs ``workers`` chunks at once over ``httpx.AsyncClient``,
spreads requests round-robin over one or several API keys, limits each key to
``rpm`` requests per minute (token bucket), and retries 429/5xx responses,
dropped connections and timeouts with exponential backoff and full jitter,
honouring ``Retry-After`` (the seed's parallel generation, section 12, without
its fixed 0.2 s sleeps and per-process key sharding).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import random
import re
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from kotune.data.generate import AsyncTeacher, ChunkFailed, Teacher, TeacherStats, _keywords
from kotune.errors import KotuneError
from kotune.records import Record

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
1. 질문: 사용자가 실제로 물어볼 법한 자연스러운 한국어 질문. 질문끼리 겹치지 않게 문서의 서로 다른 내용을 다루세요.
2. 답변: 반드시 [문서]에 명시된 내용에 근거하여 완결된 문장으로 답변하세요. 문서에 조항이나 근거(예: "제N조에 따르면")가 있으면 언급하세요.
3. 문서에 없는 내용은 추측하지 말고, 문서로 답할 수 없는 질문은 만들지 마세요.
4. 유형: {categories} 중 하나.

[출력 형식]
다른 설명 없이 JSON 배열 하나만 출력하세요.
[{{"질문": "...", "답변": "...", "유형": "사실"}}]"""

_REASK_NOTE = ("\n\n[주의] 이전에 만든 답변은 문서에 근거하지 않았거나 형식이 맞지 않아 모두 버려졌습니다. "
               "문서의 문장과 표현을 그대로 활용하여, 문서로 답할 수 있는 질문만 다시 만드세요.")


def _document(chunk: dict[str, Any]) -> str:
    meta = chunk.get("metadata") or {}
    where = meta.get("breadcrumbs") or meta.get("title") or ""
    head = f"위치: {where}\n" if where else ""
    return f"[문서]\n{head}{chunk.get('text', '')}"


def build_instruction(n: int, reask: bool = False) -> str:
    """The generation request without the document."""
    return _INSTRUCTION.format(n=n, categories="/".join(CATEGORIES)) + (_REASK_NOTE if reask else "")


def build_messages(chunk: dict[str, Any], n: int, reask: bool = False) -> list[dict[str, str]]:
    """Chat messages asking for ``n`` QA pairs grounded in ``chunk`` (document last)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": build_instruction(n, reask) + "\n\n" + _document(chunk)},
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


# ---------------------------------------------------------------- validation
_WS = re.compile(r"\s+")


def answer_problem(question: str, answer: str, source: str, *, min_grounding: float = 0.5,
                   min_answer_chars: int = 10, cache: Any = None) -> str | None:
    """Why an answer must not be kept (a ``kotune validate`` reason), or None.

    The same checks ``kotune validate`` runs, in its order: missing fields,
    too short, incomplete (does not end like a sentence), evasive, ungrounded
    in ``source``. ``cache`` (a ``validate._MorphemeCache``) keeps the source's
    morphemes between the answers of one chunk.
    """
    from kotune.data.validate import DEFAULT_EVASIVE_PHRASES, grounding_score
    from kotune.korean import ends_like_sentence

    question, answer = (question or "").strip(), (answer or "").strip()
    if not question or not answer:
        return "missing_fields"
    if len(answer) < min_answer_chars:
        return "too_short"
    if not ends_like_sentence(answer):
        return "incomplete"
    squashed = _WS.sub("", answer)
    if any(_WS.sub("", p) in squashed for p in DEFAULT_EVASIVE_PHRASES):
        return "evasive"
    score = grounding_score(answer, source, cache)
    if score is None or score < min_grounding:
        return "ungrounded"
    return None


def accept_pairs(chunk: dict[str, Any], pairs: list[dict[str, str]], n: int, generator: str,
                 stats: TeacherStats, min_grounding: float = 0.5) -> list[Record]:
    """Records for the pairs that pass validation (at most ``n``, questions unique)."""
    from kotune.data.validate import _MorphemeCache

    meta = chunk.get("metadata") or {}
    source_text = chunk.get("text", "")
    cache = _MorphemeCache()  # the chunk is tokenised once, not once per answer
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
            extra={"generator": generator, "keywords": _keywords(a)},
        ))
    stats.bump("accepted", len(out))
    return out


# ---------------------------------------------------------------- rate limits and retries
class TokenBucket:
    """At most ``rpm`` requests per minute, in bursts of at most ``burst``."""

    def __init__(self, rpm: float, burst: int = 1) -> None:
        if rpm <= 0:
            raise KotuneError(f"--rpm must be positive, got {rpm}")
        self.rate = rpm / 60.0
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self.last = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in order
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def parse_retry_after(value: str | None, cap: float = 300.0) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds, fractional too, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), cap)


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return (rng or random).uniform(0.0, min(cap, base * (2 ** attempt)))


_RETRY_STATUS = frozenset({408, 409, 425, 429})
_FATAL_STATUS = {401: "the API key was rejected (set one with --api-key-env NAME)", 403: "access denied", 404: "not found (check the URL and --model)"}


def chat_url(url: str) -> str:
    """``http://host:8000`` / ``.../v1`` / ``.../v1/chat/completions`` → the chat completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if re.search(r"/v\d+[a-z]*$", url):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def read_api_keys(names: str | None) -> list[str]:
    """``"A,B,C"`` (environment variable names) → their values; a missing one is an error."""
    import os

    keys: list[str] = []
    for name in (n.strip() for n in (names or "").split(",")):
        if not name:
            continue
        value = os.environ.get(name, "").strip()
        if not value:
            raise KotuneError(f"--api-key-env: environment variable {name} is not set")
        keys.append(value)
    return keys


class OpenAITeacher(AsyncTeacher):
    """Chat completions from an OpenAI-compatible server (vLLM, TGI, Ollama, kotune serve, hosted APIs)."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        workers: int = 8,
        api_keys: list[str] | None = None,
        max_retries: int = 6,
        rpm: float | None = None,
        timeout: float = 120.0,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        reask: int = 2,
        min_grounding: float = 0.5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        seed: int | None = None,
    ) -> None:
        if workers < 1:
            raise KotuneError(f"--workers must be at least 1, got {workers}")
        if max_retries < 0:
            raise KotuneError(f"--max-retries must be 0 or more, got {max_retries}")
        self.url = chat_url(url)
        self.base_url = self.url[: -len("/chat/completions")]
        self.model = model
        self.workers = workers
        self.api_keys = list(api_keys or [])
        self.max_retries = max_retries
        self.rpm = rpm
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.reask = reask
        self.min_grounding = min_grounding
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = random.Random(seed)
        self.stats = TeacherStats()
        self._turn = itertools.count()
        self._buckets: list[TokenBucket] = []
        self._client: Any = None
        self._token_cap: int | None = None  # the server's max_tokens limit, once an error has stated it

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"teacher:{self.model}" if self.model else "teacher"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        import httpx

        timeout = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        self._buckets = [TokenBucket(self.rpm) for _ in (self.api_keys or [None])] if self.rpm else []
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            self._client = client
            try:
                if not self.model:
                    self.model = await self._detect_model()
                yield
            finally:
                self._client = None

    def _headers(self, turn: int) -> dict[str, str]:
        if not self.api_keys:
            return {}
        return {"Authorization": f"Bearer {self.api_keys[turn % len(self.api_keys)]}"}

    async def _detect_model(self) -> str:
        """The server's first model (``GET /v1/models``) when --model is not given."""
        try:
            resp = await self._client.get(self.base_url + "/models", headers=self._headers(0))
            resp.raise_for_status()
            models = [m["id"] for m in resp.json().get("data", []) if isinstance(m, dict) and m.get("id")]
        except Exception:  # noqa: BLE001 - any failure means "could not ask"
            models = []
        if not models:
            raise KotuneError(f"--model is required: {self.base_url}/models did not list a model")
        return models[0]

    async def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """One completion, retried; raises ChunkFailed after ``max_retries`` retries."""
        import httpx

        if self._token_cap:
            max_tokens = min(max_tokens, self._token_cap)
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": max_tokens}
        attempt = 0
        while True:
            turn = next(self._turn)  # keys round-robin over requests (a retry takes the next key)
            if self._buckets:
                await self._buckets[turn % len(self._buckets)].acquire()
            self.stats.bump("requests")
            retry_after: float | None = None
            try:
                resp = await self._client.post(self.url, json=body, headers=self._headers(turn))
            except httpx.TransportError as e:  # refused, dropped, timed out
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        content = resp.json()["choices"][0]["message"].get("content")
                        return content if isinstance(content, str) else ""
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        error = "malformed response (no choices[0].message)"
                elif status in _FATAL_STATUS:
                    raise KotuneError(f"teacher {self.url} answered HTTP {status}: {_FATAL_STATUS[status]}"
                                      f" — {_snippet(resp)}")
                elif status in _RETRY_STATUS or status >= 500:
                    error = f"HTTP {status}"
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                else:
                    limit = token_limit_from_error(resp.text, body["max_tokens"]) if status == 400 else None
                    if limit is not None:
                        # Ask again within the server's stated limit, and remember it for every
                        # later request (not a failure: no retry counted, no back-off).
                        self.stats.bump("token_limit_retries")
                        self._token_cap = min(self._token_cap or limit, limit)
                        body = {**body, "max_tokens": limit}
                        continue
                    self.stats.bump("errors")
                    raise ChunkFailed(f"HTTP {status}: {_snippet(resp)}")
            self.stats.bump("errors")
            if attempt >= self.max_retries:
                raise ChunkFailed(f"{error} (gave up after {self.max_retries} retries)")
            delay = retry_after if retry_after is not None else backoff_delay(attempt, self.backoff_base, self.backoff_cap, self.rng)
            self.stats.bump("retries")
            await asyncio.sleep(delay)
            attempt += 1

    async def agenerate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        max_tokens = self.max_tokens or default_max_tokens(n)
        for round_ in range(1 + self.reask):
            if round_:
                self.stats.bump("reasks")
            content = await self.chat(build_messages(chunk, n, reask=round_ > 0), max_tokens)
            pairs = parse_qa(content)
            if not pairs:
                self.stats.reject("unparseable")
                continue
            # Kiwi (grounding) runs in a thread so the other workers' requests go on.
            records = await asyncio.to_thread(accept_pairs, chunk, pairs, n, self.name, self.stats, self.min_grounding)
            if records:
                return records
        return []


def default_max_tokens(n: int) -> int:
    """A reply budget for ``n`` Korean QA pairs: a pair is ~60-150 tokens in common
    tokenizers, plus room for the JSON or 질문/답변 framing."""
    return min(2048, 192 + 160 * n)


_LIMIT_PATTERNS = (
    # kotune serve, and servers that state their cap on max_tokens itself
    re.compile(r"max_(?:completion_)?tokens'? is \d+, over this server's limit of (\d+)"),
    re.compile(r"max_(?:completion_)?tokens[^0-9]{0,40}(?:limit|maximum|at most|<=?)[^0-9]{0,20}(\d+)", re.I),
)
# OpenAI / vLLM: "maximum context length is 4096 tokens. However, you requested 5000 tokens (1000 in the messages,
# 4000 in the completion)"; kotune serve: "maximum context length is 2048 tokens; the prompt has 900 and ..."
_CONTEXT_PATTERN = re.compile(r"maximum context length is (\d+) tokens.*?(?:\((\d+) in the messages|prompt has (\d+))",
                              re.I | re.S)


def token_limit_from_error(text: str, asked: int) -> int | None:
    """The largest ``max_tokens`` a 400 answer says the server accepts, or None when the
    error is about something else. Why: servers cap max_tokens (kotune serve at 1024 by
    default) or the context; a teacher that keeps asking for more fails every chunk."""
    for pattern in _LIMIT_PATTERNS:
        m = pattern.search(text)
        if m and 0 < int(m.group(1)) < asked:
            return int(m.group(1))
    m = _CONTEXT_PATTERN.search(text)
    if m:
        room = int(m.group(1)) - int(m.group(2) or m.group(3))
        if 0 < room < asked:
            return room
    return None


def _snippet(resp: Any, limit: int = 200) -> str:
    try:
        data = resp.json()
        msg = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(msg, dict):
            msg = msg.get("message") or msg
        text = str(msg)
    except Exception:  # noqa: BLE001
        text = resp.text
    text = " ".join(text.split())
    return text[:limit] or "(empty body)"


# ---------------------------------------------------------------- local model
class LocalTeacher(Teacher):
    """A local model (``hf:PATH``, ``hf:builtin:tiny-ko``) through kotune.generation.Generator.

    Prompts of ``batch_size`` chunks are generated together (greedy first;
    re-asks sample at temperature 0.7 so they do not repeat the same reply).
    """

    def __init__(self, spec: str, *, batch_size: int = 8, max_new_tokens: int | None = None, reask: int = 2,
                 min_grounding: float = 0.5) -> None:
        self.spec = spec
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.reask = reask
        self.min_grounding = min_grounding
        self.stats = TeacherStats()
        self._gen: Any = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"teacher:{self.spec}"

    def _generator(self) -> Any:
        if self._gen is None:
            from kotune.generation import Generator
            from kotune.templates import get_template

            gen = Generator(self.spec, log=lambda *_: None)
            if not gen.ref.run and getattr(gen.tokenizer, "chat_template", None) and not self.spec.startswith("builtin:"):
                gen.template = get_template("chat")  # an instruct model: talk to it in its own format
            self._gen = gen
        return self._gen

    def _prompt(self, chunk: dict[str, Any], n: int, reask: bool) -> str:
        gen = self._generator()
        if gen.template.name == "chat":
            return gen.tokenizer.apply_chat_template(build_messages(chunk, n, reask), tokenize=False, add_generation_prompt=True)
        return gen.prompt(SYSTEM_PROMPT + "\n" + build_instruction(n, reask), _document(chunk))

    def generate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        return self.generate_batch([chunk], n)[0]

    def generate_batch(self, chunks: list[dict[str, Any]], n: int) -> list[list[Record]]:
        from kotune.generation import GenerationSettings

        gen = self._generator()
        results: list[list[Record]] = [[] for _ in chunks]
        pending = list(range(len(chunks)))
        for round_ in range(1 + self.reask):
            if not pending:
                break
            if round_:
                self.stats.bump("reasks", len(pending))
            prompts = [self._prompt(chunks[i], n, reask=round_ > 0) for i in pending]
            longest = max(len(gen.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            context = int(getattr(gen.model.config, "max_position_embeddings", 0) or 4096)
            wanted = self.max_new_tokens or min(1024, 64 + 160 * n)
            settings = GenerationSettings(
                max_new_tokens=max(16, min(wanted, context - longest - 1)),
                temperature=0.0 if round_ == 0 else 0.7, top_p=0.95, repetition_penalty=1.1,
            )
            answers = gen.generate(prompts, settings, batch_size=self.batch_size)
            self.stats.bump("requests", len(prompts))
            still: list[int] = []
            for i, ans in zip(pending, answers):
                pairs = parse_qa(ans.text)
                if not pairs:
                    self.stats.reject("unparseable")
                    still.append(i)
                    continue
                recs = accept_pairs(chunks[i], pairs, n, self.name, self.stats, self.min_grounding)
                if recs:
                    results[i] = recs
                else:
                    still.append(i)
            pending = still
        return results


__all__ = [
    "CATEGORIES", "SYSTEM_PROMPT", "ChunkFailed", "LocalTeacher", "OpenAITeacher", "TokenBucket", "accept_pairs",
    "answer_problem", "backoff_delay", "build_instruction", "build_messages", "chat_url", "distillation_records", "parse_qa",
    "parse_retry_after", "read_api_keys", "Teacher",
]
