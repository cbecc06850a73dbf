"""The local-model teacher: QA pairs from a model loaded in this process (``hf:PATH``).

``LocalTeacher`` asks a model opened by :func:`kotune.model.access.open_model` with the shared
generation prompt (``kotune.data.qa``), batching the prompts of several
chunks, and validates and re-asks exactly as the HTTP teacher does.
"""

from __future__ import annotations

from typing import Any

from kotune.data.qa import SYSTEM_PROMPT, accept_pairs, build_instruction, build_messages, format_document, parse_qa
from kotune.data.teacher import Teacher, TeacherStats, sampling_seed
from kotune.options import GenerateOptions
from kotune.records import Record

__all__ = ["LocalTeacher"]


class LocalTeacher(Teacher):
    """A local model (``hf:PATH``, ``hf:builtin:tiny-ko``), opened by kotune.model.access.open_model.

    Prompts of ``batch_size`` chunks are generated together (greedy first;
    re-asks sample at temperature 0.7 so they do not repeat the same reply,
    seeded by ``seed``, the batch's chunks and the round: reruns are reproducible).
    """

    def __init__(self, spec: str, *, batch_size: int = 8, max_new_tokens: int | None = None, reask: int = 2,
                 min_grounding: float = 0.5, phrasings: int = 3,
                 seed: int = GenerateOptions.default("seed")) -> None:
        self.spec = spec
        self.seed = seed
        self.phrasings = phrasings
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.reask = reask
        self.min_grounding = min_grounding
        self.stats = TeacherStats()
        self._gen: Any = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"teacher:{self.spec}"

    def _generator(self) -> Any:
        if self._gen is None:
            from kotune.model.access import open_model

            # instruct_chat: a model with its own chat template (an instruct model) is asked in it;
            # a tuned run in its training template (the resolver's one rule).
            self._gen = open_model(self.spec, instruct_chat=True, batch_size=self.batch_size, log=lambda *_: None)
        return self._gen

    def _prompt(self, chunk: dict[str, Any], n: int, reask: bool) -> str:
        gen = self._generator()
        if gen.template.is_chat:
            return gen.tokenizer.apply_chat_template(build_messages(chunk, n, reask, self.phrasings), tokenize=False, add_generation_prompt=True)
        return gen.prompt(SYSTEM_PROMPT + "\n" + build_instruction(n, reask, self.phrasings), format_document(chunk))

    def generate(self, chunk: dict[str, Any], n: int) -> list[Record]:
        return self.generate_batch([chunk], n)[0]

    def generate_batch(self, chunks: list[dict[str, Any]], n: int) -> list[list[Record]]:
        from kotune.model.access import GenerationSettings

        gen = self._generator()
        results: list[list[Record]] = [[] for _ in chunks]
        pending = list(range(len(chunks)))
        for round_ in range(1 + self.reask):
            if not pending:
                break
            if round_:
                self.stats.bump("reasks", len(pending))
            prompts = [self._prompt(chunks[i], n, reask=round_ > 0) for i in pending]
            longest = max(len(gen.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            context = int(getattr(gen.generator.model.config, "max_position_embeddings", 0) or 4096)
            wanted = self.max_new_tokens or min(1024, 64 + 160 * n)
            settings = GenerationSettings(
                max_new_tokens=max(16, min(wanted, context - longest - 1)),
                temperature=0.0 if round_ == 0 else 0.7, top_p=0.95, repetition_penalty=1.1,
                seed=sampling_seed(self.seed, "\0".join(str(chunks[i].get("chunk_id", "")) for i in pending), round_),
            )
            answers = gen.answer(prompts, settings)
            self.stats.bump("requests", len(prompts))
            still: list[int] = []
            for i, ans in zip(pending, answers):
                pairs = parse_qa(ans.text)
                if not pairs:
                    self.stats.reject("unparseable")
                    still.append(i)
                    continue
                recs = accept_pairs(chunks[i], pairs, n, self.name, self.stats, self.min_grounding)
                if recs:
                    results[i] = recs
                else:
                    still.append(i)
            pending = still
        return results
