"""The answer journal: every answer a model gives is appended (fsynced) as it arrives, keyed
by the prompt and the settings it was asked with, so a killed job (``kotune eval``,
``kotune pairs``) resumes without asking any answered question again.

One format for local and endpoint models (``{"key", "text", "finish_reason",
"prompt_tokens", "completion_tokens"}`` per line). A line cut off by a kill is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, TextIO

from kotune.model.answers import Answer, GenerationSettings


def answer_key(prompt: Any, settings: GenerationSettings) -> str:
    """What makes two answers the same answer: the prompt (text or messages) and every setting."""
    what = {"prompt": prompt, "max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
            "top_p": settings.top_p, "stop": list(settings.stop), "seed": settings.seed,
            "repetition_penalty": settings.repetition_penalty}
    return hashlib.sha256(json.dumps(what, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def read_journal(path: Path | None) -> dict[str, Answer]:
    done: dict[str, Answer] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut off
        key = row.get("key")
        if key:
            done[key] = Answer(str(row.get("text") or ""), str(row.get("finish_reason") or "eos"),
                               int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0))
    return done


def write_answer(f: TextIO, key: str, answer: Answer) -> None:
    """Append one answer and make it durable: a kill -9 loses only the answers in flight."""
    f.write(json.dumps({"key": key, "text": answer.text, "finish_reason": answer.finish_reason,
                        "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
                       ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def open_journal(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8")


def journal_path(out: Path, name: str) -> Path:
    """``kotune eval``'s journal of model ``name`` inside its output folder."""
    return Path(out) / f".answers-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.jsonl"


__all__ = ["answer_key", "journal_path", "open_journal", "read_journal", "write_answer"]
