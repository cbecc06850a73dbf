"""Chunks → QA records through a teacher, with a crash-safe journal.

``make_teacher`` picks the teacher from ``--teacher``: ``RuleTeacher`` (the
default, ``kotune.data.rule_teacher``) needs no model and grounds every answer
by construction; ``LocalTeacher`` (``kotune.data.local_teacher``) and
``OpenAITeacher`` (``kotune.data.http_teacher``) ask a model. All implement the
``Teacher`` interface (``kotune.data.teacher``); a teacher that talks to a server
is an ``AsyncTeacher`` and runs many chunks at once. ``--shard I/N`` splits the
chunks between machines (``parse_shard``, ``shard_chunks``).

Every finished chunk is appended to a journal (one JSON line, flushed and
fsynced, by one writer) before the final output is written atomically, so a
crash loses at most the chunks in flight and ``--resume`` skips finished
chunks. Whatever order chunks finish in, the output is in chunk order.

``--grounded`` makes RAFT-style records once the teacher is done (the journal keeps the
teacher's records, so ``--resume`` grounds the same way): retrieved passages with the
source among distractors, cited answers, a share answering with the abstention sentence
(``kotune.data.grounded``, where the rule is).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from kotune.data.local_teacher import LocalTeacher
from kotune.data.rule_teacher import RuleTeacher
from kotune.data.teacher import AsyncTeacher, ChunkFailed, Teacher
from kotune.errors import KotuneError
from kotune.io import dumps
from kotune.options import GenerateOptions
from kotune.records import Record, normalize, write_records

__all__ = ["generate_file", "journal_path", "make_teacher", "parse_shard", "read_journal", "shard_chunks"]


def make_teacher(options: GenerateOptions | str, model: str | None = None, **settings: Any) -> Teacher:
    """The teacher ``options.teacher`` names, with ``kotune generate``'s options: ``rule``;
    ``hf:PATH`` (a local model: ``workers`` chunks per batch, ``max_new_tokens``);
    ``http(s)://...`` (an OpenAI-compatible server: every option, keys from ``api_key_env``).

    ``make_teacher(SPEC, MODEL, **settings)`` is short for
    ``make_teacher(GenerateOptions(teacher=SPEC, model=MODEL, **settings))``.
    """
    opts = options if isinstance(options, GenerateOptions) else \
        GenerateOptions.check(dict(teacher=options, model=model, **settings))
    spec = opts.teacher
    if spec == "rule":
        return RuleTeacher(phrasings=opts.phrasings)
    if spec.startswith("hf:"):
        path = spec[3:].strip()
        if not path:
            raise KotuneError("--teacher hf:PATH needs a model, e.g. hf:builtin:tiny-ko or hf:beomi/Llama-3-Open-Ko-8B")
        return LocalTeacher(path, batch_size=opts.workers, max_new_tokens=opts.max_new_tokens, phrasings=opts.phrasings,
                            seed=opts.seed)
    if spec.startswith(("http://", "https://")):
        from kotune.data.http_teacher import OpenAITeacher  # imports httpx: only for a URL teacher

        return OpenAITeacher.from_options(opts)
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


def generate_file(
    chunks: list[dict[str, Any]],
    teacher: Teacher,
    out: Path,
    *,
    per_chunk: int | None = GenerateOptions.default("per_chunk"),
    resume: bool = False,
    overwrite: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    input_context: bool = GenerateOptions.default("input_context"),
    ground: Callable[[list[Record]], list[Record]] | None = None,
) -> list[Record]:
    """Run ``teacher`` over ``chunks`` into ``out`` with a resumable journal.

    ``on_start(k)`` is told how many chunks the journal already holds (they are
    skipped, and reported to ``on_chunk`` at once); ``on_chunk(1)`` then follows
    every chunk as it finishes. ``input_context`` stores the source chunk as each
    record's ``input``, formatted exactly as retrieval formats it at inference
    (``--template rag`` then trains on the prompts eval and serve will build). ``ground``
    rewrites the finished records before they are written (``kotune.data.grounded.Grounder.apply``).
    """
    per_chunk = per_chunk or teacher.default_per_chunk
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
                    from kotune.model.retrieval import format_context

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
    # A sentence in two chunks (prepare's overlap) gives the same record twice: written once,
    # with the first chunk's id.
    records, seen = [], set()
    for r in (normalize(d) for c in chunks for d in done.get(c["chunk_id"], [])):
        if r.id not in seen:
            seen.add(r.id)
            records.append(r)
    if ground is not None:
        records = ground(records)
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
