"""The teacher interface: what ``kotune generate`` asks of any teacher.

``Teacher`` turns one chunk into QA records (``RuleTeacher``, ``LocalTeacher``);
``AsyncTeacher`` waits on a server and runs many chunks at once
(``OpenAITeacher``); ``ChunkFailed`` marks a chunk to try again on ``--resume``;
``TeacherStats`` are the live counters an LLM teacher shows on the progress bar.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from kotune.records import Record

__all__ = ["AsyncTeacher", "ChunkFailed", "Teacher", "TeacherStats", "sampling_seed"]


def sampling_seed(seed: int, key: str, round_: int) -> int:
    """The sampling seed of one teacher request: fixed by ``kotune generate --seed``, what is
    asked (a chunk id, or a batch's ids) and the ask/re-ask round, so a rerun or a
    resumed run samples every chunk the same way whatever order the requests run in,
    and each re-ask draws a new sample. 31 bits: every server takes it."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{round_}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


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
    # Records asked of one chunk when --per-chunk is not given. A model teacher is asked
    # for 24 pairs (8 facts × 3 phrasings) per request; the rule teacher overrides it.
    default_per_chunk: int = 24
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
