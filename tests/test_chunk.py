"""kotune prepare / kotune.data.chunk: encodings, determinism, whole sentences,
size limits, overlap, breadcrumbs and the chunk schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_jsonl
from kotune.data.chunk import chunk_paragraphs, match_heading, prepare
from kotune.data.ingest import read_document
from kotune.korean import split_sentences

# Paragraphs of several sentences each, so packing has to split inside paragraphs.
LONG_PARAGRAPHS = """\
청년월세 특별지원 안내

청년월세 특별지원은 부모와 따로 사는 무주택 청년의 주거비 부담을 덜기 위한 사업이다. 지원 대상은 만 19세부터 34세까지의 청년이다. 청년가구의 소득은 기준 중위소득 60% 이하여야 한다. 원가구의 소득은 기준 중위소득 100% 이하여야 한다.

지원 금액은 실제 납부하는 임대료 범위에서 월 최대 20만원이다. 지원 기간은 최장 12개월이며 한 번만 받을 수 있다. 임대보증금이 5천만원을 넘거나 월세가 70만원을 넘으면 지원받을 수 없다. 신청은 복지로 누리집이나 주민센터에서 할 수 있다.

신청인은 임대차계약서와 월세 이체 내역을 제출해야 한다. 지자체는 신청일부터 30일 이내에 지원 여부를 결정하여 알린다. 지원이 결정되면 매월 말일에 청년 본인 계좌로 지원금이 입금된다. 거짓으로 지원을 받은 경우에는 받은 금액을 모두 돌려내야 한다.
"""

OVERSIZED = (
    "전세사기피해자 지원 및 주거안정에 관한 특별법에 따라 피해자로 결정된 임차인은 경매 유예와 우선매수권 행사, "
    "공공임대주택 우선 공급, 저리의 전세자금 대출과 긴급 주거 지원, 신용회복 지원과 법률 상담을 한꺼번에 받을 수 있으며, "
    "피해자 결정을 받으려면 임대차계약서와 전입신고 내역, 확정일자 부여 사실, 임대인의 보증금 미반환 사실을 증명하는 서류를 "
    "갖추어 주소지 관할 시·도에 신청하여야 하고, 국토교통부 전세사기피해지원위원회는 신청일부터 60일 이내에 결정을 내려야 한다."
)

OFFICIAL_DOC = """\
청년 주거 지원 계획

Ⅰ. 개요

1. 추진 배경

가. 주거비 부담

청년 1인 가구의 절반 이상이 월세로 거주하고 있다. 소득 대비 임대료 비율은 20%를 넘어섰다.

나. 정책 수요

청년들은 보증금 마련을 가장 큰 어려움으로 꼽았다.

다. 예산 조기 집행 추진함

2. 추진 목표

정부는 2027년까지 청년 주거비 부담을 10% 낮추는 것을 목표로 한다.

Ⅱ. 관련 법령

제1조(목적) 이 법은 청년의 주거 안정을 도모함을 목적으로 한다.

제2조(정의) 이 법에서 "청년"이란 19세 이상 34세 이하인 사람을 말한다.

제3조 국가와 지방자치단체는 청년의 주거 안정을 위한 시책을 마련하여야 한다.

제5조에 따라 국토교통부장관은 5년마다 청년 주거 기본계획을 세운다.
"""

MARKDOWN_DOC = """\
# 전세사기 피해 지원 안내

## 지원 대상

전세사기피해자법에 따라 피해자로 결정된 임차인이 지원 대상입니다. 피해자 결정은 국토교통부 전세사기피해지원위원회가 심의합니다.

### 신청 방법

신청서는 주소지 관할 시·도에 제출합니다.

## 지원 내용

경매 유예와 우선매수권 부여, 저리 대출이 지원됩니다.
"""


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def source_sentences(path: Path) -> list[str]:
    """Every Kiwi sentence of the document, in order (headings count as sentences)."""
    out: list[str] = []
    for para in read_document(path).paragraphs:
        out.extend(split_sentences(para))
    return out


def sentence_runs(chunks: list[dict], sentences: list[str]) -> list[tuple[int, int]]:
    """Each chunk as the run ``sentences[i:j]`` it consists of, exactly.

    Fails when a chunk's text is not a sequence of whole source sentences
    (joined by a space or a newline), i.e. when a chunk cut a sentence.
    """
    runs = []
    for c in chunks:
        text = c["text"].replace("\n", " ")
        found = None
        for i in (k for k, s in enumerate(sentences) if text.startswith(s)):
            pos, j = 0, i
            while j < len(sentences) and text.startswith(sentences[j], pos):
                pos += len(sentences[j])
                j += 1
                if pos == len(text):
                    found = (i, j)
                    break
                if text[pos] != " ":
                    break
                pos += 1
            if found:
                break
        assert found is not None, f"chunk is not made of whole sentences: {c['text']!r}"
        runs.append(found)
    return runs


def prepared(cli, tmp_path: Path, inputs: list[Path], name: str = "chunks.jsonl", *opts: str) -> list[dict]:
    out = tmp_path / name
    res = cli(["prepare", *inputs, "-o", out, *opts])
    assert res.code == 0, res.err
    return read_jsonl(out)


# ------------------------------------------------------------------ encodings and determinism
def test_same_text_in_utf8_bom_cp949_euckr_gives_byte_identical_chunks(tmp_path: Path, cli, sample_doc: Path) -> None:
    text = sample_doc.read_text(encoding="utf-8")
    outputs = {}
    for folder, encoding in (("utf8", "utf-8"), ("utf8bom", "utf-8-sig"), ("cp949", "cp949"), ("euckr", "euc-kr")):
        doc = write(tmp_path / folder / "policy_plan.txt", text, encoding)
        out = tmp_path / f"{folder}.jsonl"
        res = cli(["prepare", doc, "-o", out])
        assert res.code == 0, res.err
        outputs[folder] = out.read_bytes()

    assert outputs["cp949"] != b""
    assert (tmp_path / "cp949" / "policy_plan.txt").read_bytes() != (tmp_path / "utf8" / "policy_plan.txt").read_bytes()
    assert len(set(outputs.values())) == 1, "encodings gave different chunks"
    # ... and the text is the Korean text, not mojibake
    first = json.loads(outputs["euckr"].splitlines()[1])
    assert "국가초고성능컴퓨팅" in "".join(json.loads(line)["text"] for line in outputs["euckr"].splitlines())
    assert first["metadata"]["source"] == "policy_plan.txt"


def test_windows_line_endings_do_not_change_chunks(tmp_path: Path, cli, sample_doc: Path) -> None:
    text = sample_doc.read_text(encoding="utf-8")
    unix = prepared(cli, tmp_path, [write(tmp_path / "a" / "policy_plan.txt", text)], "a.jsonl")
    dos = prepared(cli, tmp_path, [write(tmp_path / "b" / "policy_plan.txt", text.replace("\n", "\r\n"), "cp949")], "b.jsonl")
    assert unix == dos


def test_prepare_twice_gives_identical_file_and_chunk_ids(tmp_path: Path, cli, sample_doc: Path, sample_chunks: Path) -> None:
    again = tmp_path / "again.jsonl"
    res = cli(["prepare", sample_doc, "-o", again])
    assert res.code == 0, res.err

    assert again.read_bytes() == sample_chunks.read_bytes()
    ids = [c["chunk_id"] for c in read_jsonl(again)]
    assert len(ids) == len(set(ids)) >= 5


# ------------------------------------------------------------------ whole sentences, sizes, overlap
@pytest.mark.parametrize("chunk_chars,overlap", [(300, 80), (1000, 100)])
def test_no_chunk_cuts_a_sentence_and_every_sentence_is_kept(sample_doc: Path, chunk_chars: int, overlap: int) -> None:
    sentences = source_sentences(sample_doc)
    chunks = [c.to_dict() for c in prepare([sample_doc], chunk_chars=chunk_chars, overlap=overlap)]

    runs = sentence_runs(chunks, sentences)

    covered = {i for a, b in runs for i in range(a, b)}
    assert [s for i, s in enumerate(sentences) if i not in covered] == []
    assert all(len(c["text"]) <= chunk_chars for c in chunks)
    assert [a for a, _ in runs] == sorted(a for a, _ in runs), "chunks out of document order"


def test_multi_sentence_paragraphs_are_split_between_sentences(tmp_path: Path) -> None:
    doc = write(tmp_path / "youth.txt", LONG_PARAGRAPHS)
    sentences = source_sentences(doc)
    assert len(sentences) == 13  # the title + 12 sentences, as Kiwi splits them
    chunks = [c.to_dict() for c in prepare([doc], chunk_chars=120, overlap=0)]

    runs = sentence_runs(chunks, sentences)

    assert len(chunks) >= 4
    assert {i for a, b in runs for i in range(a, b)} == set(range(len(sentences)))
    assert all(len(c["text"]) <= 120 for c in chunks)
    # overlap 0: each chunk starts where the previous one ended
    assert all(b == a2 for (_, b), (a2, _) in zip(runs, runs[1:]))


def test_single_oversized_sentence_is_its_own_chunk_not_cut(tmp_path: Path) -> None:
    assert len(OVERSIZED) > 250
    doc = write(tmp_path / "fraud.txt", LONG_PARAGRAPHS + "\n" + OVERSIZED + "\n\n" + "피해자는 결정 통지를 받은 날부터 지원을 신청할 수 있다.\n")
    chunks = [c.to_dict() for c in prepare([doc], chunk_chars=150, overlap=40)]

    sentence_runs(chunks, source_sentences(doc))
    big = [c for c in chunks if len(c["text"]) > 150]

    assert [c["text"] for c in big] == [OVERSIZED]
    assert all(len(c["text"]) <= 150 for c in chunks if c not in big)


def test_a_chunk_over_the_limit_holds_one_sentence_under_its_headings(tmp_path: Path) -> None:
    """With a tiny limit, a sentence keeps the headings above it; nothing else is added."""
    doc = write(tmp_path / "guide.md", MARKDOWN_DOC)
    chunks = [c.to_dict() for c in prepare([doc], chunk_chars=50, overlap=0)]

    over = [c["text"] for c in chunks if len(c["text"]) > 50]

    assert over, "the title and section headings push the first sentence over 50 characters"
    for text in over:
        body = [line for line in text.split("\n") if line.endswith(".")]  # headings have no final period
        headings = [line for line in text.split("\n") if not line.endswith(".")]
        assert len(body) == 1 and len(split_sentences(body[0])) == 1, text
        assert len(body[0]) <= 50 and text.endswith(body[0]) and all(len(h) < 20 for h in headings)


def test_overlap_repeats_whole_trailing_sentences_within_the_limit(tmp_path: Path) -> None:
    doc = write(tmp_path / "youth.txt", LONG_PARAGRAPHS)
    sentences = source_sentences(doc)
    chunks = [c.to_dict() for c in prepare([doc], chunk_chars=160, overlap=70)]

    runs = sentence_runs(chunks, sentences)  # whole sentences, so any repeat is of whole sentences

    repeated = []
    for (a, b), (a2, b2) in zip(runs, runs[1:]):
        assert a < a2 <= b, "next chunk must start inside or right after the previous one"
        shared = sentences[a2:b]
        assert sum(len(s) + 1 for s in shared) <= 70
        assert chunks[runs.index((a2, b2))]["text"].replace("\n", " ").startswith(" ".join(shared))
        repeated.extend(shared)
    assert repeated, "overlap > 0 should repeat at least one sentence"
    assert all(s in sentences for s in repeated)


# ------------------------------------------------------------------ headings and breadcrumbs
def test_official_heading_styles_become_breadcrumbs(tmp_path: Path) -> None:
    doc = write(tmp_path / "plan.txt", OFFICIAL_DOC)
    chunks = [c.to_dict() for c in prepare([doc], chunk_chars=60, overlap=0)]

    def crumbs_of(sentence: str) -> str:
        [c] = [c for c in chunks if sentence in c["text"]]
        return c["metadata"]["breadcrumbs"]

    assert crumbs_of("청년 1인 가구의 절반 이상이") == "Ⅰ. 개요 > 1. 추진 배경 > 가. 주거비 부담"
    assert crumbs_of("청년들은 보증금 마련을") == "Ⅰ. 개요 > 1. 추진 배경 > 나. 정책 수요"
    assert crumbs_of("2027년까지 청년 주거비") == "Ⅰ. 개요 > 2. 추진 목표"
    assert crumbs_of("이 법은 청년의 주거 안정을") == "Ⅱ. 관련 법령 > 제1조(목적)"
    assert crumbs_of('"청년"이란 19세 이상') == "Ⅱ. 관련 법령 > 제2조(정의)"
    assert crumbs_of("국가와 지방자치단체는") == "Ⅱ. 관련 법령 > 제3조"
    # "제5조에 따라 ..." cites an article; it is a sentence of 제3조's section, not a new heading
    assert crumbs_of("제5조에 따라 국토교통부장관은") == "Ⅱ. 관련 법령 > 제3조"
    # a new top-level section never shares a chunk with the previous one
    assert not any("Ⅰ. 개요" in c["text"] and "Ⅱ. 관련 법령" in c["text"] for c in chunks)


def test_law_article_line_is_heading_plus_body() -> None:
    assert match_heading("제3조(목적) 이 법은 청년의 주거 안정을 도모함을 목적으로 한다.") == (
        "article", "제3조(목적)", "이 법은 청년의 주거 안정을 도모함을 목적으로 한다.")
    assert match_heading("제2조의2(정의) 이 법에서 사용하는 용어의 뜻은 다음과 같다.")[:2] == ("article", "제2조의2(정의)")
    assert match_heading("제5조에 따라 정부는 5년마다 기본계획을 수립한다.") is None
    assert match_heading("제2조제1항에 따른 신청은 서면으로 한다.") is None


@pytest.mark.parametrize("line", ["Ⅰ. 개요", "1. 필요성", "가. 정책 수요", "2. 주요 내용", "나. 대상 포함", "# 개요"])
def test_short_noun_headings_are_headings(line: str) -> None:
    assert match_heading(line) is not None


@pytest.mark.parametrize("line", [
    "1. 정부는 2027년까지 국가센터를 구축한다.",
    "2. 사업을 추진한다",
    "다. 예산 조기 집행 추진함",
    "라. 지원 대상은 청년임",
])
def test_numbered_sentences_are_list_items_not_headings(line: str) -> None:
    assert match_heading(line) is None


def test_markdown_headings_become_breadcrumbs(tmp_path: Path) -> None:
    doc = write(tmp_path / "guide.md", MARKDOWN_DOC)
    chunks = [c.to_dict() for c in prepare([doc], chunk_chars=50, overlap=0)]

    def crumbs_of(sentence: str) -> str:
        [c] = [c for c in chunks if sentence in c["text"]]
        return c["metadata"]["breadcrumbs"]

    assert crumbs_of("피해자로 결정된 임차인이") == "전세사기 피해 지원 안내 > 지원 대상"
    assert crumbs_of("신청서는 주소지 관할") == "전세사기 피해 지원 안내 > 지원 대상 > 신청 방법"
    assert crumbs_of("경매 유예와 우선매수권") == "전세사기 피해 지원 안내 > 지원 내용"
    assert not any("#" in c["text"] for c in chunks)
    assert {c["metadata"]["title"] for c in chunks} == {"전세사기 피해 지원 안내"}


# ------------------------------------------------------------------ schema
def test_chunk_schema_matches_architecture(sample_chunks: Path) -> None:
    chunks = read_jsonl(sample_chunks)
    assert len(chunks) >= 5
    for c in chunks:
        assert list(c) == ["chunk_id", "text", "metadata"]
        assert isinstance(c["chunk_id"], str) and len(c["chunk_id"]) >= 8
        meta = c["metadata"]
        assert {"source", "title", "breadcrumbs", "char_count"} <= set(meta)
        assert meta["source"] == "policy_plan.txt"
        assert meta["title"] == "제4차 국가초고성능컴퓨팅 육성 기본계획(2026~2030)"
        assert isinstance(meta["breadcrumbs"], str)
        assert meta["char_count"] == len(c["text"]) > 0
    assert sum(bool(c["metadata"]["breadcrumbs"]) for c in chunks) >= len(chunks) - 1
    assert any(c["metadata"]["breadcrumbs"].startswith("Ⅲ. 추진 전략 및 과제 > ") for c in chunks)


def test_chunk_ids_depend_on_content_and_source_only(tmp_path: Path) -> None:
    paragraphs = ["1. 목적", "이 사업은 무주택 청년의 주거비 부담을 덜어 주기 위한 것이다."]
    a = chunk_paragraphs(paragraphs, source="a.txt")
    b = chunk_paragraphs(paragraphs, source="a.txt")
    c = chunk_paragraphs(paragraphs, source="b.txt")
    assert [x.chunk_id for x in a] == [x.chunk_id for x in b] != [x.chunk_id for x in c]


def test_folder_input_reads_documents_in_sorted_order(tmp_path: Path, cli) -> None:
    write(tmp_path / "docs" / "b.md", MARKDOWN_DOC)
    write(tmp_path / "docs" / "a.txt", LONG_PARAGRAPHS, "cp949")
    write(tmp_path / "docs" / "notes.xyz", "무시되는 파일")

    chunks = prepared(cli, tmp_path, [tmp_path / "docs"])

    sources = [c["metadata"]["source"] for c in chunks]
    assert sources == sorted(sources) and set(sources) == {"a.txt", "b.md"}
    assert [c["metadata"]["index"] for c in chunks] == list(range(len(chunks)))
