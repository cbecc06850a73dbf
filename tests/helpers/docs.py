"""Build small HWPX, HWP 5, PDF files for ingest tests, without any downloads.

The generated files follow the real layouts closely (OWPML namespaces and the
table-inside-a-paragraph nesting for HWPX; OLE2 compound file with mini stream,
FileHeader flags, raw-deflate BodyText and leveled records for HWP) so the
readers are tested against the structures Hangul itself writes.

A block is either a paragraph (``str``) or a table (``list`` of rows, each a
``list`` of cell strings).
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Sequence, Union
from xml.sax.saxutils import escape

Block = Union[str, list[list[str]]]


def expected_text(text: str) -> str:
    """What a reader should return for a paragraph passed to these helpers."""
    return text.replace("\t", " ").replace(FIELD_START, "").replace(FIELD_END, "")


# ------------------------------------------------------------------- HWPX

HP = "http://www.hancom.co.kr/hwpml/2011/paragraph"
HS = "http://www.hancom.co.kr/hwpml/2011/section"
HH = "http://www.hancom.co.kr/hwpml/2011/head"
OPF = "http://www.idpf.org/2007/opf/"


def _hwpx_t(text: str) -> str:
    """An ``hp:t``; a tab becomes the ``hp:tab`` element Hangul writes."""
    pieces = [escape(piece) for piece in text.split("\t")]
    return "<hp:t>" + '<hp:tab width="4000" leader="0" type="1"/>'.join(pieces) + "</hp:t>"


_HWPX_FIELD = {
    "⟦": '<hp:ctrl><hp:fieldBegin id="1" type="HYPERLINK" name="" editable="0" dirty="0" zorder="-1" fieldid="1">'
    '<hp:parameters cnt="1" name=""><hp:stringParam name="Command">https://example.com</hp:stringParam></hp:parameters>'
    "</hp:fieldBegin></hp:ctrl>",
    "⟧": '<hp:ctrl><hp:fieldEnd beginIDRef="1" fieldid="1"/></hp:ctrl>',
}


def _hwpx_run_content(text: str) -> str:
    """``hp:t`` elements, with FIELD_START/FIELD_END as hyperlink field controls."""
    out, piece = [], ""
    for ch in text:
        if ch in _HWPX_FIELD:
            out += [_hwpx_t(piece)] if piece else []
            out.append(_HWPX_FIELD[ch])
            piece = ""
        else:
            piece += ch
    out += [_hwpx_t(piece)] if piece else []
    return "".join(out)


def _hwpx_para(text: str) -> str:
    # Split the text across two runs (as a change of character shape does), so
    # a reader must concatenate runs; a linesegarray carries no text.
    mid = len(text) // 2
    runs = "".join(
        f'<hp:run charPrIDRef="{i}">{_hwpx_run_content(part)}</hp:run>' for i, part in enumerate((text[:mid], text[mid:])) if part
    )
    return (
        f'<hp:p id="0" paraPrIDRef="0" styleIDRef="0" pageBreak="0" columnBreak="0" merged="0">{runs}'
        '<hp:linesegarray><hp:lineseg textpos="0" vertpos="0" vertsize="1000" textheight="1000" '
        'baseline="850" spacing="600" horzpos="0" horzsize="42520" flags="393216"/></hp:linesegarray></hp:p>'
    )


def _hwpx_table(rows: list[list[str]]) -> str:
    trs = []
    for r, row in enumerate(rows):
        tcs = []
        for c, cell in enumerate(row):
            tcs.append(
                '<hp:tc name="" header="0" hasMargin="0" protect="0" editable="0" dirty="0" borderFillIDRef="3">'
                '<hp:subList id="" textDirection="HORIZONTAL" lineWrap="BREAK" vertAlign="CENTER" '
                'linkListIDRef="0" linkListNextIDRef="0" textWidth="0" textHeight="0" hasTextRef="0" hasNumRef="0">'
                f"{_hwpx_para(cell)}</hp:subList>"
                f'<hp:cellAddr colAddr="{c}" rowAddr="{r}"/><hp:cellSpan colSpan="1" rowSpan="1"/>'
                '<hp:cellSz width="10000" height="1000"/><hp:cellMargin left="510" right="510" top="141" bottom="141"/>'
                "</hp:tc>"
            )
        trs.append("<hp:tr>" + "".join(tcs) + "</hp:tr>")
    ncols = max((len(r) for r in rows), default=0)
    # The table is anchored in a run of an otherwise empty paragraph, as in real files.
    return (
        '<hp:p id="0" paraPrIDRef="0" styleIDRef="0" pageBreak="0" columnBreak="0" merged="0"><hp:run charPrIDRef="0">'
        f'<hp:tbl id="1" zOrder="0" numberingType="TABLE" textWrap="TOP_AND_BOTTOM" rowCnt="{len(rows)}" colCnt="{ncols}" '
        'cellSpacing="0" borderFillIDRef="3" noAdjust="0">'
        '<hp:sz width="42520" widthRelTo="ABSOLUTE" height="2000" heightRelTo="ABSOLUTE" protect="0"/>'
        '<hp:pos treatAsChar="0" flowWithText="1" allowOverlap="0" vertRelTo="PARA" horzRelTo="COLUMN" '
        'vertAlign="TOP" horzAlign="LEFT" vertOffset="0" horzOffset="0"/>'
        '<hp:outMargin left="283" right="283" top="283" bottom="283"/>'
        '<hp:inMargin left="510" right="510" top="141" bottom="141"/>'
        + "".join(trs)
        + "</hp:tbl></hp:run><hp:run charPrIDRef=\"0\"><hp:t/></hp:run></hp:p>"
    )


def _hwpx_section(blocks: Sequence[Block], header: str | None) -> str:
    # The first paragraph holds the section properties and, optionally, a page
    # header whose text must not be read as body text.
    head_ctrl = ""
    if header is not None:
        head_ctrl = (
            '<hp:ctrl><hp:header id="1" applyPageType="BOTH"><hp:subList id="" textDirection="HORIZONTAL" '
            f'lineWrap="BREAK" vertAlign="TOP">{_hwpx_para(header)}</hp:subList></hp:header></hp:ctrl>'
        )
    first = (
        '<hp:p id="0" paraPrIDRef="0" styleIDRef="0" pageBreak="0" columnBreak="0" merged="0"><hp:run charPrIDRef="0">'
        '<hp:secPr id="" textDirection="HORIZONTAL" spaceColumns="1134" tabStop="8000"><hp:grid lineGrid="0" charGrid="0"/></hp:secPr>'
        '<hp:ctrl><hp:colPr id="" type="NEWSPAPER" layout="LEFT" colCount="1" sameSz="1" sameGap="0"/></hp:ctrl>'
        f"{head_ctrl}</hp:run></hp:p>"
    )
    body = "".join(_hwpx_para(b) if isinstance(b, str) else _hwpx_table(b) for b in blocks)
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes" ?>'
        f'<hs:sec xmlns:hp="{HP}" xmlns:hs="{HS}" xmlns:hh="{HH}">{first}{body}</hs:sec>'
    )


def make_hwpx(path: str | Path, blocks: Sequence[Block], *, extra_sections: Sequence[Sequence[Block]] = (), header: str | None = None) -> Path:
    """Write a minimal valid HWPX (OWPML zip); ``extra_sections`` become section1.xml, ..."""
    path = Path(path)
    sections = [blocks, *extra_sections]
    manifest_items = "".join(
        f'<opf:item id="section{i}" href="Contents/section{i}.xml" media-type="application/xml"/>' for i in range(len(sections))
    )
    spine = "".join(f'<opf:itemref idref="section{i}" linear="yes"/>' for i in range(len(sections)))
    content_hpf = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes" ?>'
        f'<opf:package xmlns:opf="{OPF}" version="" unique-identifier="" id="">'
        "<opf:metadata><opf:title/><opf:language>ko</opf:language></opf:metadata>"
        f"<opf:manifest>{manifest_items}</opf:manifest><opf:spine>{spine}</opf:spine></opf:package>"
    )
    container = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes" ?>'
        '<ocf:container xmlns:ocf="urn:oasis:names:tc:opendocument:xmlns:container">'
        '<ocf:rootfiles><ocf:rootfile full-path="Contents/content.hpf" media-type="application/hwpml-package+xml"/>'
        "</ocf:rootfiles></ocf:container>"
    )
    with zipfile.ZipFile(path, "w") as zf:
        # The mimetype entry comes first and uncompressed, as in ODF/EPUB.
        zf.writestr(zipfile.ZipInfo("mimetype"), "application/hwp+zip", compress_type=zipfile.ZIP_STORED)
        zf.writestr("version.xml", '<?xml version="1.0" encoding="UTF-8" standalone="yes" ?><hv:HCFVersion xmlns:hv="http://www.hancom.co.kr/hwpml/2011/version" major="5" minor="1"/>')
        zf.writestr("META-INF/container.xml", container, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("Contents/content.hpf", content_hpf, compress_type=zipfile.ZIP_DEFLATED)
        for i, section in enumerate(sections):
            xml = _hwpx_section(section, header if i == 0 else None)
            zf.writestr(f"Contents/section{i}.xml", xml, compress_type=zipfile.ZIP_DEFLATED)
    return path


# ------------------------------------------------------------- OLE2 writer

SECTOR = 512
MINI_SECTOR = 64
MINI_CUTOFF = 4096  # streams below this size live in the mini stream (fixed by the spec)
FREESECT, ENDOFCHAIN, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
_STORAGE, _STREAM, _ROOT = 1, 2, 5


def ole_compound_file(streams: dict[str, bytes]) -> bytes:
    """Serialise ``{"Storage/Stream": data}`` as an OLE2 compound file (version 3).

    olefile can only read, so tests need this writer. It implements the mini
    stream and mini FAT because olefile forces the 4096-byte cutoff.
    """
    tree: dict = {}
    for name, data in streams.items():
        *dirs, leaf = name.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = data

    entries: list[dict] = []

    def balanced(ids: list[int]) -> int:
        # Siblings form a binary search tree ordered by (length, upper-case name).
        if not ids:
            return NOSTREAM
        mid = len(ids) // 2
        entries[ids[mid]]["left"] = balanced(ids[:mid])
        entries[ids[mid]]["right"] = balanced(ids[mid + 1 :])
        return ids[mid]

    def add(name: str, value: bytes | dict, kind: int) -> int:
        idx = len(entries)
        entry = {"name": name, "type": kind, "left": NOSTREAM, "right": NOSTREAM, "child": NOSTREAM, "start": ENDOFCHAIN, "size": 0}
        entries.append(entry)
        if isinstance(value, bytes):
            entry["data"] = value
        else:
            kids = [add(k, v, _STREAM if isinstance(v, bytes) else _STORAGE) for k, v in value.items()]
            kids.sort(key=lambda i: (len(entries[i]["name"]), entries[i]["name"].upper()))
            entry["child"] = balanced(kids)
        return idx

    add("Root Entry", tree, _ROOT)

    fat: list[int] = []
    body = bytearray()

    def alloc(data: bytes | bytearray) -> int:
        """Append ``data`` as a chain of regular sectors; return its first sector."""
        n = math.ceil(len(data) / SECTOR)
        if n == 0:
            return ENDOFCHAIN
        start = len(fat)
        fat.extend(range(start + 1, start + n))
        fat.append(ENDOFCHAIN)
        body.extend(bytes(data) + b"\0" * (n * SECTOR - len(data)))
        return start

    mini = bytearray()
    minifat: list[int] = []
    for entry in entries:
        if entry["type"] != _STREAM:
            continue
        data = entry["data"]
        entry["size"] = len(data)
        if len(data) >= MINI_CUTOFF:
            entry["start"] = alloc(data)
        elif data:
            start, n = len(mini) // MINI_SECTOR, math.ceil(len(data) / MINI_SECTOR)
            minifat.extend(range(start + 1, start + n))
            minifat.append(ENDOFCHAIN)
            mini.extend(data + b"\0" * (n * MINI_SECTOR - len(data)))
            entry["start"] = start
    entries[0]["start"] = alloc(mini)  # the root entry owns the mini stream
    entries[0]["size"] = len(mini)
    minifat += [FREESECT] * (-len(minifat) % (SECTOR // 4))
    first_minifat = alloc(struct.pack(f"<{len(minifat)}I", *minifat)) if mini else ENDOFCHAIN
    n_minifat = len(minifat) * 4 // SECTOR if mini else 0

    directory = bytearray()
    for entry in entries:
        name = (entry["name"] + "\0").encode("utf-16-le")
        directory += struct.pack(
            "<64sHBBIII16sIQQIQ",
            name, len(name), entry["type"], 1,  # 1 = black
            entry["left"], entry["right"], entry["child"],
            b"\0" * 16, 0, 0, 0, entry["start"], entry["size"],
        )
    while len(directory) % SECTOR:  # unused entries: no name, no siblings
        directory += struct.pack("<64sHBBIII16sIQQIQ", b"", 0, 0, 0, NOSTREAM, NOSTREAM, NOSTREAM, b"\0" * 16, 0, 0, 0, 0, 0)
    first_dir = alloc(directory)

    # The FAT describes every sector, its own included.
    n_fat = 1
    while n_fat * (SECTOR // 4) < len(fat) + n_fat:
        n_fat += 1
    assert n_fat <= 109, "test files this large need DIFAT sectors"
    fat_sectors = list(range(len(fat), len(fat) + n_fat))
    fat += [FATSECT] * n_fat
    fat += [FREESECT] * (n_fat * (SECTOR // 4) - len(fat))
    body += struct.pack(f"<{len(fat)}I", *fat)

    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16,
        0x003E, 3, 0xFFFE, 9, 6, b"\0" * 6,  # minor, major version, byte order, sector shifts
        0, n_fat, first_dir, 0, MINI_CUTOFF,
        first_minifat, n_minifat, ENDOFCHAIN, 0,  # no DIFAT sectors
    )
    header += struct.pack("<109I", *(fat_sectors + [FREESECT] * (109 - n_fat)))
    assert len(header) == SECTOR
    return header + bytes(body)


# ------------------------------------------------------------------ HWP 5

HWPTAG_BEGIN = 0x010
TAG_DOCUMENT_PROPERTIES = HWPTAG_BEGIN
TAG_PARA_HEADER = HWPTAG_BEGIN + 50
TAG_PARA_TEXT = HWPTAG_BEGIN + 51
TAG_PARA_CHAR_SHAPE = HWPTAG_BEGIN + 52
TAG_CTRL_HEADER = HWPTAG_BEGIN + 55
TAG_LIST_HEADER = HWPTAG_BEGIN + 56
TAG_TABLE = HWPTAG_BEGIN + 61

# In make_hwp text, these mark a hyperlink field: an extended control (3,
# "field start") and an inline control (4, "field end"), both 8 code units.
FIELD_START, FIELD_END = "⟦", "⟧"
# Filler inside control payloads: a reader that miscounts control widths leaks it.
LEAK = ord("뷁")


def _ctrl_id(name: str) -> int:
    a, b, c, d = name.encode("ascii")
    return (a << 24) | (b << 16) | (c << 8) | d


def _control(code: int, ctrl: str | None = None) -> list[int]:
    """An 8-unit inline/extended control: code, 6 units of data, code."""
    data = [LEAK] * 6
    if ctrl is not None:  # extended controls start their data with the control id
        cid = _ctrl_id(ctrl)
        data[:2] = [cid & 0xFFFF, cid >> 16]
    return [code, *data, code]


def _record(tag: int, level: int, payload: bytes) -> bytes:
    size = len(payload)
    if size >= 0xFFF:  # long record: size 0xFFF in the header, real size after it
        return struct.pack("<II", tag | (level << 10) | (0xFFF << 20), size) + payload
    return struct.pack("<I", tag | (level << 10) | (size << 20)) + payload


def _para(level: int, units: list[int]) -> bytes:
    """PARA_HEADER at ``level``; PARA_TEXT and PARA_CHAR_SHAPE one level deeper."""
    units = [*units, 13]  # every paragraph text ends with a paragraph break
    header = struct.pack("<IIHBBHHHI", len(units), 0, 0, 0, 0, 1, 0, 1, 0)
    text = struct.pack(f"<{len(units)}H", *units)
    return (
        _record(TAG_PARA_HEADER, level, header)
        + _record(TAG_PARA_TEXT, level + 1, text)
        + _record(TAG_PARA_CHAR_SHAPE, level + 1, struct.pack("<II", 0, 0))
    )


def _text_units(text: str) -> list[int]:
    units: list[int] = []
    for ch in text:
        if ch == "\t":
            units += _control(9)  # a tab is an inline control in HWP 5
        elif ch == FIELD_START:
            units += _control(3, "%hlk")
        elif ch == FIELD_END:
            units += _control(4)
        else:
            raw = ch.encode("utf-16-le")  # may be a surrogate pair
            units += struct.unpack(f"<{len(raw) // 2}H", raw)
    return units


def _list_paras(level: int, texts: list[str], list_header: bytes) -> bytes:
    return _record(TAG_LIST_HEADER, level, list_header) + b"".join(_para(level, _text_units(t)) for t in texts)


def _hwp_section(blocks: Sequence[Block], header: str | None) -> bytes:
    # First paragraph: section and column definitions, plus an optional page
    # header; their content is deeper-level records under CTRL_HEADER.
    units = _control(2, "secd") + _control(2, "cold")
    ctrls = _record(TAG_CTRL_HEADER, 1, struct.pack("<I", _ctrl_id("secd")) + bytes(32))
    ctrls += _record(TAG_CTRL_HEADER, 1, struct.pack("<I", _ctrl_id("cold")) + bytes(8))
    if header is not None:
        units += _control(16, "head")
        ctrls += _record(TAG_CTRL_HEADER, 1, struct.pack("<I", _ctrl_id("head")) + bytes(8))
        ctrls += _list_paras(2, [header], struct.pack("<hI", 1, 0) + bytes(12))
    out = bytearray(_para(0, units) + ctrls)
    for block in blocks:
        if isinstance(block, str):
            out += _para(0, _text_units(block))
            continue
        # A table: an anchor paragraph whose text is the extended control 11,
        # then CTRL_HEADER 'tbl ', TABLE, and per cell a LIST_HEADER + paragraphs.
        rows = block
        out += _para(0, _control(11, "tbl "))
        out += _record(TAG_CTRL_HEADER, 1, struct.pack("<I", _ctrl_id("tbl ")) + bytes(40))
        out += _record(TAG_TABLE, 2, struct.pack("<IHH", 0, len(rows), max(len(r) for r in rows)) + bytes(20))
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                cell_header = struct.pack("<hIHHHHII", 1, 0, c, r, 1, 1, 10000, 1000) + bytes(10)
                out += _list_paras(2, [cell], cell_header)
    return bytes(out)


def make_hwp(
    path: str | Path,
    blocks: Sequence[Block],
    compress: bool = True,
    *,
    extra_sections: Sequence[Sequence[Block]] = (),
    header: str | None = None,
    encrypted: bool = False,
) -> Path:
    """Write an HWP 5.0 file. In paragraph text, ``\\t`` becomes a tab control
    and ``FIELD_START``/``FIELD_END`` a hyperlink field's controls."""
    path = Path(path)
    flags = (1 if compress else 0) | (2 if encrypted else 0)

    def pack(data: bytes) -> bytes:
        if not compress:
            return data
        c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, no zlib header
        return c.compress(data) + c.flush()

    file_header = b"HWP Document File".ljust(32, b"\0") + struct.pack("<II", 0x05000300, flags)
    streams = {
        "FileHeader": file_header.ljust(256, b"\0"),
        "DocInfo": pack(_record(TAG_DOCUMENT_PROPERTIES, 0, bytes(26))),
    }
    for i, section in enumerate([blocks, *extra_sections]):
        streams[f"BodyText/Section{i}"] = pack(_hwp_section(section, header if i == 0 else None))
    path.write_bytes(ole_compound_file(streams))
    return path


# -------------------------------------------------------------------- PDF


def make_pdf(path: str | Path, pages: Sequence[Sequence[str]]) -> Path:
    """Write a PDF with one text line per string, Korean included, no font file.

    Text is shown with a Type0 font in Identity-H (2-byte codes equal to the
    Unicode code points) plus a ToUnicode CMap, which is all a text extractor
    needs; viewers lack glyphs for it, but no Korean font is required here.
    """
    path = Path(path)
    cmap_ranges = "".join(f"<{hi:02X}00> <{hi:02X}FF> <{hi:02X}00>\n" for hi in range(256) if not 0xD8 <= hi <= 0xDF)
    cmap = (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{256 - 8} beginbfrange\n{cmap_ranges}endbfrange\n"
        "endcmap CMapName currentdict /CMap defineresource pop end end\n"
    ).encode("ascii")

    objects: list[bytes] = []  # object n is objects[n - 1]

    def obj(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(data: bytes) -> bytes:
        return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"

    catalog = obj(b"")  # filled in below, once the pages object exists
    pages_id = obj(b"")
    tounicode = obj(stream(cmap))
    descriptor = obj(b"<< /Type /FontDescriptor /FontName /KotuneTest /Flags 4 /FontBBox [0 -200 1000 900] "
                     b"/ItalicAngle 0 /Ascent 900 /Descent -200 /CapHeight 700 /StemV 80 >>")
    cidfont = obj(b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /KotuneTest "
                  b"/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> "
                  b"/FontDescriptor %d 0 R /DW 1000 /CIDToGIDMap /Identity >>" % descriptor)
    font = obj(b"<< /Type /Font /Subtype /Type0 /BaseFont /KotuneTest /Encoding /Identity-H "
               b"/DescendantFonts [%d 0 R] /ToUnicode %d 0 R >>" % (cidfont, tounicode))
    page_ids = []
    for lines in pages:
        ops = [b"BT /F1 10 Tf 14 TL 50 800 Td"]
        for line in lines:
            ops.append(b"<" + line.encode("utf-16-be").hex().upper().encode() + b"> Tj T*")
        ops.append(b"ET")
        content = obj(stream(b"\n".join(ops)))
        page_ids.append(obj(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] "
                            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (pages_id, font, content)))
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id

    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref)
    path.write_bytes(bytes(out))
    return path
