"""`kotune export`: the merged model is a plain transformers model that answers
exactly like base + adapter, stops at the run's EOS, and keeps the run's template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import call_cli


@pytest.fixture(scope="module")
def run_info(trained_run) -> dict:
    return json.loads((trained_run / "kotune.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def merged(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "merged"
    res = call_cli(["export", "--model", trained_run, "-o", out])
    assert res.code == 0, res.err
    assert res.out.strip() == f"vllm serve {out.resolve()}"
    return out


@pytest.fixture(scope="module")
def prompts(sample_split, run_info) -> list[str]:
    from kotune.records import read_records
    from kotune.model.templates import Template

    template = Template.from_dict(run_info["template"])
    return [template.prompt(r.instruction) for r in read_records(sample_split[1])[:6]]


def _greedy(model, tokenizer, prompt: str, **kw) -> list[int]:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=40, do_sample=False, **kw)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_merged_model_loads_with_plain_transformers_and_answers_like_base_plus_adapter(merged, trained_run, run_info,
                                                                                        tiny_model, prompts):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft = PeftModel.from_pretrained(base, str(trained_run)).eval()
    eos = run_info["eos_token_ids"]
    stopped = 0
    assert len(prompts) >= 5
    for p in prompts:
        # The merged model stops by its own generation_config; PEFT is told the run's EOS ids.
        got = _greedy(plain, tok, p)
        want = _greedy(peft, tok, p, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        assert got == want, p
        stopped += got[-1] in eos
    assert stopped >= 1, "the run stops with EOS; the merged model must too"


def test_generation_config_template_and_run_info(merged, trained_run, run_info, prompts):
    from transformers import AutoTokenizer, GenerationConfig

    gc = GenerationConfig.from_pretrained(merged)
    eos = run_info["eos_token_ids"]
    assert (gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id]) == eos
    tok = AutoTokenizer.from_pretrained(merged)
    assert gc.pad_token_id == tok.pad_token_id and gc.pad_token_id not in eos
    info = json.loads((merged / "kotune.json").read_text(encoding="utf-8"))
    assert info["method"] == "merged" and info["template"] == run_info["template"]
    assert info["eos_token_ids"] == eos and info["exported_from"]["method"] == run_info["method"]
    assert not (merged / "adapter_config.json").exists() and not (merged / "checkpoints").exists()
    assert list(merged.glob("*.safetensors"))
    # vLLM's chat endpoint applies the tokenizer's chat template: it renders the training format.
    from kotune.model.templates import Template

    template = Template.from_dict(run_info["template"])
    q = "이 계획의 총사업비는 얼마인가요?"
    rendered = tok.apply_chat_template([{"role": "system", "content": "무시됨"}, {"role": "user", "content": q}],
                                       tokenize=False, add_generation_prompt=True)
    assert rendered == template.prompt(q)


def test_kotune_serve_engine_uses_the_merged_weights(merged, trained_run, prompts):
    from kotune.model.answers import GenerationSettings
    from kotune.model.generation import Generator
    from kotune.serve.engine import Engine

    settings = GenerationSettings(max_new_tokens=32)
    engine = Engine(str(merged), log=lambda *_: None)
    served = engine.served[str(merged)]
    assert served.generator.template.name == Generator(str(trained_run), log=lambda *_: None).template.name
    tuned = Generator(str(trained_run), log=lambda *_: None)
    got = engine.generate(str(merged), prompts[:3], settings)
    want = tuned.generate(prompts[:3], settings)
    assert [a.text for a in got] == [a.text for a in want]


def test_no_merge_prints_the_vllm_lora_command_and_writes_nothing(trained_run, tmp_path):
    before = sorted(p.name for p in trained_run.iterdir())
    res = call_cli(["export", "--model", trained_run, "--no-merge", "--name", "policy"])
    assert res.code == 0, res.err
    cmd = res.out.strip()
    assert cmd.startswith("vllm serve ") and "--enable-lora" in cmd and f"--lora-modules policy={trained_run.resolve()}" in cmd
    assert sorted(p.name for p in trained_run.iterdir()) == before
    # With -o, only the chat template vLLM needs for the run's format is written.
    res = call_cli(["export", "--model", trained_run, "--no-merge", "-o", tmp_path / "lora"])
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "lora").iterdir()] == ["chat_template.jinja"]
    assert f"--chat-template {(tmp_path / 'lora' / 'chat_template.jinja').resolve()}" in res.out


def test_a_full_model_folder_is_copied(merged, tmp_path):
    from transformers import AutoModelForCausalLM

    res = call_cli(["export", "--model", merged, "-o", tmp_path / "copy"])
    assert res.code == 0, res.err
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "copy") is not None
    assert json.loads((tmp_path / "copy" / "kotune.json").read_text(encoding="utf-8"))["method"] == "merged"
    res = call_cli(["export", "--model", merged, "--no-merge"])
    assert res.code == 0 and res.out.strip() == f"vllm serve {merged.resolve()}"


def test_export_errors_are_one_line(trained_run, merged, tmp_path):
    def one_error(args, needle):
        res = call_cli(args)
        assert res.code == 2, res
        assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error:") and needle in res.err, res.err

    (tmp_path / "plain").mkdir()
    one_error(["export", "--model", tmp_path / "plain", "-o", tmp_path / "x"], "no kotune.json")
    one_error(["export", "--model", tmp_path / "missing", "-o", tmp_path / "x"], "no such folder")
    one_error(["export", "--model", trained_run], "-o")
    one_error(["export", "--model", trained_run, "-o", merged], "not empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me", encoding="utf-8")
    one_error(["export", "--model", trained_run, "-o", tmp_path / "notes", "--overwrite"], "earlier export")
    assert (tmp_path / "notes" / "todo.txt").exists()
    # --overwrite replaces an earlier export.
    again = tmp_path / "again"
    shutil.copytree(merged, again)
    (again / "stale.bin").write_bytes(b"x")
    res = call_cli(["export", "--model", trained_run, "-o", again, "--overwrite"])
    assert res.code == 0, res.err
    assert not (again / "stale.bin").exists() and (again / "kotune.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))
