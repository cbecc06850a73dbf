"""`kotune export --format gguf`, proved by running the file in llama.cpp: the exported
tiny-ko run answers token for token as kotune does, prompts as trained (its GGUF chat
template and its Ollama Modelfile both render kotune's prompt), and stops at EOS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import call_cli, read_jsonl, serve_process
from helpers.gotemplate import render


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf"
    res = call_cli(["export", "--model", trained_run, "--format", "gguf", "--quant", "f32", "-o", out])
    assert res.code == 0, res.err
    name = "tiny.f32"
    assert res.out.splitlines()[:2] == [f"ollama create {name} -f {out.with_suffix('.Modelfile')}",
                                        f"ollama run {name}"]
    return out


@pytest.fixture(scope="module")
def questions(sample_split) -> list[dict]:
    return read_jsonl(sample_split[0])[:20]  # 20 training questions (the test split holds fewer)


@pytest.fixture(scope="module")
def tuned(trained_run):
    from kotune.model.access import open_model

    model = open_model(str(trained_run), log=lambda *_: None)
    yield model
    model.close()


def test_the_gguf_carries_the_run_its_template_and_its_stop_tokens(exported, trained_run) -> None:
    from kotune.model.llamacpp import exported_run, gguf_metadata

    run = json.loads((trained_run / "kotune.json").read_text(encoding="utf-8"))
    meta = gguf_metadata(exported, ("general.architecture", "tokenizer.ggml.eos_token_id",
                                    "tokenizer.ggml.padding_token_id", "tokenizer.chat_template"))
    assert meta["general.architecture"] == "gptneox"
    assert meta["tokenizer.ggml.eos_token_id"] == run["eos_token_ids"][0]
    assert meta["tokenizer.ggml.padding_token_id"] != meta["tokenizer.ggml.eos_token_id"]
    record = exported_run(exported)
    assert record.method == "gguf" and record.own_template.name == run["template"]["name"]
    assert record.exported_from.run == str(trained_run.resolve())
    assert "{{ ns.q }}" in meta["tokenizer.chat_template"]


def test_llama_cpp_renders_and_tokenizes_the_training_prompt(exported, trained_run, questions) -> None:
    """Prompt fidelity: for 20 questions, the prompt llama.cpp's chat endpoint builds from the
    GGUF's chat template is kotune's training prompt, token for token."""
    from kotune.export.to_gguf import prompt_fidelity

    checks = prompt_fidelity(exported, trained_run, [q["instruction"] for q in questions])
    assert len(checks) == 20
    assert [c for c in checks if not c["same_text"] or not c["same_tokens"]] == []


def test_greedy_answers_equal_kotunes_and_stop_at_eos(exported, tuned, questions) -> None:
    from kotune.model.access import GenerationSettings, open_model

    settings = GenerationSettings(max_new_tokens=48)
    ours = tuned.answer([tuned.prompt(q["instruction"]) for q in questions], settings)
    for mode in ("", "?mode=chat"):
        gguf = open_model(f"llamacpp:{exported}{mode}")
        try:
            assert gguf.mode == (mode.partition("=")[2] or "completions")
            theirs = gguf.answer([gguf.prompt(q["instruction"]) for q in questions], settings)
        finally:
            gguf.close()
        assert [a.text for a in theirs] == [a.text for a in ours], mode
        assert [a.finish_reason for a in theirs] == [a.finish_reason for a in ours], mode
    assert sum(a.finish_reason == "eos" for a in ours) >= 10  # the run stops; so must the export


def test_the_modelfile_renders_kotunes_prompt_and_names_every_stop_string(exported, tuned, questions) -> None:
    from kotune.export.modelfile import parse_modelfile

    mf = parse_modelfile(exported.with_suffix(".Modelfile").read_text(encoding="utf-8"))
    assert mf["from"] == f"./{exported.name}"
    tok = tuned.tokenizer
    assert {v for k, v in mf["parameters"] if k == "stop"} == {tok.convert_ids_to_tokens(i) for i in tuned.eos_ids}
    for q in questions:
        assert render(mf["template"], {"Prompt": q["instruction"], "System": mf.get("system", "")}) == \
            tuned.prompt(q["instruction"])


def test_eval_compares_the_run_with_its_gguf_in_process_and_served(exported, trained_run, sample_split,
                                                                    tmp_path) -> None:
    """One eval, three columns: the PyTorch run, its GGUF in llama.cpp (``llamacpp:``), and the
    GGUF behind llama.cpp's own server (``kotune serve --model llamacpp:``, a real process)
    asked through the ``openai:`` endpoint path as a CPU server's users would."""
    out = tmp_path / "eval"
    with serve_process(["--model", f"llamacpp:{exported}"], tmp_path / "serve.log") as (url, _):
        res = call_cli(["eval", "--models", f"tuned={trained_run}", f"llamacpp:{exported}",
                        f"served=openai:{url}/v1#kotune@{trained_run}", "--questions", sample_split[1], "-o", out,
                        "--max-new-tokens", "48"])
    assert res.code == 0, res.err
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    models = metrics["models"]
    assert set(models) == {"tuned", "tiny.f32", "served"}
    a = models["tuned"]["overall"]
    for name in ("tiny.f32", "served"):
        b = models[name]["overall"]
        assert (b["rougeL"], b["eos_rate"]) == (a["rougeL"], a["eos_rate"]), name
    assert "tiny.f32" in (out / "report.html").read_text(encoding="utf-8")


def test_a_lora_kept_apart_is_applied_by_llama_cpp_and_ollamas_modelfile(trained_run, tuned, questions,
                                                                         tmp_path) -> None:
    """``--no-merge``: the base GGUF and the LoRA adapter GGUF (llama.cpp's adapter format), which
    llama.cpp applies at load: the pair answers token for token as the PyTorch run; the Modelfile
    names the adapter; a base moved away from its adapter is one line."""
    from kotune.export.modelfile import parse_modelfile
    from kotune.io import write_jsonl
    from kotune.model.access import GenerationSettings, open_model
    from kotune.model.llamacpp import ADAPTER_KEY, gguf_metadata

    target = tmp_path / "tiny.f32.gguf"
    res = call_cli(["export", "--model", trained_run, "--format", "gguf", "--quant", "f32", "--no-merge", "-o", target])
    assert res.code == 0, res.err
    adapter = tmp_path / "tiny.f32.lora.gguf"
    assert gguf_metadata(adapter, ("general.type", "adapter.type")) == {"general.type": "adapter",
                                                                       "adapter.type": "lora"}
    assert gguf_metadata(target, (ADAPTER_KEY,)) == {ADAPTER_KEY: adapter.name}
    assert parse_modelfile(target.with_suffix(".Modelfile").read_text(encoding="utf-8"))["adapter"] == f"./{adapter.name}"

    settings = GenerationSettings(max_new_tokens=48)
    prompts = [tuned.prompt(q["instruction"]) for q in questions[:8]]
    ours = tuned.answer(prompts, settings)
    pair = open_model(f"llamacpp:{target}")
    try:
        theirs = pair.answer(prompts, settings)
    finally:
        pair.close()
    assert [a.text for a in theirs] == [a.text for a in ours]
    base = open_model("builtin:tiny-ko", template=tuned.template.name, log=lambda *_: None)
    assert [a.text for a in base.answer(prompts, settings)] != [a.text for a in ours]  # the adapter is what answers
    base.close()

    adapter.rename(tmp_path / "elsewhere.gguf")
    write_jsonl(tmp_path / "q.jsonl", questions[:1])
    res = call_cli(["eval", "--models", f"llamacpp:{target}", "--questions", tmp_path / "q.jsonl", "-o", tmp_path / "eval"])
    assert res.code == 2 and len(res.err_lines) == 1 and "adapter tiny.f32.lora.gguf is not beside it" in res.err


def test_bad_exports_are_one_line_and_write_nothing(trained_run, tmp_path, monkeypatch) -> None:
    target = tmp_path / "x.gguf"
    res = call_cli(["export", "--model", trained_run, "--format", "gguf", "--quant", "q3_z", "-o", target])
    assert res.code == 2 and len(res.err_lines) == 1 and "unknown --quant 'q3_z'; one of" in res.err
    assert "q8_0" in res.err and not target.exists()
    res = call_cli(["export", "--model", trained_run, "--format", "gguf", "--dtype", "float16", "-o", target])
    assert res.code == 2 and res.err_lines == ["error: --dtype applies to --format hf; a GGUF file's tensor type is --quant"]
    # A run that has not finished.
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    info = json.loads((trained_run / "kotune.json").read_text(encoding="utf-8"))
    (unfinished / "kotune.json").write_text(json.dumps({**info, "status": "running"}), encoding="utf-8")
    res = call_cli(["export", "--model", unfinished, "--format", "gguf", "-o", target])
    assert res.code == 2 and res.err_lines == [f"error: {unfinished}: --model: training has not finished "
                                                "(status 'running'); finish or --resume it first"]
    # The gguf extra missing: one line naming the install command.
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.delitem(sys.modules, "kotune.export.gguf", raising=False)
    res = call_cli(["export", "--model", trained_run, "--format", "gguf", "-o", target])
    assert res.code == 2 and len(res.err_lines) == 1 and "pip install 'kotune[gguf]'" in res.err
    assert list(tmp_path.glob("x*")) == []


def test_a_gguf_model_that_cannot_run_is_one_line(tmp_path, monkeypatch, sample_split) -> None:
    res = call_cli(["eval", "--models", f"llamacpp:{tmp_path / 'none.gguf'}", "--questions", sample_split[1], "-o",
                    tmp_path / "e"])
    assert res.code == 2 and len(res.err_lines) == 1 and "no such GGUF file" in res.err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    res = call_cli(["chat", "--model", f"llamacpp:{bad}"])
    assert res.code == 2 and len(res.err_lines) == 1 and "not a GGUF file" in res.err
    res = call_cli(["chat", "--model", f"llamacpp:{bad}?mode=fast"])
    assert res.code == 2 and res.err_lines == [f"error: llamacpp:{bad}?mode=fast: unknown mode 'fast'; one of "
                                               "completions, chat"]
    import sys

    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    from kotune.model.llamacpp import start_server
    from kotune.errors import KotuneError

    with pytest.raises(KotuneError, match=r"pip install 'kotune\[llamacpp\]'"):
        start_server(bad)


def test_the_studio_chats_with_a_gguf_under_its_root_only(exported, tuned, tmp_path) -> None:
    """``llamacpp:PATH.gguf`` in the studio's chat: a file under ROOT answers (streamed, the run's
    template); a path outside ROOT is refused before anything loads."""
    import shutil

    from fastapi.testclient import TestClient

    from kotune.model.access import GenerationSettings
    from kotune.studio.app import create_app

    root = tmp_path / "root"
    (root / "exports").mkdir(parents=True)
    shutil.copy(exported, root / "exports" / "tiny.gguf")
    (root / "exports" / "tiny.lora.gguf").write_bytes(b"GGUF")  # an adapter kept apart: not offered on its own
    c = TestClient(create_app(root), base_url="http://127.0.0.1")
    page = c.get("/chat").text
    assert 'value="llamacpp:exports/tiny.gguf"' in page and "tiny.lora.gguf" not in page  # the picker offers it
    headers = {"X-Kotune-Studio": "1"}
    question = "국가초고성능컴퓨팅 기본계획은 무엇인가요?"
    with c.stream("POST", "/api/chat", json={"model": "llamacpp:exports/tiny.gguf", "question": question,
                                             "max_tokens": 48}, headers=headers) as res:
        assert res.status_code == 200
        events = [json.loads(line[5:]) for line in res.iter_lines() if line.startswith("data:")]
    ours = tuned.answer([tuned.prompt(question)], GenerationSettings(max_new_tokens=48))[0]
    assert events[0]["template"] == tuned.template.name
    assert "".join(e["text"] for e in events if "text" in e).strip() == ours.text
    res = c.post("/api/chat", json={"model": f"llamacpp:../{exported.name}", "question": question}, headers=headers)
    assert res.status_code in (400, 403) and "outside" in res.text


def test_re_quantizing_a_low_bit_base_to_low_bits_is_warned() -> None:
    """A base from a 4-bit GGUF (Gemma's Q4_K_M, file type 15) re-quantized to 4-6 bits loses the
    tuning (benchmarks/RESULTS.md): export says so; 8 bits and more, or a full-precision base, do not."""
    from kotune.export.to_gguf import requantize_warning

    assert "Q4_K_M GGUF file; re-quantizing to q4_k_m" in requantize_warning(15, "q4_k_m")
    assert requantize_warning(15, "q5_0") is not None
    assert requantize_warning(15, "q8_0") is None and requantize_warning(15, "f16") is None
    assert requantize_warning(None, "q4_k_m") is None and requantize_warning(1, "q4_0") is None  # from F16
