"""`kotune eval` / `score` / `chat`: files, base-vs-tuned outcome, RAG ids, judge, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO, _subprocess_env, call_cli, read_jsonl, run_kotune
from helpers.cli import one_error_line

EVAL_FILES = ("responses.jsonl", "metrics.json", "report.md", "report.html")


@pytest.fixture(scope="module")
def train_questions(sample_split, tmp_path_factory):
    """Training-distribution questions: the first 40 training records with their references and keywords."""
    rows = read_jsonl(sample_split[0])[:40]
    path = tmp_path_factory.mktemp("q") / "train_questions.jsonl"
    path.write_text("".join(json.dumps({"question": r["instruction"], "reference": r["output"],
                                        "keywords": r.get("keywords", []), "category": r["category"]},
                                       ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_dir(trained_run, train_questions, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "ev"
    t0 = time.monotonic()
    res = call_cli(["eval", "--questions", train_questions, "--models", "builtin:tiny-ko", trained_run,
                    "-o", out, "--max-new-tokens", "128"])
    assert res.code == 0, res.err
    (out.parent / "wall.txt").write_text(f"{time.monotonic() - t0:.1f}")
    return out


def test_eval_writes_all_four_files(eval_dir):
    for name in EVAL_FILES:
        assert (eval_dir / name).is_file() and (eval_dir / name).stat().st_size > 0, name
    html = (eval_dir / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and "국가" in html


def test_tuned_beats_base_on_training_distribution(eval_dir):
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    base, tuned = (metrics["models"][k]["overall"] for k in ("tiny-ko", "out")) if "tiny-ko" in metrics["models"] \
        else list(m["overall"] for m in metrics["models"].values())
    assert tuned["rougeL"] > base["rougeL"]
    assert tuned["keyword_coverage"] > base["keyword_coverage"]
    assert tuned["eos_rate"] > base["eos_rate"]
    assert metrics["tokenization"] == "kiwi-morphemes"
    for m in metrics["models"].values():
        assert set(m["by_category"]) >= {"정의", "수치"}


def test_responses_hold_every_answer_with_finish_reason(eval_dir, train_questions):
    rows = read_jsonl(eval_dir / "responses.jsonl")
    assert len(rows) == len(read_jsonl(train_questions))
    for r in rows:
        assert len(r["answers"]) == 2
        for a in r["answers"].values():
            assert a["finish_reason"] in ("eos", "stop", "length")
            assert isinstance(a["errors"], list)


def test_eval_with_context_records_retrieved_chunks(trained_run, sample_chunks, tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("국가센터란 무엇인가요?\n총사업비는 얼마인가요?\n", encoding="utf-8")
    out = tmp_path / "ev"
    res = call_cli(["eval", "--questions", q, "--models", trained_run, "-o", out, "--context", sample_chunks,
                    "--max-new-tokens", "32", "--top-k", "2"])
    assert res.code == 0, res.err
    chunk_ids = {c["chunk_id"] for c in read_jsonl(sample_chunks)}
    for r in read_jsonl(out / "responses.jsonl"):
        (a,) = r["answers"].values()
        # BM25 returns only chunks that share a morpheme with the question, at most top-k.
        assert 1 <= len(a["retrieved"]) <= 2 and set(a["retrieved"]) <= chunk_ids


def test_score_skips_reference_metrics_without_references(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"answer": "국가센터는 자원을 운영한다.", "keywords": ["국가센터"], "category": "기관", "finish_reason": "eos"},
        {"answer": "정부는 2030년까지 600페타플롭스를 확보한다.", "keywords": "2030년,600페타플롭스", "category": "수치", "finish_reason": "length"},
    ]), encoding="utf-8")
    res = call_cli(["score", preds, "-o", tmp_path / "scores.json"])
    assert res.code == 0, res.err
    assert "rougeL skipped" in res.err
    scores = json.loads((tmp_path / "scores.json").read_text(encoding="utf-8"))
    overall = scores["models"]["model"]["overall"]
    assert overall["rougeL"] is None and overall["keyword_coverage"] == 1.0 and overall["eos_rate"] == 0.5


def test_score_with_references_matches_identical_strings(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"answer": "국가센터는 자원을 운영한다.", "reference": "국가센터는 자원을 운영한다."},
                                ensure_ascii=False) + "\n", encoding="utf-8")
    assert call_cli(["score", preds, "-o", tmp_path / "s.json"]).code == 0
    overall = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["models"]["model"]["overall"]
    assert overall["rougeL"] == 100 and overall["rouge1"] == 100


def test_questions_file_without_questions(tmp_path):
    q = tmp_path / "empty_q.txt"
    q.write_text("\n# 주석만 있습니다\n\n", encoding="utf-8")
    res = call_cli(["eval", "--questions", q, "--models", "builtin:tiny-ko", "-o", tmp_path / "ev"])
    one_error_line(res, "empty_q.txt", "no questions")
    assert not (tmp_path / "ev").exists()


def test_model_path_that_does_not_exist(tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("국가센터란?\n", encoding="utf-8")
    res = call_cli(["eval", "--questions", q, "--models", "./no/such/run", "-o", tmp_path / "ev"])
    one_error_line(res, "no/such/run")
    assert not (tmp_path / "ev").exists()


def test_predictions_without_answers(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"reference": "답"}\n', encoding="utf-8")
    one_error_line(call_cli(["score", preds, "-o", tmp_path / "s.json"]), "p.jsonl", "line 1")


class _Judge(BaseHTTPRequestHandler):
    """A fake judge that always prefers the longer answer — and records the prompts it saw."""

    seen: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        _Judge.seen.append(prompt)
        a = prompt.split("[답변 A]\n", 1)[1].split("\n\n[답변 B]", 1)[0]
        b = prompt.split("[답변 B]\n", 1)[1]
        verdict = "A" if len(a) > len(b.strip()) else "B"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_judge_asks_both_orders(trained_run, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        q = tmp_path / "q.txt"
        q.write_text("국가센터란 무엇인가요?\n총사업비는 얼마인가요?\n", encoding="utf-8")
        _Judge.seen.clear()
        res = call_cli(["eval", "--questions", q, "--models", "builtin:tiny-ko", trained_run, "-o", tmp_path / "ev",
                        "--max-new-tokens", "48", "--judge", f"http://127.0.0.1:{server.server_port}/v1", "--judge-model", "fake"])
        assert res.code == 0, res.err
    finally:
        server.shutdown()
    assert len(_Judge.seen) == 4  # 2 questions × both orders
    judge = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["judge"]
    (pair,) = judge["pairs"].values()
    # The base rambles to max_new_tokens, so a length-loving judge prefers it in both orders.
    assert pair["loss_rate"] == 1.0 and pair["order_disagreement"] == 0.0
    assert all(len(q["orders"]) == 2 for q in pair["per_question"])


def test_chat_streams_hangul_and_handles_commands(trained_run):
    proc = subprocess.run([sys.executable, "-m", "kotune", "chat", "--model", str(trained_run), "--max-new-tokens", "40"],
                          input="국가센터란 무엇인가요?\n/settings\n/context on\n/reset\n/exit\n", cwd=REPO,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[eos," in out or "[length," in out
    assert "template=kotune" in out and "(no --context chunks were given)" in out and "(conversation reset)" in out
    assert "\ufffd" not in out


def test_sampled_answers_repeat_with_the_same_seed(trained_run, train_questions):
    # The insurance seed's settings sample (temperature 0.1, top_p 0.9): --seed makes a run reproducible.
    from kotune.model.answers import GenerationSettings
    from kotune.model.generation import Generator

    gen = Generator(str(trained_run), log=lambda *_: None)
    prompts = [gen.prompt(r["question"]) for r in read_jsonl(train_questions)[:4]]

    def answers(seed):
        s = GenerationSettings(max_new_tokens=24, temperature=1.5, top_p=0.95, seed=seed)
        return [a.text for a in gen.generate(prompts, s)]

    assert answers(1) == answers(1)
    assert answers(1) != answers(2)


def test_base_gets_the_compared_runs_whole_template_byte_for_byte(tiny_model, tmp_path):
    """civil-law style: chat template with per-category system prompts. Before, a plain base got
    only the template's name and answered without the category's system prompt."""
    import shutil

    from kotune.io import write_json
    from kotune.model.templates import get_template

    prompts = {"임대차": "당신은 주택 임대차 분쟁을 쉽게 설명하는 민법 상담 도우미입니다.",
               "상속": "당신은 상속 순위와 상속포기를 설명하는 민법 상담 도우미입니다."}
    run = tmp_path / "run"  # a finished full fine-tune whose weights are tiny-ko's
    shutil.copytree(tiny_model, run)
    write_json(run / "kotune.json", {"status": "complete", "base_model": "builtin:tiny-ko", "method": "full",
                                     "template": get_template("chat", prompts).to_dict(), "eos_token_ids": [0]})
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "category": c}, ensure_ascii=False) + "\n" for q, c in
                                 [("전입신고는 언제 하나요?", "임대차"), ("상속포기는 어디서 하나요?", "상속")]),
                         encoding="utf-8")
    res = call_cli(["eval", "--questions", questions, "--models", "base=builtin:tiny-ko", f"tuned={run}",
                    "-o", tmp_path / "ev", "--max-new-tokens", "4"])
    assert res.code == 0, res.err
    for row in read_jsonl(tmp_path / "ev" / "responses.jsonl"):
        base, tuned = row["answers"]["base"]["prompt"], row["answers"]["tuned"]["prompt"]
        assert base == tuned and prompts[row["category"]] in base


@pytest.mark.parametrize("command", ["chat", "eval", "serve"])
def test_another_template_for_a_tuned_run_is_refused_everywhere(command, trained_run, tmp_path):
    """One rule (resolver.decide_template): a run answers in its training template; before,
    `kotune chat --template` silently overrode it."""
    args = {"chat": ["chat", "--model", trained_run, "--template", "alpaca"],
            "eval": ["eval", "--questions", REPO / "recipes" / "data" / "civil-law" / "civil_law_qa.csv",
                     "--models", trained_run, "--template", "alpaca", "-o", tmp_path / "ev"],
            "serve": ["serve", "--model", trained_run, "--template", "alpaca", "--port", "9"]}[command]
    # serve as a real process with a timeout: were the override accepted, it would start serving.
    res = run_kotune(args, timeout=180) if command == "serve" else call_cli(args)
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert "trained with template 'kotune'" in res.err_lines[0] and "drop --template" in res.err_lines[0]
    assert not (tmp_path / "ev").exists()


def test_trust_remote_code_of_a_run_reaches_every_later_load(tiny_model, tmp_path, monkeypatch):
    """A run trained with --trust-remote-code is loaded with it by eval/chat (Generator), serve
    and doctor; before, only training had it. All of them load through kotune.model.resolve."""
    import shutil

    import kotune.train.doctor
    import kotune.model.resolve
    from kotune.train.doctor import DoctorSetup, diagnose
    from kotune.serve.engine import Engine
    from kotune.model.generation import Generator
    from kotune.io import write_json
    from kotune.model.templates import get_template

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    write_json(run / "kotune.json", {"status": "complete", "base_model": "builtin:tiny-ko", "method": "full",
                                     "template": get_template("kotune").to_dict(), "eos_token_ids": [0],
                                     "config": {"trust_remote_code": True}})
    seen = []
    for fn in ("load_causal_lm", "load_tokenizer"):
        real = getattr(kotune.model.resolve, fn)
        monkeypatch.setattr(kotune.model.resolve, fn, lambda *a, _real=real, _fn=fn, **k: (
            seen.append((_fn, k.get("trust_remote_code", a[1] if len(a) > 1 else False))), _real(*a, **k))[1])
    Generator(str(run), log=lambda *_: None)
    Engine(str(run), log=lambda *_: None)
    real_meta = kotune.train.doctor._meta_model
    monkeypatch.setattr(kotune.train.doctor, "_meta_model", lambda path, trust=False: (seen.append(("meta", trust)),
                                                                                 real_meta(path, trust))[1])
    diagnose(DoctorSetup(run_dir=str(run)), log=lambda *_: None)
    assert [name for name, _ in seen].count("load_tokenizer") == 3 and ("meta", True) in seen
    assert len(seen) >= 5 and all(flag is True for _, flag in seen), seen
