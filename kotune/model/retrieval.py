"""BM25 over Kiwi morphemes, for RAG-style prompts (``kotune eval --context CHUNKS``), and what a
grounded answer is read for: its ``[문서 n]`` citations and whether it abstains (:func:`abstains`,
used by eval's metrics and by chat, serve and the studio, which sit below eval).

Scoring is the ``bm25s`` library (Lucene BM25, k1=1.5, b=0.75); tokenisation is
ours, because whitespace tokens fail on Korean: "국가센터의", "국가센터로서" and
"국가센터란" are three different words to a whitespace tokenizer and one noun
plus particles to Kiwi.

Tokens (see :func:`tokens`):

* every content morpheme (:func:`kotune.korean.content_morphemes`: nouns, verb
  and adjective stems in dictionary form, numbers, foreign words), lower-cased,
  so particles and endings never decide a match (했다/합니다/하는 → 하);
* plus a bigram for each pair of content morphemes that stand next to each
  other with no particle or ending between them — the parts of a compound.
  Kiwi splits "국가센터" into 국가 + 센터 and "전문센터" into 전문 + 센터; the
  bigrams 국가_센터 / 전문_센터 keep the two apart.

A chunk is indexed with its breadcrumbs (section headings), because a chunk
often starts with the tail of the previous section and a question names the
section ("기관별 역할", "추진 경과").

Why this one: on the bundled sample (14 chunks) and the 94 questions the rule
teacher writes for it, hit@3 / MRR were: content morphemes 0.87 / 0.75, all
morphemes minus particles, endings and punctuation 0.85 / 0.76, content
morphemes + breadcrumbs 0.90 / 0.79, content morphemes + compound bigrams +
breadcrumbs (this) 0.93 / 0.85; and 24 of 24 hand-written questions in inflected
forms found their chunk in the top 3 (23 of 24 without the bigrams).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable

from kotune.errors import KotuneError
from kotune.korean import CONTENT_TAGS, morphemes, split_sentences, tokenize as kiwi_tokens
from kotune.model.runinfo import RunInfo
from kotune.model.templates import ABSTENTION
from kotune.records import load_chunks

__all__ = ["CITATION", "DEFAULT_TOP_K", "PASSAGE_WORD", "Passages", "REFUSALS", "Retrieval", "Retriever", "abstains",
           "cite", "format_context", "holds_passages", "passage_label", "refusal", "retrieval_for", "shared_retriever",
           "strip_citations", "tokens"]

DEFAULT_TOP_K = 3


def tokens(text: str) -> list[str]:
    """Lower-cased content morphemes plus bigrams of adjacent ones (compound parts)."""
    out: list[str] = []
    prev: str | None = None
    for form, tag in morphemes(text or ""):
        if tag in CONTENT_TAGS:
            form = form.lower()
            out.append(form)
            if prev is not None:
                out.append(prev + "_" + form)
            prev = form
        else:
            prev = None
    return out


def _as_dict(chunk: Any) -> dict[str, Any]:
    if isinstance(chunk, dict):
        return chunk
    if hasattr(chunk, "to_dict"):  # kotune.data.chunk.Chunk
        return chunk.to_dict()
    raise TypeError(f"not a chunk: {chunk!r}")


def _breadcrumbs(chunk: dict[str, Any]) -> str:
    meta = chunk.get("metadata") or {}
    return str(meta.get("breadcrumbs") or "").strip()


class Retriever:
    """BM25 index over chunks (dicts as in chunks.jsonl: ``chunk_id``, ``text``, ``metadata``)."""

    def __init__(self, chunks: Iterable[dict[str, Any]]):
        import bm25s

        self.chunks: list[dict[str, Any]] = [_as_dict(c) for c in chunks]
        docs = [tokens(f"{c.get('text') or ''}\n{_breadcrumbs(c)}") for c in self.chunks]
        # A sorted vocabulary (bm25s would build one from a set, whose order
        # changes with PYTHONHASHSEED) keeps the index identical across runs.
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
        self._bm25 = None
        if self.vocab:
            self._bm25 = bm25s.BM25()
            ids = [[self.vocab[t] for t in d] for d in docs]
            self._bm25.index((ids, dict(self.vocab)), create_empty_token=False, show_progress=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "Retriever":
        """Index a chunks.jsonl written by ``kotune prepare``."""
        return cls(load_chunks(path))

    def __len__(self) -> int:
        return len(self.chunks)

    def scores(self, query: str) -> list[float]:
        """BM25 score of every chunk for ``query`` (all 0.0 when nothing matches)."""
        ids = [self.vocab[t] for t in tokens(query) if t in self.vocab] if self._bm25 is not None else []
        if not ids:
            return [0.0] * len(self.chunks)
        return [float(s) for s in self._bm25.get_scores_from_ids(ids)]

    def search(self, query: str, k: int = 3) -> list[tuple[dict[str, Any], float]]:
        """Up to ``k`` ``(chunk, score)`` pairs, best first; ties go to the earlier chunk.

        Only chunks sharing at least one token with the query are returned, so an
        empty or unmatched query gives ``[]``.
        """
        if k <= 0 or not query or not query.strip():
            return []
        scores = self.scores(query)
        order = sorted((i for i, s in enumerate(scores) if s > 0.0), key=lambda i: (-scores[i], i))
        return [(self.chunks[i], scores[i]) for i in order[:k]]


PASSAGE_WORD = "문서"
"""The word passages are numbered with (``[문서 n]``); a grounded run records it (``RetrievalInfo.label``)."""


def passage_label(n: int) -> str:
    """How passage ``n`` (1-based) is named in a prompt and cited in an answer: ``[문서 n]``."""
    return f"[{PASSAGE_WORD} {n}]"


CITATION = re.compile(r"\[" + PASSAGE_WORD + r"\s*(\d+)\]")
"""A citation of a passage in an answer (``[문서 2]``); group 1 is the passage number."""


def cite(answer: str, n: int) -> str:
    """``answer`` citing passage ``n`` at its very end: ``"… 원입니다. [문서 2]"``."""
    return f"{answer.rstrip()} {passage_label(n)}"


def strip_citations(answer: str) -> str:
    """``answer`` without its ``[문서 n]`` citations (and the spaces before them), for checks that
    read the answer's words: sentence completeness, grounding, duplicates."""
    return re.sub(r"\s*" + CITATION.pattern, "", answer or "").strip()


# ---------------------------------------------------------------- abstention: recognised wherever answers are read
# (eval's metrics, serve's and chat's "abstained" marks), so it lives beside the citations it goes with.

# Refusals that count when they close a clause of the answer's first sentence (see
# :func:`abstains`). Written with their spacing as usual; matched with spaces removed,
# so "찾을수없습니다" and "나와있지 않아요" count too. Keep the list short: each entry must
# be a way of saying "the information is not there", not a fact in its own right.
REFUSALS = ("찾을 수 없", "나와 있지 않", "해당 내용이 없", "명시되어 있지 않", "언급되어 있지 않", "포함되어 있지 않")
# Endings after a refusal that turn it into part of a fact: an adnominal ending (찾을 수 없는
# 경우에는 …, 명시되어 있지 않은 사항은 …: ETM), a condition (… 않으면, … 없다면) or a
# concession (… 없어도, … 않더라도).
_CONDITIONS = frozenset({"면", "으면", "다면", "ㄴ다면", "는다면", "거든", "어도", "아도", "더라도", "라도", "어야", "아야"})


def _bare(text: str) -> str:
    """``text`` without whitespace, punctuation and symbols, lower-cased: how sentences are compared."""
    return "".join(ch for ch in (text or "").lower()
                   if not ch.isspace() and not unicodedata.category(ch).startswith(("P", "S")))


def _closes_clause(sentence: str, end: int) -> bool:
    """Whether the predicate ending at character ``end`` of ``sentence`` closes its clause: a
    final ending (…없습니다, …않아요), a connective that goes on to another clause (…않으며,
    …없고) or nothing at all; not an adnominal ending, a condition or a concession."""
    toks = [t for t in kiwi_tokens(sentence) if t.start >= end and t.tag != "EP"]  # pre-final endings: …없었습니다
    if not toks:
        return True
    t = toks[0]
    if t.tag.startswith("ETM"):
        return False
    if t.tag.startswith("EC"):
        also = toks[1].form if len(toks) > 1 and toks[1].tag == "JX" and toks[1].start == t.start + len(t.form) else ""
        return t.form not in _CONDITIONS and t.form + also not in _CONDITIONS  # 없어도: 어 + 도
    return True


def _phrase_closes_clause(sentence: str, phrase: str) -> bool:
    """Whether ``phrase`` (compared without whitespace) occurs in ``sentence`` closing a clause
    (:func:`_closes_clause`) at least once."""
    keep = [i for i, ch in enumerate(sentence) if not ch.isspace()]
    flat = "".join(sentence[i] for i in keep)
    needle = "".join(phrase.split())
    at = flat.find(needle) if needle else -1
    while at >= 0:
        if _closes_clause(sentence, keep[at + len(needle) - 1] + 1):
            return True
        at = flat.find(needle, at + 1)
    return False


def refusal(answer: str) -> str | None:
    """The refusal of :data:`REFUSALS` that the answer's first sentence ends a clause with, or None."""
    sentences = split_sentences(answer or "")
    if not sentences:
        return None
    return next((phrase for phrase in REFUSALS if _phrase_closes_clause(sentences[0], phrase)), None)


def says_as_a_clause(text: str, phrase: str) -> bool:
    """Whether any sentence of ``text`` holds ``phrase`` (a predicate such as "명시되어 있지 않")
    as a clause of its own, as :func:`abstains` reads refusals: "약관에 명시되어 있지 않습니다"
    and "… 않으며, …" do; "명시되어 있지 않은 사항은 관계 법령에 따릅니다" (a fact) does not."""
    return any(_phrase_closes_clause(sentence, phrase) for sentence in split_sentences(text or ""))


def abstains(answer: str, sentence: str = ABSTENTION) -> bool:
    """Whether ``answer`` declines to answer ("the documents do not hold it").

    The rule, in order:

    1. the answer contains the model's abstention ``sentence`` (the run's recorded one, else
       ``--abstention``), compared with whitespace, punctuation and symbols removed; or
    2. its **first sentence** holds one of :data:`REFUSALS` (찾을 수 없, 나와 있지 않, 해당 내용이
       없, 명시/언급/포함되어 있지 않) as a clause of its own: followed by a final ending
       ("문서에서 해당 정보를 찾을 수 없습니다."), a connective ("명시되어 있지 않으며, …") or
       nothing. Followed by an adnominal ending, a condition or a concession it is part of a
       fact and does not count: "찾을 수 없는 경우에는 콜센터에 문의합니다", "명시되어 있지
       않은 사항은 시행령을 따릅니다", "문서에 언급되어 있지 않으면 …", "명시되어 있지 않아도 …".

    Known limit: a fact that itself ends in a refusal phrase ("분실한 카드는 찾을 수 없습니다.")
    counts as abstaining when it is the first sentence.

    Only the first sentence counts for refusals: an answer that gives the facts and then says
    a detail "is not in the documents" has answered. An answer that opens with a refusal and
    then answers anyway counts as abstaining (its first words told the user it does not know).
    """
    bare = _bare(sentence)
    if bare and bare in _bare(answer):
        return True
    return refusal(answer) is not None


def format_context(hits: Iterable[tuple[dict[str, Any], float]]) -> str:
    """Chunks for a RAG prompt: ``[문서 i] (breadcrumbs)`` then the text, blank line between."""
    parts = []
    for i, (chunk, _score) in enumerate(hits, 1):
        chunk = _as_dict(chunk)
        meta = chunk.get("metadata") or {}
        where = _breadcrumbs(chunk) or str(meta.get("title") or "").strip()
        head = f"{passage_label(i)} ({where})" if where else passage_label(i)
        parts.append(f"{head}\n{str(chunk.get('text') or '').strip()}")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- retrieval → context, the one rule
class Passages:
    """The passages one question is asked with: the text put in the prompt (``[문서 n]``
    blocks, or the question's own context), the ids of the chunks retrieved and the chunks."""

    __slots__ = ("text", "chunk_ids", "chunks")

    def __init__(self, text: str = "", chunk_ids: list[str] | None = None, chunks: list[dict[str, Any]] | None = None):
        self.text = text
        self.chunk_ids = list(chunk_ids or [])
        self.chunks = list(chunks or [])

    def __bool__(self) -> bool:
        return bool(self.text)

    def __repr__(self) -> str:
        return f"Passages({self.text[:40]!r}, {self.chunk_ids})"

    def listed(self) -> list[dict[str, Any]]:
        """The retrieved passages as a client reads them: ``{"n", "chunk_id", "text"}``, ``n`` as in
        ``[문서 n]`` (empty for a question's own context, which has no chunks)."""
        return [{"n": n, "chunk_id": str(c.get("chunk_id")), "text": str(c.get("text") or "").strip()}
                for n, c in enumerate(self.chunks, 1)]


class Retrieval:
    """Retrieval to context, for every consumer (eval, pairs, chat, serve, the studio, and
    training-data builders), with one rule:

    1. a question that brings its own ``context`` is asked with it, as it is;
    2. otherwise, with a chunks file, the ``k`` best chunks for the question text (BM25 over
       Kiwi morphemes, :class:`Retriever`), numbered ``[문서 1]``..``[문서 k]`` best first, each
       headed by its breadcrumbs (:func:`format_context`). They take the place of the
       question's ``input`` in the prompt (a template puts the context where the input
       goes): with ``--context`` the model is asked as it will be in use, from the question
       alone, even when a test record carries the passages it was generated from. A grounded
       run's own chunks (``from_run``: no ``--context`` given, :func:`retrieval_for`) leave a
       question that brings passages in its ``input`` as it is: that is the prompt the run was
       trained with, and its ``answerable: false`` stays true of those passages;
    3. without a chunks file: no context; a question's ``input`` (its passages, the text to
       summarise, a dialogue) is asked as it is;
    4. when no chunk shares a word with the question: no context either.
    """

    def __init__(self, chunks: str | Path | None = None, k: int = DEFAULT_TOP_K, *, retriever: Retriever | None = None,
                 from_run: bool = False):
        self.source = str(chunks) if chunks else None
        self.k = k
        self.from_run = from_run
        self.retriever = retriever if retriever is not None else (Retriever.from_file(chunks) if chunks else None)

    @property
    def active(self) -> bool:
        return self.retriever is not None

    def describe(self) -> dict[str, Any]:
        """Where the passages come from (metrics.json ``models.NAME.retrieval``)."""
        return {"chunks": self.source, "top_k": self.k, "from": "run" if self.from_run else "--context"}

    def passages(self, question: str, *, input: str = "", context: str = "") -> Passages:
        if context:
            return Passages(context)
        if self.retriever is None or (self.from_run and input.strip()):
            return Passages()
        hits = self.retriever.search(question, k=self.k)
        return Passages(format_context(hits), [str(c["chunk_id"]) for c, _ in hits], [c for c, _ in hits])

    def for_questions(self, questions: Iterable[dict[str, Any]]) -> list[Passages]:
        """Each question's passages (``question``, ``input`` and ``context`` fields as
        :func:`kotune.eval.evaluate.load_questions` reads them)."""
        return [self.passages(q["question"], input=q.get("input") or "", context=q.get("context") or "")
                for q in questions]


@functools.lru_cache(maxsize=8)
def _index(path: str, mtime_ns: int, size: int) -> Retriever:
    return Retriever.from_file(path)


def shared_retriever(chunks: str | Path) -> Retriever:
    """The index of a chunks file, built once per process while the file is unchanged (eval's
    models, serve's adapters and the studio's chats share it)."""
    p = Path(chunks).resolve()
    st = p.stat()
    return _index(str(p), st.st_mtime_ns, st.st_size)


def retrieval_for(run: RunInfo | None, *, name: str, context: str | Path | None = None, top_k: int | None = None,
                  remedy: str = "pass --context CHUNKS.jsonl") -> Retrieval | None:
    """How one model is asked: the per-model decision of eval, chat, serve and the studio, made here.

    - ``context`` (``--context CHUNKS``, given explicitly) → retrieve from it, for every model
      alike, ``top_k`` passages (else the run's recorded number, else :data:`DEFAULT_TOP_K`);
    - a grounded run (``run.retrieval``, :class:`kotune.model.runinfo.RetrievalInfo`) → retrieve
      from its recorded chunks, its ``top_k`` (an explicit ``top_k`` wins); a recorded file that
      is missing, or none recorded, is one error line naming the model and the ``remedy``;
    - a closed-book run or a plain base → None: asked without passages.
    """
    recorded = run.retrieval if run is not None else None
    if context:
        k = top_k or (recorded.top_k if recorded else DEFAULT_TOP_K)
        return Retrieval(context, k, retriever=shared_retriever(context))
    if recorded is None:
        return None
    if not recorded.chunks or not Path(recorded.chunks).is_file():
        why = (f"its chunks file {recorded.chunks} is missing" if recorded.chunks
               else "it records no chunks file (trained without kotune train --chunks)")
        raise KotuneError(f"model {name}: a grounded run (trained on retrieved passages), and {why}; {remedy}")
    return Retrieval(recorded.chunks, top_k or recorded.top_k, retriever=shared_retriever(recorded.chunks),
                     from_run=True)


_PASSAGE_BLOCK = re.compile(r"^\[" + PASSAGE_WORD + r"\s*1\]", re.M)


def holds_passages(text: str) -> bool:
    """Whether a message already carries numbered passages (a ``[문서 1]`` block at a line start, as
    :func:`format_context` writes them): a client that retrieved for itself (kotune eval asking
    kotune serve) is not given a second set."""
    return bool(_PASSAGE_BLOCK.search(text or ""))
