"""BM25 retrieval over Kiwi morphemes on the bundled sample's chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kotune.errors import KotuneError
from kotune.model.retrieval import Retriever, format_context, tokens

# Hand-written questions in inflected forms (particles and endings that do not
# appear in the document), each with a phrase that only its answer chunk holds.
QUERIES = [
    ("국가센터의 역할은?", ("국가센터란", "국가센터로서")),
    ("총사업비는 얼마인가요?", ("총사업비는 2026년부터",)),
    ("특성화 대학원은 몇 곳을 지정하나요?", ("특성화 대학원 5곳",)),
    ("신규 센터의 전력사용효율은 얼마 이하로 관리하나요?", ("1.2 이하로 관리한다",)),
    ("엑사플롭스급 컴퓨터란 무엇입니까?", ("100경 번",)),
    ("위원회의 위원장은 누가 맡습니까?", ("장관을 위원장으로",)),
    ("국가 인공지능 컴퓨팅 센터는 가속기를 몇 장 규모로 운영하나요?", ("가속기 2,000장",)),
    ("산업계의 활용 비중을 얼마까지 늘립니까?", ("2030년 25%로 확대",)),
    ("의료 데이터를 분석할 때 갖춰야 하는 안전 조치는?", ("가명 처리",)),
    ("중간 평가는 언제 실시되나요?", ("중간 평가를 실시",)),
]


@pytest.fixture(scope="module")
def retriever(sample_chunks) -> Retriever:
    return Retriever.from_file(sample_chunks)


def _holds(chunk: dict, phrases: tuple[str, ...]) -> bool:
    return any(p in chunk["text"] for p in phrases)


def test_every_expected_phrase_is_in_the_sample(retriever):
    for _q, phrases in QUERIES:
        assert any(_holds(c, phrases) for c in retriever.chunks), phrases


def test_hand_written_questions_find_their_chunk_in_top_3(retriever):
    misses = []
    for query, phrases in QUERIES:
        hits = retriever.search(query, k=3)
        if not any(_holds(c, phrases) for c, _ in hits):
            misses.append((query, [c["text"][:40] for c, _ in hits]))
    assert len(QUERIES) - len(misses) >= 8, misses


def test_particles_and_endings_do_not_change_the_tokens():
    base = tokens("국가센터")
    assert base == ["국가", "센터", "국가_센터"]
    for form in ("국가센터의", "국가센터란", "국가센터로서", "국가센터는", "국가센터가"):
        assert tokens(form) == base, form
    # Verb endings reduce to the stem; a particle ends a compound.
    assert tokens("운영한다") == tokens("운영합니다") == tokens("운영하는")
    assert "국가_센터" not in tokens("국가의 센터")
    assert tokens("PUE와 KISTI") == ["pue", "kisti"]


def test_definition_question_ranks_the_definition_first(retriever):
    (top, score), *_ = retriever.search("국가센터의 역할은?", k=3)
    assert _holds(top, ("국가센터란", "국가센터로서")) and score > 0


def test_k_is_respected_and_best_first(retriever):
    query = "국가 인공지능 컴퓨팅 센터"
    for k in (1, 2, 3, 5):
        hits = retriever.search(query, k=k)
        assert len(hits) == k
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)
    assert retriever.search(query, k=0) == []
    assert len(retriever.search(query, k=1000)) <= len(retriever)


@pytest.mark.parametrize("query", ["", "   ", "?!", "…", "zzqx"])
def test_empty_or_unmatched_query_returns_nothing(retriever, query):
    assert retriever.search(query) == []


def test_empty_index():
    assert Retriever([]).search("국가센터") == []
    r = Retriever([{"chunk_id": "a", "text": "", "metadata": {}}])
    assert r.search("국가센터") == []


def test_ties_go_to_the_earlier_chunk_and_repeat_exactly(retriever):
    same = "국가센터는 자원을 운영한다."
    chunks = [{"chunk_id": f"c{i}", "text": t, "metadata": {}}
              for i, t in enumerate(["전문센터는 분야를 지원한다.", same, same, same])]
    hits = Retriever(chunks).search("국가센터의 운영", k=3)
    assert [c["chunk_id"] for c, _ in hits] == ["c1", "c2", "c3"]
    assert len({s for _, s in hits}) == 1
    q = "인재 양성에 투자하는 금액은?"
    first = [(c["chunk_id"], s) for c, s in retriever.search(q, k=5)]
    again = [(c["chunk_id"], s) for c, s in Retriever(retriever.chunks).search(q, k=5)]
    assert first == again


def test_same_results_in_a_process_with_another_hash_seed(sample_chunks, retriever):
    queries = ["국가센터의 역할은?", "전문센터 몇 곳", "총사업비"]
    code = (
        "import json, sys; from kotune.model.retrieval import Retriever; "
        "r = Retriever.from_file(sys.argv[1]); "
        f"print(json.dumps([[c['chunk_id'], s] for q in {queries!r} for c, s in r.search(q, k=4)]))"
    )
    seed = "4321" if os.environ.get("PYTHONHASHSEED") != "4321" else "1234"
    proc = subprocess.run([sys.executable, "-c", code, str(sample_chunks)], env=dict(os.environ, PYTHONHASHSEED=seed),
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 0, proc.stderr
    here = [[c["chunk_id"], s] for q in queries for c, s in retriever.search(q, k=4)]
    assert json.loads(proc.stdout) == here and here
    assert list(retriever.vocab) == sorted(retriever.vocab)


def test_from_file_errors(tmp_path):
    with pytest.raises(KotuneError):
        Retriever.from_file(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n', encoding="utf-8")
    with pytest.raises(KotuneError):
        Retriever.from_file(bad)


def test_format_context():
    hits = [
        ({"chunk_id": "a", "text": "국가센터란 기관을 말한다.\n", "metadata": {"breadcrumbs": "Ⅱ. 비전 > 3. 용어"}}, 2.0),
        ({"chunk_id": "b", "text": "둘째 문서.", "metadata": {"title": "제목"}}, 1.0),
        ({"chunk_id": "c", "text": "셋째 문서.", "metadata": {}}, 0.5),
    ]
    assert format_context(hits) == (
        "[문서 1] (Ⅱ. 비전 > 3. 용어)\n국가센터란 기관을 말한다.\n\n"
        "[문서 2] (제목)\n둘째 문서.\n\n"
        "[문서 3]\n셋째 문서."
    )
    assert format_context([]) == ""


def test_format_context_of_a_search(retriever):
    text = format_context(retriever.search("국가센터의 역할은?", k=2))
    assert text.startswith("[문서 1] (") and "\n\n[문서 2] (" in text
