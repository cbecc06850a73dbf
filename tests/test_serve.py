"""`kotune serve`: a real server process on a loopback port, driven by the official
``openai`` client — base and adapter, streamed and not, auth, bad requests,
concurrency — plus the batcher's grouping on its own (no model)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import call_cli, serve_process

openai = pytest.importorskip("openai")

KEY_ENV = "KOTUNE_TEST_SERVE_KEY"
KEY = "kt-test-0123456789abcdef"
BASE = "builtin:tiny-ko"
LIMIT = 64           # --max-tokens-limit
BODY_LIMIT = 20_000  # --max-body-bytes (small: an over-limit body still fits the socket buffers)


@dataclass
class Server:
    url: str
    log: Path
    proc: subprocess.Popen

    def client(self, api_key: str = KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def raw(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def healthy(self) -> bool:
        return self.raw("GET", "/health") == (200, {"status": "ok", "models": [BASE, "policy"], "batching": "continuous"})


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", BASE, "--adapter", f"policy={trained_run}", "--api-key-env", KEY_ENV,
            "--max-tokens-limit", LIMIT, "--max-body-bytes", BODY_LIMIT, "--batch-wait-ms", "20"]
    with serve_process(args, log, env={KEY_ENV: KEY}) as (url, proc):
        srv = Server(url, log, proc)
        assert srv.healthy()
        yield srv
    assert KEY not in log.read_text(encoding="utf-8"), "the API key must never be logged"


@pytest.fixture(scope="module")
def questions(sample_split):
    from kotune.records import read_records

    return [r.instruction for r in read_records(sample_split[1])[:3]]


def _chat(client, model: str, question: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kw)


def test_models_are_listed(server):
    ids = [m.id for m in server.client().models.list()]
    assert ids == [BASE, "policy"]


def test_chat_from_base_and_adapter_streamed_and_not(server, questions):
    client = server.client()
    for model in (BASE, "policy", "base"):
        r = _chat(client, model, questions[0], max_tokens=24)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        assert r.model == (BASE if model == "base" else model) and len(r.choices) == 1  # "base" is an alias
        choice = r.choices[0]
        assert choice.index == 0 and choice.message.role == "assistant"
        assert isinstance(choice.message.content, str) and choice.message.content
        assert choice.finish_reason in ("stop", "length")
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert 0 < r.usage.completion_tokens <= 24

        chunks = list(_chat(client, model, questions[0], max_tokens=24, stream=True))
        assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() == choice.message.content  # greedy: streaming gives the same answer
        assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_completions_endpoint(server, trained_run, questions):
    from kotune.model.templates import Template

    run = json.loads((trained_run / "kotune.json").read_text(encoding="utf-8"))
    prompt = Template.from_dict(run["template"]).prompt(questions[0])
    client = server.client()
    r = client.completions.create(model="policy", prompt=prompt, max_tokens=24)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    chat = _chat(client, "policy", questions[0], max_tokens=24)
    assert r.choices[0].text == chat.choices[0].message.content  # the chat endpoint applied the same template
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="policy", prompt=prompt, max_tokens=24,
                                                                               stream=True))
    assert streamed.strip() == r.choices[0].text


def test_greedy_answers_equal_generator_with_the_runs_template(server, trained_run, questions):
    from kotune.model.answers import GenerationSettings
    from kotune.model.generation import Generator

    settings = GenerationSettings(max_new_tokens=40)
    tuned = Generator(str(trained_run), log=lambda *_: None)
    want = tuned.generate([tuned.prompt(q) for q in questions], settings)
    base = Generator(BASE, template=tuned.template.name, log=lambda *_: None)
    want_base = base.generate([base.prompt(q) for q in questions], settings)
    client = server.client()
    for q, w, wb in zip(questions, want, want_base):
        got = _chat(client, "policy", q, max_tokens=40, temperature=0)
        assert got.choices[0].message.content == w.text
        assert got.choices[0].finish_reason == ("length" if w.finish_reason == "length" else "stop")
        assert got.usage.completion_tokens == w.completion_tokens
        got_base = _chat(client, BASE, q, max_tokens=40, temperature=0)
        assert got_base.choices[0].message.content == wb.text  # adapters really disabled for the base
    assert [w.text for w in want] != [w.text for w in want_base]


def test_api_key_is_required(server, questions):
    with pytest.raises(openai.AuthenticationError) as e:
        _chat(server.client(api_key="wrong-key"), "policy", questions[0], max_tokens=4)
    assert e.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong-key").models.list()
    body = json.dumps({"model": "policy", "messages": [{"role": "user", "content": "안녕"}]}).encode()
    for headers in ({}, {"Authorization": "Basic " + KEY}, {"Authorization": "Bearer"}):
        status, err = server.raw("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", **headers})
        assert status == 401, headers
        assert set(err["error"]) >= {"message", "type", "code"} and err["error"]["type"]
        assert KEY not in json.dumps(err)
    assert server.healthy()


def _assert_error(status: int, body: dict, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body.get("error"), dict), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, questions):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    post = lambda body: server.raw("POST", "/v1/chat/completions", body, auth)  # noqa: E731
    ok = {"model": "policy", "messages": [{"role": "user", "content": questions[0]}], "max_tokens": 4}

    _assert_error(*post(b'{"model": "policy", "messages": ['), 400)          # malformed JSON
    _assert_error(*post(b"\xff\xfe not json"), 400)
    _assert_error(*post(b"[1, 2]"), 400)                                      # not an object
    status, body = post(json.dumps({**ok, "model": "nope"}).encode())
    _assert_error(status, body, 404)
    assert BASE in body["error"]["message"] and "policy" in body["error"]["message"]
    _assert_error(*post(json.dumps({**ok, "max_tokens": LIMIT + 1}).encode()), 400)
    _assert_error(*post(json.dumps({k: v for k, v in ok.items() if k != "messages"}).encode()), 400)
    _assert_error(*post(json.dumps({**ok, "messages": []}).encode()), 400)
    _assert_error(*post(json.dumps({**ok, "n": 2}).encode()), 400)
    _assert_error(*post(json.dumps({**ok, "temperature": "hot"}).encode()), 400)
    big = json.dumps({**ok, "padding": "a" * BODY_LIMIT}).encode()
    _assert_error(*post(big), 413)                                             # Content-Length over the limit
    chunks = iter([big[i:i + 4096] for i in range(0, len(big), 4096)])       # no Content-Length: counted while read
    _assert_error(*server.raw("POST", "/v1/chat/completions", chunks, {**auth, "Transfer-Encoding": "chunked"}), 413)
    _assert_error(*server.raw("POST", "/v1/completions", json.dumps({"model": "policy", "max_tokens": 4}).encode(), auth), 400)
    _assert_error(*server.raw("GET", "/v1/nothing-here", None, auth), 404)

    client = server.client()
    with pytest.raises(openai.NotFoundError):
        _chat(client, "nope", questions[0], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        _chat(client, "policy", questions[0], max_tokens=LIMIT + 1)
    assert server.healthy()
    assert _chat(client, "policy", questions[0], max_tokens=4).choices[0].message.content


def test_32_concurrent_chat_requests_all_succeed(server, trained_run, questions):
    from kotune.model.answers import GenerationSettings
    from kotune.model.generation import Generator
    from kotune.model.templates import encode_prompt

    asked = [("policy" if i % 2 else BASE, f"{questions[i % len(questions)]} ({i})") for i in range(32)]
    # What each request must get back: its own prompt's greedy answer, from the same model alone.
    tuned = Generator(str(trained_run), log=lambda *_: None)
    base = Generator(BASE, template=tuned.template.name, log=lambda *_: None)
    gens = {"policy": tuned, BASE: base}
    settings = GenerationSettings(max_new_tokens=8)
    want = {}
    for model, gen in gens.items():
        prompts = [(i, gen.prompt(q)) for i, (m, q) in enumerate(asked) if m == model]
        for (i, p), a in zip(prompts, gen.generate([p for _, p in prompts], settings)):
            want[i] = (a, len(encode_prompt(gen.tokenizer, p, gen.template)))
    client = server.client()

    def one(i: int):
        model, question = asked[i]
        return _chat(client, model, question, max_tokens=8)

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(32)))
    for i, r in enumerate(results):
        w, prompt_tokens = want[i]
        assert r.model == asked[i][0], i
        assert r.choices[0].message.content == w.text, i
        assert r.choices[0].finish_reason == ("length" if w.finish_reason == "length" else "stop"), i
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, w.completion_tokens), i
    # The "(i)" changes most answers, so one request's answer handed to another would mostly show.
    # Enough different answers for the per-request check above to catch a mix-up (the rule teacher's
    # fact questions share long openings, so 8-token answers coincide more often than they used to).
    assert len({(m, r.usage.prompt_tokens, r.choices[0].message.content) for (m, _), r in zip(asked, results)}) > 16
    assert server.healthy()


# ---------------------------------------------------------------- the batcher alone
class _FakeEngine:
    def __init__(self):
        self.calls: list[tuple[str, list[str], tuple]] = []

    def generate(self, name, prompts, settings, batch_size=16):
        from kotune.model.answers import Answer

        self.calls.append((name, list(prompts), (settings.max_new_tokens, settings.temperature)))
        time.sleep(0.05)
        return [Answer(f"{name}:{p}", "eos", 1, 1) for p in prompts]


def test_batcher_groups_concurrent_requests_by_model_and_settings():
    from kotune.model.answers import GenerationSettings
    from kotune.serve.engine import Batcher

    engine = _FakeEngine()

    async def main():
        batcher = Batcher(engine, max_batch=8, wait_s=0.05)
        await batcher.start()
        try:
            jobs = []
            for i in range(24):
                model = "a" if i % 2 else "b"
                settings = GenerationSettings(max_new_tokens=8 if i % 3 else 16)
                jobs.append(batcher.submit(model, [f"q{i}"], settings))
            return await asyncio.gather(*jobs)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for i, res in enumerate(results):  # every request got its own answer back
        assert [a.text for a in res] == [f"{'a' if i % 2 else 'b'}:q{i}"]
    assert sum(len(p) for _, p, _ in engine.calls) == 24
    assert len(engine.calls) < 24  # batched, not one call per request
    assert all(len(p) <= 8 for _, p, _ in engine.calls)
    for name, prompts, settings in engine.calls:  # one model and one settings per generate call
        idx = [int(p[1:]) for p in prompts]
        assert all(("a" if i % 2 else "b") == name for i in idx)
        assert all((8 if i % 3 else 16) == settings[0] for i in idx)


# ---------------------------------------------------------------- start-up errors
def test_serve_start_up_errors_are_one_line(trained_run, tmp_path, monkeypatch):
    monkeypatch.delenv("KOTUNE_UNSET_KEY_VAR", raising=False)
    res = call_cli(["serve", "--model", BASE, "--api-key-env", "KOTUNE_UNSET_KEY_VAR"])
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "KOTUNE_UNSET_KEY_VAR" in res.err
    res = call_cli(["serve", "--model", BASE, "--adapter", f"policy={tmp_path / 'missing'}"])
    assert res.code == 2 and "no such adapter folder" in res.err
    res = call_cli(["serve", "--model", BASE, "--adapter", f"base={trained_run}"])
    assert res.code == 2 and "taken" in res.err
    res = call_cli(["serve", "--model", BASE, "--batching", "dynamic"])
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "--batching" in res.err


def test_engine_holds_several_adapters_on_one_base(trained_run, questions):
    from kotune.model.answers import GenerationSettings
    from kotune.model.generation import Generator
    from kotune.serve.engine import Engine

    engine = Engine(BASE, [("p1", str(trained_run)), ("p2", str(trained_run))], log=lambda *_: None)
    assert engine.names == [BASE, "p1", "p2"] and engine.get("base") is engine.served[BASE]
    tuned = Generator(str(trained_run), log=lambda *_: None)
    settings = GenerationSettings(max_new_tokens=24)
    prompts = [tuned.prompt(q) for q in questions[:2]]
    want = [a.text for a in tuned.generate(prompts, settings)]
    for name in ("p1", BASE, "p2"):  # switching back and forth
        got = [a.text for a in engine.generate(name, prompts, settings)]
        assert (got == want) == (name != BASE)
