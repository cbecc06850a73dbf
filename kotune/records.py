"""The Record schema and the one reader for every QA format kotune accepts.

Accepted inputs (``.jsonl``, ``.json``, ``.csv``; UTF-8, UTF-8-BOM, CP949/EUC-KR):
- the record schema itself (``instruction``, ``input``, ``output``, ...);
- the civil-law seed's CSV ``question,answer,category,difficulty``;
- alpaca JSON ``instruction,input,output``;
- the insurance seed's ``{"text": "### 지시 ... ### 입력 ... ### 출력 ..."}``;
- chat ``messages`` lists (system / user / assistant);
- anything else through a column mapping such as ``question=instruction``.

``load_chunks`` reads the other input kotune keeps next to QA files: a
``chunks.jsonl`` written by ``kotune prepare`` (``chunk_id``, ``text``, ``metadata``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from kotune.errors import KotuneError
from kotune.io import atomic_writer, check_input_file, decode_bytes, dumps, read_jsonl, short_hash

_AUGMENTED_SUFFIX = re.compile(r"#a\d+$")
FIELDS = ("id", "instruction", "input", "output", "category", "difficulty", "source", "chunk_id")
REQUIRED = ("instruction", "output")
# Optional fields of grounded records (``kotune generate --grounded``): ``answerable`` (false: the
# passages do not hold the answer and the output is the abstention sentence) and ``passages`` (the
# chunk ids of the ``[문서 n]`` passages in ``input``, in order). They live in ``Record.extra``, so
# files without them read and write as before; CSV files get the columns only when a record has them.
GROUNDED_FIELDS = ("answerable", "passages")
_FALSE_WORDS = ("false", "0", "no", "n", "아니오")
_TRUE_WORDS = ("true", "1", "yes", "y", "예")

# Column names other tools use for our fields; applied after the user's --map.
ALIASES = {
    "question": "instruction",
    "query": "instruction",
    "prompt": "instruction",
    "answer": "output",
    "response": "output",
    "completion": "output",
    "context": "input",
    "type": "category",
    "level": "difficulty",
}


@dataclass
class Record:
    instruction: str
    output: str
    input: str = ""
    category: str = ""
    difficulty: str = ""
    source: str = ""
    chunk_id: str = ""
    id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = short_hash(self.instruction, self.input, self.output)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in FIELDS}
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @property
    def answerable(self) -> bool:
        """False only for a record marked ``"answerable": false`` (its output is the abstention
        sentence, see :mod:`kotune.data.grounded`); records without the mark are answerable."""
        return self.extra.get("answerable") is not False

    @property
    def group(self) -> str:
        """Augmented variants share their original's group (``ID#aN`` → ``ID``).

        Only the ``#aN`` suffix is cut: ids such as ``doc#12`` from other tools
        stay distinct groups.
        """
        return _AUGMENTED_SUFFIX.sub("", self.id)


def grounded_passages(records: Iterable[Record]) -> int | None:
    """The one rule for "is this training data grounded": some record has ``passages`` or is marked
    ``"answerable": false`` (as ``kotune generate --grounded`` writes them). Returns None for data
    that is not grounded, else the most passages a record lists (what inference retrieves per
    question; 0 when no record lists them)."""
    most: int | None = None
    for r in records:
        passages = r.extra.get("passages")
        if isinstance(passages, list) or not r.answerable:
            most = max(most or 0, len(passages) if isinstance(passages, list) else 0)
    return most


def parse_mapping(items: Iterable[str] | None) -> dict[str, str]:
    """``["question=instruction", ...]`` → ``{"question": "instruction"}``."""
    mapping: dict[str, str] = {}
    for item in items or ():
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise KotuneError(f"--map expects SOURCE=FIELD, got {item!r}")
        if dst.strip() not in FIELDS:
            raise KotuneError(f"--map {item}: unknown field {dst.strip()!r} (one of {', '.join(FIELDS)})")
        mapping[src.strip()] = dst.strip()
    return mapping


# "### 지시\n...\n### 입력\n...\n### 출력\n..." (insurance seed, kotune template)
_SECTION = re.compile(r"^###\s*(지시|입력|출력|Instruction|Input|Response|질문|답변)\s*:?\s*$", re.M)
_SECTION_FIELD = {"지시": "instruction", "Instruction": "instruction", "질문": "instruction",
                  "입력": "input", "Input": "input",
                  "출력": "output", "Response": "output", "답변": "output"}
_EOS_MARKERS = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")


def parse_template_text(text: str) -> dict[str, str] | None:
    """Fields of a ``### 지시 / ### 입력 / ### 출력`` training string, or None."""
    marks = list(_SECTION.finditer(text))
    if not marks:
        return None
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[_SECTION_FIELD[m.group(1)]] = text[m.end():end].strip()
    if "output" in out:
        for eos in _EOS_MARKERS:
            out["output"] = out["output"].replace(eos, "").strip()
    return out if "instruction" in out and "output" in out else None


def from_messages(messages: Any) -> dict[str, Any] | None:
    if not isinstance(messages, list) or not messages:
        return None
    msgs = [m for m in messages if isinstance(m, dict) and "role" in m and "content" in m]
    last_asst = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last_asst is None:
        return None
    last_user = max((i for i, m in enumerate(msgs[:last_asst]) if m["role"] == "user"), default=None)
    if last_user is None:
        return None
    out: dict[str, Any] = {"instruction": str(msgs[last_user]["content"]), "output": str(msgs[last_asst]["content"])}
    system = [m["content"] for m in msgs[:last_user] if m["role"] == "system"]
    if system:
        out["system"] = str(system[0])
    history = [m for m in msgs[:last_user] if m["role"] in ("user", "assistant")]
    if history:
        out["history"] = history
    return out


def normalize(raw: Mapping[str, Any], mapping: Mapping[str, str] | None = None) -> Record | None:
    """One raw row → Record, or None when the row has no recognisable QA shape."""
    row: dict[str, Any] = {}
    for k, v in raw.items():
        key = (mapping or {}).get(k) or k
        row.setdefault(key, v)
    if "messages" in row and "output" not in row:
        parsed = from_messages(row.pop("messages"))
        if parsed is None:
            return None
        row.update(parsed)
    if "text" in row and "instruction" not in row and "output" not in row and isinstance(row["text"], str):
        parsed = parse_template_text(row["text"])
        if parsed is None:
            return None
        row.pop("text")
        row.update(parsed)
    for k, v in list(row.items()):
        if k in ALIASES and ALIASES[k] not in row:
            row[ALIASES[k]] = row.pop(k)
    _grounded_fields(row)
    if not any(k in row for k in REQUIRED):
        return None
    kwargs: dict[str, Any] = {}
    for k in FIELDS:
        v = row.pop(k, "")
        kwargs[k] = "" if v is None else (v if isinstance(v, str) else str(v))
        kwargs[k] = kwargs[k].strip() if k != "id" else kwargs[k]
    return Record(**kwargs, extra=row)


def _grounded_fields(row: dict[str, Any]) -> None:
    """``answerable`` and ``passages`` as a CSV cell spells them (``false``, ``["a", "b"]``) back to
    a bool and a list; JSON values are kept as they are."""
    value = row.get("answerable")
    if isinstance(value, str):
        word = value.strip().lower()
        if not word:
            row.pop("answerable")
        elif word in _FALSE_WORDS or word in _TRUE_WORDS:
            row["answerable"] = word in _TRUE_WORDS
    value = row.get("passages")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            row.pop("passages")
        elif text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return
            if isinstance(parsed, list):
                row["passages"] = [str(p) for p in parsed]


def raw_rows(path: Path) -> Iterable[tuple[int | None, dict[str, Any]]]:
    """``(line, object)`` of every row of a .jsonl, .json or .csv/.tsv file, before any
    normalisation: the one reader of row files (records, questions, doctor's raw text)."""
    suffix = path.suffix.lower()
    data = path.read_bytes()
    if not data.strip():
        raise KotuneError("file is empty", path=path)
    text, _ = decode_bytes(data, path)
    if suffix == ".jsonl":
        yield from read_jsonl(path)
    elif suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise KotuneError(f"invalid JSON ({e.msg})", path=path, line=e.lineno) from None
        if isinstance(obj, dict):
            obj = next((v for k, v in obj.items() if isinstance(v, list) and k in ("data", "records", "items", "train", "questions")), [obj])
        if not isinstance(obj, list):
            raise KotuneError("expected a JSON list of objects", path=path)
        for i, item in enumerate(obj, start=1):
            if not isinstance(item, dict):
                raise KotuneError(f"item {i} is not a JSON object", path=path)
            yield None, item
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        if not reader.fieldnames:
            raise KotuneError("CSV has no header row", path=path)
        reader.fieldnames = [c.strip().lstrip("\ufeff") for c in reader.fieldnames]
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}
    else:
        raise KotuneError(f"unsupported data format {suffix or '(none)'!r}; use .jsonl, .json or .csv", path=path)


def _check_columns(path: Path, columns: list[str], mapping: Mapping[str, str]) -> None:
    """A CSV must name an instruction and an output column (after mapping/aliases)."""
    names = {mapping.get(c, c) for c in columns}
    names |= {ALIASES[c] for c in names if c in ALIASES}
    if "text" in names or "messages" in names:
        return
    for need, hint in (("instruction", "question"), ("output", "answer")):
        if need not in names:
            raise KotuneError(
                f'missing column "{hint}" (or "{need}"); columns are: {", ".join(columns)}'
                f" — map one with --map COLUMN={need}",
                path=path,
            )


def read_records(path: str | Path, mapping: Mapping[str, str] | None = None) -> list[Record]:
    """Read every record of a QA file; structural problems raise KotuneError."""
    path = check_input_file(path)
    mapping = dict(mapping or {})
    records: list[Record] = []
    checked = False
    for lineno, raw in raw_rows(path):
        if not checked and path.suffix.lower() in (".csv", ".tsv"):
            _check_columns(path, list(raw.keys()), mapping)
        checked = True
        rec = normalize(raw, mapping)
        if rec is None:
            # Keep the row so validation can count it as "missing fields".
            rec = Record(instruction="", output="", extra={"_raw_keys": sorted(raw)})
        if lineno is not None:
            rec.extra.setdefault("_line", lineno)
        records.append(rec)
    if not checked:
        raise KotuneError("no records found", path=path)
    if not any(r.instruction or r.output for r in records):
        keys = sorted({k for r in records for k in r.extra.get("_raw_keys", [])})
        raise KotuneError(
            f"no QA fields found (keys: {', '.join(keys) or 'none'}); map them with --map KEY=instruction --map KEY=output",
            path=path,
        )
    return records


def record_out(rec: Record) -> dict[str, Any]:
    d = rec.to_dict()
    for k in ("_line", "_raw_keys", "_file"):
        d.pop(k, None)
    return d


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records as JSONL (or JSON/CSV by extension), atomically."""
    path = Path(path)
    rows = [record_out(r) for r in records]
    suffix = path.suffix.lower()
    with atomic_writer(path, newline="" if suffix == ".csv" else None) as f:
        if suffix == ".json":
            json.dump(rows, f, ensure_ascii=False, indent=2)
            f.write("\n")
        elif suffix == ".csv":
            extra = [k for k in GROUNDED_FIELDS if any(k in r for r in rows)]
            w = csv.DictWriter(f, fieldnames=[*FIELDS, *extra], extrasaction="ignore")
            w.writeheader()
            for r in rows:
                if "answerable" in r and isinstance(r["answerable"], bool):
                    r = {**r, "answerable": "true" if r["answerable"] else "false"}
                if isinstance(r.get("passages"), list):
                    r = {**r, "passages": dumps(r["passages"])}
                w.writerow(r)
        else:
            for r in rows:
                f.write(dumps(r) + "\n")
    return len(rows)


def load_chunks(path: str | Path) -> list[dict[str, Any]]:
    """The chunks of a ``chunks.jsonl`` (``kotune prepare``), in file order; a line that is
    not a chunk, or a file without any, is a KotuneError."""
    chunks = []
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj.get("chunk_id"), str) or not isinstance(obj.get("text"), str):
            raise KotuneError('not a chunk: needs "chunk_id" and "text"', path=path, line=lineno)
        if not isinstance(obj.get("metadata") or {}, dict):
            raise KotuneError('not a chunk: "metadata" must be an object', path=path, line=lineno)
        chunks.append(obj)
    if not chunks:
        raise KotuneError("no chunks found", path=path)
    return chunks
