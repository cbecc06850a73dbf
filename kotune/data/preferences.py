"""Preference data: reading the formats users bring, and validating pairs.

Formats read (one row per line of .jsonl, or items of .json / rows of .csv):

- kotune's own: ``{instruction, input?, category?, chosen, rejected}`` (what
  ``kotune pairs`` writes; ``question``/``prompt`` and ``context`` are accepted
  as for SFT records);
- TRL's standard preference format: ``{prompt, chosen, rejected}`` with text,
  and the conversational one: ``prompt`` a list of messages, ``chosen`` and
  ``rejected`` lists holding the assistant message (or, without ``prompt``, two
  whole conversations that differ in their last assistant turn);
- KTO's unpaired format: ``{prompt, completion, label}`` (``label`` true for a
  desirable answer), text or conversational.

Every row becomes a :class:`PreferenceRecord`; the prompt side is read by
``kotune.records.normalize``, the same reader SFT records go through, so a
preference record is rendered with the run's template exactly as its SFT
record was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from kotune.errors import KotuneError
from kotune.records import from_messages, normalize, raw_rows

SIDES = ("chosen", "rejected", "completion", "label")
PAIR_REASONS = ("missing_fields", "same_answers", "duplicate", "chosen_fails")
PAIR_REASON_LABELS = {
    "missing_fields": "필수 필드 누락",
    "same_answers": "chosen = rejected",
    "duplicate": "중복",
    "chosen_fails": "chosen 답변 검사 실패",
}


@dataclass
class PreferenceRecord:
    """One prompt with a chosen and a rejected answer (a pair), or with one answer and
    a desirable/undesirable ``label`` (KTO)."""

    instruction: str
    input: str = ""
    category: str = ""
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return self.completion is None and self.label is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"instruction": self.instruction, "input": self.input, "category": self.category}
        if self.paired:
            d.update(chosen=self.chosen, rejected=self.rejected)
        else:
            d.update(completion=self.completion, label=self.label)
        d.update({k: v for k, v in self.extra.items() if not k.startswith("_")})
        return d

    def unpaired(self) -> list["PreferenceRecord"]:
        """A pair as two labelled answers (KTO learns from those)."""
        if not self.paired:
            return [self]
        base = dict(instruction=self.instruction, input=self.input, category=self.category, extra=dict(self.extra))
        return [PreferenceRecord(completion=self.chosen, label=True, **base),
                PreferenceRecord(completion=self.rejected, label=False, **dict(base, extra=dict(self.extra)))]


def _answer_text(value: Any) -> str | None:
    """A side's text: a string, or the last assistant message of a message list."""
    if value is None:
        return None
    if isinstance(value, list):
        msgs = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant" and "content" in m]
        return str(msgs[-1]["content"]).strip() if msgs else None
    text = str(value).strip()
    return text


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "desirable", "good"):
        return True
    if text in ("false", "0", "no", "undesirable", "bad"):
        return False
    raise KotuneError(f'{where}: "label" must be true or false, got {value!r}')


def _prompt_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """instruction / input / category / extra of a row's prompt side."""
    prompt = raw.get("prompt")
    if isinstance(prompt, list):  # conversational: the messages before the answer
        parsed = from_messages(prompt + [{"role": "assistant", "content": ""}])
        if parsed is None:
            raise KotuneError(f'{where}: "prompt" holds no user message')
        rest = {k: v for k, v in raw.items() if k not in SIDES and k != "prompt"}
        return _normalized({**rest, **{k: v for k, v in parsed.items() if k != "output"}}, where)
    if prompt is None and "instruction" not in raw and "question" not in raw and "query" not in raw:
        chosen = raw.get("chosen")
        if isinstance(chosen, list):  # implicit prompt: whole conversations
            parsed = from_messages(chosen)
            if parsed is None:
                raise KotuneError(f'{where}: "chosen" holds no user and assistant message')
            rest = {k: v for k, v in raw.items() if k not in SIDES}
            return _normalized({**rest, **{k: v for k, v in parsed.items() if k != "output"}}, where)
        raise KotuneError(f'{where}: no prompt: give "instruction" (or "prompt"/"question") beside the answers')
    return _normalized({k: v for k, v in raw.items() if k not in SIDES}, where)


def _normalized(row: dict[str, Any], where: str) -> dict[str, Any]:
    rec = normalize(row)
    if rec is None or not rec.instruction:
        raise KotuneError(f'{where}: empty prompt (field "instruction" or "prompt")')
    extra = dict(rec.extra)
    if "id" in row:
        extra["id"] = rec.id
    return {"instruction": rec.instruction, "input": rec.input, "category": rec.category, "extra": extra}


def parse_row(raw: dict[str, Any], where: str, *, strict: bool = True) -> PreferenceRecord:
    """One raw row → PreferenceRecord. ``strict``: a missing side is an error (training);
    otherwise it is kept empty for validation to count."""
    paired = "chosen" in raw or "rejected" in raw
    unpaired = "completion" in raw or "label" in raw
    if paired and unpaired:
        raise KotuneError(f'{where}: a row is a pair ("chosen", "rejected") or a labelled answer ("completion", '
                          '"label"), not both')
    if not paired and not unpaired:
        raise KotuneError(f'{where}: not a preference record: needs "chosen" and "rejected", or "completion" and '
                          f'"label" (keys: {", ".join(sorted(raw)) or "none"})')
    fields = _prompt_fields(raw, where)
    if paired:
        rec = PreferenceRecord(chosen=_answer_text(raw.get("chosen")), rejected=_answer_text(raw.get("rejected")),
                               **fields)
        if strict:
            for side in ("chosen", "rejected"):
                if not getattr(rec, side):
                    raise KotuneError(f'{where}: missing "{side}" (a pair needs "chosen" and "rejected"; '
                                      "kotune validate drops incomplete pairs)")
        return rec
    if "label" not in raw:
        raise KotuneError(f'{where}: missing "label" (true for a desirable completion, false for an undesirable one)')
    rec = PreferenceRecord(completion=_answer_text(raw.get("completion")), label=_label(raw["label"], where), **fields)
    if strict and not rec.completion:
        raise KotuneError(f'{where}: missing "completion"')
    return rec


def _where(path: Path, line: int | None, i: int) -> str:
    return f"{path.name} line {line}" if line is not None else f"{path.name} item {i}"


def is_preference_file(path: str | Path) -> bool:
    """Whether the file's first row is a preference record (pair or labelled answer)."""
    for _, raw in raw_rows(Path(path)):
        return any(k in raw for k in SIDES)
    return False


def read_preferences(path: str | Path, *, strict: bool = True) -> list[PreferenceRecord]:
    """Every preference record of ``path``; structural problems are one ``KotuneError`` line."""
    from kotune.io import check_input_file

    path = check_input_file(path)
    out: list[PreferenceRecord] = []
    for i, (line, raw) in enumerate(raw_rows(path), start=1):
        rec = parse_row(raw, _where(path, line, i), strict=strict)
        if line is not None:
            rec.extra["_line"] = line
        out.append(rec)
    if not out:
        raise KotuneError("no preference records found", path=path)
    kinds = {r.paired for r in out}
    if len(kinds) > 1:
        raise KotuneError("mixes pairs (chosen/rejected) and labelled answers (completion/label); use one kind per file",
                          path=path)
    return out


def check_for_method(records: list[PreferenceRecord], method: str, path: str | Path) -> list[PreferenceRecord]:
    """The records a preference method trains on, or one line saying why this data does not fit."""
    first = records[0]
    where = f"{Path(path).name} line {first.extra['_line']}" if "_line" in first.extra else Path(path).name
    if method == "kto":
        if first.paired:
            raise KotuneError(f"{where}: --method kto learns from labelled answers ({{prompt, completion, label}}), and "
                              "this is a chosen/rejected pair without a label: use --method dpo, orpo or simpo, or write "
                              "labelled answers with kotune pairs --format kto")
        labels = Counter(r.label for r in records)
        if not labels[True] or not labels[False]:
            raise KotuneError(f"--method kto needs desirable and undesirable answers; {Path(path).name} has only "
                              f"{'desirable' if labels[True] else 'undesirable'} ones")
        return records
    if not first.paired:
        raise KotuneError(f"{where}: --method {method} learns from pairs (chosen and rejected), and this is a labelled "
                          "answer (completion/label): use --method kto")
    return records


# ---------------------------------------------------------------- validation
@dataclass
class PairValidation:
    kept: list[PreferenceRecord]
    dropped: list[tuple[PreferenceRecord, str]]
    chosen_problems: Counter = field(default_factory=Counter)  # the answer check chosen answers failed

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.dropped)

    def counts(self) -> dict[str, int]:
        c = Counter(reason for _, reason in self.dropped)
        return {r: c.get(r, 0) for r in PAIR_REASONS}

    def report(self) -> dict[str, Any]:
        return {"kind": "preference", "total": self.total, "kept": len(self.kept), "dropped": len(self.dropped),
                "pass_rate": round(len(self.kept) / self.total, 4) if self.total else 0.0,
                "dropped_by_reason": self.counts(), "chosen_problems": dict(self.chosen_problems),
                "categories": dict(Counter(r.category or "(none)" for r in self.kept)),
                "rejected_error_types": dict(Counter(e for r in self.kept for e in r.extra.get("rejected_errors", [])))}


def validate_preferences(records: Iterable[PreferenceRecord], *, min_answer_chars: int = 10) -> PairValidation:
    """Drop a record whose prompt or a side is missing, a pair whose chosen equals its
    rejected, a repeated record, and a record whose chosen (desirable) answer fails
    the answer checks SFT records pass (``text_problem``: too short, cut off, evasive).
    The first reason in :data:`PAIR_REASONS` order counts."""
    from kotune.data.validate import normalize_text, text_problem

    kept: list[PreferenceRecord] = []
    dropped: list[tuple[PreferenceRecord, str]] = []
    problems: Counter = Counter()
    seen: set[tuple] = set()
    for r in records:
        good = r.chosen if r.paired else (r.completion if r.label else None)
        sides = (r.chosen, r.rejected) if r.paired else (r.completion,)
        if not r.instruction.strip() or any(not (s or "").strip() for s in sides):
            dropped.append((r, "missing_fields"))
            continue
        if r.paired and normalize_text(r.chosen) == normalize_text(r.rejected):
            dropped.append((r, "same_answers"))
            continue
        key = (normalize_text(r.instruction), normalize_text(r.input), *map(normalize_text, sides), r.label)
        if key in seen:
            dropped.append((r, "duplicate"))
            continue
        if good is not None:
            problem = text_problem(r.instruction, good, min_answer_chars=min_answer_chars)
            if problem:
                problems[problem] += 1
                dropped.append((r, "chosen_fails"))
                continue
        seen.add(key)
        kept.append(r)
    return PairValidation(kept, dropped, problems)


def render_pair_table(result: PairValidation):
    from rich.table import Table

    total = result.total
    table = Table(title=f"선호 데이터 검증 (Preference validation): {len(result.kept):,} / {total:,} kept",
                  title_justify="left")
    table.add_column("reason")
    table.add_column("사유")
    table.add_column("count", justify="right")
    for reason, n in result.counts().items():
        detail = ""
        if reason == "chosen_fails" and result.chosen_problems:
            detail = " (" + ", ".join(f"{k} {v}" for k, v in sorted(result.chosen_problems.items())) + ")"
        table.add_row(reason, PAIR_REASON_LABELS[reason], f"{n:,}{detail}")
    table.add_section()
    table.add_row("kept", "통과", f"{len(result.kept):,}", style="bold")
    return table


def write_preferences(path: str | Path, records: Iterable[PreferenceRecord]) -> int:
    from kotune.io import write_jsonl

    rows = [r.to_dict() for r in records]
    write_jsonl(path, rows)
    return len(rows)
