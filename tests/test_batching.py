"""Continuous batching (kotune.model.batching): rows join a running batch, leave it when
done, and get the answers they would get alone — for the base and an adapter of
one loaded model, with mixed settings, seeds, stop strings and cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from kotune.model.batching import ContinuousBatcher, Row, supports
from kotune.model.answers import Answer, GenerationSettings
from kotune.model.generation import Generator
from kotune.model.templates import encode_prompt

BASE = "builtin:tiny-ko"


@pytest.fixture(scope="module")
def engine(trained_run):
    from kotune.serve.engine import Engine

    return Engine(BASE, [("tuned", str(trained_run))], log=lambda *_: None)


@pytest.fixture(scope="module")
def prompts(engine, sample_split):
    from kotune.records import read_records

    gen = engine.served["tuned"].generator
    return [gen.prompt(r.instruction) for r in read_records(sample_split[1])[:8]]


class Collector:
    """Rows submitted to a ContinuousBatcher, and their answers as they finish."""

    def __init__(self, engine, max_batch: int = 4):
        self.engine = engine
        self.batcher = ContinuousBatcher(lambda n: engine.served[n].generator,
                                         lambda n: engine.active(engine.served[n]),
                                         max_batch=max_batch, lock=engine.lock)
        self.results: dict[int, Answer | BaseException] = {}
        self.done = threading.Condition()
        self.rows: dict[int, Row] = {}

    def submit(self, key: int, name: str, prompt: str, settings: GenerationSettings, on_tokens=None) -> Row:
        gen = self.engine.served[name].generator

        def done(result):
            with self.done:
                self.results[key] = result
                self.done.notify_all()

        row = Row(name, encode_prompt(gen.tokenizer, prompt, gen.template), settings, done, on_tokens)
        self.rows[key] = row
        return self.batcher.submit(row)

    def wait(self, n: int, timeout: float = 120) -> dict[int, Answer]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.results) >= n, timeout), f"{len(self.results)}/{n} finished"
        for r in self.results.values():
            if isinstance(r, BaseException):
                raise r
        return self.results

    def close(self):
        self.batcher.close()


def alone(engine, name: str, prompts: list[str], settings: GenerationSettings) -> list[Answer]:
    return [engine.generate(name, [p], settings)[0] for p in prompts]


def test_tiny_ko_and_llama_like_models_are_supported(engine):
    assert supports(engine.model)


def test_rows_joining_a_running_batch_get_their_greedy_answers_alone(engine, prompts):
    settings = GenerationSettings(max_new_tokens=40)
    want = {name: [a.text for a in alone(engine, name, prompts, settings)] for name in ("tuned", BASE)}
    assert want["tuned"] != want[BASE]  # the adapter matters, so a mix-up would show
    c = Collector(engine, max_batch=3)  # fewer slots than requests: rows wait, join and leave
    try:
        k = 0
        for i, p in enumerate(prompts):
            for name in ("tuned", "tuned", BASE) if i % 2 else ("tuned",):
                c.submit(k, name, p, settings)
                k += 1
            time.sleep(0.03 * (i % 3))  # arrivals while others decode
        results = c.wait(k)
    finally:
        c.close()
    k = 0
    for i, p in enumerate(prompts):
        for name in ("tuned", "tuned", BASE) if i % 2 else ("tuned",):
            assert results[k].text == want[name][i], (k, name)
            k += 1
    steps = list(c.batcher.sizes)
    assert max(steps) == 3 and len(steps) < k * 40 / 2  # batched: fewer decode steps than rows × tokens / 2


def test_mixed_settings_in_one_batch(engine, prompts):
    gen = engine.served["tuned"].generator
    full = gen.generate([prompts[0]], GenerationSettings(max_new_tokens=60))[0].text
    assert len(full) > 6
    stop = full[3:5]
    cases = [GenerationSettings(max_new_tokens=5), GenerationSettings(max_new_tokens=60, stop=[stop]),
             GenerationSettings(max_new_tokens=60, repetition_penalty=1.3), GenerationSettings(max_new_tokens=1)]
    want = [engine.generate("tuned", [prompts[0]], s)[0] for s in cases]
    c = Collector(engine, max_batch=8)
    try:
        for i, s in enumerate(cases):
            c.submit(i, "tuned", prompts[0], s)
        got = c.wait(len(cases))
    finally:
        c.close()
    for i, w in enumerate(want):
        assert (got[i].text, got[i].finish_reason, got[i].completion_tokens) == (w.text, w.finish_reason, w.completion_tokens)
    assert got[0].finish_reason == "length" and got[0].completion_tokens == 5
    assert got[1].finish_reason == "stop" and stop not in got[1].text
    assert got[3].completion_tokens == 1


def test_seeded_sampling_does_not_depend_on_the_batch(engine, prompts):
    settings = GenerationSettings(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=7)
    c = Collector(engine, max_batch=8)
    try:
        c.submit(0, "tuned", prompts[1], settings)
        first = c.wait(1)[0]
        c.submit(1, "tuned", prompts[2], GenerationSettings(max_new_tokens=30, temperature=1.0, seed=1))
        c.submit(2, "tuned", prompts[1], settings)  # same seed, now beside another row
        c.submit(3, "tuned", prompts[1], GenerationSettings(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=8))
        got = c.wait(4)
    finally:
        c.close()
    assert got[2].text == first.text
    assert got[3].text != first.text


def test_streamed_tokens_and_cancellation(engine, prompts):
    streamed: list[int] = []
    c = Collector(engine, max_batch=4)

    def leave_after_two(tokens):  # the client goes away mid-answer
        if len(c.rows[1].tokens) >= 2:
            c.rows[1].cancel()

    try:
        c.submit(0, "tuned", prompts[3], GenerationSettings(max_new_tokens=30), on_tokens=streamed.extend)
        c.submit(1, BASE, prompts[3], GenerationSettings(max_new_tokens=1000), on_tokens=leave_after_two)
        c.submit(2, BASE, prompts[4], GenerationSettings(max_new_tokens=10))
        gone = c.submit(3, BASE, prompts[5], GenerationSettings(max_new_tokens=10))
        gone.cancel()  # gone before it started
        got = c.wait(4)
    finally:
        c.close()
    gen = engine.served["tuned"].generator
    assert gen.tokenizer.decode([t for t in streamed if t not in gen.eos_ids], skip_special_tokens=True).strip() == got[0].text
    assert got[1].finish_reason == "cancelled" and got[1].completion_tokens == 2
    assert got[3].finish_reason == "cancelled" and got[3].completion_tokens == 0
    assert got[2].text == alone(engine, BASE, [prompts[4]], GenerationSettings(max_new_tokens=10))[0].text


def test_a_failing_row_does_not_stop_the_batcher(engine, prompts):
    c = Collector(engine, max_batch=4)
    try:
        gen = engine.served["tuned"].generator
        bad = Row("tuned", [gen.model.config.vocab_size + 50], GenerationSettings(max_new_tokens=5),
                  lambda r: c.results.__setitem__(0, r))  # an id past the embedding table
        c.batcher.submit(bad)
        deadline = time.monotonic() + 60
        while 0 not in c.results and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(c.results.get(0), BaseException)
        c.submit(1, "tuned", prompts[0], GenerationSettings(max_new_tokens=10))
        with c.done:
            assert c.done.wait_for(lambda: 1 in c.results, 60)
        assert isinstance(c.results[1], Answer)
    finally:
        c.close()


def test_a_shared_prompt_prefix_is_computed_once(engine, sample_chunks):
    from kotune.data.qa import SYSTEM_PROMPT, build_instruction
    from conftest import read_jsonl

    gen = engine.served["tuned"].generator
    chunks = [c["text"] for c in read_jsonl(sample_chunks)[:3]]
    prompts = [gen.prompt(SYSTEM_PROMPT + "\n" + build_instruction(3), "[문서]\n" + t) for t in chunks]
    settings = GenerationSettings(max_new_tokens=24)
    want = [a.text for a in alone(engine, "tuned", prompts, settings)]
    shared = len(gen.tokenizer(SYSTEM_PROMPT + "\n" + build_instruction(3))["input_ids"])
    c = Collector(engine, max_batch=4)
    try:
        for i, p in enumerate(prompts):  # one at a time: each is prefilled alone
            c.submit(i, "tuned", p, settings)
            c.wait(i + 1)
    finally:
        c.close()
    assert [c.results[i].text for i in range(3)] == want
    assert c.batcher.prefix_reused >= 2 * (shared - 8)  # the instruction's tokens, for the 2nd and 3rd prompt


def test_closing_answers_running_and_waiting_rows(engine, prompts):
    c = Collector(engine, max_batch=1)
    c.submit(0, "tuned", prompts[0], GenerationSettings(max_new_tokens=1000))
    c.submit(1, "tuned", prompts[1], GenerationSettings(max_new_tokens=1000))
    time.sleep(0.3)
    c.close()  # returns once the batching thread has ended: it does not wait for the rows to finish
    assert not c.batcher.thread.is_alive()
    with c.done:
        assert c.done.wait_for(lambda: len(c.results) == 2, 10)
    for r in c.results.values():  # finished before the close, or told why not
        assert isinstance(r, Answer) or "shutting down" in str(r)


def _random_model(kind: str, folder, tokenizer_dir):
    """A small random-weight model of another architecture (built from a config; nothing downloaded)."""
    import transformers

    from kotune.model.loading import load_tokenizer

    common = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=1024, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    if kind == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=2, **common)  # grouped-query attention
    else:
        config = transformers.Qwen2Config(num_key_value_heads=2, use_sliding_window=False, **common)
    import torch

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    load_tokenizer(str(tokenizer_dir)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_other_architectures_batch_continuously_with_the_same_answers(kind, tmp_path, tiny_model, prompts):
    import contextlib

    folder = _random_model(kind, tmp_path / kind, tiny_model)
    gen = Generator(str(folder), template="kotune", log=lambda *_: None)
    assert supports(gen.model)
    settings = GenerationSettings(max_new_tokens=12)
    want = [gen.generate([p], settings)[0].text for p in prompts[:5]]
    batcher = ContinuousBatcher(lambda n: gen, lambda n: contextlib.nullcontext(), max_batch=3)
    results: dict[int, Answer] = {}
    done = threading.Condition()

    def finish(i):
        def f(a):
            with done:
                results[i] = a
                done.notify_all()
        return f

    try:
        for i, p in enumerate(prompts[:5]):
            batcher.submit(Row("m", encode_prompt(gen.tokenizer, p, gen.template), settings, finish(i)))
            time.sleep(0.01 * i)
        with done:
            assert done.wait_for(lambda: len(results) == 5, 60)
    finally:
        batcher.close()
    assert [results[i].text for i in range(5)] == want


def test_sliding_window_models_fall_back_to_static_batching():
    import transformers

    class M:  # only the config matters
        def __init__(self, config):
            self.config = config

    small = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=4096)
    assert not supports(M(transformers.MistralConfig(sliding_window=256, **small)))
    assert supports(M(transformers.MistralConfig(sliding_window=None, **small)))
    assert not supports(M(transformers.Gemma2Config(sliding_window=256, **small)))
