"""`kotune train`: outputs, methods, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, _subprocess_env, call_cli, read_jsonl
from helpers.cli import one_error_line


def test_output_folder_holds_adapter_tokenizer_and_run_info(trained_run, sample_split):
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "kotune.json"):
        assert (trained_run / name).is_file(), name
    info = json.loads((trained_run / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "complete"
    assert info["base_model"] == "builtin:tiny-ko"
    assert info["method"] == "lora"
    assert info["template"]["name"] == "kotune"
    assert len(info["data"]["sha256"]) == 64
    assert info["final"]["train_loss"] > 0 and info["final"]["eval_loss"] > 0
    assert info["config"]["preset"] == "balanced"
    assert info["eos_token_ids"] == [0]


def test_adapter_loads_with_plain_peft(trained_run, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, trained_run).eval()
    tok = AutoTokenizer.from_pretrained(trained_run)
    ids = tok("### 지시\n국가센터란 무엇인가요?\n\n### 출력\n", return_tensors="pt")
    with torch.no_grad():
        assert model(**ids).logits.shape[-1] == base.config.vocab_size


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_qlora_and_full_train_and_save_on_cpu(method, sample_split, tmp_path, tiny_model):
    out = tmp_path / method
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", out, "--method", method,
                    "--max-steps", "3", "--report-to", "none"])
    assert res.code == 0, res.err
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "complete" and info["method"] == method
    if method == "qlora":
        assert (out / "adapter_model.safetensors").is_file()
        cfg = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
        assert cfg["r"] == 16 and cfg["target_modules"]
    else:
        assert (out / "model.safetensors").is_file()
        assert not (out / "adapter_config.json").exists()


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "kotune", "train", "--data", str(data), "--output-dir", str(out),
            "--max-steps", "16", "--save-steps", "4", "--report-to", "none", "--seed", "7", *extra]


def test_sigkill_then_resume_matches_uninterrupted_run(sample_split, tmp_path, tiny_model):
    env = _subprocess_env()
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(sample_split[0], straight), cwd=REPO, env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(sample_split[0], killed), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    first = killed / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "no first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = json.loads((killed / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "running"  # it really died before finishing

    # Without --resume the folder is protected.
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", killed, "--max-steps", "16"])
    assert res.code == 2 and "--resume" in res.err

    done = subprocess.run(_train_cmd(sample_split[0], killed, "--resume"), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = json.loads((straight / "kotune.json").read_text(encoding="utf-8"))["final"]
    b = json.loads((killed / "kotune.json").read_text(encoding="utf-8"))["final"]
    assert b["steps"] == a["steps"] == 16
    assert abs(a["eval_loss"] - b["eval_loss"]) <= 0.01 * a["eval_loss"]

    # The adapter itself is the resumed one: same keys and shapes as the uninterrupted run's.
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wb.items()}


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing overwritten
def test_missing_data_file(tmp_path):
    res = call_cli(["train", "--data", tmp_path / "nope.jsonl", "--output-dir", tmp_path / "out"])
    one_error_line(res, "nope.jsonl")
    assert not (tmp_path / "out").exists()


def test_zero_usable_records(tmp_path):
    data = tmp_path / "empty_answers.jsonl"
    data.write_text('{"instruction": "질문입니다", "output": ""}\n{"instruction": "", "output": "답입니다."}\n', encoding="utf-8")
    res = call_cli(["train", "--data", data, "--output-dir", tmp_path / "out"])
    one_error_line(res, "empty_answers.jsonl", "no usable records")
    assert not (tmp_path / "out").exists()


def test_template_field_missing_from_data(sample_split, tmp_path):
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", tmp_path / "out", "--template", "rag"])
    one_error_line(res, "input")
    assert not (tmp_path / "out").exists()


def test_unknown_preset(sample_split, tmp_path):
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", tmp_path / "out", "--preset", "turbo"])
    one_error_line(res, "turbo", "balanced")


@pytest.mark.parametrize("option,value,listed", [("--batching", "foo", "padding_free"),
                                                 ("--scheduler", "cosin", "cosine")])
def test_unknown_enum_values_are_refused_before_loading(sample_split, tmp_path, option, value, listed):
    # Before: --batching foo trained padded in random order without a word.
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", tmp_path / "out", option, value])
    one_error_line(res, f"unknown {option} '{value}'", listed)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n_records,epochs,batch,min_steps,want_epochs,want_batch,changed", [
    (18, None, None, 30, 4.0, 2, True),    # 3 steps an epoch at 8: 2 a step gives 9 × 4 = 36 steps, same cost
    (400, None, None, 30, 4.0, 8, False),  # 50 steps an epoch: the preset stands
    (18, 4.0, None, 30, 4.0, 2, True),     # an explicit --epochs is kept; the batch still shrinks
    (18, None, 8, 30, 10.0, 8, True),      # an explicit --batch-size is kept: epochs rise instead
    (18, 4.0, 8, 30, 4.0, 8, False),       # both given: the user's choice
    (18, None, None, 0, 4.0, 8, False),    # --min-steps 0 turns it off
    (2, None, None, 30, 30.0, 2, True),    # one step an epoch even at 2: epochs capped at MAX_AUTO_EPOCHS
])
def test_min_steps_lowers_the_batch_then_raises_epochs_on_small_data(n_records, epochs, batch, min_steps, want_epochs,
                                                                      want_batch, changed):
    from kotune.train.sft import TrainConfig

    config = TrainConfig(base_model="m", data="d", output_dir="o", epochs=epochs, batch_size=batch,
                         min_steps=min_steps).resolved()
    got, reason = config.with_min_steps(n_records, epochs_given=epochs is not None, batch_given=batch is not None)
    assert (got.epochs, got.batch_size) == (want_epochs, want_batch) and (reason is not None) == changed
    if changed:
        assert f"{n_records} records" in reason and "--min-steps" in reason


@pytest.mark.parametrize("method,device,preset,asked,expected", [
    ("qlora", "cuda", "balanced", None, True),      # QLoRA on a GPU: memory first
    ("qlora", "cpu", "balanced", None, False),      # CPU: speed first
    ("lora", "cuda", "balanced", None, False),
    ("full", "cuda", "balanced", None, False),
    ("qlora", "cuda", "balanced", False, False),    # --no-gradient-checkpointing wins
    ("lora", "cpu", "balanced", True, True),
    ("lora", "cpu", "memory_efficient", None, True),
])
def test_gradient_checkpointing_default_depends_on_method_and_device(method, device, preset, asked, expected):
    from kotune.train.sft import TrainConfig

    config = TrainConfig(base_model="m", data="d", output_dir="o", method=method, preset=preset,
                         gradient_checkpointing=asked)
    assert config.resolved(device=device).gradient_checkpointing is expected


def test_output_dir_with_another_run_is_not_overwritten(trained_run, sample_split, tmp_path):
    before = (trained_run / "kotune.json").read_bytes()
    weights = (trained_run / "adapter_model.safetensors").read_bytes()
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_jsonl(sample_split[1])), encoding="utf-8")
    res = call_cli(["train", "--data", other, "--output-dir", trained_run])
    one_error_line(res, "--resume", "--overwrite")
    res = call_cli(["train", "--data", other, "--output-dir", trained_run, "--resume"])
    one_error_line(res, "different run")
    assert (trained_run / "kotune.json").read_bytes() == before
    assert (trained_run / "adapter_model.safetensors").read_bytes() == weights


def test_overwrite_refuses_a_folder_that_is_not_a_kotune_run(sample_split, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    res = call_cli(["train", "--data", sample_split[0], "--output-dir", precious, "--overwrite"])
    one_error_line(res, "not a kotune output")
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_two_process_ddp_on_cpu_trains(sample_split, tmp_path, tiny_model):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine: DDP over gloo."""
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kotune", "train",
           "--data", str(sample_split[0]), "--output-dir", str(out), "--max-steps", "12", "--report-to", "none",
           "--logging-steps", "2"]
    res = subprocess.run(cmd, cwd=REPO, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "complete" and info["processes"] == 2
    assert info["final"]["steps"] == 12
    assert info["final"]["eval_loss"] < info["final"]["initial_eval_loss"]
    assert res.stderr.count("training lora on") == 1  # only rank 0 reports


def test_a_folder_left_by_a_run_killed_while_loading_does_not_block_the_rerun(tmp_path):
    # Trainer makes OUT/checkpoints before kotune.json is written; a kill in between left a
    # folder that refused both --overwrite ("not a kotune output") and a plain rerun.
    from kotune.train.sft import TrainConfig, prepare_output_dir

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    config = TrainConfig(base_model="builtin:tiny-ko", data="d.jsonl", output_dir=str(out))
    assert prepare_output_dir(out, config, resume=False, overwrite=False) is None
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # anything else is still protected
    with pytest.raises(Exception, match="already holds other files"):
        prepare_output_dir(out, config, resume=False, overwrite=False)
