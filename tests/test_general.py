"""kotune eval --benchmark: lm-evaluation-harness tasks on base and tuned (general ability,
forgetting), with a tiny local task made here (no hub), and one error line for what is missing."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from conftest import call_cli

ROWS = [{"question": "대한민국의 수도는?", "choices": ["서울", "부산", "대구"], "answer": 0},
        {"question": "1 더하기 1은?", "choices": ["셋", "둘", "넷"], "answer": 1},
        {"question": "하늘의 색은?", "choices": ["빨강", "초록", "파랑"], "answer": 2},
        {"question": "물이 어는 온도는?", "choices": ["0도", "50도", "100도"], "answer": 0}]


def _task(folder: Path, name: str = "ko_tiny", data: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = data or folder / f"{name}.jsonl"
    if not data.exists() and data.parent.exists():
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"질문: {{question}}\\n답:\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("q") / "q.jsonl"
    path.write_text(json.dumps({"question": "국가센터는 무엇을 하나요?", "reference": "국가센터는 연구를 지원합니다."},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def test_the_benchmark_table_shows_base_and_tuned(trained_run, questions, tmp_path) -> None:
    tasks = _task(tmp_path / "tasks")
    res = call_cli(["eval", "--questions", questions, "--models", "base=builtin:tiny-ko", f"tuned={trained_run}",
                    "-o", tmp_path / "ev", "--max-new-tokens", "8", "--benchmark", "ko_tiny",
                    "--benchmark-data", tasks, "--forgetting-margin", "0.0"])
    assert res.code == 0, res.err
    general = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["general_ability"]
    scores = general["tasks"]["ko_tiny"]["models"]
    assert general["tasks"]["ko_tiny"]["metric"] == "acc" and set(scores) == {"base", "tuned"}
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in scores.values())  # 4 questions
    assert general["baseline"] == "base"
    assert ("tuned ko_tiny" in general["flagged"]) == (scores["tuned"] < scores["base"])
    for name in ("report.md", "report.html"):
        text = (tmp_path / "ev" / name).read_text(encoding="utf-8")
        assert "General ability (lm-evaluation-harness)" in text and "Δ tuned" in text
        assert ("ko\\_tiny" if name.endswith(".md") else "ko_tiny") in text  # Markdown escapes the underscore
        assert f"{scores['base']:.4f}" in text and f"{scores['tuned']:.4f}" in text


@pytest.mark.parametrize("case", ["unknown task", "missing data", "missing extra"])
def test_what_is_missing_is_one_line(case, questions, tmp_path, monkeypatch) -> None:
    tasks = _task(tmp_path / "tasks", data=tmp_path / "nowhere" / "ko_tiny.jsonl" if case == "missing data" else None)
    if case == "missing extra":
        real = builtins.__import__
        monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                            if name.startswith("lm_eval") else real(name, *a, **k))
    task = "kmmlu_nope" if case == "unknown task" else "ko_tiny"
    res = call_cli(["eval", "--questions", questions, "--models", "base=builtin:tiny-ko", "-o", tmp_path / "ev",
                    "--max-new-tokens", "4", "--benchmark", task, "--benchmark-data", tasks])
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert {"unknown task": "unknown task 'kmmlu_nope'", "missing data": "--benchmark-data DIR",
            "missing extra": "pip install 'kotune[bench]'"}[case] in res.err_lines[0]
