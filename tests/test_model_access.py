"""The model-access layer (kotune.model.access): one way to open a model, uniform features.

- a killed ``kotune eval`` of a local model resumes from its journal: no answered question
  is generated again (counted);
- a run that is still training, failed or was killed is refused in one line by every
  command that answers with it, before anything loads;
- the one retrieval-to-context rule (kotune.model.retrieval.Retrieval).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, _subprocess_env, call_cli
from helpers.cli import one_error_line

QUESTIONS = [f"국가초고성능컴퓨팅 센터의 {i}번째 역할은 무엇인가요?" for i in range(1, 41)]


def _questions(tmp_path: Path) -> Path:
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"id": f"q{i:02d}", "question": t, "reference": "국가센터가 지원합니다."},
                                    ensure_ascii=False) + "\n" for i, t in enumerate(QUESTIONS)), encoding="utf-8")
    return q


def _journal_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line the kill cut off
    return rows


def test_a_killed_eval_of_a_local_model_resumes_without_asking_again(tiny_model, tmp_path, monkeypatch):
    from kotune.eval.evaluate import evaluate, load_questions
    from kotune.options import EvalOptions
    from kotune.model.generation import Generator

    q, out = _questions(tmp_path), tmp_path / "ev"
    journal = out / ".answers-builtin_tiny-ko.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "kotune", "eval", "--questions", str(q), "--models", "builtin:tiny-ko",
                             "-o", str(out), "--batch-size", "2", "--max-new-tokens", "48"],
                            cwd=REPO, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(_journal_lines(journal)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "eval finished before it could be killed"
    answered = _journal_lines(journal)
    assert 4 <= len(answered) < len(QUESTIONS)
    assert not (out / "responses.jsonl").exists()

    asked: list[str] = []
    real = Generator.generate

    def counting(self, prompts, settings=None, batch_size=16):
        asked.extend(prompts)
        return real(self, prompts, settings, batch_size=batch_size)

    monkeypatch.setattr(Generator, "generate", counting)
    metrics = evaluate(load_questions(q), [("builtin:tiny-ko", "builtin:tiny-ko")], out,
                       options=EvalOptions(batch_size=2, max_new_tokens=48), log=lambda *_: None)
    assert len(asked) == len(QUESTIONS) - len(answered)  # no answered question asked again
    assert len(set(asked)) == len(asked)
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(responses) == len(QUESTIONS) and metrics["questions"] == len(QUESTIONS)
    journaled_texts = {r["text"] for r in answered}
    final_texts = [r["answers"]["builtin:tiny-ko"]["text"] for r in responses]
    assert journaled_texts <= set(final_texts)  # the journaled answers are the ones reported
    assert not journal.exists()  # every answer is in responses.jsonl now


@pytest.mark.parametrize("status", ["running", "failed"])
@pytest.mark.parametrize("command", ["chat", "eval"])
def test_a_run_that_has_not_finished_is_refused_in_one_line(command, status, tiny_model, tmp_path):
    import shutil

    from kotune.io import write_json
    from kotune.model.templates import get_template

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    write_json(run / "kotune.json", {"status": status, "base_model": "builtin:tiny-ko", "method": "full",
                                     "template": get_template("kotune").to_dict(), "eos_token_ids": [0]})
    if command == "chat":
        res = call_cli(["chat", "--model", run])
    else:
        res = call_cli(["eval", "--questions", _questions(tmp_path), "--models", f"base=builtin:tiny-ko", run,
                        "-o", tmp_path / "ev"])
    one_error_line(res, "training has not finished", f"status '{status}'")
    assert not (tmp_path / "ev").exists()


def test_one_retrieval_rule_for_every_consumer() -> None:
    from kotune.model.retrieval import Retrieval, Retriever

    chunks = [{"chunk_id": "c1", "text": "국가센터는 초고성능컴퓨팅 자원을 운영합니다.", "metadata": {"breadcrumbs": "기관별 역할"}},
              {"chunk_id": "c2", "text": "총사업비는 5년간 4,500억 원입니다.", "metadata": {}}]
    r = Retrieval(retriever=Retriever(chunks), k=3)
    asked = r.passages("총사업비는 얼마인가요?")
    assert asked.chunk_ids[0] == "c2" and asked.text.startswith("[문서 1]\n총사업비는")
    assert "[문서 2] (기관별 역할)" not in asked.text or asked.chunk_ids == ["c2", "c1"]
    own = r.passages("총사업비는 얼마인가요?", context="[문서 1]\n주어진 문맥")
    assert own.text == "[문서 1]\n주어진 문맥" and own.chunk_ids == []
    with_input = r.passages("총사업비는 얼마인가요?", input="[문서 1]\n학습 때의 지문")
    assert with_input.chunk_ids[0] == "c2"  # with a chunks file, retrieved from the question alone, as in use
    assert Retrieval().passages("총사업비는 얼마인가요?", input="[문서 1]\n지문").text == ""  # the input stays
    assert Retrieval().passages("총사업비는 얼마인가요?").text == ""  # no chunks file: no context
    assert r.passages("오늘 날씨").text == ""  # no chunk shares a word
