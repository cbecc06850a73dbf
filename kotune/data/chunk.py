"""Documents → chunks: headings become breadcrumbs, Kiwi sentences are packed.

A chunk never cuts a sentence: sentences (Kiwi) are packed up to ``chunk_chars``
and the next chunk repeats whole trailing sentences up to ``overlap`` chars. A
new top-level section always starts a new chunk so a chunk's breadcrumbs are
true for all of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from kotune.io import short_hash
from kotune.korean import split_sentences

# Heading styles of Korean official documents and Markdown. The level of a
# style is the order in which it first appears in the document (as docutils
# does for reST), because documents disagree on whether "1." sits under "Ⅰ."
# or "제1장" — the document itself tells us.
_HEADING_STYLES: list[tuple[str, re.Pattern[str]]] = [
    ("md1", re.compile(r"^#\s+(.+)$")),
    ("md2", re.compile(r"^##\s+(.+)$")),
    ("md3", re.compile(r"^###\s+(.+)$")),
    ("md4", re.compile(r"^####+\s+(.+)$")),
    ("part", re.compile(r"^(제\s*\d+\s*편\b.*)$")),
    ("chapter", re.compile(r"^(제\s*\d+\s*장\b.*)$")),
    ("section", re.compile(r"^(제\s*\d+\s*절\b.*)$")),
    # "제3조(목적) 이 법은 ..." or "제3조 이 법은 ..."; never "제5조에 따라 ..." (a sentence citing an article).
    ("article", re.compile(r"^(제\s*\d+\s*조(?:의\s*\d+)?(?:\s*\([^)]{1,40}\)|\s*【[^】]{1,40}】|(?=\s|$)))")),
    ("roman", re.compile(r"^([ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩⅪⅫ]+\s*[.．]\s*.+)$")),
    ("roman_ascii", re.compile(r"^((?:I|II|III|IV|V|VI|VII|VIII|IX|X)\s*[.．]\s+.+)$")),
    ("arabic", re.compile(r"^(\d{1,2}\s*[.．]\s*\S.*)$")),
    ("hangul", re.compile(r"^([가나다라마바사아자차카타파하]\s*[.．]\s*\S.*)$")),
    ("paren_arabic", re.compile(r"^(\(?\d{1,2}\)\s*\S.*)$")),
    ("paren_hangul", re.compile(r"^(\(?[가나다라마바사아자차카타파하]\)\s*\S.*)$")),
    ("circled", re.compile(r"^([①-⑳]\s*\S.*)$")),
]
_MAX_HEADING_CHARS = 60
# A numbered line that ends like a sentence is a list item, not a heading:
# final punctuation, or a verb/adjective ending (추진한다, 청년임, 완료됨, 가능해요).
# Nouns that merely end in the same syllables (개요, 수요, 필요, 바다, 포함) are
# headings, so those endings are confirmed with Kiwi.
_PUNCT_END = re.compile(r"[.!?。]\s*$")
_MAYBE_ENDING = re.compile(r"[다요음함됨임]\s*$")


def _ends_like_sentence(text: str) -> bool:
    if _PUNCT_END.search(text):
        return True
    if not _MAYBE_ENDING.search(text):
        return False
    from kotune.korean import morphemes

    toks = morphemes(text)
    return bool(toks) and toks[-1][1].startswith("E")


def match_heading(line: str) -> tuple[str, str, str] | None:
    """``(style, heading, rest)`` when ``line`` starts with a heading.

    ``rest`` is body text on the same line (law articles: "제3조(목적) 이 법은 ...").
    """
    line = line.strip()
    for style, pattern in _HEADING_STYLES:
        m = pattern.match(line)
        if not m:
            continue
        if style == "article":
            return style, m.group(1).strip(), line[m.end():].strip()
        heading = m.group(1).strip()
        if style.startswith("md"):
            return style, heading, ""
        if len(heading) > _MAX_HEADING_CHARS or _ends_like_sentence(heading):
            return None
        return style, heading, ""
    return None


@dataclass
class Chunk:
    chunk_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "text": self.text, "metadata": self.metadata}


@dataclass
class _Unit:
    """One sentence (or heading line) with the breadcrumbs in force where it stands."""

    text: str
    crumbs: tuple[str, ...]
    top: int  # index of the top-level section, to never mix two in one chunk
    is_heading: bool = False
    new_para: bool = False


def _units(paragraphs: Iterable[str]) -> list[_Unit]:
    levels: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    top = 0
    units: list[_Unit] = []
    for para in paragraphs:
        para = para.strip()
        if not para:
            continue
        found = match_heading(para)
        body = para
        if found:
            style, heading, body = found
            level = levels.setdefault(style, len(levels))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            if level == 0:
                top += 1
            units.append(_Unit(heading, tuple(h for _, h in stack), top, is_heading=True))
            if not body:
                continue
        crumbs = tuple(h for _, h in stack)
        for i, sent in enumerate(split_sentences(body)):
            units.append(_Unit(sent, crumbs, top, new_para=i == 0))
    return units


def chunk_paragraphs(
    paragraphs: list[str],
    *,
    source: str,
    title: str = "",
    chunk_chars: int = 1000,
    overlap: int = 100,
    extra_metadata: dict[str, Any] | None = None,
) -> list[Chunk]:
    """Pack a document's sentences into chunks of at most ``chunk_chars`` characters.

    A single sentence longer than ``chunk_chars`` becomes a chunk of its own
    rather than being cut.
    """
    if chunk_chars < 50:
        raise ValueError("chunk_chars must be at least 50")
    overlap = max(0, min(overlap, chunk_chars // 2))
    units = _units(paragraphs)
    groups: list[tuple[list[_Unit], int]] = []  # (units, how many lead units are overlap)
    current: list[_Unit] = []
    carried = 0

    def size(us: list[_Unit]) -> int:
        return sum(len(u.text) + 1 for u in us)

    def has_content(us: list[_Unit], skip: int) -> bool:
        return any(not u.is_heading for u in us[skip:])

    for u in units:
        if current and u.is_heading and u.top != current[-1].top:
            # A new top-level section: hard break, no overlap across sections.
            if has_content(current, carried):
                groups.append((current, carried))
            current, carried = [], 0
        elif current and size(current) + len(u.text) + 1 > chunk_chars:
            if has_content(current, carried):
                # Trailing headings belong with what follows them, not here.
                cut = len(current)
                while cut > 0 and current[cut - 1].is_heading:
                    cut -= 1
                body, heads = current[:cut], current[cut:]
                groups.append((body, carried))
                tail: list[_Unit] = []
                for prev in reversed(body):
                    if prev.is_heading or size(tail) + len(prev.text) + 1 > overlap:
                        break
                    tail.insert(0, prev)
                if size(tail + heads) + len(u.text) + 1 > chunk_chars:
                    tail = []
                current, carried = tail + heads, len(tail)
            elif carried:
                current, carried = current[carried:], 0  # the overlap alone leaves no room
        current.append(u)
    if current and (has_content(current, carried) or not groups):
        groups.append((current, carried))

    chunks: list[Chunk] = []
    for group, n_carried in groups:
        text = _join(group)
        # Breadcrumbs: the section where the chunk's own content starts.
        own = group[n_carried:]
        first = next((u for u in own if not u.is_heading), own[0] if own else group[0])
        meta: dict[str, Any] = {
            "source": source,
            "title": title,
            "breadcrumbs": " > ".join(first.crumbs),
            "char_count": len(text),
            "index": len(chunks),
        }
        meta.update(extra_metadata or {})
        chunks.append(Chunk(short_hash(source, text), text, meta))
    return chunks


def _join(units: list[_Unit]) -> str:
    """Headings and paragraphs on their own lines; a paragraph's sentences joined by spaces."""
    out: list[str] = []
    for i, u in enumerate(units):
        if i == 0:
            sep = ""
        elif u.is_heading or u.new_para or units[i - 1].is_heading:
            sep = "\n"
        else:
            sep = " "
        out.append(sep + u.text)
    return "".join(out).strip()


def expand_inputs(paths: list[str | Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus supported files found (sorted) under named folders."""
    from kotune.errors import KotuneError

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise KotuneError(f"no documents ({', '.join(suffixes)}) in folder", path=p)
            files.extend(found)
        else:
            files.append(p)
    return files


def prepare(
    paths: list[str | Path],
    *,
    chunk_chars: int = 1000,
    overlap: int = 100,
    on_file: Callable[[Path], None] | None = None,
) -> list[Chunk]:
    """Documents → chunks, in input order. Any unreadable input raises before output."""
    from kotune.data.ingest import SUPPORTED_SUFFIXES, read_document

    chunks: list[Chunk] = []
    for path in expand_inputs(paths, SUPPORTED_SUFFIXES):
        doc = read_document(path)
        for c in chunk_paragraphs(doc.paragraphs, source=doc.source, title=doc.title, chunk_chars=chunk_chars, overlap=overlap):
            c.metadata["index"] = len(chunks)
            chunks.append(c)
        if on_file:
            on_file(path)
    return chunks
