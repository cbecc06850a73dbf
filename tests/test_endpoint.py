"""Endpoint models in kotune eval (openai:URL#MODEL): the same prompts and answers as the local
model, the mode recorded, journaled answers that survive kill -9, and one error line for an
endpoint that cannot answer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, _subprocess_env, call_cli, serve_process

BASE = "builtin:tiny-ko"


class StubOpenAI:
    """A chat-completions server (not kotune: announces nothing) that answers "답변 N." and
    counts the requests it received; ``latency`` slows each answer."""

    def __init__(self, *, latency: float = 0.0, key: str | None = None, models: tuple[str, ...] = ("stub",)):
        self.latency, self.key, self.models = latency, key, models
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, obj) -> None:
                data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if stub.key and self.headers.get("Authorization") != f"Bearer {stub.key}":
                    self._send(401, {"error": {"message": "bad key"}})
                    return False
                return True

            def do_GET(self) -> None:
                if self._authorized():
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in stub.models]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._authorized():
                    return
                with stub.lock:
                    stub.requests.append({"path": self.path, **body})
                    n = len(stub.requests)
                if stub.latency:
                    time.sleep(stub.latency)
                if body.get("stream"):  # server-sent events, one piece per word, usage in the last event
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    events = [{"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                              for piece in ("답변 ", f"{n}.")]
                    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                    for e in events:
                        self.wfile.write(b"data: " + json.dumps(e, ensure_ascii=False).encode("utf-8") + b"\n\n")
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(200, {"id": f"c{n}", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": f"답변 {n}."}}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "StubOpenAI":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def questions(sample_split, tmp_path_factory) -> Path:
    rows = [json.loads(line) for line in Path(sample_split[1]).read_text(encoding="utf-8").splitlines()][:6]
    path = tmp_path_factory.mktemp("q") / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": r["instruction"], "reference": r["output"]}, ensure_ascii=False)
                            + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_served_model_answers_and_scores_exactly_as_the_local_one(tiny_model, questions, tmp_path) -> None:
    with serve_process(["--model", BASE], tmp_path / "serve.log") as (url, _):
        res = call_cli(["eval", "--questions", questions, "--models", f"base={BASE}", f"served=openai:{url}/v1#{BASE}",
                        "-o", tmp_path / "ev", "--max-new-tokens", "32"])
    assert res.code == 0, res.err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    local, served = metrics["models"]["base"], metrics["models"]["served"]
    assert local["mode"] == "local" and served["mode"] == "completions"
    assert served["endpoint"]["template"] == "kotune" and served["endpoint"]["requests"] == 6
    assert served["overall"] == local["overall"]
    rows = [json.loads(line) for line in (tmp_path / "ev" / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in rows:
        a, b = r["answers"]["base"], r["answers"]["served"]
        assert (a["text"], a["finish_reason"], a["prompt"]) == (b["text"], b["finish_reason"], b["prompt"])
    html = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert "served: completions" in html and "base: local" in html
    assert not list((tmp_path / "ev").glob(".answers-*"))  # journals go once the outputs are written


def test_a_chat_endpoint_gets_the_templates_messages_and_records_chat(questions, tmp_path) -> None:
    with StubOpenAI() as stub:
        res = call_cli(["eval", "--questions", questions, "--models", f"hosted=openai:{stub.url}#stub",
                        "-o", tmp_path / "ev", "--template", "chat", "--workers", "3"])
        sent = list(stub.requests)
    assert res.code == 0, res.err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["models"]["hosted"]["mode"] == "chat"
    assert metrics["models"]["hosted"]["overall"]["eos_rate"] == 1.0  # finish_reason "stop" without stop strings
    assert len(sent) == 6 and all(r["path"] == "/v1/chat/completions" for r in sent)
    assert all(r["messages"][0]["role"] == "system" and r["messages"][-1]["role"] == "user" for r in sent)


def test_a_killed_endpoint_eval_resumes_without_asking_again(questions, tmp_path) -> None:
    many = tmp_path / "many.jsonl"
    rows = questions.read_text(encoding="utf-8").splitlines()
    many.write_text("".join(json.dumps({**json.loads(rows[i % len(rows)]), "id": f"q{i}",
                                        "question": json.loads(rows[i % len(rows)])["question"] + f" ({i})"},
                                       ensure_ascii=False) + "\n" for i in range(40)), encoding="utf-8")
    out = tmp_path / "ev"
    journal = out / ".answers-hosted.jsonl"
    with StubOpenAI(latency=0.05) as stub:
        argv = [sys.executable, "-m", "kotune", "eval", "--questions", str(many), "--models",
                f"hosted=openai:{stub.url}#stub", "-o", str(out), "--workers", "2"]
        proc = subprocess.Popen(argv, cwd=REPO, env=_subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and not (journal.exists() and len(journal.read_text().splitlines()) >= 10):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = len([line for line in journal.read_text(encoding="utf-8").splitlines() if line.endswith("}")])
        first = len(stub.requests)
        assert 10 <= answered < 40 and not (out / "metrics.json").exists()
        res = call_cli(["eval", "--questions", many, "--models", f"hosted=openai:{stub.url}#stub", "-o", out])
        assert res.code == 0, res.err
        asked_again = len(stub.requests) - first
    assert asked_again == 40 - answered  # only the missing answers were asked
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["models"]["hosted"]["endpoint"]["requests"] == asked_again
    assert len((out / "responses.jsonl").read_text(encoding="utf-8").splitlines()) == 40


def test_kotune_chat_talks_to_an_endpoint_model(tmp_path) -> None:
    import io

    from kotune.serve.chat import run_chat

    from kotune.options import ChatOptions

    out = io.StringIO()
    with StubOpenAI() as stub:
        run_chat(ChatOptions(model=f"openai:{stub.url}#stub", template="chat"),
                 stdin=io.StringIO("첫 질문\n둘째 질문\n/exit\n"), stdout=out)
        sent = list(stub.requests)
    assert "답변 1." in out.getvalue() and "답변 2." in out.getvalue() and "[eos, 3 tokens]" in out.getvalue()
    assert [m["content"] for m in sent[1]["messages"][1:]] == ["첫 질문", "답변 1.", "둘째 질문"]  # multi-turn
    assert [r.get("stream") for r in sent] == [True, True]  # the answer streams, as a local model's does


def test_endpoint_model_arguments_parse_and_name_themselves() -> None:
    from kotune.model.endpoint import EndpointSpec
    from kotune.errors import KotuneError
    from kotune.eval.evaluate import parse_model_args

    s = EndpointSpec.parse("openai:http://h:8000/v1#org/m-8b@runs/x?mode=completions")
    assert (s.url, s.model, s.run, s.mode) == ("http://h:8000/v1", "org/m-8b", "runs/x", "completions")
    assert str(s) == "openai:http://h:8000/v1#org/m-8b@runs/x?mode=completions"
    assert EndpointSpec.parse("runs/x") is None
    assert parse_model_args(["openai:http://h/v1#policy?mode=chat", "t=openai:http://h/v1#p"]) == [
        ("policy", "openai:http://h/v1#policy?mode=chat"), ("t", "openai:http://h/v1#p")]
    for bad, words in (("openai:http://h/v1", "openai:URL#MODEL"), ("openai:h/v1#m", "http://"),
                       ("openai:http://h/v1#m?mode=fast", "unknown mode 'fast'")):
        with pytest.raises(KotuneError, match=re.escape(words)):
            EndpointSpec.parse(bad)


@pytest.mark.parametrize("case", ["unreachable", "unknown model", "wrong key"])
def test_an_endpoint_that_cannot_answer_is_one_error_line_before_any_generation(case, questions, tmp_path,
                                                                                 monkeypatch) -> None:
    monkeypatch.setenv("KT_EVAL_KEY", "wrong")
    with StubOpenAI(key="right") if case == "wrong key" else StubOpenAI() as stub:
        url = {"unreachable": "http://127.0.0.1:9/v1"}.get(case, stub.url)
        model = "nope" if case == "unknown model" else "stub"
        extra = ["--api-key-env", "KT_EVAL_KEY"] if case == "wrong key" else []
        res = call_cli(["eval", "--questions", questions, "--models", f"base={BASE}", f"remote=openai:{url}#{model}",
                        "-o", tmp_path / "ev", *extra])
        asked = len(stub.requests)
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith("error: model remote:"), line
    assert {"unreachable": "cannot be reached", "unknown model": "does not serve 'nope' (it serves: stub)",
            "wrong key": "HTTP 401"}[case] in line
    assert asked == 0 and not (tmp_path / "ev").exists()


def test_pairs_samples_an_endpoint_model(questions, tmp_path) -> None:
    # kotune pairs takes endpoint models too: each sample pass is one request per question, with its own seed.
    out = tmp_path / "prefs.jsonl"
    with StubOpenAI() as stub:
        res = call_cli(["pairs", "--model", f"openai:{stub.url}#stub", "--questions", questions, "--template", "chat",
                        "--samples", "2", "-o", out])
        sent = list(stub.requests)
    assert res.code == 0, res.err
    assert len(sent) == 2 * 6 and {r["seed"] for r in sent} == {42, 43}
    pairs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == 6 and all(p["rejected"].startswith("답변") and p["chosen_source"] == "reference" for p in pairs)
    assert all("정보 누락" in p["rejected_errors"] for p in pairs)
    assert not list(tmp_path.glob(".prefs.jsonl.samples-*"))
