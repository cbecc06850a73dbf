"""File I/O at the edges: atomic writes, JSONL, hashing.

Every output goes through ``atomic_writer`` (temp file in the same folder, fsync,
rename) so a crash or a user error never leaves a half-written file that looks
complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from kotune.errors import KotuneError


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps(obj: Any) -> str:
    """One JSON line: Hangul kept as is, keys in insertion order."""
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    n = 0
    with atomic_writer(path) as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_writer(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)``; a broken line is a KotuneError naming it."""
    path = Path(path)
    text = read_text_file(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise KotuneError(f"invalid JSON ({e.msg})", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise KotuneError("expected a JSON object per line", path=path, line=lineno)
        yield lineno, obj


# Order matters: UTF-8 first (strict, so CP949 bytes fail it), then CP949, which
# is a superset of EUC-KR and covers every Korean legacy file we meet.
TEXT_ENCODINGS = ("utf-8", "cp949")


def decode_bytes(data: bytes, path: str | Path) -> tuple[str, str]:
    """Decode Korean text bytes; returns ``(text, encoding)``.

    chardet-style guessing is unreliable on short Korean text, while strict
    UTF-8 followed by strict CP949 is exact: valid UTF-8 Hangul is almost never
    valid CP949 of the same length and vice versa.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            raise KotuneError("not valid UTF-8 after its byte-order mark", path=path) from None
    if b"\x00" in data[:8192]:
        raise KotuneError("looks like a binary file, not text", path=path)
    for enc in TEXT_ENCODINGS:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise KotuneError("cannot decode as UTF-8, CP949 or EUC-KR", path=path)


def check_input_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise KotuneError("no such file", path=path)
    if path.is_dir():
        raise KotuneError("is a directory, expected a file", path=path)
    return path


def read_text_file(path: str | Path) -> str:
    path = check_input_file(path)
    text, _ = decode_bytes(path.read_bytes(), path)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def short_hash(*parts: str, n: int = 16) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:n]
