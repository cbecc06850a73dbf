"""kotune.data.ingest: every format, every encoding, every text exactly once, clean errors."""

from __future__ import annotations

import unicodedata
import zipfile
from pathlib import Path

import olefile
import pytest

from helpers.docs import FIELD_END, FIELD_START, LEAK, expected_text, make_hwp, make_hwpx, make_pdf
from kotune.data.ingest import SUPPORTED_SUFFIXES, Document, read_document
from kotune.errors import KotuneError

# Distinct texts, none a substring of another, so occurrence counts are exact.
BLOCKS = [
    "제1장 총칙",
    "제1조\t(목적) 이 약관은 「청년월세 지원」 사업의 기준을 정한다.",
    [["구분", "지원 금액"], ["주거비", "월 최대 20만원"], ["기간", "최장 12개월"]],
    f"제2조 (대상) {FIELD_START}만 19세·34세{FIELD_END} 이하 무주택 청년이 대상이다.",
    [["신청처", "복지로 누리집"]],
    "부칙 이 약관은 2024년 1월 1일부터 시행한다 𠀀.",
]
HEADER = "머리말 반복 문구"


def _pieces(blocks) -> list[str]:
    """Every paragraph and cell text of ``blocks`` as a reader should return it, in order."""
    out = []
    for block in blocks:
        if isinstance(block, str):
            out.append(expected_text(block))
        else:
            out.extend(cell for row in block for cell in row)
    return out


def assert_each_once_in_order(doc: Document, pieces: list[str]) -> None:
    joined = "\n".join(doc.paragraphs)
    pos = -1
    for piece in pieces:
        assert joined.count(piece) == 1, (piece, doc.paragraphs)
        assert joined.index(piece) > pos, f"{piece!r} out of order"
        pos = joined.index(piece)
    # No control garbage: no control characters, replacement chars or leaked control payloads.
    assert not any(ord(ch) < 0x20 for ch in joined.replace("\n", ""))
    assert "\ufffd" not in joined and chr(LEAK) not in joined
    for ctrl_id in ("tbl", "lbt", "secd", "dces", "hlk"):
        assert ctrl_id not in joined
    assert all(p == p.strip() and p for p in doc.paragraphs)


# --------------------------------------------------------------------- HWPX


def test_hwpx_reads_every_text_once_in_reading_order(tmp_path: Path) -> None:
    path = make_hwpx(tmp_path / "약관.hwpx", BLOCKS, header=HEADER)
    doc = read_document(path)
    assert_each_once_in_order(doc, _pieces(BLOCKS))
    assert HEADER not in "\n".join(doc.paragraphs)  # page furniture is not body text
    # A table row is one paragraph; text split over two runs is joined.
    assert "구분 | 지원 금액" in doc.paragraphs
    assert "주거비 | 월 최대 20만원" in doc.paragraphs
    assert doc.paragraphs[0] == "제1장 총칙"
    assert doc.title == "제1장 총칙" and doc.source == "약관.hwpx"


def test_hwpx_sections_are_read_in_numeric_order(tmp_path: Path) -> None:
    names = [f"섹션 {i}번 문단" for i in range(12)]  # section10 sorts before section2 as text
    path = make_hwpx(tmp_path / "s.hwpx", [names[0]], extra_sections=[[n] for n in names[1:]])
    assert read_document(path).paragraphs == names


def test_hwpx_mimetype_is_stored_first(tmp_path: Path) -> None:
    with zipfile.ZipFile(make_hwpx(tmp_path / "m.hwpx", ["본문"])) as zf:
        first = zf.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert zf.read("mimetype") == b"application/hwp+zip"


# ---------------------------------------------------------------------- HWP


@pytest.mark.parametrize("compress", [True, False], ids=["compressed", "uncompressed"])
def test_hwp_reads_every_text_once_in_reading_order(tmp_path: Path, compress: bool) -> None:
    path = make_hwp(tmp_path / "약관.hwp", BLOCKS, compress=compress, header=HEADER)
    with olefile.OleFileIO(str(path), raise_defects=olefile.DEFECT_INCORRECT) as ole:
        assert ole.exists("BodyText/Section0") and ole.exists("DocInfo")
    doc = read_document(path)
    assert_each_once_in_order(doc, _pieces(BLOCKS))
    assert HEADER not in "\n".join(doc.paragraphs)
    # The tab control became a space; field controls vanished without a trace.
    assert "제1조 (목적) 이 약관은 「청년월세 지원」 사업의 기준을 정한다." in doc.paragraphs
    assert "제2조 (대상) 만 19세·34세 이하 무주택 청년이 대상이다." in doc.paragraphs
    assert doc.title == "제1장 총칙"


def test_hwp_large_uncompressed_file_and_long_records(tmp_path: Path) -> None:
    # > 4096 bytes: regular sectors, not the mini stream; > 128 sectors: two FAT
    # sectors; a 3000-character paragraph needs the extended record size.
    long_para = "가" * 2999 + "."
    paras = [f"{i}번째 문단입니다." for i in range(1500)] + [long_para]
    path = make_hwp(tmp_path / "big.hwp", paras, compress=False)
    with olefile.OleFileIO(str(path), raise_defects=olefile.DEFECT_INCORRECT) as ole:
        assert ole.get_size("BodyText/Section0") > 64 * 1024
    assert read_document(path).paragraphs == paras


def test_hwp_sections_are_read_in_numeric_order(tmp_path: Path) -> None:
    names = [f"구역 {i}" for i in range(12)]
    path = make_hwp(tmp_path / "s.hwp", [names[0]], extra_sections=[[n] for n in names[1:]])
    assert read_document(path).paragraphs == names


def test_encrypted_hwp_is_a_clean_error(tmp_path: Path) -> None:
    path = make_hwp(tmp_path / "secret.hwp", ["비밀"], encrypted=True)
    with pytest.raises(KotuneError, match="encrypted HWP is not supported") as e:
        read_document(path)
    assert "secret.hwp" in str(e.value)


# --------------------------------------------------------------- text files

KOREAN = "「국민건강보험법」 제1조·제2조\r\n\r\n보험료는 월 3,500원이다.\n  들여쓴 줄 \n마지막 줄"
KOREAN_PARAGRAPHS = ["「국민건강보험법」 제1조·제2조", "보험료는 월 3,500원이다.", "들여쓴 줄", "마지막 줄"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp949", "euc-kr", "utf-16"])
def test_korean_text_reads_the_same_in_every_encoding(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "법.txt"
    path.write_bytes(KOREAN.encode(encoding))
    doc = read_document(path)
    assert doc.paragraphs == KOREAN_PARAGRAPHS
    assert doc.title == "「국민건강보험법」 제1조·제2조"


def test_decomposed_hangul_is_normalised_to_nfc(tmp_path: Path) -> None:
    path = tmp_path / "nfd.txt"
    path.write_text(unicodedata.normalize("NFD", "한글 문장\r마지막"), encoding="utf-8")
    assert read_document(path).paragraphs == ["한글 문장", "마지막"]


def test_markdown_keeps_headings_as_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text("# 청년 월세 지원\n\n## 대상\n만 19~34세 청년\n", encoding="utf-8")
    doc = read_document(path)
    assert doc.paragraphs == ["# 청년 월세 지원", "## 대상", "만 19~34세 청년"]
    assert doc.title == "청년 월세 지원"


def test_long_first_paragraph_falls_back_to_stem_and_source_is_name_only(tmp_path: Path) -> None:
    text = "가" * 61 + "\n둘째 줄\n"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.txt").write_text(text, encoding="utf-8")
    a, b = read_document(tmp_path / "a" / "notes.txt"), read_document(tmp_path / "b" / "notes.txt")
    assert a == b
    assert a.title == "notes" and a.source == "notes.txt"


# ---------------------------------------------------------------------- PDF


def test_pdf_joins_wrapped_lines_and_keeps_headings(tmp_path: Path) -> None:
    pages = [
        [
            "1. 지원 대상",
            "이 사업은 부모와 별도로 거주하는 만 19세부터 34세까지의 무주택",
            "청년을 대상으로 한다.",
            "소득 기준은 청년가구 중위소득 60% 이하이고 원가구 중위소득이",
            "100% 이하인 경우이다.",
            "- 1 -",
        ],
        [
            "2. Application",
            "Applications are accepted online through the Bokjiro portal from",
            "January to December every year.",
            "- 2 -",
        ],
    ]
    doc = read_document(make_pdf(tmp_path / "guide.pdf", pages))
    assert doc.paragraphs == [
        "1. 지원 대상",
        "이 사업은 부모와 별도로 거주하는 만 19세부터 34세까지의 무주택 청년을 대상으로 한다.",
        "소득 기준은 청년가구 중위소득 60% 이하이고 원가구 중위소득이 100% 이하인 경우이다.",
        "2. Application",
        "Applications are accepted online through the Bokjiro portal from January to December every year.",
    ]
    assert doc.title == "1. 지원 대상"


def test_pdf_without_text_says_so(tmp_path: Path) -> None:
    with pytest.raises(KotuneError, match="no text found") as e:
        read_document(make_pdf(tmp_path / "scan.pdf", [[]]))
    assert "scan.pdf" in str(e.value)


# --------------------------------------------------------------------- DOCX


def test_docx_reads_paragraphs_and_tables_in_order(tmp_path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("보험금 지급 기준", level=1)
    d.add_paragraph("회사는 청구서류를 접수한 날부터 3영업일 이내에 지급합니다.")
    table = d.add_table(rows=4, cols=3)
    rows = [["구분", "기준", "비고"], ["입원", "1일당 3만원", "최대 30일"], ["통원", "1회당 1만원", ""], ["", "약제비", "5천원"]]
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            table.cell(r, c).text = text
    table.cell(2, 1).merge(table.cell(2, 2))  # horizontal merge: python-docx repeats it per column
    table.cell(2, 0).merge(table.cell(3, 0))  # vertical merge: repeated in the next row
    d.add_paragraph("끝.")
    path = tmp_path / "terms.docx"
    d.save(path)

    doc = read_document(path)
    assert doc.paragraphs == [
        "보험금 지급 기준",
        "회사는 청구서류를 접수한 날부터 3영업일 이내에 지급합니다.",
        "구분 | 기준 | 비고",
        "입원 | 1일당 3만원 | 최대 30일",
        "통원 | 1회당 1만원",
        "약제비 | 5천원",
        "끝.",
    ]
    assert doc.title == "보험금 지급 기준"


# ------------------------------------------------------------------- errors


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


ERROR_CASES = {
    "empty": ("empty.txt", b"", "file is empty"),
    "whitespace": ("blank.md", b" \n\t\r\n", "file is empty"),
    "bom-only": ("bom.txt", b"\xef\xbb\xbf\n", "file is empty"),
    "binary": ("x.txt", b"\x00\x01\x02PK\x00\x00binary", "binary"),
    "unknown-suffix": ("data.xyz", b"hello", ".hwpx"),
    "corrupt-hwpx": ("bad.hwpx", bytes(range(256)) * 4, "not a valid HWPX file (bad zip)"),
    "corrupt-hwp": ("bad.hwp", bytes(range(256)) * 4, "not a valid HWP file"),
    "corrupt-pdf": ("bad.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 4, "not a valid PDF file"),
    "corrupt-docx": ("bad.docx", bytes(range(256)) * 4, "not a valid DOCX file"),
    "hwpx-is-hwp": ("zip.hwp", b"PK\x03\x04" + bytes(100), "rename it to .hwpx"),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path: Path, case: str) -> None:
    name, data, message = ERROR_CASES[case]
    with pytest.raises(KotuneError) as e:
        read_document(_write(tmp_path / name, data))
    assert name in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_suffix_lists_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(KotuneError) as e:
        read_document(_write(tmp_path / "data.xyz", b"hello"))
    assert all(s in str(e.value) for s in SUPPORTED_SUFFIXES)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KotuneError, match="no such file") as e:
        read_document(tmp_path / "nope.txt")
    assert "nope.txt" in str(e.value)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(KotuneError, match="directory"):
        read_document(tmp_path / "folder.txt")


def test_structurally_broken_containers(tmp_path: Path) -> None:
    # A valid zip that is not HWPX, and a valid OLE file that is not HWP.
    path = tmp_path / "other.hwpx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not hwpx")
    with pytest.raises(KotuneError, match="no Contents/section"):
        read_document(path)

    with zipfile.ZipFile(tmp_path / "xml.hwpx", "w") as zf:
        zf.writestr("Contents/section0.xml", "<hs:sec><broken")
    with pytest.raises(KotuneError, match="broken Contents/section0.xml"):
        read_document(tmp_path / "xml.hwpx")

    from helpers.docs import ole_compound_file

    (tmp_path / "doc.hwp").write_bytes(ole_compound_file({"WordDocument": b"x" * 100}))
    with pytest.raises(KotuneError, match="no FileHeader"):
        read_document(tmp_path / "doc.hwp")


def test_document_without_text(tmp_path: Path) -> None:
    for path in (make_hwpx(tmp_path / "e.hwpx", ["", [["", ""]]]), make_hwp(tmp_path / "e.hwp", ["\t"])):
        with pytest.raises(KotuneError, match="no text found") as e:
            read_document(path)
        assert path.name in str(e.value)
