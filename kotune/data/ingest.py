"""Read source documents into paragraphs: .txt .md .pdf .hwpx .hwp .docx.

Every reader returns the same shape (``Document``): paragraphs in reading order,
each stripped, non-empty and NFC-normalised, so the chunker never needs to know
where the text came from. Tables become one paragraph per row with the cells
joined by `` | `` (HWP binary files: one paragraph per cell paragraph). Every
piece of text is emitted exactly once, even when a table sits inside a
paragraph, because a nested paragraph is only ever read by the table walker.

A broken or unsupported file is a ``KotuneError`` naming the file, never a
traceback: library exceptions from the format parsers are caught and converted.
"""

from __future__ import annotations

import io
import re
import struct
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from kotune.errors import KotuneError
from kotune.io import check_input_file, decode_bytes

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf", ".hwpx", ".hwp", ".docx")

TITLE_MAX_CHARS = 60
CELL_SEP = " | "


@dataclass
class Document:
    source: str  # file name only, so the same file in two folders gives identical output
    title: str  # first paragraph if short, else the file stem
    paragraphs: list[str] = field(default_factory=list)


def read_document(path: str | Path) -> Document:
    """Read one document; raise ``KotuneError`` for anything the user must fix."""
    path = check_input_file(path)
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise KotuneError(
            f"unsupported file type {suffix or '(no extension)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}",
            path=path,
        )
    data = path.read_bytes()
    if not data.strip():
        raise KotuneError("file is empty", path=path)
    paragraphs = [p for p in (_clean(t) for t in reader(data, path)) if p]
    if not paragraphs:
        hint = " (a scanned PDF needs OCR first)" if suffix == ".pdf" else ""
        raise KotuneError("no text found" + hint, path=path)
    return Document(source=path.name, title=_title(paragraphs[0], path), paragraphs=paragraphs)


# Control characters (tabs, vertical tabs, form feeds ...) become plain spaces:
# downstream JSONL and tokenizers should never see them.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(text: str) -> str:
    return _CONTROL_RE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _why(e: BaseException) -> str:
    """A library exception as a short, single-line reason."""
    lines = str(e).strip().splitlines()
    return type(e).__name__ + (f": {lines[0][:200]}" if lines else "")


def _title(first: str, path: Path) -> str:
    title = first.lstrip("#").strip()  # a Markdown heading's title is its text
    return title if title and len(first) <= TITLE_MAX_CHARS else path.stem


# --------------------------------------------------------------------- text


def _read_text(data: bytes, path: Path) -> list[str]:
    """One non-empty line = one paragraph; Markdown headings stay as ``# ...`` lines."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Windows Notepad's "Unicode" (UTF-16 with BOM): full of NUL bytes, so
        # decode_bytes would call it binary.
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise KotuneError("not valid UTF-16 after its byte-order mark", path=path) from None
    else:
        text, _ = decode_bytes(data, path)
    if not text.strip():
        raise KotuneError("file is empty", path=path)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


# ---------------------------------------------------------------------- PDF

# A line ends a sentence when its last character (ignoring closing quotes and
# brackets) is one of these; Korean sentences end in -다 / -요.
_SENTENCE_END = tuple(".?!。:다요")
_CLOSERS = "\"'”’)]」』》〉"
# Lines that start a new block: numbered/lettered items, 제N조/장/절, bullets, '#'.
_BLOCK_START_RE = re.compile(
    r"^(#|제\s*\d+\s*[편장절관조항]|\d+(\.\d+)*[.)]\s|\(\d+\)|[가-하][.)]\s|[IVXivx]+\.\s"
    r"|[①-⑳㉠-㉭㉮-㉻□■○●◎◇◆▶▷•·※\-*]\s?)"
)
# A bare page number ("3", "- 3 -", "3 / 10") at the top or bottom of a page.
_PAGE_NUMBER_RE = re.compile(r"^[-–—\s]*\d+[-–—\s]*$|^\d+\s*/\s*\d+$")
# A line this close to the page's longest line was wrapped by the layout, not by the author.
_WRAPPED_RATIO = 0.6


def _ends_sentence(line: str) -> bool:
    return line.rstrip(_CLOSERS).endswith(_SENTENCE_END)


def _unwrap_page(lines: list[str]) -> list[str]:
    """Join lines that PDF layout split mid-sentence; keep headings and items apart."""
    lines = [ln.strip() for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if lines and _PAGE_NUMBER_RE.match(lines[0]):
        lines = lines[1:]
    if lines and _PAGE_NUMBER_RE.match(lines[-1]):
        lines = lines[:-1]
    longest = max((len(ln) for ln in lines), default=0)
    out: list[str] = []
    joinable = False  # may the next line continue out[-1]?
    for line in lines:
        if not line:
            joinable = False  # a blank line always ends a paragraph
            continue
        if joinable and not _BLOCK_START_RE.match(line):
            out[-1] += " " + line
        else:
            out.append(line)
        joinable = not _ends_sentence(line) and len(line) >= _WRAPPED_RATIO * longest
    return out


def _read_pdf(data: bytes, path: Path) -> list[str]:
    from pypdf import PdfReader  # format libraries load only when needed: the CLI starts fast

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise KotuneError("encrypted PDF is not supported (remove the password first)", path=path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except KotuneError:
        raise
    except Exception as e:  # pypdf raises many types on damaged files
        raise KotuneError(f"not a valid PDF file ({_why(e)})", path=path) from None
    out: list[str] = []
    for page_text in pages:
        out.extend(_unwrap_page(page_text.replace("\r\n", "\n").replace("\r", "\n").split("\n")))
    return out


# --------------------------------------------------------------------- HWPX


def _local(tag: str) -> str:
    """Element name without its namespace: OWPML namespace URIs differ by version."""
    return tag.rsplit("}", 1)[-1]


def _hwpx_t_text(t: ET.Element) -> str:
    """Text of an ``hp:t``; inline ``hp:tab``/``hp:lineBreak`` children separate words."""
    parts = [t.text or ""]
    for child in t:
        parts.append(" ")
        parts.append(child.tail or "")
    return "".join(parts)


def _hwpx_paragraph(p: ET.Element) -> Iterator[str]:
    """Yield the text of one ``hp:p`` and, in place, the rows of tables anchored in it.

    Only ``hp:t`` directly under this paragraph's runs is its own text; cell
    paragraphs are reached through the table walker alone, so nothing is
    counted twice.
    """
    text: list[str] = []
    for run in p:
        if _local(run.tag) != "run":
            continue  # hp:linesegarray and other layout data
        for child in run:
            name = _local(child.tag)
            if name == "t":
                text.append(_hwpx_t_text(child))
            elif name == "tbl":
                yield "".join(text)  # text before the table comes before it
                text = []
                yield from _hwpx_table(child)
            else:
                # Text boxes, footnotes and the like hold their own paragraph lists.
                for sub in _hwpx_sublists(child):
                    yield from _hwpx_blocks(sub)
    yield "".join(text)


# Page headers and footers repeat on every page and are not body text.
_HWPX_SKIPPED = {"header", "footer"}


def _hwpx_sublists(elem: ET.Element) -> Iterator[ET.Element]:
    """The outermost ``hp:subList`` elements below ``elem``, outside headers/footers."""
    for child in elem:
        name = _local(child.tag)
        if name == "subList":
            yield child
        elif name not in _HWPX_SKIPPED:
            yield from _hwpx_sublists(child)


def _hwpx_blocks(container: ET.Element) -> Iterator[str]:
    for child in container:
        if _local(child.tag) == "p":
            yield from _hwpx_paragraph(child)


def _hwpx_table(tbl: ET.Element) -> Iterator[str]:
    for tr in tbl:
        if _local(tr.tag) != "tr":
            continue
        cells = []
        for tc in tr:
            if _local(tc.tag) != "tc":
                continue
            # A merged cell appears once (with a span), so no dedup is needed here.
            texts = [_clean(t) for sub in _hwpx_sublists(tc) for t in _hwpx_blocks(sub)]
            cells.append(" ".join(t for t in texts if t))
        yield CELL_SEP.join(c for c in cells if c)  # empty cells add only noise


_SECTION_RE = re.compile(r"^Contents/section(\d+)\.xml$")


def _read_hwpx(data: bytes, path: Path) -> list[str]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise KotuneError("not a valid HWPX file (bad zip)", path=path) from None
    # A damaged member fails on read (bad CRC, bad deflate data), not on open.
    member_errors = (ET.ParseError, zipfile.BadZipFile, zlib.error, OSError, EOFError)
    with zf:
        names = zf.namelist()
        try:
            encrypted = "META-INF/manifest.xml" in names and b"encryption-data" in zf.read("META-INF/manifest.xml")
        except member_errors as e:
            raise KotuneError(f"not a valid HWPX file (broken META-INF/manifest.xml: {_why(e)})", path=path) from None
        if encrypted:
            raise KotuneError("encrypted HWPX is not supported (remove the password first)", path=path)
        sections = sorted(
            ((int(m.group(1)), n) for n in names if (m := _SECTION_RE.match(n))),
        )
        if not sections:
            raise KotuneError("not a valid HWPX file (no Contents/section*.xml)", path=path)
        out: list[str] = []
        for _, name in sections:
            try:
                root = ET.fromstring(zf.read(name))
            except member_errors as e:
                raise KotuneError(f"not a valid HWPX file (broken {name}: {_why(e)})", path=path) from None
            out.extend(_hwpx_blocks(root))
    return out


# ---------------------------------------------------------------------- HWP

HWP_SIGNATURE = b"HWP Document File"
HWPTAG_BEGIN = 0x010
HWPTAG_PARA_HEADER = HWPTAG_BEGIN + 50  # 0x42
HWPTAG_PARA_TEXT = HWPTAG_BEGIN + 51  # 0x43
HWPTAG_CTRL_HEADER = HWPTAG_BEGIN + 55  # 0x47


def hwp_ctrl_id(name: str) -> int:
    """A control id as HWP stores it: MAKE_4CHID, e.g. 'tbl ' for tables."""
    a, b, c, d = name.encode("ascii")
    return (a << 24) | (b << 16) | (c << 8) | d


# Page headers and footers repeat on every page and are not body text.
_HWP_SKIPPED_CTRLS = {hwp_ctrl_id("head"), hwp_ctrl_id("foot")}

# PARA_TEXT control characters (HWP 5.0 spec, table 6). "char" controls take one
# UTF-16 unit; "inline" and "extended" controls take 8 units (the code, 6 units
# of data such as a control id, the code again). Everything else is text.
_HWP_CHAR_CONTROLS = {0, 10, 13, *range(24, 32)}
_HWP_CONTROL_TEXT = {9: " ", 10: " ", 24: "-", 30: " ", 31: " "}  # tab, line break, hyphen, spaces


def _hwp_records(data: bytes, path: Path, stream: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(tag, level, payload)``: header bits 0-9 tag, 10-19 level, 20-31 size."""
    pos, end = 0, len(data)
    while pos + 4 <= end:
        (header,) = struct.unpack_from("<I", data, pos)
        pos += 4
        tag, level, size = header & 0x3FF, (header >> 10) & 0x3FF, header >> 20
        if size == 0xFFF:  # long record: the real size follows
            if pos + 4 > end:
                break
            (size,) = struct.unpack_from("<I", data, pos)
            pos += 4
        if pos + size > end:
            raise KotuneError(f"not a valid HWP file (truncated record in {stream})", path=path)
        yield tag, level, data[pos : pos + size]
        pos += size


def _hwp_para_text(payload: bytes) -> str:
    """Decode PARA_TEXT (UTF-16LE) and drop the inline/extended control blocks."""
    out = bytearray()
    n = len(payload) // 2
    i = 0
    while i < n:
        (unit,) = struct.unpack_from("<H", payload, 2 * i)
        if unit >= 32:
            out += payload[2 * i : 2 * i + 2]
            i += 1
            continue
        out += _HWP_CONTROL_TEXT.get(unit, "").encode("utf-16-le")
        i += 1 if unit in _HWP_CHAR_CONTROLS else 8
    # A lone surrogate can only come from a damaged file; drop it rather than emit U+FFFD.
    return out.decode("utf-16-le", errors="ignore")


def _read_hwp(data: bytes, path: Path) -> list[str]:
    import olefile

    if data.startswith(b"PK"):
        raise KotuneError("this is an HWPX (zip) file; rename it to .hwpx", path=path)
    if data.startswith(HWP_SIGNATURE):
        raise KotuneError("HWP 3.x files are not supported; save it as HWP 5 or HWPX", path=path)
    if not olefile.isOleFile(io.BytesIO(data)):
        raise KotuneError("not a valid HWP file (not an OLE compound file)", path=path)
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            if not ole.exists("FileHeader"):
                raise KotuneError("not a valid HWP file (no FileHeader stream)", path=path)
            header = ole.openstream("FileHeader").read()
            if not header.startswith(HWP_SIGNATURE) or len(header) < 40:
                raise KotuneError("not a valid HWP file (bad FileHeader signature)", path=path)
            (flags,) = struct.unpack_from("<I", header, 36)
            if flags & 0b10:
                raise KotuneError("encrypted HWP is not supported", path=path)
            if flags & 0b100:  # 배포용 문서: body text lives encrypted in ViewText
                raise KotuneError("distribution (read-only) HWP is not supported", path=path)
            sections = sorted(
                (int(entry[1][len("Section") :]), entry[1])
                for entry in ole.listdir()
                if len(entry) == 2 and entry[0] == "BodyText" and re.fullmatch(r"Section\d+", entry[1])
            )
            if not sections:
                raise KotuneError("not a valid HWP file (no BodyText/Section streams)", path=path)
            streams = [(f"BodyText/{name}", ole.openstream(["BodyText", name]).read()) for _, name in sections]
    except KotuneError:
        raise
    except Exception as e:  # olefile raises OSError and others on damaged containers
        raise KotuneError(f"not a valid HWP file ({_why(e)})", path=path) from None

    out: list[str] = []
    for name, raw in streams:
        if flags & 0b1:  # compressed: raw deflate without a zlib header
            try:
                raw = zlib.decompressobj(-15).decompress(raw)
            except zlib.error:
                raise KotuneError(f"not a valid HWP file (cannot inflate {name})", path=path) from None
        out.extend(_hwp_section_texts(_hwp_records(raw, path, name)))
    return out


def _hwp_section_texts(records: Iterator[tuple[int, int, bytes]]) -> Iterator[str]:
    """PARA_TEXT of every paragraph in record order, minus headers and footers.

    Records come in document order; table cell paragraphs follow their table's
    anchor paragraph at a deeper level, so record order is reading order. A
    control's content is every following record deeper than its CTRL_HEADER.
    """
    skip_deeper_than: int | None = None
    for tag, level, payload in records:
        if skip_deeper_than is not None:
            if level > skip_deeper_than:
                continue
            skip_deeper_than = None
        if tag == HWPTAG_CTRL_HEADER and len(payload) >= 4 and struct.unpack_from("<I", payload)[0] in _HWP_SKIPPED_CTRLS:
            skip_deeper_than = level
        elif tag == HWPTAG_PARA_TEXT:
            yield _hwp_para_text(payload)


# --------------------------------------------------------------------- DOCX


def _read_docx(data: bytes, path: Path) -> list[str]:
    import docx
    from docx.oxml.ns import qn
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as e:  # PackageNotFoundError, KeyError, BadZipFile, XML errors ...
        raise KotuneError(f"not a valid DOCX file ({_why(e)})", path=path) from None

    W_P, W_TBL, W_SDT, W_SDT_CONTENT, W_TR, W_TC = (qn(t) for t in ("w:p", "w:tbl", "w:sdt", "w:sdtContent", "w:tr", "w:tc"))

    def blocks(container) -> Iterator[str]:
        """Paragraphs and table rows of a body or cell, in document order."""
        for child in container.iterchildren():
            if child.tag == W_P:
                yield Paragraph(child, document).text
            elif child.tag == W_TBL:
                yield from table(child)
            elif child.tag == W_SDT:  # content controls wrap ordinary blocks
                for content in child.iterchildren(W_SDT_CONTENT):
                    yield from blocks(content)

    def table(tbl) -> Iterator[str]:
        # Walk the XML cells rather than python-docx's row.cells, which repeats a
        # merged cell once per grid column/row it spans; vertically merged
        # continuation cells are empty here and dropped.
        for tr in tbl.iterchildren(W_TR):
            cells = [" ".join(c for c in map(_clean, blocks(tc)) if c) for tc in tr.iterchildren(W_TC)]
            yield CELL_SEP.join(c for c in cells if c)

    return list(blocks(document.element.body))


_READERS: dict[str, Callable[[bytes, Path], list[str]]] = {
    ".txt": _read_text,
    ".md": _read_text,
    ".pdf": _read_pdf,
    ".hwpx": _read_hwpx,
    ".hwp": _read_hwp,
    ".docx": _read_docx,
}
