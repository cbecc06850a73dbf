"""The HTTP teacher: QA pairs from an OpenAI-compatible server (vLLM, TGI, Ollama, kotune serve, hosted APIs).

``OpenAITeacher`` runs ``workers`` chunks at once through one chat client
(:func:`kotune.model.access.open_chat_client`: key rotation, per-key ``rpm`` limits,
retries with backoff and ``Retry-After``, the server's ``max_tokens`` limit:
the seed's parallel generation, section 12, without its fixed 0.2 s sleeps and
per-process key sharding). Each chunk is asked with the shared generation
prompt, its reply parsed and validated (``kotune.data.qa``), and re-asked when
no answer passes. Its settings are ``kotune generate``'s options
(:class:`kotune.options.GenerateOptions`): :meth:`OpenAITeacher.from_options` takes them
whole, and the keyword arguments default to them.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from kotune.data.qa import accept_pairs, build_messages, parse_qa
from kotune.data.teacher import AsyncTeacher, ChunkFailed, TeacherStats, sampling_seed
from kotune.model.access import RequestFailed, endpoint_keys, open_chat_client
from kotune.options import GenerateOptions, ValidateOptions
from kotune.records import Record

__all__ = ["OpenAITeacher", "default_max_tokens"]


class OpenAITeacher(AsyncTeacher):
    """Chat completions from an OpenAI-compatible server (vLLM, TGI, Ollama, kotune serve, hosted APIs)."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        workers: int = GenerateOptions.default("workers"),
        api_keys: list[str] | None = None,
        max_retries: int = GenerateOptions.default("max_retries"),
        rpm: float | None = GenerateOptions.default("rpm"),
        timeout: float = GenerateOptions.default("timeout"),
        temperature: float = GenerateOptions.default("temperature"),
        max_tokens: int | None = GenerateOptions.default("max_new_tokens"),
        reask: int = 2,
        phrasings: int = GenerateOptions.default("phrasings"),
        min_grounding: float = ValidateOptions.default("min_grounding"),   # the answers kotune validate keeps
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        seed: int = GenerateOptions.default("seed"),   # sampling seeds (kotune.data.teacher.sampling_seed) and backoff jitter
    ) -> None:
        GenerateOptions.check(dict(workers=workers, max_retries=max_retries))  # the options' ranges, one line
        self.workers = workers
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.reask = reask
        self.phrasings = phrasings
        self.min_grounding = min_grounding
        self.seed = seed
        self.stats = TeacherStats()
        self.client = open_chat_client(
            url, model, api_keys=api_keys, max_retries=max_retries, rpm=rpm, timeout=timeout,
            max_connections=workers, backoff_base=backoff_base, backoff_cap=backoff_cap,
            rng=random.Random(seed), stats=self.stats, name="teacher",
        )

    @classmethod
    def from_options(cls, options: GenerateOptions, **extra: Any) -> "OpenAITeacher":
        """The teacher ``kotune generate`` asks: the URL ``options.teacher``, with the options'
        model and settings and the API keys named by ``options.api_key_env``."""
        return cls(options.teacher, options.model, workers=options.workers, api_keys=endpoint_keys(options.api_key_env),
                   max_retries=options.max_retries, rpm=options.rpm, timeout=options.timeout,
                   temperature=options.temperature, max_tokens=options.max_new_tokens,
                   phrasings=options.phrasings, seed=options.seed, **extra)

    @property
    def url(self) -> str:
        """The chat completions URL."""
        return self.client.url

    @property
    def model(self) -> str | None:
        """The model asked for (the server's first one once a run has started without --model)."""
        return self.client.model

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"teacher:{self.model}" if self.model else "teacher"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.client:
            if not self.client.model:
                await self.client.detect_model()
            yield

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, seed: int | None = None) -> str:
        """One completion, retried; raises ChunkFailed after ``max_retries`` retries."""
        try:
            return await self.client.chat(messages, max_tokens=max_tokens, temperature=self.temperature, seed=seed)
        except RequestFailed as e:
            raise ChunkFailed(str(e)) from e

    async def agenerate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        max_tokens = self.max_tokens or default_max_tokens(n)
        for round_ in range(1 + self.reask):
            if round_:
                self.stats.bump("reasks")
            content = await self.chat(build_messages(chunk, n, reask=round_ > 0, phrasings=self.phrasings), max_tokens,
                                      seed=sampling_seed(self.seed, str(chunk.get("chunk_id", "")), round_))
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
