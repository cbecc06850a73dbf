"""What asking a model takes and gives back, whatever answers it (a local generator, the
serving engine's batcher, an endpoint, llama.cpp): :class:`GenerationSettings`, :class:`Answer`,
the one stop-string matcher, and the streamed text of an answer as its tokens arrive.

Consumers (eval, serve's protocol, the journal) read these types here; only the model-access
layer imports the generator itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None           # sampling seed (temperature > 0), for reproducible answers


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # The generated token ids the text was decoded from (before EOS; stop strings not cut):
    # kotune serve's log-probabilities. None where unknown (an endpoint's answer).
    tokens: list[int] | None = field(default=None, repr=False, compare=False)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string begins in ``text`` (None: no stop string): the one stop
    matcher of answers, streamed pieces and the continuous batcher."""
    hits = [k for k in (text.find(s) for s in stops if s) if k >= 0]
    return min(hits) if hits else None


class TextPieces:
    """The visible text of an answer as its tokens arrive, in pieces (for streaming).

    Pieces never end inside a Hangul syllable: byte-level BPE tokens can split a
    UTF-8 character, so text is held back while it decodes to U+FFFD. Text that
    may be the start of a stop string is held back too."""

    def __init__(self, tokenizer: Any, eos: Sequence[int], stop: Sequence[str]):
        self.tokenizer, self.eos, self.stop = tokenizer, set(eos), list(stop)
        self.tokens: list[int] = []
        self.shown = ""
        self.ended = False  # an EOS id arrived

    def add(self, new: Sequence[int]) -> str:
        """The next piece of text after ``new`` tokens ('' when nothing can be shown yet)."""
        self.tokens.extend(new)
        if any(t in self.eos for t in new):
            self.ended = True
            return ""
        text = self.tokenizer.decode([t for t in self.tokens if t not in self.eos], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        hold = max((len(s) - 1 for s in self.stop), default=0)  # a stop string may be forming
        visible = text[: len(text) - hold] if hold else text
        k = find_stop(text, self.stop)
        if k is not None:
            visible = text[:k]
        if len(visible) > len(self.shown) and visible.startswith(self.shown):
            piece, self.shown = visible[len(self.shown):], visible
            return piece
        return ""

    def rest(self, answer: "Answer") -> str:
        """What the final answer adds to the pieces shown so far."""
        if answer.text.startswith(self.shown) and len(answer.text) > len(self.shown):
            return answer.text[len(self.shown):]
        return ""
