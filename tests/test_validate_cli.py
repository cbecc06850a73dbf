"""kotune validate end to end on generated data: report, clean file, merging files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import leftover_temp_files, read_jsonl


def test_validate_generated_data_with_chunks_and_report(tmp_path: Path, cli, sample_chunks: Path, sample_qa: Path) -> None:
    clean, report = tmp_path / "clean.jsonl", tmp_path / "validation.json"

    res = cli(["validate", sample_qa, "--chunks", sample_chunks, "-o", clean, "--report", report])

    assert res.code == 0, res.err
    rep = json.loads(report.read_text(encoding="utf-8"))
    qa = read_jsonl(sample_qa)
    kept = read_jsonl(clean)
    assert {"total", "kept", "dropped_by_reason", "kept_by_category"} <= set(rep)
    assert rep["total"] == len(qa)
    assert rep["kept"] == len(kept) >= 50
    assert rep["total"] - rep["kept"] == sum(rep["dropped_by_reason"].values())
    assert {cat: v["count"] for cat, v in rep["kept_by_category"].items()} == \
           {cat: sum(r["category"] == cat for r in kept) for cat in {r["category"] for r in kept}}
    # grounding was checked against the chunks: every rule answer is the chunk's own text
    assert rep["grounding_checked"] == rep["total"] - sum(v for k, v in rep["dropped_by_reason"].items()
                                                          if k in ("missing_fields", "too_short", "incomplete", "evasive"))
    assert rep["dropped_by_reason"]["ungrounded"] == 0
    # the clean file holds exactly the kept records, in input order, with their fields
    qa_by_id = {r["id"]: r for r in qa}
    assert [r["id"] for r in kept] == [r["id"] for r in qa if r["id"] in {k["id"] for k in kept}]
    for r in kept:
        assert {k: r[k] for k in ("instruction", "output", "category", "chunk_id", "source")} == \
               {k: qa_by_id[r["id"]][k] for k in ("instruction", "output", "category", "chunk_id", "source")}
        assert not {"_file", "_line"} & set(r)
    # the tables on stderr name what was dropped and why
    assert "검증 결과" in res.err and "duplicate" in res.err
    assert leftover_temp_files(tmp_path) == []


def test_merging_two_files_counts_cross_file_duplicates(tmp_path: Path, cli, sample_qa: Path) -> None:
    qa = read_jsonl(sample_qa)
    extra = tmp_path / "reviewed.csv"  # the same ten QA pairs, re-exported by a reviewer as CSV
    with open(extra, "w", encoding="cp949", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "category", "difficulty"])
        for r in qa[:10]:
            w.writerow([r["instruction"], r["output"], r["category"], r["difficulty"]])
    alone_report, merged_report = tmp_path / "alone.json", tmp_path / "merged.json"

    alone = cli(["validate", sample_qa, "-o", tmp_path / "alone.jsonl", "--report", alone_report])
    merged = cli(["validate", sample_qa, extra, "-o", tmp_path / "merged.jsonl", "--report", merged_report])

    assert alone.code == merged.code == 0, merged.err
    a = json.loads(alone_report.read_text(encoding="utf-8"))
    m = json.loads(merged_report.read_text(encoding="utf-8"))
    assert m["total"] == a["total"] + 10
    assert m["kept"] == a["kept"]
    assert m["dropped_by_reason"]["duplicate"] == a["dropped_by_reason"]["duplicate"] + 10
    assert m["by_file"][str(extra)] == {"total": 10, "kept": 0, "dropped": {"duplicate": 10}}
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "alone.jsonl").read_bytes()


def test_nothing_left_is_an_error_and_writes_nothing(tmp_path: Path, cli) -> None:
    qa = tmp_path / "qa.jsonl"
    rows = [{"instruction": "보험료 납입 유예 기간은 얼마인가요?", "output": "해당 내용은 약관에 명시되어 있지 않습니다."},
            {"instruction": "해지환급금은 언제 받나요?", "output": "짧음"}]
    qa.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "clean.jsonl"

    res = cli(["validate", qa, "-o", out])

    assert res.code == 2
    assert [line for line in res.err_lines if line.startswith("error:")] == \
           ["error: no records left after validation (of 2); see the table above"]
    assert not out.exists()


CIVIL = Path(__file__).resolve().parents[1] / "recipes" / "data" / "civil-law" / "civil_law_qa.csv"


def test_categories_keep_only_the_chosen_ones(tmp_path: Path, cli) -> None:
    """The civil-law seed's `--categories 전세사기 부동산물권`: comma-separated or repeated."""
    out, report = tmp_path / "clean.jsonl", tmp_path / "report.json"

    res = cli(["validate", CIVIL, "-o", out, "--report", report, "--no-grounding",
               "--categories", "전세사기,부동산물권", "--categories", " 전세사기 "])

    assert res.code == 0, res.err
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert kept and {r["category"] for r in kept} == {"전세사기", "부동산물권"}
    rep = json.loads(report.read_text(encoding="utf-8"))
    others = sum(1 for line in CIVIL.read_text(encoding="utf-8").splitlines()[1:]
                 if line.rsplit(",", 2)[1] not in ("전세사기", "부동산물권"))
    assert rep["dropped_by_reason"]["category_not_selected"] == others > 0
    assert rep["kept"] + rep["dropped"] == rep["total"] == len(kept) + others
    assert "category_not_selected" in res.err  # the table shows the row only when categories were asked for


def test_unknown_category_is_one_error_line_naming_the_categories_there(tmp_path: Path, cli) -> None:
    out = tmp_path / "clean.jsonl"

    res = cli(["validate", CIVIL, "-o", out, "--categories", "전세사귀,상속"])

    assert res.code == 2
    errors = [line for line in res.err_lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --categories: no record has category '전세사귀'; the data has ")
    assert "전세사기 (" in errors[0] and "상속 (" in errors[0]
    assert "Traceback" not in res.err and not out.exists()


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_near_dup_threshold_has_one_range_in_cli_and_recipe(tmp_path: Path, cli, sample_qa: Path, value: str) -> None:
    """(0, 1] everywhere; the CLI used to accept 0 ([0, 1]) that validate then refused."""
    res = cli(["validate", sample_qa, "-o", tmp_path / "clean.jsonl", "--near-dup-threshold", value])
    assert res.code == 2 and len(res.err_lines) == 1 and "(0, 1]" in res.err_lines[0], res.err
    assert not (tmp_path / "clean.jsonl").exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nsteps:\n  validate:\n    data: [{sample_qa}]\n    near_dup_threshold: {value}\n",
                      encoding="utf-8")
    res = cli(["run", recipe, "-o", tmp_path / "out"])
    assert res.code == 2 and "near_dup_threshold" in res.err_lines[0] and not (tmp_path / "out").exists()
