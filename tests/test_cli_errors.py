"""Bad input is one ``error:`` line naming the file (and line), exit code 2, no
traceback, and no output file — complete or partial — left behind."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import pytest

from conftest import leftover_temp_files

GOOD_QA = (
    '{"instruction": "청년월세 지원 금액은 얼마인가요?", "output": "실제 납부하는 임대료 범위에서 월 최대 20만원을 지원합니다."}\n'
    '{"instruction": "지원 기간은 얼마나 되나요?", "output": "최장 12개월 동안 지원하며 평생 한 번만 받을 수 있습니다."}\n'
)


def _binary(path: Path) -> None:
    rnd = random.Random(7)
    path.write_bytes(b"PK\x03\x04\x00\x00" + bytes(rnd.randrange(256) for _ in range(4096)))


# name → (write the input into the folder, command before "-o OUT", what the error must mention)
Case = tuple[Callable[[Path], Path], list[str], list[str]]


def _file(name: str, data: bytes | str | None = None, maker: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        if maker:
            maker(path)
        elif data is not None:
            path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path
    return make


CASES: dict[str, Case] = {
    "empty file to prepare": (_file("빈문서.txt", b""), ["prepare"], ["빈문서.txt", "empty"]),
    "whitespace-only file to prepare": (_file("blank.md", "\n  \n\t\n"), ["prepare"], ["blank.md", "empty"]),
    "empty file to validate": (_file("empty.jsonl", b""), ["validate"], ["empty.jsonl", "empty"]),
    "binary file to prepare": (_file("x.txt", maker=_binary), ["prepare"], ["x.txt"]),
    "unknown extension to prepare": (_file("계획.xyz", "Ⅰ. 개요\n정부는 계획을 세운다.\n"), ["prepare"], ["계획.xyz", ".xyz"]),
    "csv without question/answer columns": (
        _file("상담.csv", "제목,본문\n계약금,계약금을 포기하면 계약을 해제할 수 있습니다.\n"),
        ["validate"], ["상담.csv", "question", "--map"]),
    "jsonl with a broken line 3": (
        _file("qa.jsonl", GOOD_QA + '{"instruction": "신청은 어디서 하나요?", "output": "복지로 누리집\n'
              '{"instruction": "누가 받을 수 있나요?", "output": "만 19세부터 34세까지의 무주택 청년입니다."}\n'),
        ["validate"], ["qa.jsonl line 3", "invalid JSON"]),
    "binary file to validate": (_file("qa.jsonl", maker=_binary), ["validate"], ["qa.jsonl"]),
    "chunks file that is not chunks to generate": (_file("chunks.jsonl", GOOD_QA), ["generate"], ["chunks.jsonl line 1", "not a chunk"]),
    "missing file to prepare": (_file("없는문서.txt"), ["prepare"], ["없는문서.txt", "no such file"]),
    "missing file to validate": (_file("missing.jsonl"), ["validate"], ["missing.jsonl", "no such file"]),
    "missing file to generate": (_file("missing_chunks.jsonl"), ["generate"], ["missing_chunks.jsonl", "no such file"]),
    "missing file to split": (_file("missing_clean.jsonl"), ["split"], ["missing_clean.jsonl", "no such file"]),
    "folder with no documents to prepare": (lambda d: (d / "docs").mkdir() or d / "docs", ["prepare"], ["docs", "no documents"]),
}


def _command(cmd: list[str], src: Path, folder: Path) -> tuple[list[str], list[Path]]:
    """The full argument list and every output path it names."""
    if cmd == ["split"]:
        outs = [folder / "train.jsonl", folder / "test.jsonl"]
        return ["split", str(src), "--train", str(outs[0]), "--test", str(outs[1])], outs
    out = folder / "out.jsonl"
    extra: list[str] = []
    if cmd == ["validate"]:
        extra = ["--report", str(folder / "report.json")]
        return [*cmd, str(src), "-o", str(out), *extra], [out, folder / "report.json"]
    return [*cmd, str(src), "-o", str(out)], [out]


def _assert_clean_failure(code: int, err: str, mentions: list[str], outs: list[Path], folder: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    for m in mentions:
        assert m in lines[0], (m, lines[0])
    assert "Traceback" not in err
    for out in outs:
        assert not out.exists(), out
    assert leftover_temp_files(folder) == []


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_no_output(tmp_path: Path, cli, case: str) -> None:
    make, cmd, mentions = CASES[case]
    src = make(tmp_path)
    args, outs = _command(cmd, src, tmp_path)

    res = cli(args)

    _assert_clean_failure(res.code, res.err, mentions, outs, tmp_path)
    assert res.out == ""
    assert not (tmp_path / "out.jsonl.journal").exists()


def test_one_bad_document_among_good_ones_writes_nothing(tmp_path: Path, cli, sample_doc: Path) -> None:
    bad = _file("x.txt", maker=_binary)(tmp_path)
    out = tmp_path / "chunks.jsonl"

    res = cli(["prepare", sample_doc, bad, "-o", out])

    _assert_clean_failure(res.code, res.err, ["x.txt"], [out], tmp_path)


def test_failed_rerun_keeps_the_previous_output_intact(tmp_path: Path, cli, sample_doc: Path) -> None:
    out = tmp_path / "chunks.jsonl"
    assert cli(["prepare", sample_doc, "-o", out]).code == 0
    before = out.read_bytes()

    res = cli(["prepare", _file("empty.txt", b"")(tmp_path), "-o", out])

    assert res.code == 2
    assert out.read_bytes() == before
    assert leftover_temp_files(tmp_path) == []


def test_output_path_that_is_a_folder_is_an_error(tmp_path: Path, cli, sample_doc: Path) -> None:
    (tmp_path / "out").mkdir()
    res = cli(["prepare", sample_doc, "-o", tmp_path / "out"])
    assert res.code == 2
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error: ") and "out" in res.err_lines[0]
    assert leftover_temp_files(tmp_path) == []


def test_brackets_in_a_file_name_are_printed_as_is(tmp_path: Path, cli) -> None:
    src = tmp_path / "[red]보고서[/red].txt"
    res = cli(["prepare", src, "-o", tmp_path / "out.jsonl"])
    assert res.code == 2
    assert res.err_lines == [f"error: {src}: no such file"]


def test_usage_errors_exit_2_without_traceback(cli) -> None:
    res = cli(["prepare"])
    assert res.code == 2 and "Missing argument" in res.err and "Traceback" not in res.err
    res = cli(["validate", "qa.jsonl", "-o", "clean.jsonl", "--min-grounding", "2"])
    assert res.code == 2 and "--min-grounding" in res.err


# ------------------------------------------------------------------ real processes
@pytest.mark.parametrize("case", ["binary file to prepare", "jsonl with a broken line 3"])
def test_real_process_prints_one_error_line(tmp_path: Path, run_cli, case: str) -> None:
    make, cmd, mentions = CASES[case]
    args, outs = _command(cmd, make(tmp_path), tmp_path)

    code, out, err = run_cli(args)

    _assert_clean_failure(code, err, mentions, outs, tmp_path)
    assert out == ""


def test_debug_shows_the_traceback(tmp_path: Path, run_cli) -> None:
    src = _file("x.txt", maker=_binary)(tmp_path)
    out = tmp_path / "out.jsonl"

    before = run_cli(["--debug", "prepare", src, "-o", out])
    after = run_cli(["prepare", src, "-o", out, "--debug"])

    for code, _, err in (before, after):
        assert code != 0
        assert "Traceback (most recent call last)" in err
        assert "KotuneError" in err and "x.txt" in err
    assert not out.exists()
    assert leftover_temp_files(tmp_path) == []


def test_kotune_debug_env_var_also_shows_traceback(tmp_path: Path, cli, monkeypatch) -> None:
    from kotune.errors import KotuneError

    monkeypatch.setenv("KOTUNE_DEBUG", "1")
    with pytest.raises(KotuneError, match="no such file"):
        from kotune.cli import main

        main(["validate", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")])
