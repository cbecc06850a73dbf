"""kotune serve's honest protocol: every request field the ``openai`` client can send is
implemented, or accepted only at a value that asks for nothing, or refused with a 400
that names it (:mod:`kotune.serve.protocol`'s docstring has the rule of each field).

The parsing on its own (no model), then the real ``openai`` client against a real
``kotune serve`` of builtin:tiny-ko: each field sent, answered 400 naming it, or 200
with its effect visible (or, for a neutral value, no effect: the plain answer)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import serve_process
from kotune.serve.protocol import (CHAT_FIELDS, COMPLETION_FIELDS, ApiError, ChatRequest, CompletionRequest, Limits,
                                   ScoreRequest, check_category)

openai = pytest.importorskip("openai")

BASE = "builtin:tiny-ko"
LIMIT = 64
QUESTION = "국가초고성능컴퓨팅 기본계획은 무엇인가요?"
MESSAGES = [{"role": "user", "content": QUESTION}]
CLIENT_ONLY = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}  # not sent as body fields


def _client_fields(create) -> set[str]:
    return set(inspect.signature(create).parameters) - CLIENT_ONLY


def chat_fields() -> set[str]:
    from openai.resources.chat.completions import Completions

    return _client_fields(Completions.create)


def completion_fields() -> set[str]:
    from openai.resources.completions import Completions

    return _client_fields(Completions.create)


# ---------------------------------------------------------------- what is sent (one table per endpoint)
# field -> (values answered 400 naming the field, values answered 200 with no effect on the answer).
# Implemented fields with an effect to see have their own tests below (IMPLEMENTED names them).
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
SHARED_CASES: dict[str, tuple[list[Any], list[Any]]] = {
    "n": ([2, 0], [1]),
    "frequency_penalty": ([0.5, -1], [0, 0.0]),
    "presence_penalty": ([0.5], [0]),
    "logit_bias": ([{"100": 5}], [{}]),
    "user": ([5], ["user-1"]),
    "seed": (["x", 2 ** 64], [7]),             # greedy: a seed changes nothing (sampling: tested below)
    "temperature": ([3, "hot"], [0]),
    "top_p": ([2, -0.1], [0.5]),               # greedy: top_p changes nothing (sampling: tested below)
    "stop": ([5, [1, 2]], [[]]),
    "stream": (["yes"], [False]),
    "max_tokens": ([0, LIMIT + 1, 1.5], []),
}
CHAT_CASES: dict[str, tuple[list[Any], list[Any]]] = {
    **SHARED_CASES,
    "audio": ([{"voice": "alloy", "format": "wav"}], []),
    "function_call": ([{"name": "lookup"}, "required"], ["none", "auto"]),
    "functions": ([[TOOL["function"]]], [[]]),
    "logprobs": (["yes"], [False]),
    "top_logprobs": ([21, -1], []),
    "max_completion_tokens": ([0, LIMIT + 1], []),
    "metadata": ([{"k": 1}, "k"], [{"team": "kotune"}]),
    "modalities": ([["text", "audio"], ["audio"]], [["text"]]),
    "moderation": ([{"model": "omni-moderation-latest"}], []),
    "parallel_tool_calls": (["yes"], [True, False]),
    "prediction": ([{"type": "content", "content": "국가"}], []),
    "prompt_cache_key": ([5], ["cache-1"]),
    "prompt_cache_options": ([{"mode": "explicit"}], []),
    "prompt_cache_retention": (["24h"], ["in_memory"]),
    "reasoning_effort": (["high", "minimal"], ["none"]),
    "response_format": ([{"type": "json_object"},
                         {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}],
                        [{"type": "text"}]),
    "safety_identifier": ([5], ["user-hash"]),
    "service_tier": (["flex", "priority"], ["auto", "default"]),
    "store": ([True], [False]),
    "stream_options": ([{"include_usage": True}], []),  # without stream (with it: test_streaming_fields)
    "tool_choice": (["required", {"type": "function", "function": {"name": "lookup"}}], ["none", "auto"]),
    "tools": ([[TOOL]], [[]]),
    "verbosity": (["low", "high"], ["medium"]),
    "web_search_options": ([{}, {"search_context_size": "low"}], []),
}
COMPLETION_CASES: dict[str, tuple[list[Any], list[Any]]] = {
    **SHARED_CASES,
    "best_of": ([2], [1]),
    "echo": ([True, "yes"], [False]),         # echo with logprobs: prompt scoring (test below)
    "logprobs": ([21, True], []),
    "suffix": (["끝"], [""]),
    "stream_options": ([{"include_usage": True}], []),
}
# Implemented, with their effect tested below.
IMPLEMENTED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
               "stop", "stream", "stream_options", "logprobs", "top_logprobs", "echo"}


def test_every_field_of_the_openai_client_has_a_rule_and_a_case() -> None:
    # A new openai release that adds a field fails here until kotune serve decides about it.
    assert chat_fields() <= set(CHAT_FIELDS), chat_fields() - set(CHAT_FIELDS)
    assert completion_fields() <= set(COMPLETION_FIELDS), completion_fields() - set(COMPLETION_FIELDS)
    assert chat_fields() <= set(CHAT_CASES) | IMPLEMENTED, chat_fields() - set(CHAT_CASES) - IMPLEMENTED
    assert completion_fields() <= set(COMPLETION_CASES) | IMPLEMENTED
    # beyond OpenAI's fields: kotune's and vLLM's extensions, implemented
    assert CHAT_FIELDS["category"] is None and CHAT_FIELDS["repetition_penalty"] is None
    assert COMPLETION_FIELDS["repetition_penalty"] is None


# ---------------------------------------------------------------- parsing alone (no model)
LIMITS = Limits(max_tokens=LIMIT, default_max_tokens=16)


def _refused(parse, body: dict, param: str) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse(body, LIMITS)
    assert e.value.status == 400 and e.value.param == param, (body, e.value.message)
    assert param.split(".")[0] in e.value.message or param == "n", e.value.message
    return e.value


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_each_field_is_refused_or_accepted_as_its_rule_says(endpoint: str) -> None:
    parse = ChatRequest.parse if endpoint == "chat" else CompletionRequest.parse
    cases = CHAT_CASES if endpoint == "chat" else COMPLETION_CASES
    plain = {"model": BASE, "messages": MESSAGES} if endpoint == "chat" else {"model": BASE, "prompt": QUESTION}
    want = parse(plain, LIMITS)
    for field, (refused, neutral) in cases.items():
        for value in refused:
            _refused(parse, {**plain, field: value}, field)
        for value in neutral:
            got = parse({**plain, field: value}, LIMITS)
            assert got == want or field in IMPLEMENTED, (field, value)
        assert parse({**plain, field: None}, LIMITS) == want, field  # null: absent


def test_unknown_fields_are_refused_by_name() -> None:
    for name in ("top_k", "min_p", "guided_json", "ignore_eos", "logprob", "Temperature"):
        e = _refused(ChatRequest.parse, {"model": BASE, "messages": MESSAGES, name: 1}, name)
        assert e.message.startswith(f"Unrecognized request argument supplied: {name}")
        _refused(CompletionRequest.parse, {"model": BASE, "prompt": QUESTION, name: 1}, name)
    _refused(CompletionRequest.parse, {"model": BASE, "prompt": QUESTION, "category": "x"}, "category")
    _refused(CompletionRequest.parse, {"model": BASE, "prompt": QUESTION, "max_completion_tokens": 4},
             "max_completion_tokens")


def test_implemented_fields_reach_the_generation_settings() -> None:
    r = ChatRequest.parse({"model": BASE, "messages": MESSAGES, "max_completion_tokens": 9, "temperature": 0.7,
                           "top_p": 0.9, "seed": 3, "stop": "끝", "repetition_penalty": 1.3, "category": "법"}, LIMITS)
    s = r.settings
    assert (s.max_new_tokens, s.temperature, s.top_p, s.seed, s.stop, s.repetition_penalty) == (9, 0.7, 0.9, 3, ["끝"], 1.3)
    assert r.category == "법" and r.logprobs is None and not r.stream
    assert ChatRequest.parse({"model": BASE, "messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 5},
                             LIMITS).settings.max_new_tokens == 5
    _refused(ChatRequest.parse, {"model": BASE, "messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 6},
             "max_completion_tokens")
    for bad in (0, -1, 11, "1.2", True):
        _refused(ChatRequest.parse, {"model": BASE, "messages": MESSAGES, "repetition_penalty": bad}, "repetition_penalty")


def test_logprobs_fields() -> None:
    chat = {"model": BASE, "messages": MESSAGES}
    assert ChatRequest.parse({**chat, "logprobs": True}, LIMITS).logprobs == 0
    assert ChatRequest.parse({**chat, "logprobs": True, "top_logprobs": 5}, LIMITS).logprobs == 5
    assert ChatRequest.parse({**chat, "logprobs": False}, LIMITS).logprobs is None
    _refused(ChatRequest.parse, {**chat, "top_logprobs": 2}, "top_logprobs")       # needs logprobs: true
    _refused(ChatRequest.parse, {**chat, "logprobs": False, "top_logprobs": 2}, "top_logprobs")
    _refused(ChatRequest.parse, {**chat, "logprobs": 1}, "logprobs")
    comp = {"model": BASE, "prompt": QUESTION}
    assert CompletionRequest.parse({**comp, "logprobs": 0}, LIMITS).logprobs == 0
    assert CompletionRequest.parse({**comp, "logprobs": 20}, LIMITS).logprobs == 20
    assert CompletionRequest.parse({**comp, "logprobs": 3, "stream": True}, LIMITS).logprobs == 3


def test_stream_options() -> None:
    chat = {"model": BASE, "messages": MESSAGES}
    r = ChatRequest.parse({**chat, "stream": True, "stream_options": {"include_usage": True}}, LIMITS)
    assert r.stream and r.include_usage
    r = ChatRequest.parse({**chat, "stream": True, "stream_options": {"include_obfuscation": False}}, LIMITS)
    assert r.stream and not r.include_usage
    for opts in ({"include_obfuscation": True}, {"include_usage": "yes"}, {"chunk_size": 4}, "usage"):
        _refused(ChatRequest.parse, {**chat, "stream": True, "stream_options": opts}, "stream_options")
    _refused(ChatRequest.parse, {**chat, "stream": False, "stream_options": {"include_usage": True}}, "stream_options")
    _refused(CompletionRequest.parse, {"model": BASE, "prompt": QUESTION, "stream_options": {}}, "stream_options")


def test_messages_take_role_and_content_only() -> None:
    for extra in ({"name": "kim"}, {"tool_calls": [{"id": "1"}]}, {"function_call": {"name": "f"}},
                  {"audio": {"id": "a"}}, {"refusal": "no"}):
        msgs = [{"role": "user", "content": QUESTION, **extra}]
        e = _refused(ChatRequest.parse, {"model": BASE, "messages": msgs}, "messages")
        assert next(iter(extra)) in e.message
    msgs = [{"role": "assistant", "content": "네", "refusal": None, "tool_calls": None}, *MESSAGES]
    assert ChatRequest.parse({"model": BASE, "messages": msgs}, LIMITS).messages[0] == {"role": "assistant", "content": "네"}
    _refused(ChatRequest.parse, {"model": BASE, "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
             "messages")


def test_category_is_refused_where_it_would_change_nothing() -> None:
    from kotune.model.templates import get_template

    chat = get_template("chat", {"법": "법률 도우미입니다."})
    check_category("", MESSAGES, get_template("kotune"))
    check_category("법", MESSAGES, chat)
    for category, messages, template in (("법", MESSAGES, get_template("kotune")), ("의료", MESSAGES, chat),
                                         ("법", [{"role": "system", "content": "x"}, *MESSAGES], chat)):
        with pytest.raises(ApiError) as e:
            check_category(category, messages, template)
        assert e.value.status == 400 and e.value.param == "category"


def test_lm_evals_scoring_request_is_accepted_and_sampling_fields_are_not() -> None:
    lm_eval = {"model": BASE, "prompt": [[1, 2, 3]], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
               "echo": True}
    assert ScoreRequest.wants(lm_eval)
    r = ScoreRequest.parse(lm_eval, LIMITS)
    assert (r.prompts, r.top, r.max_tokens) == ([[1, 2, 3]], 1, 1)
    assert ScoreRequest.parse({**lm_eval, "max_tokens": None}, LIMITS).max_tokens == 1
    for field, value in (("temperature", 0.7), ("top_p", 0.5), ("stop", ["\n"]), ("repetition_penalty", 1.2),
                         ("n", 2), ("best_of", 3), ("suffix", "x"), ("top_k", 5), ("max_tokens", 2),
                         ("max_tokens", True), ("logprobs", 21)):
        _refused(ScoreRequest.parse, {**lm_eval, field: value}, field)
    # lm-eval's generation request (generate_until) goes to CompletionRequest
    gen = {"prompt": ["질문"], "model": BASE, "max_tokens": 8, "temperature": 0, "stop": ["\n\n"], "seed": 1234}
    assert not ScoreRequest.wants(gen) and CompletionRequest.parse(gen, LIMITS).settings.stop == ["\n\n"]


# ---------------------------------------------------------------- a real server, the real openai client
@dataclass
class Served:
    url: str
    log: Path

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-protocol") / "server.log"
    with serve_process(["--model", BASE, "--max-tokens-limit", LIMIT], log) as (url, _):
        yield Served(url, log)


@pytest.fixture(scope="module")
def generator(tiny_model):
    """The same model in this process: the answers and log-probabilities the server must give."""
    from kotune.model.generation import Generator

    return Generator(BASE, log=lambda *_: None)


def _send(client, endpoint: str, field: str, value: Any, **kw):
    args: dict[str, Any] = {"model": BASE, "max_tokens": 6, **kw}
    if endpoint == "chat":
        args.setdefault("messages", MESSAGES)
    else:
        args.setdefault("prompt", QUESTION)
    if field in (chat_fields() if endpoint == "chat" else completion_fields()):
        args[field] = value
    else:
        args["extra_body"] = {field: value}
    create = client.chat.completions.create if endpoint == "chat" else client.completions.create
    return create(**args)


def _text(endpoint: str, r) -> str:
    return r.choices[0].message.content if endpoint == "chat" else r.choices[0].text


def _refusal(send, field: str) -> dict:
    """The error body of ``send()``, which must be a 400 that names ``field``."""
    with pytest.raises(openai.BadRequestError) as e:
        send()
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == field, (field, err)
    assert err["type"] == "invalid_request_error" and (field in err["message"] or field == "n"), err
    return err


def _assert_refused(client, endpoint: str, field: str, value: Any, **kw) -> None:
    _refusal(lambda: _send(client, endpoint, field, value, **kw), field)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_each_field_the_client_sends_is_refused_or_changes_nothing(server, endpoint: str) -> None:
    client = server.client()
    cases = CHAT_CASES if endpoint == "chat" else COMPLETION_CASES
    plain = _text(endpoint, _send(client, endpoint, "max_tokens", 6))
    for field, (refused, neutral) in cases.items():
        for value in refused:
            _assert_refused(client, endpoint, field, value)
        for value in neutral:
            r = _send(client, endpoint, field, value)
            assert _text(endpoint, r) == plain, (field, value)
            assert r.choices[0].logprobs is None
    for name in ("top_k", "min_p", "guided_json"):  # vLLM's sampling extras kotune does not implement
        _assert_refused(client, endpoint, name, 5)
    assert _text(endpoint, _send(client, endpoint, "max_tokens", 6)) == plain  # still serving


def test_the_kotune_and_vllm_extensions(server, generator) -> None:
    from kotune.model.answers import GenerationSettings

    client = server.client()
    _assert_refused(client, "chat", "category", "법")  # tiny-ko's kotune template has no system prompt
    err = _refusal(lambda: client.chat.completions.create(
        model=BASE, max_tokens=4, messages=[{"role": "user", "content": QUESTION, "name": "kim"}]), "messages")
    assert "messages[0].name" in err["message"]
    prompt = generator.template.chat_prompt(MESSAGES, tokenizer=generator.tokenizer)
    for penalty in (1.0, 1.5):
        want = generator.generate([prompt], GenerationSettings(max_new_tokens=24, repetition_penalty=penalty))[0]
        for endpoint, kw in (("chat", {}), ("completions", {"prompt": prompt})):
            r = _send(client, endpoint, "repetition_penalty", penalty, max_tokens=24, **kw)
            assert _text(endpoint, r) == want.text, (endpoint, penalty)
    plain = generator.generate([prompt], GenerationSettings(max_new_tokens=24))[0]
    assert want.text != plain.text  # the penalty was applied


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_sampling_fields_take_effect(server, generator, endpoint: str) -> None:
    client = server.client()
    kw = {"max_tokens": 12}
    greedy = _text(endpoint, _send(client, endpoint, "temperature", 0, **kw))
    # n=1 and the length fields
    r = _send(client, endpoint, "max_tokens", 3)
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason == "length"
    if endpoint == "chat":
        r = _send(client, "chat", "max_completion_tokens", 3, max_tokens=None)
        assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    # seed: the same seed gives the same sample; samples differ from each other and from greedy
    sampled = {}
    for seed in (1, 2, 3, 1):
        r = _send(client, endpoint, "seed", seed, temperature=1.5, **kw)
        sampled.setdefault(seed, set()).add(_text(endpoint, r))
    assert all(len(v) == 1 for v in sampled.values())
    texts = {next(iter(v)) for v in sampled.values()}
    assert len(texts) > 1 and greedy not in texts
    # top_p near 0 keeps only the likeliest token: sampling becomes greedy
    assert _text(endpoint, _send(client, endpoint, "top_p", 1e-9, temperature=1.5, seed=1, **kw)) == greedy
    # stop: the answer ends before the stop string
    words = greedy.split()
    assert len(words) >= 3, greedy
    r = _send(client, endpoint, "stop", [words[2]], **kw)
    assert r.choices[0].finish_reason == "stop" and words[2] not in _text(endpoint, r)
    assert greedy.startswith(_text(endpoint, r))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_streaming_fields(server, endpoint: str) -> None:
    client = server.client()
    plain = _send(client, endpoint, "max_tokens", 8)
    for opts in ({"include_usage": True}, {"include_usage": False}, {"include_obfuscation": False}):
        chunks = list(_send(client, endpoint, "stream", True, max_tokens=8, stream_options=opts))
        text = "".join((c.choices[0].delta.content or "") if endpoint == "chat" else c.choices[0].text
                       for c in chunks if c.choices)
        assert text.strip() == _text(endpoint, plain)
        usage = [c.usage for c in chunks if c.usage]
        if opts.get("include_usage"):
            assert usage and usage[-1].completion_tokens == plain.usage.completion_tokens
            assert not chunks[-1].choices
        else:
            assert not usage
    _assert_refused(client, endpoint, "stream_options", {"include_obfuscation": True}, stream=True)


def _forward_logprobs(generator, prompt: str, tokens: list[int]) -> list[float]:
    """Each token's log-probability from one direct forward pass of the model over prompt + answer."""
    import torch

    from kotune.model.templates import encode_prompt

    ids = encode_prompt(generator.tokenizer, prompt, generator.template)
    with torch.no_grad():
        logits = generator.model(input_ids=torch.tensor([ids + tokens])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(ids) + k - 1, t]) for k, t in enumerate(tokens)]


def test_chat_logprobs_are_the_models_own(server, generator) -> None:
    from kotune.model.answers import GenerationSettings
    from kotune.serve.protocol import token_bytes

    client = server.client()
    r = client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=16, logprobs=True, top_logprobs=5)
    prompt = generator.template.chat_prompt(MESSAGES, tokenizer=generator.tokenizer)
    answer = generator.generate([prompt], GenerationSettings(max_new_tokens=16))[0]
    assert r.choices[0].message.content == answer.text
    content = r.choices[0].logprobs.content
    tokens = answer.tokens
    assert len(content) == len(tokens) == r.usage.completion_tokens - (answer.finish_reason == "eos")
    want = _forward_logprobs(generator, prompt, tokens)
    tok = generator.tokenizer
    for entry, t, w in zip(content, tokens, want):
        assert math.isclose(entry.logprob, w, abs_tol=1e-4), (entry, w)
        assert bytes(entry.bytes) == token_bytes(tok, t)
        tops = entry.top_logprobs
        assert len(tops) == 5 and [x.logprob for x in tops] == sorted((x.logprob for x in tops), reverse=True)
        # greedy: the chosen token is the likeliest one
        assert tops[0].token == entry.token and math.isclose(tops[0].logprob, entry.logprob, abs_tol=1e-6)
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8").strip() == answer.text

    # logprobs without top_logprobs; streamed: the same numbers
    r0 = client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=16, logprobs=True)
    assert [e.top_logprobs for e in r0.choices[0].logprobs.content] == [[] for _ in tokens]
    streamed = [e for c in client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=16, logprobs=True,
                                                          top_logprobs=2, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-6) for a, b in zip(streamed, content))
    assert all(len(e.top_logprobs) == 2 for e in streamed)

    # a stop string: the tokens up to the one that completes the text before it
    words = answer.text.split()
    r = client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=16, logprobs=True, stop=[words[2]])
    cut = r.choices[0].logprobs.content
    assert r.choices[0].finish_reason == "stop" and 0 < len(cut) < len(content)
    assert [e.token for e in cut] == [e.token for e in content[:len(cut)]]
    shown = b"".join(bytes(e.bytes) for e in cut).decode("utf-8").strip()
    before = b"".join(bytes(e.bytes) for e in cut[:-1]).decode("utf-8", errors="ignore").strip()
    assert shown.startswith(r.choices[0].message.content) and len(before) < len(r.choices[0].message.content)


def test_completions_logprobs_on_generation(server, generator) -> None:
    from kotune.model.answers import GenerationSettings

    client = server.client()
    prompt = generator.prompt(QUESTION)
    answer = generator.generate([prompt], GenerationSettings(max_new_tokens=12))[0]
    r = client.completions.create(model=BASE, prompt=prompt, max_tokens=12, logprobs=3)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == answer.text
    want = _forward_logprobs(generator, prompt, answer.tokens)
    assert len(lp.tokens) == len(want) and all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(lp.token_logprobs, want))
    assert "".join(lp.tokens).strip() == answer.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert token in top and top[token] == value and max(top.values()) == value and len(top) <= 4
    zero = client.completions.create(model=BASE, prompt=prompt, max_tokens=12, logprobs=0).choices[0].logprobs
    assert zero.tokens == lp.tokens and all(list(t) == [k] for t, k in zip(zero.top_logprobs, zero.tokens))
    chunks = list(client.completions.create(model=BASE, prompt=prompt, max_tokens=12, logprobs=3, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed == lp.tokens


def test_completions_echo_scores_the_prompt(server, generator) -> None:
    client = server.client()
    r = client.completions.create(model=BASE, prompt=QUESTION, max_tokens=1, logprobs=2, echo=True, temperature=0,
                                  seed=1234)
    lp = r.choices[0].logprobs
    ids = list(generator.tokenizer(QUESTION)["input_ids"])
    assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(generator.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    assert all(math.isclose(lp.token_logprobs[k], float(logp[k - 1, ids[k]]), abs_tol=1e-4) for k in range(1, len(ids)))
    _assert_refused(client, "completions", "temperature", 0.8, echo=True, logprobs=1, max_tokens=1)
    _assert_refused(client, "completions", "echo", True, logprobs=1, max_tokens=1, stream=True)
