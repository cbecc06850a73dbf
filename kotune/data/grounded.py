"""Grounded (RAFT-style) training records: ``kotune generate CHUNKS -o qa.jsonl --grounded``.

A closed-book record teaches a fact; a grounded record teaches how to answer *from
passages*: its ``input`` is the passages retrieved for its question, numbered as at
inference, its answer cites the passage it comes from, and some records teach the
model to say the abstention sentence when the passages do not hold the answer.
After the teacher (any teacher) has written the QA records, :class:`Grounder` rewrites
each one by this rule:

1. **Retrieval as at inference.** All chunks (every shard's) are indexed with
   :class:`kotune.model.retrieval.Retriever`; a record's ranking is the BM25 search for
   its question; its ``input`` is :func:`kotune.model.retrieval.format_context` of the
   chosen chunks (``[문서 1]``..``[문서 k]``, each headed by its breadcrumbs), the text
   ``kotune eval --context`` / ``chat`` / ``serve`` put in a ``rag`` prompt.
2. **Which records are unanswerable.** ``round(unanswerable_share × records)`` of them,
   taken in the order of a hash of (fixed seed, record id), so the choice does not depend
   on the file order and reruns choose the same ones. A record that cannot be made
   unanswerable (rule 4) is skipped and the next one in that order is taken.
3. **Answerable records** (``"answerable": true``): ``k`` passages, the source chunk
   (``chunk_id``) among the BM25 distractors. The distractors are the top-``k`` hits
   without the source (``k - 1`` of them: when BM25 did not rank the source in the top
   ``k``, the source replaces the lowest-ranked hit); when fewer than ``k - 1`` other chunks
   share a word with the question, the rest come from the other chunks in a seeded order.
   The source goes to position ``n``, drawn uniformly from 1..k with a generator seeded by
   (fixed seed, record id), the distractors keep their BM25 order around it, and the
   output ends with the citation ``" [문서 n]"`` (:func:`kotune.model.retrieval.cite`).
4. **Unanswerable records** (``"answerable": false``): the question with up to ``k``
   passages that may not answer it: the best-ranked chunks that are not the source chunk,
   do not hold the answer and are no rival of the source, filled as in rule 3 (never with
   a chunk holding the answer); the output is the abstention sentence, without a citation,
   and the rule teacher's answer ``keywords`` are dropped.

   * "Holds the answer" (near-duplicate chunks: ``prepare``'s overlap repeats sentences in
     the next chunk) is a Kiwi morpheme check, as validation's grounding check: some
     sentence of the answer has at least :data:`HOLDS` (0.6) of its content morphemes in
     one sentence of the chunk. On the bundled sample the sentences the overlap repeats
     score 1.0 and every other pair at most 0.69; the threshold sits low on purpose,
     because a distractor left out costs nothing and a false "not in the documents"
     teaches the model to decline answerable questions. Known limit: an answer
     paraphrased across two sentences of another chunk is not seen.
   * A rival is a chunk BM25 scores at least :data:`RIVAL` (0.8) × the source chunk's score
     for the question: a general question ("…와 관련하여 무엇을 추진하나요?", "「법」에서는
     어떤 내용을 정하고 있나요?") is answered by other chunks than its own, with other
     facts, which no check of the answer's words can see.

   A record whose every other chunk holds its answer stays answerable.

Every record keeps its ``id`` and ``chunk_id`` and gets ``"passages"``, the chunk ids of
its ``[문서 n]`` passages in order (for eval and the studio to show). With ``k`` above the
number of chunks, answerable records get every chunk; unanswerable ones get fewer than ``k``
passages only when fewer chunks may not answer them.
The output depends only on the chunks, the records and the options: reruns are identical.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Iterable

from kotune.data.validate import MorphemeCache
from kotune.errors import KotuneError
from kotune.korean import split_sentences
from kotune.model.retrieval import Retriever, cite, format_context, strip_citations
from kotune.options import GenerateOptions
from kotune.records import Record

__all__ = ["HOLDS", "RIVAL", "SEED", "Grounder"]

SEED = "kotune-grounded-v1"
"""The fixed seed hashed with a record's id: which records are unanswerable, where the source goes."""
HOLDS = 0.6
"""Share of an answer sentence's content morphemes one sentence of a chunk must hold for the
chunk to hold the answer (and so never be the distractor of an unanswerable record)."""
RIVAL = 0.8
"""A chunk that BM25 scores at least this share of the source chunk's score for a question is a
rival of the source: it may answer the question too (a general question, "…와 관련하여 무엇을
추진하나요?"), so it is never the distractor of an unanswerable record."""


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("\x1f".join((SEED, *parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _order_key(record_id: str, index: int) -> tuple[str, int]:
    return hashlib.sha256(f"{SEED}\x1funanswerable\x1f{record_id}".encode("utf-8")).hexdigest(), index


class Grounder:
    """Turns a teacher's QA records into grounded records (the module's rule) over ``chunks``
    (all of them: the distractors come from the whole corpus, whatever the shard)."""

    def __init__(self, chunks: Iterable[dict[str, Any]], *, k: int = GenerateOptions.default("grounded_k"),
                 unanswerable_share: float = GenerateOptions.default("unanswerable_share"),
                 abstention: str = GenerateOptions.default("abstention")):
        self.chunks = [dict(c) for c in chunks]
        if len(self.chunks) < 2:
            raise KotuneError(f"--grounded needs at least 2 chunks (got {len(self.chunks)})")
        if k < 1:
            raise KotuneError(f"--grounded-k must be >= 1, got {k}")
        if not 0.0 <= unanswerable_share <= 0.9:
            raise KotuneError(f"--unanswerable-share must be in [0, 0.9], got {unanswerable_share}")
        self.k = k
        self.unanswerable_share = unanswerable_share
        self.abstention = abstention.strip()
        self.by_id = {str(c["chunk_id"]): c for c in self.chunks}
        self.ids = list(self.by_id)
        self.retriever = Retriever(self.chunks)
        self._cache = MorphemeCache()
        self._sentences: dict[str, list[frozenset[str]]] = {}

    # ------------------------------------------------------------ the pieces of the rule
    def ranking(self, question: str) -> list[tuple[str, float]]:
        """Every chunk sharing a word with ``question``, best first (Retriever.search's order,
        so its first ``k`` are what inference retrieves)."""
        return [(str(c["chunk_id"]), s) for c, s in self.retriever.search(question, k=len(self.chunks))]

    def _chunk_sentences(self, chunk_id: str) -> list[frozenset[str]]:
        if chunk_id not in self._sentences:
            text = str(self.by_id[chunk_id].get("text") or "")
            self._sentences[chunk_id] = [s for s in (self._cache.get(t) for t in split_sentences(text)) if s]
        return self._sentences[chunk_id]

    def holds(self, answer: str, chunk_id: str) -> bool:
        """Whether chunk ``chunk_id`` holds ``answer``: one of the answer's sentences has at least
        :data:`HOLDS` of its content morphemes in one sentence of the chunk."""
        chunk = self._chunk_sentences(chunk_id)
        for sentence in split_sentences(strip_citations(answer)):
            want = self._cache.get(sentence)
            if want and any(len(want & have) >= HOLDS * len(want) for have in chunk):
                return True
        return False

    def _fill(self, record_id: str, chosen: list[str], exclude: set[str], n: int, ok=lambda c: True) -> list[str]:
        """``chosen`` topped up to ``n`` with other chunks (not in ``exclude``), in a seeded order."""
        if len(chosen) >= n:
            return chosen[:n]
        rest = [c for c in self.ids if c not in exclude and c not in chosen]
        _rng(record_id, "fill").shuffle(rest)
        for c in rest:
            if len(chosen) >= n:
                break
            if ok(c):
                chosen.append(c)
        return chosen

    def answerable_passages(self, record: Record, ranking: list[tuple[str, float]]) -> tuple[list[str], int]:
        """The passages of an answerable record (chunk ids in order) and the source's 1-based position."""
        src = record.chunk_id
        k = min(self.k, len(self.ids))
        distractors = [c for c, _ in ranking[:k] if c != src][:k - 1]
        distractors = self._fill(record.id, distractors, {src}, k - 1)
        position = _rng(record.id, "position").randrange(k)
        return distractors[:position] + [src] + distractors[position:], position + 1

    def unanswerable_passages(self, record: Record, ranking: list[tuple[str, float]]) -> list[str]:
        """Up to ``k`` passages that may not answer the record's question (empty: none left): not
        the source chunk, no chunk holding the answer, no rival of the source (BM25 scores it at
        least :data:`RIVAL` × the source's score for the question)."""
        src = record.chunk_id
        source_score = dict(ranking).get(src, 0.0)
        chosen: list[str] = []
        for c, score in ranking:
            if len(chosen) >= self.k:
                break
            if c != src and score < RIVAL * source_score and not self.holds(record.output, c):
                chosen.append(c)
        ranked = {c for c, _ in ranking}
        return self._fill(record.id, chosen, {src} | ranked, self.k, ok=lambda c: not self.holds(record.output, c))

    def _context(self, passages: list[str], ranking: list[tuple[str, float]]) -> str:
        score = dict(ranking)
        return format_context([(self.by_id[c], score.get(c, 0.0)) for c in passages])

    # ------------------------------------------------------------ the records
    def apply(self, records: list[Record]) -> list[Record]:
        """Grounded copies of ``records``, in the same order (see the module's rule)."""
        for r in records:
            if r.chunk_id not in self.by_id:
                raise KotuneError(f"--grounded: record {r.id} names chunk {r.chunk_id or '(none)'!r}, "
                                  "which is not in the chunks file")
        rankings = [self.ranking(r.instruction) for r in records]
        target = round(self.unanswerable_share * len(records))
        unanswerable: dict[int, list[str]] = {}
        for i in sorted(range(len(records)), key=lambda i: _order_key(records[i].id, i)):
            if len(unanswerable) >= target:
                break
            passages = self.unanswerable_passages(records[i], rankings[i])
            if passages:
                unanswerable[i] = passages
        out = []
        for i, (rec, ranking) in enumerate(zip(records, rankings)):
            extra = dict(rec.extra)
            if i in unanswerable:
                passages = unanswerable[i]
                output = self.abstention
                extra.pop("keywords", None)  # the withheld answer's keywords
                extra.update(answerable=False, passages=passages)
            else:
                passages, n = self.answerable_passages(rec, ranking)
                output = cite(strip_citations(rec.output), n)
                extra.update(answerable=True, passages=passages)
            out.append(Record(instruction=rec.instruction, output=output, input=self._context(passages, ranking),
                              category=rec.category, difficulty=rec.difficulty, source=rec.source,
                              chunk_id=rec.chunk_id, id=rec.id, extra=extra))
        return out

