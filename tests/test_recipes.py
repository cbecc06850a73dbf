"""`kotune run RECIPE.yaml`: every bundled recipe end to end (at a reduced size),
up-to-date steps skipped, a killed run resumed, bad recipes rejected before any work."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, _subprocess_env, call_cli, read_jsonl

RECIPES = REPO / "recipes"
ALL = ("policy-qa", "insurance-rag-qlora", "civil-law-qa", "dialogue-summary", "question-generation")
REAL_MODELS = {"policy-qa": "EleutherAI/polyglot-ko-1.3b", "insurance-rag-qlora": "beomi/Llama-3-Open-Ko-8B",
               "civil-law-qa": "meta-llama/Llama-3.2-1B", "dialogue-summary": "EleutherAI/polyglot-ko-5.8b",
               "question-generation": "google/gemma-3-1b-it"}
# Every step runs, on fewer optimizer steps and eval questions than the full recipe.
SMALL = ["--max-steps", "6", "--set", "steps.eval.limit=4", "--set", "steps.eval.max_new_tokens=16",
         "--set", "steps.eval.train_sample=null", "--set", "steps.train.report_to=none"]


# The insurance recipe's preference round, as small: a few questions, short samples, few DPO steps.
SMALL_PREFERENCE = ["--set", "steps.pairs.limit=6", "--set", "steps.pairs.samples=2",
                    "--set", "steps.pairs.max_new_tokens=24", "--set", "steps.prefer.max_steps=3",
                    "--set", "steps.prefer.report_to=none", "--set", "steps.grpo.max_steps=2",
                    "--set", "steps.grpo.max_completion_length=16", "--set", "steps.grpo.report_to=none"]


def _run(name: str, out: Path, *extra: str):
    small = SMALL + (SMALL_PREFERENCE if name == "insurance-rag-qlora" else [])
    return call_cli(["run", RECIPES / f"{name}.yaml", "-o", out, *small, *extra])


def _state(out: Path) -> dict:
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "policy"
    res = _run("policy-qa", out)
    assert res.code == 0, res.err[-3000:]
    return out


# ---------------------------------------------------------------- every recipe, every step
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_recipe_runs_every_step_end_to_end(name: str, tmp_path: Path, tiny_model, policy_run: Path) -> None:
    import yaml

    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text(encoding="utf-8"))
    out = policy_run if name == "policy-qa" else tmp_path / name
    if name != "policy-qa":
        res = _run(name, out)
        assert res.code == 0, res.err[-3000:]
    steps = _state(out)["steps"]
    assert set(steps) == set(recipe["steps"]) and all(s["status"] == "done" for s in steps.values())

    run = json.loads((out / "model" / "kotune.json").read_text(encoding="utf-8"))
    train = recipe["steps"]["train"]
    assert run["status"] == "complete" and (out / "model" / "adapter_model.safetensors").is_file()
    assert run["method"] == train.get("method", "lora") and run["template"]["name"] == train["template"]
    assert run["final"]["steps"] == 6
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))["models"]
    models = ({"base", "tuned"} | ({recipe["steps"]["prefer"]["method"]} if "prefer" in recipe["steps"] else set())
              | ({"grpo"} if "grpo" in recipe["steps"] else set()))
    assert set(metrics) == models
    assert recipe["steps"]["eval"]["headline"] in metrics["tuned"]["overall"]
    html = (out / "eval" / "report.html").read_text(encoding="utf-8")
    assert all(m in html for m in models)
    responses = read_jsonl(out / "eval" / "responses.jsonl")
    assert len(responses) == 4 and all(set(r["answers"]) == models for r in responses)

    train_rows, test_rows = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert train_rows and test_rows
    if name == "insurance-rag-qlora":  # RAG-style: the chunk is the input, retrieval at eval
        assert all(r["input"].startswith("[문서 1]") for r in train_rows)
        # The seed's third round: SFT answers mined into pairs, DPO from the SFT run, three models compared.
        preferred = json.loads((out / "model-dpo" / "kotune.json").read_text(encoding="utf-8"))
        assert preferred["preference"]["method"] == "dpo" and preferred["final"]["steps"] == 3
        assert preferred["preference"]["from_run"] == str((out / "model").resolve())
        assert preferred["template"]["name"] == "rag" and preferred["method"] == "qlora"
        assert all(p["rejected_errors"] for p in read_jsonl(out / "pairs.jsonl"))
        # ... and GRPO from the same SFT run, its metrics as rewards (all answerable: no abstain term).
        reinforced = json.loads((out / "model-grpo" / "kotune.json").read_text(encoding="utf-8"))
        assert reinforced["grpo"]["from_run"] == str((out / "model").resolve()) and reinforced["final"]["steps"] == 2
        assert reinforced["grpo"]["rewards"] == {"facts": 1.0, "grounded": 1.0, "eos": 0.5, "repetition": 0.5}
        assert reinforced["template"]["name"] == "rag"
        assert all(a["retrieved"] for r in responses for a in r["answers"].values())
        assert metrics["tuned"]["overall"]["unsupported_rate"] is not None
    if name == "civil-law-qa":  # per-category system prompts saved with the template
        assert set(run["template"]["system_prompts"]) == {r["category"] for r in train_rows}
    if name == "dialogue-summary":  # augmented instructions, never across train/test
        variants = [r for r in train_rows if "#a" in r["id"]]
        assert variants and len({r["instruction"] for r in train_rows}) > 1
        assert not {r["id"].split("#a")[0] for r in variants} & {r["id"] for r in test_rows}
    if name == "question-generation":  # several questions per paragraph kept, paragraphs not split
        assert len(train_rows) > len({r["input"] for r in train_rows})
        assert not {r["input"] for r in train_rows} & {r["input"] for r in test_rows}


def test_bundled_recipes_name_the_seed_models_and_check_clean(tmp_path: Path) -> None:
    for name in ALL:
        text = (RECIPES / f"{name}.yaml").read_text(encoding="utf-8")
        assert f"# base_model: {REAL_MODELS[name]}" in text, name
        res = call_cli(["run", RECIPES / f"{name}.yaml", "-o", tmp_path / name, "--dry-run"])
        assert res.code == 0, res.err
        lines = res.out.splitlines()
        assert [line.split()[1] for line in lines][-1] == "eval"
        assert not (tmp_path / name).exists()  # a dry run writes nothing


# ---------------------------------------------------------------- up to date, changed settings
def test_rerun_of_a_finished_recipe_does_no_work_and_says_so(policy_run: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in policy_run.rglob("*") if p.is_file() and p.name != "run.json"}
    res = _run("policy-qa", policy_run)
    assert res.code == 0, res.err
    assert "nothing to do: all 7 steps are up to date" in res.err
    assert res.err.count("up to date, skipped") == 7
    after = {p: p.stat().st_mtime_ns for p in policy_run.rglob("*") if p.is_file() and p.name != "run.json"}
    assert after == before


def test_a_changed_eval_setting_reruns_only_eval(policy_run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(policy_run, out)
    res = _run("policy-qa", out)  # keys hold contents, not locations: a moved run folder is up to date
    assert res.code == 0 and "nothing to do: all 7 steps are up to date" in res.err, res.err
    res = _run("policy-qa", out, "--set", "steps.eval.max_new_tokens=12")
    assert res.code == 0, res.err
    ran = [line for line in res.err.splitlines() if line.startswith("[") and "skipped" not in line]
    assert len(ran) == 1 and ran[0].startswith("[7/7] eval:")


def test_cli_flags_override_recipe_fields(tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--dry-run",
                    "--base-model", "EleutherAI/polyglot-ko-1.3b", "--epochs", "3", "--preset", "quality",
                    "--set", "steps.split.test_size=0.2", "--set", "steps.train.lora_targets=[query_key_value]"])
    assert res.code == 0, res.err
    train = next(line for line in res.out.splitlines() if line.startswith("kotune train"))
    assert "--base-model EleutherAI/polyglot-ko-1.3b" in train and "--epochs 3.0" in train
    assert "--preset quality" in train and "--lora-targets query_key_value" in train
    assert "--test-size 0.2" in res.out
    assert "base=EleutherAI/polyglot-ko-1.3b" in res.out  # eval compares against the same base


def test_recipe_categories_reach_validate(tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "civil-law-qa.yaml", "-o", tmp_path / "o", "--dry-run",
                    "--set", "steps.validate.categories=[전세사기, 부동산물권]"])
    assert res.code == 0, res.err
    validate = next(line for line in res.out.splitlines() if line.startswith("kotune validate"))
    assert re.search(r"--categories '?전세사기'? --categories '?부동산물권'?$", validate), validate


@pytest.mark.parametrize("name", ["policy-qa", "insurance-rag-qlora", "civil-law-qa", "dialogue-summary",
                                  "question-generation"])
def test_every_recipe_has_a_gemma_profile_for_the_real_model(name: str, tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / f"{name}.yaml", "-o", tmp_path / "o", "--dry-run", "--profile", "gemma"])
    assert res.code == 0, res.err
    train = next(line for line in res.out.splitlines() if line.startswith("kotune train"))
    assert "--base-model builtin:gemma-3-270m" in train and "--max-length" in train
    assert "base=builtin:gemma-3-270m" in res.out  # eval compares against the same base
    # Without the profile the recipe is unchanged: tiny-ko and its own settings.
    plain = call_cli(["run", RECIPES / f"{name}.yaml", "-o", tmp_path / "o", "--dry-run"])
    assert "--base-model builtin:tiny-ko" in plain.out and "gemma-3-270m" not in plain.out


def test_base_model_option_picks_the_profile_that_declares_it(tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--dry-run",
                    "--base-model", "builtin:gemma-3-270m", "--set", "steps.train.lora_r=4"])
    assert res.code == 0, res.err
    assert "profile gemma" in res.err
    train = next(line for line in res.out.splitlines() if line.startswith("kotune train"))
    assert "--max-length 512" in train and "--lora-r 4" in train  # profile first, then --set
    evals = next(line for line in res.out.splitlines() if line.startswith("kotune eval"))
    assert "eval-train" not in res.out and "--max-new-tokens 96" in evals


def _lines(res, command: str) -> list[str]:
    return [line for line in res.out.splitlines() if line.startswith(f"kotune {command}")]


def test_grounded_profile_plans_raft_data_rag_training_and_retrieval_eval(tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--dry-run", "--profile", "grounded"])
    assert res.code == 0, res.err
    out = tmp_path / "o"
    [generate] = _lines(res, "generate")
    assert "--grounded --grounded-k 3 --unanswerable-share 0.2" in generate
    assert "--per-chunk 4" in generate and "--phrasings 2" in generate
    [prepare] = _lines(res, "prepare")
    assert "--chunk-chars 300" in prepare and "--overlap 0" in prepare
    [train] = _lines(res, "train")
    assert "--base-model builtin:tiny-ko" in train and "--template rag" in train and "--max-length 1024" in train
    assert "--batch-size 2" in train and f"--chunks {out / 'chunks.jsonl'}" in train
    # One eval: the user-style questions (answerable and not) with passages retrieved from the
    # prepared chunks, base vs tuned; no eval-train (re-retrieved training records mislabel abstentions).
    [evaluate] = _lines(res, "eval")
    assert f"--questions {RECIPES / 'data' / 'policy' / 'questions.jsonl'}" in evaluate
    assert f"--context {out / 'chunks.jsonl'}" in evaluate and "--top-k 3" in evaluate
    assert "--models base=builtin:tiny-ko" in evaluate and f"--models tuned={out / 'model'}" in evaluate
    assert "eval-train" not in res.out
    # Without the profile: closed-book, as before.
    plain = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", out, "--dry-run"])
    assert "--grounded" not in plain.out and "--template kotune" in plain.out and "--context" not in plain.out


def test_policy_questions_file_marks_unanswerable_questions() -> None:
    from kotune.eval.evaluate import load_questions

    qs = load_questions(RECIPES / "data" / "policy" / "questions.jsonl")
    answerable = [q for q in qs if q["answerable"]]
    unanswerable = [q for q in qs if not q["answerable"]]
    assert len(answerable) >= 10 and len(unanswerable) >= 3
    assert all(q["keywords"] for q in answerable) and not any(q["keywords"] for q in unanswerable)
    assert {q["reference"] for q in unanswerable} == {"문서에 해당 내용이 없습니다."}
    text = (RECIPES / "data" / "policy" / "policy_plan.txt").read_text(encoding="utf-8")
    assert all(k in text for q in answerable for k in q["keywords"])


@pytest.mark.parametrize("profile", ["gemma-grounded", "gemma,grounded"])
def test_profiles_compose_left_to_right(profile: str, tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--dry-run", "--profile", profile])
    assert res.code == 0, res.err
    assert f"profile {profile}: base model builtin:gemma-3-270m" in res.err
    [train] = _lines(res, "train")
    # gemma's base model, grounded's template and max_length (1024, applied after gemma's 512)
    assert "--base-model builtin:gemma-3-270m" in train and "--template rag" in train
    assert "--max-length 1024" in train and "--max-length 512" not in train
    [evaluate] = _lines(res, "eval")
    assert "--max-new-tokens 96" in evaluate and "--context" in evaluate  # gemma's eval length, grounded's context
    # The other order: gemma's max_length comes last and wins.
    swapped = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--dry-run",
                        "--profile", "grounded,gemma"])
    assert "--max-length 512" in _lines(swapped, "train")[0]


def test_composed_profile_errors_name_the_profile(tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--profile", "gemma,llama"])
    assert res.code == 2 and len(res.err_lines) == 1
    assert "no such profile" in res.err_lines[0] and ": llama" in res.err_lines[0]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps: {prepare: {inputs: [x.txt]}}\n"
                      "profiles: {a: [b], b: [a], c: [nope], d: 3}\n", encoding="utf-8")
    (tmp_path / "x.txt").write_text("문서.", encoding="utf-8")
    for profile, message in (("a", "refers to itself"), ("c", "no such profile: nope"), ("d", "a profile is a mapping")):
        res = call_cli(["run", recipe, "-o", tmp_path / "o", "--dry-run", "--profile", profile])
        assert res.code == 2 and message in res.err_lines[0], res.err
    assert not (tmp_path / "o").exists()


def test_unknown_profile_is_one_error_line(tmp_path: Path) -> None:
    res = call_cli(["run", RECIPES / "policy-qa.yaml", "-o", tmp_path / "o", "--profile", "llama"])
    assert res.code == 2 and len(res.err_lines) == 1
    assert "no such profile" in res.err_lines[0] and "gemma" in res.err_lines[0]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- killed mid-training
@pytest.mark.slow
def test_killed_during_training_then_rerun_resumes(tmp_path: Path, tiny_model) -> None:
    out = tmp_path / "killed"
    args = ["run", str(RECIPES / "policy-qa.yaml"), "-o", str(out), "--max-steps", "120",
            "--set", "steps.train.save_steps=10", "--set", "steps.train.report_to=none",
            "--set", "steps.eval.limit=4", "--set", "steps.eval.max_new_tokens=16", "--set", "steps.eval.train_sample=null"]
    proc = subprocess.Popen([sys.executable, "-m", "kotune", *args], cwd=REPO, env=_subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "model" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list(ckpt.glob("checkpoint-*/trainer_state.json")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = _state(out)["steps"]
    assert state["train"]["status"] == "started" and "eval" not in state
    assert json.loads((out / "model" / "kotune.json").read_text(encoding="utf-8"))["status"] == "running"

    res = call_cli(args)
    assert res.code == 0, res.err[-3000:]
    assert "[5/7] train (resuming):" in res.err and "--resume" in res.err
    assert res.err.count("up to date, skipped") == 4  # prepare, generate, validate, split
    run = json.loads((out / "model" / "kotune.json").read_text(encoding="utf-8"))
    assert run["status"] == "complete" and run["final"]["steps"] == 120
    assert all(s["status"] == "done" for s in _state(out)["steps"].values())


# ---------------------------------------------------------------- bad recipes
BAD = {
    "unknown key": ("steps:\n  train:\n    epoch: 2\n", "steps.train.epoch: unknown key (did you mean 'epochs'?)"),
    "wrong type": ("steps:\n  train:\n    epochs: many\n", "steps.train.epochs:"),
    "missing input": ("steps:\n  prepare:\n    inputs: [nowhere.txt]\n", "steps.prepare.inputs[0]: no such file"),
    "unknown step": ("steps:\n  finetune:\n    epochs: 2\n", "steps.finetune: unknown step"),
    "unknown top-level key": ("steps:\n  split: {}\nbase: x\n", "base: unknown key"),
    "step without input": ("steps:\n  train:\n    epochs: 2\n", "steps.train: needs training data"),
    "bad value": ("steps:\n  train:\n    method: lorax\n", "unknown steps.train.method 'lorax'; one of 'lora'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_recipe_is_rejected_before_any_work(case: str, tmp_path: Path) -> None:
    body, expected = BAD[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: bad\nbase_model: builtin:tiny-ko\n" + body, encoding="utf-8")
    out = tmp_path / "out"
    res = call_cli(["run", recipe, "-o", out])
    assert res.code == 2, res.err
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith(f"error: {recipe}: "), res.err
    assert expected in res.err_lines[0], res.err_lines[0]
    assert not out.exists()
    assert "Traceback" not in res.err


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: bad\nsteps:\n  train: [\n", encoding="utf-8")
    res = call_cli(["run", recipe])
    assert res.code == 2 and res.err_lines[0].startswith(f"error: {recipe} line ")
