"""kotune studio without a browser: the path gate on every parameter that takes a path,
the token, the Host and request checks, the launch form's errors (the CLI's own line),
statuses read from a run's files, and records rendered as the model sees them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from kotune.studio.app import create_app, token_for
from tests.conftest import REPO, call_cli

SECRET = "outside-secret-0451"
HEADERS = {"X-Kotune-Studio": "1"}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A ROOT with a recipe, a recipe output (run.json, chunks, an eval) and, beside ROOT,
    files that must never be read through the studio."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET, encoding="utf-8")
    (outside / "chunks.jsonl").write_text(json.dumps({"chunk_id": "c1", "text": SECRET}) + "\n", encoding="utf-8")
    (outside / "evil.yaml").write_text((REPO / "recipes" / "policy-qa.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (outside / "run.json").write_text(json.dumps({"steps": {}, "name": SECRET}), encoding="utf-8")
    (outside / "metrics.json").write_text(json.dumps({"models": {SECRET: {}}}), encoding="utf-8")
    (outside / "responses.jsonl").write_text("", encoding="utf-8")
    r = tmp_path / "root"
    (r / "recipes" / "data").mkdir(parents=True)
    (r / "recipes" / "policy-qa.yaml").write_text((REPO / "recipes" / "policy-qa.yaml").read_text(encoding="utf-8"),
                                                  encoding="utf-8")
    (r / "recipes" / "data" / "policy").mkdir()
    (r / "recipes" / "data" / "policy" / "policy_plan.txt").write_text(
        (REPO / "recipes" / "data" / "policy" / "policy_plan.txt").read_text(encoding="utf-8"), encoding="utf-8")
    out = r / "runs" / "a"
    (out / "eval").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"name": "a", "steps_planned": ["prepare", "train"], "pid": 2 ** 22 + 7,
                                              "steps": {"prepare": {"status": "done", "seconds": 1.0},
                                                        "train": {"status": "started"}}}), encoding="utf-8")
    (out / "chunks.jsonl").write_text(json.dumps({"chunk_id": "c1", "text": "청크 본문"}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (out / "eval" / "metrics.json").write_text(json.dumps({"models": {"base": {}, "tuned": {}}}), encoding="utf-8")
    (out / "eval" / "responses.jsonl").write_text("", encoding="utf-8")
    (r / "link").symlink_to(outside)  # a symbolic link inside ROOT pointing out of it
    return r


def _client(root: Path, **kw) -> TestClient:
    return TestClient(create_app(root, **kw), base_url="http://127.0.0.1")


ESCAPES = ["../outside/secret.txt", "../outside", "/etc", "link", "link/secret.txt", "runs/../../outside",
           "runs/a/../../../outside", "~/x", "..", "%2e%2e/outside"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_no_path_parameter_reads_outside_root(root: Path, escape: str) -> None:
    c = _client(root)
    gets = [f"/run?path={escape}", f"/data?path={escape}", "/data?path=runs/a&model=" + escape,
            f"/eval?path={escape}", f"/chunk?path={escape}/chunks.jsonl&id=c1", f"/chunk?path={escape}&id=c1",
            f"/api/run?path={escape}"]
    for url in gets:
        res = c.get(url)
        assert res.status_code in (403, 400), (url, res.status_code)
        assert SECRET not in res.text, url
    escape = unquote(escape)  # JSON bodies are not URL-decoded: "%2e%2e" there is a folder's name
    posts = [("/api/stop", {"path": escape}), ("/api/resume", {"path": escape}),
             ("/api/launch/check", {"recipe": escape}), ("/api/launch/check", {"recipe": f"{escape}/evil.yaml"}),
             ("/api/launch/check", {"recipe": "recipes/policy-qa.yaml", "output": escape}),
             ("/api/launch", {"recipe": f"{escape}/evil.yaml"}),
             ("/api/chat", {"model": f"run:{escape}", "question": "q"}),
             ("/api/chat", {"model": "base:builtin:tiny-ko", "question": "q", "context": f"{escape}/chunks.jsonl"})]
    for url, body in posts:
        res = c.post(url, json=body, headers=HEADERS)
        assert res.status_code in (403, 400), (url, body, res.status_code, res.text)
        assert SECRET not in res.text, (url, body)
    assert not (root.parent / "outside" / "runs").exists()


def test_path_outside_root_is_refused_with_one_line(root: Path) -> None:
    c = _client(root)
    res = c.get("/api/run?path=../outside")
    assert res.status_code == 403
    assert res.json() == {"error": "error: ../outside: path outside the studio root"}
    res = c.get("/run?path=link")
    assert res.status_code == 403 and "path outside the studio root" in res.text
    # Inside ROOT works, and the pages list only what is under ROOT.
    assert c.get("/api/run?path=runs/a").json()["name"] == "a"
    runs = c.get("/api/runs").json()["runs"]
    assert [r["path"] for r in runs] == ["runs/a"]


def test_token_is_required_off_loopback(root: Path) -> None:
    token = "s3cret-token"
    c = _client(root, token=token, allowed_hosts=None)
    assert c.get("/api/runs").status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    c.cookies.set("kotune_studio_token", "wrong")
    assert c.get("/runs").status_code == 401
    c.cookies.clear()
    assert c.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # The printed link: the token moves into a cookie and out of the URL.
    res = c.get(f"/runs?token={token}&lang=en", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/runs?lang=en" and token in res.headers["set-cookie"]
    c.cookies.set("kotune_studio_token", token)
    assert c.get("/runs").status_code == 200


def test_token_for_hosts(monkeypatch) -> None:
    assert token_for("127.0.0.1", None) is None
    generated = token_for("0.0.0.0", None)
    assert generated and len(generated) >= 24 and generated != token_for("0.0.0.0", None)
    monkeypatch.setenv("STUDIO_TOKEN", "from-env")
    assert token_for("0.0.0.0", "STUDIO_TOKEN") == "from-env"
    monkeypatch.delenv("STUDIO_TOKEN")
    from kotune.errors import KotuneError

    with pytest.raises(KotuneError, match="STUDIO_TOKEN"):
        token_for("0.0.0.0", "STUDIO_TOKEN")


def test_host_header_state_changes_and_body_size_are_checked(root: Path) -> None:
    c = _client(root)
    assert c.get("/api/runs", headers={"Host": "evil.example"}).status_code == 403  # DNS rebinding
    assert c.post("/api/stop", json={"path": "runs/a"}).status_code == 403            # no X-Kotune-Studio header
    big = {"question": "가" * 300_000, "model": "base:builtin:tiny-ko"}
    assert c.post("/api/chat", json=big, headers=HEADERS).status_code == 413
    res = c.post("/api/chat", json={"model": "base:builtin:tiny-ko", "question": "q", "max_tokens": 99999},
                 headers=HEADERS)
    assert res.status_code == 400 and res.json()["error"] == "error: max_tokens: between 1 and 1024, got 99999"
    res = c.post("/api/chat", json={"model": "base:builtin:tiny-ko", "question": "  "}, headers=HEADERS)
    assert res.status_code == 400 and res.json()["error"] == "error: ask a question"  # before any model loads
    res = c.post("/api/chat", json={"model": "base:/etc/passwd", "question": "q"}, headers=HEADERS)
    assert res.status_code == 400 and "not a base model of a run under the studio root" in res.json()["error"]


def test_unknown_override_key_gets_the_clis_line(root: Path, monkeypatch) -> None:
    monkeypatch.chdir(root)
    cli = call_cli(["run", "recipes/policy-qa.yaml", "--set", "steps.train.epoch=2", "--dry-run"])
    assert cli.code == 2
    line = cli.err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "unknown key (did you mean 'epochs'?)" in line
    c = _client(root)
    res = c.post("/api/launch/check", json={"recipe": "recipes/policy-qa.yaml", "overrides": "steps.train.epoch=2"},
                 headers=HEADERS)
    assert res.status_code == 400
    assert res.json()["error"] == line  # the same line, paths relative to ROOT as typed there
    ok = c.post("/api/launch/check", json={"recipe": "recipes/policy-qa.yaml", "overrides": "steps.train.epochs=2",
                                           "preset": "fast", "output": "runs/x"}, headers=HEADERS).json()
    assert ok["ok"] and ok["steps"][0] == "prepare" and ok["output"] == "runs/x" and "--preset fast" in ok["command"]
    assert not (root / "runs" / "x").exists()  # checking starts nothing


def test_statuses_from_run_files(root: Path) -> None:
    from kotune.studio.root import Root, find

    r = Root(root)
    out = find(r, "runs/a")
    assert out.status == "killed" and out.resumable  # steps left at "started", its process gone
    assert [s["status"] for s in out.steps] == ["done", "started"]
    state = json.loads((root / "runs" / "a" / "run.json").read_text(encoding="utf-8"))
    state["steps"]["train"] = {"status": "failed", "error": "error: x.jsonl line 3: missing \"output\""}
    (root / "runs" / "a" / "run.json").write_text(json.dumps(state), encoding="utf-8")
    out = find(r, "runs/a")
    assert out.status == "failed" and out.error == "error: x.jsonl line 3: missing \"output\""
    state["steps"]["train"] = {"status": "done", "seconds": 3.0}
    state["pid"] = os.getpid()  # not a kotune process: a reused pid is not taken for a live run
    (root / "runs" / "a" / "run.json").write_text(json.dumps(state), encoding="utf-8")
    assert find(r, "runs/a").status == "finished"


def test_recipe_failure_is_recorded_in_run_json(tmp_path: Path) -> None:
    from kotune.studio.root import Root, find

    recipe = tmp_path / "r.yaml"
    (tmp_path / "qa.jsonl").write_text('{"instruction": "질문입니다", "output": "답"}\n', encoding="utf-8")
    recipe.write_text("name: r\nbase_model: builtin:tiny-ko\nsteps:\n  validate:\n    data: [qa.jsonl]\n", encoding="utf-8")
    res = call_cli(["run", str(recipe), "-o", str(tmp_path / "out")])
    assert res.code == 2
    state = json.loads((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))
    assert state["steps"]["validate"]["status"] == "failed"
    assert state["steps"]["validate"]["error"].startswith("no records left after validation")
    out = find(Root(tmp_path), "out")
    assert out.status == "failed" and "no records left" in out.error


def test_validate_writes_every_dropped_record(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    rows = [{"instruction": "정책의 목표는 무엇인가요?", "output": "정책의 목표는 연구 인프라를 확충하는 것이다."},
            {"instruction": "정책의 목표는 무엇인가요?", "output": "정책의 목표는 연구 인프라를 확충하는 것이다."},
            {"instruction": "짧은 답?", "output": "네"}]
    qa.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    res = call_cli(["validate", qa, "-o", tmp_path / "clean.jsonl", "--dropped", tmp_path / "dropped.jsonl",
                    "--no-grounding"])
    assert res.code == 0, res.err
    dropped = [json.loads(l) for l in (tmp_path / "dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(d["drop_reason"] for d in dropped) == ["duplicate", "too_short"]
    assert {d["output"] for d in dropped} == {rows[1]["output"], "네"}
    assert all(d["line"] in (2, 3) for d in dropped)


def test_live_history_writes_the_record_while_training(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from kotune.model.runinfo import RunInfo
    from kotune.train.sft import live_history

    info = RunInfo(status="running", base_model="builtin:tiny-ko")
    cb = live_history(info, tmp_path)
    state = SimpleNamespace(log_history=[{"loss": 3.2, "step": 5}, {"eval_loss": 3.5, "step": 5}, {"lr": 1e-4}])
    cb.on_log(None, state, None, logs={"loss": 3.2})
    record = RunInfo.read(tmp_path)
    assert record.status == "running" and record.history == state.log_history[:2]


def test_token_view_marks_prompt_answer_eos_and_truncation(tiny_model) -> None:
    from kotune.records import normalize
    from kotune.model.resolve import resolve
    from kotune.studio.views import token_view

    resolved = resolve("builtin:tiny-ko", template="kotune", log=lambda *_: None)
    tok, tmpl = resolved.tokenizer, resolved.template
    rec = normalize({"instruction": "국가초고성능컴퓨팅 기본계획은 무엇인가요?", "output": "5년마다 수립하는 국가 계획이다."})
    view = token_view(tok, tmpl, rec, 1024, resolved.eos_ids)
    kinds = [s["kind"] for s in view["segments"]]
    assert kinds == ["prompt", "answer", "eos"] and view["ends_with_eos"] and not view["truncated"]
    assert view["segments"][1]["text"].strip() == rec.output
    assert view["segments"][2]["text"] == tok.eos_token
    short = token_view(tok, tmpl, rec, 12, resolved.eos_ids)  # both cut: the prompt from the left, the answer kept to half
    kinds = [s["kind"] for s in short["segments"]]
    assert short["truncated"] and kinds[0] == "cut" and kinds[-2:] == ["cut", "eos"] and short["tokens"] == 12
    assert short["segments"][0]["where"] == "prompt" and short["segments"][-2]["where"] == "answer"


def test_data_page_of_a_train_run_renders_its_records(trained_run: Path, tmp_path_factory) -> None:
    """A `kotune train` output (no recipe): its training records, as its template and tokenizer encode them."""
    from kotune.model.runinfo import RunInfo

    base = tmp_path_factory.getbasetemp()
    c = _client(base)
    rel = trained_run.relative_to(base).as_posix()
    res = c.get(f"/data?path={rel}")
    assert res.status_code == 200, res.text
    info = RunInfo.read(trained_run)
    shown = min(20, len(Path(info.data.path).read_text(encoding="utf-8").splitlines()))
    records = res.text.split('id="records"', 1)[1]  # after the legend
    assert records.count('class="record"') == shown
    assert records.count('class="tok-eos"') == shown and records.count('class="tok-answer"') == shown


def test_chat_streams_an_endpoint_models_answer(root: Path, tiny_model, tmp_path: Path) -> None:
    """An OpenAI-compatible URL in the chat page: its answer arrives piece by piece (``stream: true``)
    and is the answer the same server gives unstreamed."""
    from kotune.model.access import GenerationSettings, open_model
    from tests.conftest import serve_process

    question = "국가초고성능컴퓨팅 기본계획은 무엇인가요?"
    with serve_process(["--model", "builtin:tiny-ko"], tmp_path / "serve.log") as (url, _):
        spec = f"openai:{url}/v1#builtin:tiny-ko"
        c = _client(root)
        with c.stream("POST", "/api/chat", json={"model": spec, "question": question, "max_tokens": 48},
                      headers=HEADERS) as res:
            assert res.status_code == 200
            events = [json.loads(line[5:]) for line in res.iter_lines() if line.startswith("data:")]
        em = open_model(spec)
        whole = em.answer([em.prompt(question)], GenerationSettings(max_new_tokens=48))[0]
    pieces = [e["text"] for e in events if "text" in e]
    assert events[0]["template"] == "kotune" and len(pieces) >= 2
    assert "".join(pieces).strip() == whole.text
    assert events[-1]["done"] and events[-1]["finish_reason"] == whole.finish_reason
    assert events[-1]["completion_tokens"] == whole.completion_tokens
