"""Preference tuning (DPO, ORPO, KTO, SimPO), preference data and `kotune pairs`, on tiny-ko.

The scenario is the insurance seed's: an SFT model that learned to run on past its
answer with a hallucinated sales line ("이번에 새로 나온 상품도 ...", the phrase the
seed added as a stop string). Pairs prefer the plain answer; preference tuning
from the SFT run must turn the model's preference around on held-out questions.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, _subprocess_env, call_cli, read_jsonl, serve_process
from helpers.cli import one_error_line

TAIL = " 이번에 새로 나온 상품도 함께 안내해 드립니다."


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _pairs(records):
    return [{"instruction": r["instruction"], "input": r["input"], "category": r["category"],
             "chosen": r["output"], "rejected": r["output"] + TAIL} for r in records]


@pytest.fixture(scope="module")
def tail_data(sample_split, tmp_path_factory):
    """SFT records whose answers carry the hallucinated tail, and pairs that reject it."""
    folder = tmp_path_factory.mktemp("pref")
    train, test = read_jsonl(sample_split[0]), read_jsonl(sample_split[1])
    sft = _write(folder / "sft.jsonl", [{**r, "output": r["output"] + TAIL} for r in train])
    return {"folder": folder, "sft": sft, "train_pairs": _write(folder / "pairs.jsonl", _pairs(train)),
            "test_pairs": _write(folder / "pairs-test.jsonl", _pairs(test)), "test": sample_split[1]}


@pytest.fixture(scope="module")
def sft_run(tail_data, tiny_model):
    out = tail_data["folder"] / "sft"
    # 80 steps learn the tail (the defaults' 240 do too, in three times the time)
    res = call_cli(["train", "--data", tail_data["sft"], "-o", out, "--template", "alpaca", "--max-steps", "80",
                    "--report-to", "none"])
    assert res.code == 0, res.err
    return out


@pytest.fixture(scope="module")
def dpo_run(tail_data, sft_run):
    out = tail_data["folder"] / "dpo"
    res = call_cli(["train", "--method", "dpo", "--from", sft_run, "--data", tail_data["train_pairs"],
                    "--eval-data", tail_data["test_pairs"], "-o", out, "--max-steps", "40", "--report-to", "none"])
    assert res.code == 0, res.err
    assert "Computing reference log probs" not in res.err  # kotune's one progress bar, not TRL's tqdm too
    return out


def _held_out_margins(run: Path, pairs_file: Path) -> list[float]:
    from kotune.data.preferences import read_preferences
    from kotune.train.preference import log_margins
    from kotune.model.resolve import load_resolved, resolve

    resolved = resolve(str(run), log=lambda *_: None)
    model = load_resolved(resolved)
    return log_margins(model, resolved.tokenizer, resolved.template, read_preferences(pairs_file))


# ---------------------------------------------------------------- training
def test_dpo_from_sft_turns_the_held_out_margin_positive(sft_run, dpo_run, tail_data):
    before = _held_out_margins(sft_run, tail_data["test_pairs"])
    after = _held_out_margins(dpo_run, tail_data["test_pairs"])
    assert sum(before) / len(before) <= 0  # the SFT model prefers running on into the sales line
    assert sum(after) / len(after) > 0
    info = json.loads((dpo_run / "kotune.json").read_text(encoding="utf-8"))
    p = info["preference"]
    assert p["method"] == "dpo" and p["from_run"] == str(sft_run.resolve()) and p["from_method"] == "lora"
    assert p["data"].endswith("pairs.jsonl") and p["pairs"] == len(read_jsonl(tail_data["train_pairs"]))
    assert p["eval_margin_before"] <= 0 < p["eval_margin_after"]
    assert info["status"] == "complete" and info["method"] == "lora" and info["final"]["steps"] == 40


def test_preference_run_keeps_the_sft_runs_template_eos_and_pad(sft_run, dpo_run):
    sft = json.loads((sft_run / "kotune.json").read_text(encoding="utf-8"))
    dpo = json.loads((dpo_run / "kotune.json").read_text(encoding="utf-8"))
    assert dpo["template"] == sft["template"] and dpo["template"]["name"] == "alpaca"
    assert dpo["base_model"] == sft["base_model"] and dpo["eos_token_ids"] == sft["eos_token_ids"]
    assert dpo["generation"]["pad_token_id"] not in dpo["eos_token_ids"]

    # EOS closes both answers, and the prompt is never supervised.
    from kotune.data.preferences import PreferenceRecord
    from kotune.model.loading import load_tokenizer
    from kotune.model.runinfo import RunInfo
    from kotune.model.templates import encode_preference

    tok = load_tokenizer(str(dpo_run))
    template = RunInfo.read(dpo_run).own_template
    enc = encode_preference(tok, template, PreferenceRecord("질문입니다", chosen="좋은 답.", rejected="나쁜 답."), 512)
    assert enc["chosen_ids"][-1] == tok.eos_token_id and enc["rejected_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["prompt_ids"]).endswith("### Response:\n")
    doctor = call_cli(["doctor", dpo_run])  # checks the preference data the run trained on
    assert doctor.code == 0 and "EOS ends every chosen" in doctor.err, doctor.err



def test_another_template_than_the_sft_runs_is_refused(sft_run, tail_data):
    one_error_line(call_cli(["train", "--method", "dpo", "--from", sft_run, "--data", tail_data["train_pairs"],
                             "-o", sft_run.parent / "other", "--template", "kotune"]),
                   "--template kotune", "trained with template 'alpaca'")
    one_error_line(call_cli(["train", "--method", "dpo", "--from", sft_run, "--base-model", "builtin:gemma-3-270m",
                             "--data", tail_data["train_pairs"], "-o", sft_run.parent / "other"]),
                   "drop --base-model")


def test_preference_run_loads_in_eval_chat_serve_and_export(sft_run, dpo_run, tail_data, tmp_path):
    res = call_cli(["eval", "--questions", tail_data["test"], "--models", f"sft={sft_run}", "--models", f"dpo={dpo_run}",
                    "-o", tmp_path / "ev", "--max-new-tokens", "48"])
    assert res.code == 0, res.err
    rows = read_jsonl(tmp_path / "ev" / "responses.jsonl")
    assert all(r["answers"]["sft"]["prompt"] == r["answers"]["dpo"]["prompt"] for r in rows)
    assert rows[0]["answers"]["dpo"]["prompt"].endswith("### Response:\n")
    # DPO (with its NLL term) removed the sales line the SFT model adds.
    assert sum(TAIL.strip()[:8] in r["answers"]["dpo"]["text"] for r in rows) < \
        sum(TAIL.strip()[:8] in r["answers"]["sft"]["text"] for r in rows)

    chat = subprocess.run([sys.executable, "-m", "kotune", "chat", "--model", str(dpo_run), "--max-new-tokens", "24"],
                          input="국가센터란 무엇인가요?\n/exit\n", cwd=REPO, env=_subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert chat.returncode == 0 and "(template alpaca)" in chat.stdout, chat.stderr

    with serve_process(["--model", dpo_run], tmp_path / "serve.log") as (url, _):
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            entry = json.loads(r.read())["data"][0]
    assert entry["kotune"]["template"]["name"] == "alpaca"

    merged = tmp_path / "merged"
    res = call_cli(["export", "--model", dpo_run, "-o", merged])
    assert res.code == 0, res.err
    exported = json.loads((merged / "kotune.json").read_text(encoding="utf-8"))
    assert exported["template"]["name"] == "alpaca" and exported["preference"]["method"] == "dpo"


@pytest.mark.parametrize("method", ["orpo", "simpo", "kto"])
def test_orpo_simpo_and_kto_train_from_the_sft_run(method, sft_run, tail_data, tmp_path):
    data = tail_data["train_pairs"]
    if method == "kto":
        rows = []
        for p in read_jsonl(data):
            rows.append({"prompt": p["instruction"], "completion": p["chosen"], "label": True})
            rows.append({"prompt": p["instruction"], "completion": p["rejected"], "label": False})
        data = _write(tmp_path / "kto.jsonl", rows)
    out = tmp_path / method
    res = call_cli(["train", "--method", method, "--from", sft_run, "--data", data, "-o", out, "--max-steps", "4",
                    "--report-to", "none"])
    assert res.code == 0, res.err
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "complete" and info["preference"]["method"] == method
    assert info["final"]["steps"] == 4 and info["template"]["name"] == "alpaca"
    assert (out / "adapter_model.safetensors").is_file()


def _three_padded_pairs(tiny_model, tmp_path):
    """tiny-ko (pad set) and three pairs of unequal lengths, encoded as kotune trains them: a batch with padding."""
    import torch

    from kotune.data.preferences import read_preferences
    from kotune.model.loading import ensure_pad_token, load_causal_lm, load_tokenizer
    from kotune.model.templates import get_template
    from kotune.train.preference import encode_records

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(str(tiny_model)), load_causal_lm(str(tiny_model), device="cpu")
    ensure_pad_token(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [{"instruction": "보험료는 언제 내나요?" * (1 + i), "chosen": "매월 말일에 냅니다." * (2 - i % 2),
             "rejected": "모릅니다." + TAIL * (i % 3)} for i in range(3)]
    ds, _ = encode_records(read_preferences(_write(tmp_path / "p.jsonl", rows)), tokenizer, get_template("alpaca"), 256)
    return tokenizer, model, ds


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_orpo_and_simpo_heads_give_trls_log_probabilities(method, tiny_model, tmp_path):
    """kotune's ORPO/CPO forward (the LM head on completion positions only) gives TRL's
    per-answer log-probabilities and CPO's NLL on the same padded batch; ORPO's NLL is the
    chosen answer's alone (TRL's also scores the prompt)."""
    import torch
    import torch.nn.functional as F

    from kotune.train.preference import _trainer_class

    tokenizer, model, ds = _three_padded_pairs(tiny_model, tmp_path)
    trainer_cls, config_cls = _trainer_class(method)
    extra = dict(loss_type="simpo", cpo_alpha=0.5) if method == "simpo" else {}
    args = config_cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=3, use_cpu=True, bf16=False,
                      report_to=[], gradient_checkpointing=False, max_length=512, max_completion_length=256,
                      remove_unused_columns=False, **extra)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    base = type(trainer).__mro__[1]  # TRL's own trainer
    with torch.no_grad():
        ours = trainer.concatenated_forward(trainer.model, batch)
        theirs = base.concatenated_forward(trainer, trainer.model, batch)
    assert torch.allclose(ours[0], theirs[0], atol=1e-4) and torch.allclose(ours[1], theirs[1], atol=1e-4)
    assert (ours[0] != ours[1]).all()
    if method == "simpo":
        assert abs(ours[4].item() - theirs[4].item()) < 1e-4
    else:  # the chosen answers' mean NLL, not the prompt's too
        labels = batch["chosen_labels"]
        with torch.no_grad():
            logits = trainer.model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
        want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        assert abs(ours[4].item() - want.item()) < 1e-4 and abs(ours[4].item() - theirs[4].item()) > 1e-3


@pytest.mark.parametrize("adapter", ["qlora", "full"])
def test_preference_on_qlora_and_full_weights(adapter, tail_data, tiny_model, tmp_path):
    out = tmp_path / adapter
    res = call_cli(["train", "--method", "dpo", "--adapter", adapter, "--data", tail_data["train_pairs"], "-o", out,
                    "--max-steps", "3", "--report-to", "none"])
    assert res.code == 0, res.err
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert info["method"] == adapter and info["preference"]["from_run"] is None
    assert (out / ("adapter_model.safetensors" if adapter == "qlora" else "model.safetensors")).is_file()


def test_dpo_completion_head_changes_no_number_of_trls_dpo(tiny_model, tmp_path):
    """kotune's DPO head (completion positions only, the batch packed into one row) gives
    TRL's own fused head's loss, metrics and gradients on the same batch."""
    import contextlib

    import torch
    from peft import LoraConfig
    from trl import DPOTrainer

    from kotune.train.packing import padding_free_attention
    from kotune.train.preference import _trainer_class

    tokenizer, model, ds = _three_padded_pairs(tiny_model, tmp_path)
    trainer_cls, config_cls = _trainer_class("dpo")
    args = config_cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=3, use_cpu=True, bf16=False,
                      report_to=[], gradient_checkpointing=False, max_length=None, loss_type=["sigmoid", "sft"],
                      loss_weights=[1.0, 1.0], remove_unused_columns=False, precompute_ref_log_probs=False)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                          peft_config=LoraConfig(r=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    for name, weight in trainer.model.named_parameters():
        if "lora_B" in name:  # a policy that differs from its reference (the adapter disabled)
            torch.nn.init.normal_(weight, std=0.05)
    batch = trainer.data_collator([ds[i] for i in range(3)])
    policy = trainer.model
    policy.train()
    seen = {}
    for who in ("trl", "kotune"):  # TRL's first: kotune's head is installed on its first loss
        for metrics in trainer._metrics.values():
            metrics.clear()
        policy.zero_grad()
        with padding_free_attention(model, "cpu") if who == "kotune" else contextlib.nullcontext():
            loss = (DPOTrainer._compute_loss(trainer, policy, batch, False) if who == "trl"
                    else trainer._compute_loss(policy, batch, False))
            loss.backward()
        grads = torch.cat([w.grad.flatten() for w in policy.parameters() if w.grad is not None])
        seen[who] = loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}, grads
    (trl_loss, trl_metrics, trl_grads), (loss, metrics, grads) = seen["trl"], seen["kotune"]
    assert abs(loss - trl_loss) < 1e-4 and trl_metrics["rewards/margins"] != 0
    assert metrics.keys() == trl_metrics.keys()
    assert all(abs(metrics[k] - trl_metrics[k]) < 1e-4 * max(1.0, abs(trl_metrics[k])) for k in metrics), (metrics, trl_metrics)
    assert torch.allclose(grads, trl_grads, atol=1e-5) and grads.abs().max() > 0


def test_sigkill_during_dpo_then_resume_finishes(sft_run, tail_data, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kotune", "train", "--method", "dpo", "--from", str(sft_run), "--data",
           str(tail_data["train_pairs"]), "-o", str(out), "--max-steps", "12", "--save-steps", "4", "--report-to", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "no first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "kotune.json").read_text(encoding="utf-8"))["status"] == "running"
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=_subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "complete" and info["final"]["steps"] == 12 and info["preference"]["method"] == "dpo"


# ---------------------------------------------------------------- bad input
def test_pair_without_rejected_is_one_error_line(tmp_path, tiny_model):
    data = _write(tmp_path / "p.jsonl", [{"instruction": "질문", "chosen": "답입니다.", "rejected": "틀린 답."},
                                         {"instruction": "질문2", "chosen": "답입니다."}])
    one_error_line(call_cli(["train", "--method", "dpo", "--data", data, "-o", tmp_path / "o"]),
                   'p.jsonl line 2: missing "rejected"')


def test_from_a_folder_that_is_not_a_run_is_one_error_line(tmp_path):
    data = _write(tmp_path / "p.jsonl", [{"instruction": "질문", "chosen": "답입니다.", "rejected": "틀린 답."}])
    (tmp_path / "notarun").mkdir()
    one_error_line(call_cli(["train", "--method", "dpo", "--from", tmp_path / "notarun", "--data", data,
                             "-o", tmp_path / "o"]), "--from: not a kotune output")
    one_error_line(call_cli(["train", "--method", "dpo", "--from", tmp_path / "missing", "--data", data,
                             "-o", tmp_path / "o"]), "--from: no such folder")


def test_kto_on_pairs_without_labels_is_one_error_line(tmp_path):
    data = _write(tmp_path / "p.jsonl", [{"instruction": "질문", "chosen": "답입니다.", "rejected": "틀린 답."}])
    one_error_line(call_cli(["train", "--method", "kto", "--data", data, "-o", tmp_path / "o"]),
                   "--method kto learns from labelled answers")


def test_dpo_on_labelled_answers_and_unknown_adapter_are_refused(tmp_path):
    data = _write(tmp_path / "k.jsonl", [{"prompt": "질문", "completion": "답입니다.", "label": True}])
    one_error_line(call_cli(["train", "--method", "dpo", "--data", data, "-o", tmp_path / "o"]), "use --method kto")
    one_error_line(call_cli(["train", "--method", "dpo", "--adapter", "dora", "--data", data, "-o", tmp_path / "o"]),
                   "unknown --adapter 'dora'")
    one_error_line(call_cli(["train", "--method", "lora", "--adapter", "qlora", "--data", data, "-o", tmp_path / "o"]),
                   "--adapter applies to preference methods")
    one_error_line(call_cli(["train", "--method", "kto", "--sft-weight", "1", "--data", data, "-o", tmp_path / "o"]),
                   "--sft-weight applies to dpo and simpo")


# ---------------------------------------------------------------- data formats and validation
def test_every_preference_format_reads_to_the_same_record(tmp_path):
    from kotune.data.preferences import read_preferences

    rows = [
        {"instruction": "보험료는?", "input": "[참고]", "chosen": "월 3만 원입니다.", "rejected": "무료입니다."},
        {"prompt": "보험료는?", "context": "[참고]", "chosen": "월 3만 원입니다.", "rejected": "무료입니다."},
        {"prompt": [{"role": "system", "content": "상담원"}, {"role": "user", "content": "보험료는?"}],
         "chosen": [{"role": "assistant", "content": "월 3만 원입니다."}],
         "rejected": [{"role": "assistant", "content": "무료입니다."}]},
        {"chosen": [{"role": "user", "content": "보험료는?"}, {"role": "assistant", "content": "월 3만 원입니다."}],
         "rejected": [{"role": "user", "content": "보험료는?"}, {"role": "assistant", "content": "무료입니다."}]},
    ]
    recs = [read_preferences(_write(tmp_path / f"{i}.jsonl", [r]))[0] for i, r in enumerate(rows)]
    assert all(r.instruction == "보험료는?" and r.chosen == "월 3만 원입니다." and r.rejected == "무료입니다." for r in recs)
    assert recs[0].input == recs[1].input == "[참고]" and recs[2].extra.get("system") == "상담원"
    kto = read_preferences(_write(tmp_path / "kto.jsonl", [{"prompt": "보험료는?", "completion": "월 3만 원입니다.",
                                                             "label": "true"}]))[0]
    assert not kto.paired and kto.label is True and kto.completion == "월 3만 원입니다."


def test_validate_counts_dropped_pairs_per_reason(tmp_path, cli):
    good = {"instruction": "보험료는 얼마인가요?", "chosen": "보험료는 월 3만 원입니다.", "rejected": "무료로 드립니다."}
    rows = [good, dict(good),                                                      # duplicate
            {**good, "instruction": "해지하면?", "rejected": good["chosen"]},        # chosen = rejected
            {**good, "instruction": "기간은?", "chosen": "1년"},                    # chosen too short
            {**good, "instruction": "누가?", "chosen": "계약자가 보험료를 납부하고"},  # chosen cut off
            {"instruction": "언제?", "chosen": "계약일부터 보장합니다."}]             # missing rejected
    res = cli(["validate", _write(tmp_path / "p.jsonl", rows), "-o", tmp_path / "clean.jsonl",
               "--report", tmp_path / "rep.json"])
    assert res.code == 0, res.err
    rep = json.loads((tmp_path / "rep.json").read_text(encoding="utf-8"))
    assert rep["kept"] == 1 and rep["dropped_by_reason"] == {"missing_fields": 1, "same_answers": 1, "duplicate": 1,
                                                             "chosen_fails": 2}
    assert rep["chosen_problems"] == {"too_short": 1, "incomplete": 1}
    assert read_jsonl(tmp_path / "clean.jsonl")[0]["chosen"] == good["chosen"]


# ---------------------------------------------------------------- pair mining
def test_pairs_rejects_the_flagged_answers_and_chooses_valid_references(sft_run, tail_data, tmp_path):
    out = tmp_path / "mined.jsonl"
    res = call_cli(["pairs", "--model", sft_run, "--questions", tail_data["test"], "--samples", "2",
                    "--max-new-tokens", "64", "-o", out])
    assert res.code == 0, res.err
    pairs = read_jsonl(out)
    assert pairs and all(p["rejected_errors"] for p in pairs)
    # The SFT model's sales line is content its reference and question never mention.
    assert any("근거 없음" in p["rejected_errors"] for p in pairs)
    from kotune.data.preferences import read_preferences, validate_preferences

    checked = validate_preferences(read_preferences(out))
    assert len(checked.kept) == len(pairs) and not checked.dropped
    summary = json.loads((tmp_path / "mined.summary.json").read_text(encoding="utf-8"))
    assert summary["pairs"] == len(pairs) and summary["rejected_error_types"]["근거 없음"] >= 1
    assert "근거 없음" in res.err  # the table of pairs per failure type
    assert not list(tmp_path.glob(".mined.jsonl.samples-*"))  # the journal is gone once the output is written


def test_pairs_resume_asks_only_for_missing_answers(sft_run, tail_data, tmp_path, monkeypatch):
    from kotune.model.generation import Generator
    from kotune.options import PairsOptions
    from kotune.recipe.steps import pairs as run_pairs

    out = tmp_path / "p.jsonl"
    asked: list[int] = []
    real = Generator.generate

    def counting(self, prompts, settings=None, batch_size=16):
        asked.append(len(prompts))
        if sum(asked) > 8 and not getattr(counting, "resumed", False):
            raise KeyboardInterrupt  # the run dies after its first batches were journaled
        return real(self, prompts, settings, batch_size)

    monkeypatch.setattr(Generator, "generate", counting)
    opts = PairsOptions(samples=2, max_new_tokens=24, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        run_pairs(str(sft_run), out, opts, questions=tail_data["test"])
    journaled = sum(1 for _ in next(tmp_path.glob(".p.jsonl.samples-*")).open(encoding="utf-8"))
    assert journaled == 8 and not out.exists()
    counting.resumed = True
    asked.clear()
    run_pairs(str(sft_run), out, opts, questions=tail_data["test"])
    n_questions = len(read_jsonl(tail_data["test"]))
    assert sum(asked) == 2 * n_questions - journaled and out.exists()


def test_pairs_from_an_eval_folder(sft_run, tail_data, tmp_path):
    ev = tmp_path / "ev"
    assert call_cli(["eval", "--questions", tail_data["test"], "--models", f"tuned={sft_run}", "-o", ev,
                     "--max-new-tokens", "48"]).code == 0
    res = call_cli(["pairs", "--from-eval", ev, "--format", "kto", "-o", tmp_path / "kto.jsonl"])
    assert res.code == 0, res.err
    rows = read_jsonl(tmp_path / "kto.jsonl")
    responses = {r["question"]: r for r in read_jsonl(ev / "responses.jsonl")}
    bad = [r for r in rows if r["label"] is False]
    assert bad and len(bad) * 2 == len(rows)
    for r in bad:  # the rejected answer is the eval's flagged answer, chosen its reference
        assert r["completion"] == responses[r["instruction"]]["answers"]["tuned"]["text"] and r["errors"]
    assert all(r["completion"] == responses[r["instruction"]]["reference"] for r in rows if r["label"])
    one_error_line(call_cli(["pairs", "--from-eval", ev, "--model", "nope", "-o", tmp_path / "x.jsonl"]),
                   "--model nope: not in this eval")
