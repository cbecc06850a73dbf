"""One client for OpenAI-compatible chat completions, shared by the HTTP teacher and the judge.

``OpenAIClient`` (an async context manager over ``httpx.AsyncClient``) sends
``POST {base}/chat/completions`` and returns the reply's text. Around each
request it:

- normalises the base URL (``chat_url``, ``models_url``) and asks
  ``GET /models`` for the model when none is given (``detect_model``);
- spreads requests round-robin over the API keys (``read_api_keys`` reads them
  from environment variables named on the command line), a retry taking the
  next key, and limits each key to ``rpm`` requests per minute (``TokenBucket``);
- retries 408/409/425/429/5xx answers, dropped connections, timeouts and
  malformed replies with exponential backoff and full jitter, honouring
  ``Retry-After`` (``backoff_delay``, ``parse_retry_after``), and raises
  ``RequestFailed`` once ``max_retries`` retries are spent, or at once for any
  other 4xx;
- stops at once on 401/403/404 (a bad key, URL or model: retrying cannot help)
  with a one-line ``KotuneError``;
- on a 400 that states the server's ``max_tokens`` or context limit, asks again
  within it and remembers that cap for every later request
  (``token_limit_from_error``).

Counters (``requests``, ``retries``, ``errors``, ``token_limit_retries``) go to
``stats``: any object with ``bump(name)`` (the teacher passes its
``TeacherStats``, so its progress bar follows), else a ``RequestStats``.

Why our own retry loop instead of the ``openai`` package or a retry library:
the ``openai`` SDK is not a kotune dependency (only the tests use it) and its
retries neither rotate keys nor rate-limit per key nor adapt ``max_tokens`` to
a server's stated limit; and every request must be counted (requests, retries,
errors) for the progress bar, which a generic retry decorator hides. The
token bucket is a few lines of our own for the same reason a limiter library
(aiolimiter) is not used: one more dependency for one per-key ``await``.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx

from kotune.errors import KotuneError

__all__ = [
    "OpenAIClient", "RequestFailed", "RequestStats", "TokenBucket", "backoff_delay", "chat_url", "models_url",
    "parse_retry_after", "read_api_keys", "token_limit_from_error",
]

RETRY_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx
FATAL_STATUS = {401: "the API key was rejected (set one with {key_option} NAME)", 403: "access denied",
                404: "not found (check the URL and --model)"}


class RequestFailed(Exception):
    """A request that could not be answered now: retries spent, or a 4xx a retry cannot fix.

    ``status`` is the last HTTP status (None for a dropped connection, a timeout or a
    malformed 200 reply); ``transport`` tells whether the server was not reached.
    """

    def __init__(self, message: str, *, status: int | None = None, transport: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transport = transport


@dataclass
class RequestStats:
    """The client's own counters when the caller brings none."""

    requests: int = 0
    retries: int = 0
    errors: int = 0
    token_limit_retries: int = 0   # requests asked again within a max_tokens limit the server stated

    def bump(self, name: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)


# ---------------------------------------------------------------- URLs and keys
def chat_url(url: str) -> str:
    """``http://host:8000`` / ``.../v1`` / ``.../v1/chat/completions`` → the chat completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if re.search(r"/v\d+[a-z]*$", url):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def models_url(url: str) -> str:
    """The model list (``GET``) next to the chat completions URL of ``url``."""
    return chat_url(url)[: -len("/chat/completions")] + "/models"


def read_api_keys(names: str | None, option: str = "--api-key-env") -> list[str]:
    """``"A,B,C"`` (environment variable names) → their values; a missing one is an error."""
    keys: list[str] = []
    for name in (n.strip() for n in (names or "").split(",")):
        if not name:
            continue
        value = os.environ.get(name, "").strip()
        if not value:
            raise KotuneError(f"{option}: environment variable {name} is not set")
        keys.append(value)
    return keys


# ---------------------------------------------------------------- rate limits and retries
class TokenBucket:
    """At most ``rpm`` requests per minute, in bursts of at most ``burst``."""

    def __init__(self, rpm: float, burst: int = 1, *, clock=time.monotonic, sleep=asyncio.sleep) -> None:
        if rpm <= 0:
            raise KotuneError(f"--rpm must be positive, got {rpm}")
        self.rate = rpm / 60.0
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self.clock, self.sleep = clock, sleep  # a virtual clock in tests: waits are checked, not timed
        self.last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in order
            while True:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1 - 1e-9:  # float sums of elapsed * rate land a hair under 1
                    self.tokens -= 1
                    return
                await self.sleep((1 - self.tokens) / self.rate)


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
    default) or the context; a client that keeps asking for more fails every request."""
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
    """The error message of a reply (``{"error": {"message": ...}}`` or its body), on one line."""
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


# ---------------------------------------------------------------- the client
class OpenAIClient:
    """Chat completions from one OpenAI-compatible server; ``async with client:`` opens the connections.

    The client may be entered again after it was left (each ``asyncio.run`` needs
    its own connections); the key turn and the remembered ``max_tokens`` cap carry
    over. ``name`` starts the fatal error lines ("teacher", "judge endpoint");
    ``key_option`` is the option a 401 tells the user to use.
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_keys: list[str] | None = None,
        max_retries: int = 6,
        rpm: float | None = None,
        timeout: float = 120.0,
        max_connections: int = 8,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        rng: random.Random | None = None,
        stats: Any = None,
        name: str = "teacher",
        key_option: str = "--api-key-env",
    ) -> None:
        self.url = chat_url(url)
        self.model = model
        self.api_keys = list(api_keys or [])
        self.max_retries = max_retries
        self.rpm = rpm
        self.timeout = timeout
        self.max_connections = max(1, max_connections)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.stats = stats if stats is not None else RequestStats()
        self.name = name
        self.key_option = key_option
        self.token_cap: int | None = None  # the server's max_tokens limit, once an error has stated it
        self._turn = itertools.count()
        self._buckets: list[TokenBucket] = []
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> "OpenAIClient":
        # Buckets hold an asyncio.Lock, which belongs to one event loop: new ones per entry.
        self._buckets = [TokenBucket(self.rpm) for _ in (self.api_keys or [None])] if self.rpm else []
        timeout = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("OpenAIClient is used outside 'async with'")
        return self._http

    def _headers(self, turn: int) -> dict[str, str]:
        if not self.api_keys:
            return {}
        return {"Authorization": f"Bearer {self.api_keys[turn % len(self.api_keys)]}"}

    async def detect_model(self) -> str:
        """The server's first model (``GET /v1/models``); also kept as ``self.model``."""
        url = models_url(self.url)
        try:
            resp = await self._client().get(url, headers=self._headers(0))
            resp.raise_for_status()
            models = [m["id"] for m in resp.json().get("data", []) if isinstance(m, dict) and m.get("id")]
        except Exception:  # noqa: BLE001 - any failure means "could not ask"
            models = []
        if not models:
            raise KotuneError(f"--model is required: {url} did not list a model")
        self.model = models[0]
        return self.model

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
                   seed: int | None = None) -> str:
        """One completion's text, retried; raises ``RequestFailed`` or (401/403/404) ``KotuneError``.
        ``seed`` (OpenAI's, vLLM's and kotune serve's sampling seed) makes a sampled reply reproducible."""
        body: dict[str, Any] = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        data = await self.post("chat/completions", body)
        content = data["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""

    async def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST {base}/{endpoint}`` (``chat/completions`` or ``completions``) with the model
        and the remembered max_tokens cap filled in; the decoded reply, whose
        ``choices[0]`` is checked to exist. Retried as the module docstring says."""
        url = self.url[: -len("chat/completions")] + endpoint
        body = {"model": self.model, **body}
        if self.token_cap and body.get("max_tokens"):
            body["max_tokens"] = min(body["max_tokens"], self.token_cap)
        attempt = 0
        while True:
            turn = next(self._turn)  # keys round-robin over requests (a retry takes the next key)
            if self._buckets:
                await self._buckets[turn % len(self._buckets)].acquire()
            self.stats.bump("requests")
            retry_after: float | None = None
            status: int | None = None
            try:
                resp = await self._client().post(url, json=body, headers=self._headers(turn))
            except httpx.TransportError as e:  # refused, dropped, timed out
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                transport = True
            else:
                transport = False
                status = resp.status_code
                if status == 200:
                    try:
                        data = resp.json()
                        choice = data["choices"][0]
                        if endpoint.startswith("chat") and not isinstance(choice["message"], dict):
                            raise TypeError
                        return data
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        error = f"malformed response (no choices[0]{'.message' if endpoint.startswith('chat') else ''})"
                        status = None
                elif status in FATAL_STATUS:
                    hint = FATAL_STATUS[status].format(key_option=self.key_option)
                    raise KotuneError(f"{self.name} {url} answered HTTP {status}: {hint} — {_snippet(resp)}")
                elif status in RETRY_STATUS or status >= 500:
                    error = f"HTTP {status}"
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                else:
                    asked = body.get("max_tokens") or 0
                    limit = token_limit_from_error(resp.text, asked) if status == 400 and asked else None
                    if limit is not None:
                        # Ask again within the server's stated limit, and remember it for every
                        # later request (not a failure: no retry counted, no back-off).
                        self.stats.bump("token_limit_retries")
                        self.token_cap = min(self.token_cap or limit, limit)
                        body = {**body, "max_tokens": limit}
                        continue
                    self.stats.bump("errors")
                    raise RequestFailed(f"HTTP {status}: {_snippet(resp)}", status=status)
            self.stats.bump("errors")
            if attempt >= self.max_retries:
                raise RequestFailed(f"{error} (gave up after {self.max_retries} retries)", status=status,
                                    transport=transport)
            delay = retry_after if retry_after is not None else backoff_delay(attempt, self.backoff_base,
                                                                              self.backoff_cap, self.rng)
            self.stats.bump("retries")
            await asyncio.sleep(delay)
            attempt += 1

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``POST {base}/{endpoint}`` with ``stream: true``: each server-sent event's JSON, as it
        arrives. Not retried: pieces already shown cannot be taken back, so a failure is
        ``RequestFailed`` with the server's words."""
        url = self.url[: -len("chat/completions")] + endpoint
        body = {"model": self.model, **body, "stream": True}
        turn = next(self._turn)
        if self._buckets:
            await self._buckets[turn % len(self._buckets)].acquire()
        self.stats.bump("requests")
        try:
            async with self._client().stream("POST", url, json=body, headers=self._headers(turn)) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise RequestFailed(f"HTTP {resp.status_code}: {_snippet(resp)}", status=resp.status_code)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise RequestFailed(f"malformed stream event: {data[:200]}") from None
                    if isinstance(event, dict):
                        yield event
        except httpx.TransportError as e:
            raise RequestFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, transport=True) from None

    async def list_models(self) -> list[dict[str, Any]]:
        """``GET /models``: the served model objects. Raises ``KotuneError`` (one line) when the
        server cannot be reached, rejects the key or does not answer with a model list."""
        url = models_url(self.url)
        try:
            resp = await self._client().get(url, headers=self._headers(0))
        except httpx.TransportError as e:
            raise KotuneError(f"{self.name} {url} cannot be reached ({type(e).__name__})") from None
        if resp.status_code in FATAL_STATUS:
            hint = FATAL_STATUS[resp.status_code].format(key_option=self.key_option)
            raise KotuneError(f"{self.name} {url} answered HTTP {resp.status_code}: {hint}")
        try:
            resp.raise_for_status()
            return [m for m in resp.json().get("data", []) if isinstance(m, dict) and m.get("id")]
        except (httpx.HTTPError, ValueError, AttributeError):
            raise KotuneError(f"{self.name} {url} did not answer with a model list "
                              f"(HTTP {resp.status_code}: {_snippet(resp)})") from None
