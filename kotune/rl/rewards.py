"""GRPO rewards: kotune's evaluation metrics, as TRL reward functions.

Every reward is read off :func:`kotune.eval.metrics.score_rows`, the function ``kotune
eval`` scores answers with (morpheme ROUGE-L, key-fact coverage, unsupported content
against the reference and the passages, the abstention sentence, repetition, EOS), so
what GRPO optimises is what the report measures: there is no second implementation.
Each completion is scored once per batch, whichever rewards read it (:class:`Scorer`).

The catalogue (``--reward NAME[=WEIGHT],...``; the names and the default mix are registered in
:mod:`kotune.options`), each in [0, 1] unless said:

- ``facts``: the reference's key facts in the answer (keyword coverage where the question
  has keywords, else morpheme ROUGE-L F1 / 100); unanswerable questions: no value;
- ``grounded``: 1 − unsupported_rate, against the reference and the question's passages
  (retrieved as at inference for a grounded run); an abstention states nothing
  unsupported (1);
- ``abstain``: +1 for the abstention sentence on an unanswerable question, −1 for
  answering it, −1 for abstaining on an answerable one, 0 for answering one;
- ``eos``: 1 when the answer ended with an EOS token within the length limit, else 0;
- ``repetition``: 1 − the share of repeated morpheme 3-grams;
- ``korean``: the share of Hangul among the answer's letters.

A reward with no value for a completion returns None (TRL leaves it out of the weighted sum).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kotune.errors import KotuneError
from kotune.options import REWARD_NAMES

_LETTER = re.compile(r"[^\W\d_]")
_HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")


def check_questions(questions: Sequence[dict[str, Any]], rewards: dict[str, float], path: str) -> None:
    """The questions carry what the chosen rewards need: one line naming the first that does not."""
    need_facts = rewards.get("facts")
    for i, q in enumerate(questions, 1):
        if need_facts and q["answerable"] and not q["reference"] and not q["keywords"]:
            raise KotuneError(f"question {i} ({q['id']}): no \"reference\" or \"keywords\" for the facts reward "
                              "(give references, or drop facts from --reward)", path=path)
    if rewards.get("abstain") and all(q["answerable"] for q in questions):
        raise KotuneError("the abstain reward needs unanswerable questions (\"answerable\": false); none here "
                          "(add some, or drop abstain from --reward)", path=path)


def hangul_share(text: str) -> float | None:
    """Share of Hangul among the letters of ``text`` (None without letters)."""
    letters = _LETTER.findall(text or "")
    if not letters:
        return None
    return sum(1 for ch in letters if _HANGUL.match(ch)) / len(letters)


@dataclass
class Scorer:
    """Scores a batch of completions with eval's metrics once, for every reward that reads it.

    ``eos_ids``: the run's end-of-answer token ids (a completion that ends with one stopped on
    its own; one cut at the length limit did not); ``abstention``: the run's abstention sentence."""

    eos_ids: Sequence[int]
    abstention: str
    _key: Any = None
    _rows: list[dict[str, Any]] | None = None

    def rows(self, completions: list[str], completion_ids: list[list[int]], columns: dict[str, list[Any]]) -> list[dict]:
        from kotune.eval.metrics import score_rows

        key = (tuple(completions), tuple(tuple(c) for c in completion_ids))
        if key != self._key:
            ends = set(self.eos_ids)
            rows = [{"answer": text, "reference": columns["reference"][i] or None,
                     "keywords": columns["keywords"][i], "question": columns["question"][i],
                     "context": columns["context"][i] or None, "input": columns["input"][i],
                     "answerable": columns["answerable"][i],
                     "eos": bool(completion_ids[i]) and completion_ids[i][-1] in ends}
                    for i, text in enumerate(completions)]
            per_row = score_rows(rows, abstention=self.abstention)["per_row"]
            for r, s in zip(rows, per_row):
                s["_answer"] = r["answer"]
            self._key, self._rows = key, per_row
        return self._rows or []


def _facts(s: dict[str, Any]) -> float | None:
    if not s["answerable"]:
        return None
    if s["keyword_coverage"] is not None:
        return s["keyword_coverage"]
    return None if s["rougeL"] is None else s["rougeL"] / 100.0


def _grounded(s: dict[str, Any]) -> float | None:
    if s["abstained"]:
        return 1.0
    return None if s["unsupported_rate"] is None else 1.0 - s["unsupported_rate"]


def _abstain(s: dict[str, Any]) -> float:
    if not s["answerable"]:
        return 1.0 if s["abstained"] else -1.0
    return -1.0 if s["abstained"] else 0.0


def _eos(s: dict[str, Any]) -> float:
    return 1.0 if s["eos"] else 0.0


def _repetition(s: dict[str, Any]) -> float:
    return 1.0 - float(s["repetition"] or 0.0)


def _korean(s: dict[str, Any]) -> float | None:
    return hangul_share(s["_answer"])


_PER_ROW: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "facts": _facts, "grounded": _grounded, "abstain": _abstain, "eos": _eos, "repetition": _repetition,
    "korean": _korean,
}
assert tuple(_PER_ROW) == REWARD_NAMES, "kotune.options.REWARD_NAMES lists the rewards this module computes"


def reward_functions(names: Sequence[str], scorer: Scorer) -> list[Callable[..., list[float | None]]]:
    """TRL reward functions for ``names``; each is named as the reward (TRL logs
    ``rewards/NAME/mean``), and reads the dataset columns ``reference keywords question context
    input answerable``."""
    funcs = []
    for name in names:
        per_row = _PER_ROW[name]

        def reward(prompts, completions, completion_ids, _per_row=per_row, **columns):
            return [_per_row(s) for s in scorer.rows(list(completions), list(completion_ids), columns)]

        reward.__name__ = name
        funcs.append(reward)
    return funcs
