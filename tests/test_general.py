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


def test_the_benchmark_runs_on_an_endpoint_model_with_the_local_models_scores(questions, tmp_path, tiny_model) -> None:
    # kotune serve answers lm-eval's scoring requests (echo + logprobs over token ids from its
    # /tokenize): the same model local and served gets the same accuracy.
    from conftest import serve_process

    tasks = _task(tmp_path / "tasks")
    with serve_process(["--model", "builtin:tiny-ko", "--access-log"], tmp_path / "serve.log") as (url, _):
        res = call_cli(["eval", "--questions", questions, "--models", "base=builtin:tiny-ko",
                        f"served=openai:{url}/v1#builtin:tiny-ko?mode=completions", "-o", tmp_path / "ev",
                        "--max-new-tokens", "8", "--benchmark", "ko_tiny", "--benchmark-data", tasks])
    assert res.code == 0, res.err
    general = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["general_ability"]
    scores = general["tasks"]["ko_tiny"]["models"]
    assert set(scores) == {"base", "served"} and scores["served"] == scores["base"] and not general["not_run"]
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "POST /v1/completions" in log and "POST /tokenize" in log


def test_scoring_returns_each_prompt_tokens_log_probability(tiny_model) -> None:
    import math

    from fastapi.testclient import TestClient

    from kotune.serve.engine import Engine
    from kotune.serve.server import create_app

    engine = Engine("builtin:tiny-ko", log=lambda *_: None)
    with TestClient(create_app(engine)) as client:
        ids = client.post("/tokenize", json={"prompt": "대한민국의 수도는 서울", "add_special_tokens": False}).json()["tokens"]
        body = client.post("/v1/completions", json={"model": "builtin:tiny-ko", "prompt": [ids], "echo": True,
                                                     "logprobs": 2, "max_tokens": 1}).json()
        bad = client.post("/v1/completions", json={"model": "builtin:tiny-ko", "prompt": "x", "echo": True,
                                                    "logprobs": 1, "max_tokens": 5})
        info = client.get("/tokenizer_info").json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:]) and all(len(t) <= 2 for t in lp["top_logprobs"][1:])
    # Each logged probability is the model's own: recompute one position.
    import torch

    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    want = torch.log_softmax(logits[2], -1)[ids[3]].item()
    assert math.isclose(lp["token_logprobs"][3], want, abs_tol=1e-4)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    assert info["eos_token"] == engine.served["builtin:tiny-ko"].generator.tokenizer.eos_token
