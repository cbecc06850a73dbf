"""`kotune doctor` flags each classic pitfall on a broken setup and passes a kotune-made one."""

from __future__ import annotations

import json
import shutil

import pytest

from kotune.train.doctor import DoctorSetup, diagnose

from conftest import call_cli


def _by_code(findings):
    return {f.code: f for f in findings}


@pytest.fixture(scope="module")
def raw_text_data(tmp_path_factory):
    """The insurance seed's phase-1 data: whole strings, no EOS, prompt included in the loss."""
    path = tmp_path_factory.mktemp("raw") / "train_dataset.json"
    rows = [{"text": f"### 지시\n제{i}조의 보장 내용은 무엇인가요?\n### 입력\n제{i}조 회사는 입원급여금을 지급합니다.\n### 출력\n"
                     f"제{i}조에 따라 회사는 입원급여금을 지급합니다."} for i in range(1, 6)]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_kotune_made_setup_passes(trained_run):
    findings = diagnose(DoctorSetup(run_dir=str(trained_run)), log=lambda *_: None)
    bad = [f.code for f in findings if not f.ok]
    assert bad == []
    res = call_cli(["doctor", trained_run])
    assert res.code == 0, res.err
    assert "no pitfalls found" in res.err


def test_eos_missing_from_labels_is_flagged(raw_text_data):
    f = _by_code(diagnose(DoctorSetup(base_model="builtin:tiny-ko", data=str(raw_text_data)), log=lambda *_: None))
    assert not f["eos_in_labels"].ok
    assert "5 of 5 samples" in f["eos_in_labels"].message


def test_prompt_tokens_in_loss_are_flagged(raw_text_data, sample_split):
    f = _by_code(diagnose(DoctorSetup(base_model="builtin:tiny-ko", data=str(raw_text_data)), log=lambda *_: None))
    assert not f["prompt_in_loss"].ok
    f = _by_code(diagnose(DoctorSetup(base_model="builtin:tiny-ko", data=str(sample_split[0]), loss_on="full"), log=lambda *_: None))
    assert not f["prompt_in_loss"].ok


def test_pad_equal_to_eos_is_flagged(sample_split, tiny_model, tmp_path):
    f = _by_code(diagnose(DoctorSetup(base_model="builtin:tiny-ko", data=str(sample_split[0]), pad_token="eos"), log=lambda *_: None))
    assert not f["pad_is_eos"].ok
    # The same through a real model folder whose tokenizer was saved with pad = eos.
    from transformers import AutoTokenizer

    model_dir = tmp_path / "pad-eos-model"
    shutil.copytree(tiny_model, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(model_dir)
    res = call_cli(["doctor", "--base-model", model_dir, "--data", sample_split[0]])
    assert res.code == 1
    assert "pad_is_eos" in res.err


def test_lora_targets_missing_from_architecture_are_flagged(sample_split):
    f = _by_code(diagnose(DoctorSetup(base_model="builtin:tiny-ko", data=str(sample_split[0]),
                                      lora_targets=["q_proj", "v_proj"]), log=lambda *_: None))
    assert not f["lora_targets"].ok
    assert "q_proj" in f["lora_targets"].message and "query_key_value" in f["lora_targets"].fix


def test_truncated_samples_are_counted(sample_split):
    f = _by_code(diagnose(DoctorSetup(base_model="builtin:tiny-ko", data=str(sample_split[0]), max_length=24),
                          log=lambda *_: None))
    assert not f["truncation"].ok
    n = sum(1 for _ in open(sample_split[0], encoding="utf-8"))
    assert f"of {n} samples are longer than max_length 24" in f["truncation"].message


def test_inference_template_differing_from_training_is_flagged(trained_run):
    f = _by_code(diagnose(DoctorSetup(run_dir=str(trained_run), inference_template="alpaca"), log=lambda *_: None))
    assert not f["template_mismatch"].ok
    res = call_cli(["doctor", trained_run, "--inference-template", "alpaca"])
    assert res.code == 1 and "template_mismatch" in res.err


def test_a_template_other_than_the_runs_is_refused_as_everywhere(trained_run):
    """The resolver's one rule: doctor, like eval/chat/serve, refuses --template naming another
    template than the run's (before, doctor silently checked the run with the other template)."""
    res = call_cli(["doctor", trained_run, "--template", "alpaca"])
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert "trained with template 'kotune'" in res.err_lines[0] and "drop --template" in res.err_lines[0]
    assert call_cli(["doctor", trained_run, "--template", "kotune"]).code == 0


def test_token_type_ids_the_model_rejects_are_flagged(sample_split, tiny_model, tmp_path):
    model_dir = tmp_path / "tti-model"
    shutil.copytree(tiny_model, model_dir)
    # Polyglot-ko's tokenizer returns token_type_ids, which GPT-NeoX's forward() does not take.
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    f = _by_code(diagnose(DoctorSetup(base_model=str(model_dir), data=str(sample_split[0])), log=lambda *_: None))
    assert not f["token_type_ids"].ok
