"""`kotune generate --teacher URL` against a real `kotune serve`: a small model taught
to answer kotune's generation request (distilled from the rule teacher) is served
as an OpenAI-compatible teacher, and 8 workers turn chunks into valid records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLE_DOC, call_cli, read_jsonl, serve_process

pytest.importorskip("openai")
CHUNKS = 12


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(chunks file, adapter folder): tiny-ko LoRA-trained on the generation request → 질문/답변 replies."""
    from kotune.data.qa import distillation_records
    from kotune.data.rule_teacher import RuleTeacher
    from kotune.records import load_chunks, write_records

    work = tmp_path_factory.mktemp("teacher")
    all_chunks = work / "all.jsonl"
    assert call_cli(["prepare", SAMPLE_DOC, "-o", all_chunks, "--chunk-chars", "400", "--overlap", "0"]).code == 0
    chunks = load_chunks(all_chunks)[:CHUNKS]
    (work / "chunks.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks),
                                       encoding="utf-8")
    rule = RuleTeacher()
    qa = [r for c in chunks for r in rule.generate(c, 1)]
    write_records(work / "distill.jsonl", distillation_records(chunks, qa))
    res = call_cli(["train", "--data", work / "distill.jsonl", "--output-dir", work / "teacher", "--epochs", "40",
                    "--batch-size", "4", "--eval-split", "0", "--report-to", "none"])
    assert res.code == 0, res.err
    return work / "chunks.jsonl", work / "teacher"


def test_distillation_records_are_the_teachers_own_request() -> None:
    from kotune.data.qa import build_messages, distillation_records, parse_qa
    from kotune.records import Record

    chunk = {"chunk_id": "c1", "text": "국가센터는 2030년까지 600페타플롭스 규모의 시스템을 구축한다.",
             "metadata": {"breadcrumbs": "Ⅲ. 추진 전략"}}
    recs = [Record(instruction="국가센터의 목표는 무엇인가요?", output="국가센터는 2030년까지 600페타플롭스 규모의 시스템을 구축한다.",
                   chunk_id="c1")]
    (d,) = distillation_records([chunk, {"chunk_id": "c2", "text": "x"}], recs)
    assert d.instruction == build_messages(chunk, 1)[-1]["content"] and d.chunk_id == "c1"
    assert parse_qa(d.output) == [{"question": recs[0].instruction, "answer": recs[0].output,
                                   "category": "", "difficulty": ""}]


@pytest.mark.slow
def test_generate_with_eight_workers_against_kotune_serve(teacher, tmp_path: Path) -> None:
    chunks_file, adapter = teacher
    log = tmp_path / "serve.log"
    out = tmp_path / "qa.jsonl"
    with serve_process(["--model", "builtin:tiny-ko", "--adapter", f"teacher={adapter}", "--max-batch", "16"],
                       log) as (url, _):
        res = call_cli(["generate", chunks_file, "-o", out, "--teacher", url + "/v1", "--model", "teacher",
                        "--workers", "8", "--per-chunk", "1", "--temperature", "0", "--max-new-tokens", "96"])
    assert res.code == 0, res.err
    assert "teacher:teacher:" in res.err and "0 errors" in res.err
    records = read_jsonl(out)
    chunk_ids = {c["chunk_id"] for c in read_jsonl(chunks_file)}
    # The distilled tiny teacher answers most chunks in a form that passes every check.
    assert len(records) >= CHUNKS // 4, res.err
    assert all(r["chunk_id"] in chunk_ids and r["generator"] == "teacher:teacher" for r in records)
    assert len({r["chunk_id"] for r in records}) == len(records)  # --per-chunk 1
    # Valid records: kotune validate keeps every one of them.
    clean = tmp_path / "clean.jsonl"
    res = call_cli(["validate", out, "--chunks", chunks_file, "-o", clean])
    assert res.code == 0, res.err
    assert len(read_jsonl(clean)) == len(records)


@pytest.mark.slow
def test_readme_flow_with_defaults_works_against_kotune_serve(teacher, tmp_path: Path) -> None:
    """The README's commands as written: `kotune serve ...` (max_tokens capped at 1024) and
    `kotune generate chunks.jsonl --teacher URL --model NAME` with every other option at its
    default (8 pairs per chunk ask for more than 1024 tokens)."""
    chunks_file, adapter = teacher
    out = tmp_path / "qa.jsonl"
    with serve_process(["--model", "builtin:tiny-ko", "--adapter", f"teacher={adapter}"], tmp_path / "serve.log") \
            as (url, _):
        res = call_cli(["generate", chunks_file, "-o", out, "--teacher", url + "/v1", "--model", "teacher"])
    assert res.code == 0, res.err
    said = " ".join(res.err.split())  # Rich wraps long lines
    assert "nothing was finished" not in said and "0 errors" in said
    assert "asked again within the server's max_tokens limit" in said
    assert read_jsonl(out), res.err  # records were made


@pytest.mark.parametrize("text, asked, limit", [
    ("'max_tokens' is 1632, over this server's limit of 1024", 1632, 1024),
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
     "(1000 in the messages, 4000 in the completion).", 4000, 3096),
    ("This model's maximum context length is 2048 tokens; the prompt has 900 and max_tokens is 1632.", 1632, 1148),
    ("'messages' must be a list", 1632, None),
    ("'max_tokens' is 900, over this server's limit of 1024", 900, None),  # not the limit's fault
])
def test_token_limit_is_read_from_openai_style_errors(text: str, asked: int, limit) -> None:
    from kotune.model.openai_client import token_limit_from_error

    assert token_limit_from_error(text, asked) == limit
