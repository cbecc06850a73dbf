"""GRPO (`kotune train --method grpo`) on tiny-ko: kotune's metrics as rewards, from an SFT run.

Two SFT runs of the sample document are the starting points: one stopped after a few steps
(it does not yet stop at EOS reliably) and one that also learned to decline questions the
document does not answer ("모릅니다.", its --abstention sentence) often, but not always.
GRPO with the ``eos`` reward must make the first stop; with ``abstain``, the second must
decline held-out unanswerable questions more often.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, _subprocess_env, call_cli, read_jsonl
from helpers.cli import one_error_line

ABSTAIN = "모릅니다."
SUBJECTS = ("강사", "연구원", "위원장", "센터장", "심사위원", "사무국 직원", "자문위원", "운영요원")
ASKS = ("월 급여는 얼마인가요?", "출장비 한도는 얼마인가요?", "주차 요금은 얼마인가요?", "식대 지원액은 얼마인가요?",
        "연간 휴가 일수는 며칠인가요?", "사무실은 몇 층에 있나요?")


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(sample_split, tmp_path_factory):
    """SFT records (the sample's, plus 32 questions the document does not answer, answered
    with the abstention), GRPO questions and held-out eval questions."""
    folder = tmp_path_factory.mktemp("grpo")
    train, test = read_jsonl(sample_split[0]), read_jsonl(sample_split[1])
    unanswerable = [f"{s}의 {a}" for s in SUBJECTS for a in ASKS]
    random.Random(0).shuffle(unanswerable)
    seen, held_out = unanswerable[:32], unanswerable[32:]
    sft = train + [{"instruction": q, "input": "", "output": ABSTAIN, "category": "없음"} for q in seen]
    random.Random(1).shuffle(sft)
    questions = ([{"question": r["instruction"], "reference": r["output"]} for r in train[:20]]
                 + [{"question": q, "answerable": False} for q in seen])
    return {"folder": folder, "train": sample_split[0], "test": sample_split[1],
            "sft": _write(folder / "sft.jsonl", sft),
            "questions": _write(folder / "questions.jsonl", questions),
            "held_out": held_out,
            "eval": _write(folder / "eval.jsonl", [{"question": r["instruction"], "reference": r["output"]} for r in test]),
            "eval_unanswerable": _write(folder / "eval-un.jsonl", [{"question": q, "answerable": False} for q in held_out])}


@pytest.fixture(scope="module")
def unstopping_sft(data, tiny_model):
    """12 steps: answers that stop at EOS about a third of the time (eos_rate 0.31 when measured)."""
    out = data["folder"] / "sft-short"
    res = call_cli(["train", "--data", data["train"], "-o", out, "--max-steps", "12", "--report-to", "none"])
    assert res.code == 0, res.err
    return out


@pytest.fixture(scope="module")
def abstaining_sft(data, tiny_model):
    """60 steps with the abstention records: declines unseen unanswerable questions with
    probability ~0.25 when sampled (greedy already declines them)."""
    out = data["folder"] / "sft-abstain"
    res = call_cli(["train", "--data", data["sft"], "-o", out, "--max-steps", "60", "--abstention", ABSTAIN,
                    "--report-to", "none"])
    assert res.code == 0, res.err
    return out


def _overall(eval_dir: Path, name: str) -> dict:
    return json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))["models"][name]["overall"]


def _abstention_probability(run: Path, questions: list[str]) -> float:
    """Mean probability that the model, sampling at temperature 1, answers exactly with its
    abstention sentence (and EOS): the abstention rate its sampled answers have."""
    import torch

    from kotune.model.resolve import load_resolved, resolve
    from kotune.model.templates import encode_answer, encode_prompt

    resolved = resolve(str(run), log=lambda *_: None)
    model, tok, template = load_resolved(resolved), resolved.tokenizer, resolved.template
    answer = encode_answer(tok, template, ABSTAIN)
    probs = []
    for q in questions:
        prompt = encode_prompt(tok, template.prompt(q, ""), template)
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        probs.append(torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).sum().exp().item())
    return sum(probs) / len(probs)


# ---------------------------------------------------------------- the rewards work
def test_eos_reward_makes_an_unstopping_sft_run_stop_even_when_killed_and_resumed(data, unstopping_sft):
    """GRPO with the eos reward, SIGKILLed after its first checkpoint and resumed (one run for both outcomes)."""
    out = data["folder"] / "grpo-eos"
    cmd = [sys.executable, "-m", "kotune", "train", "--method", "grpo", "--from", str(unstopping_sft), "--data",
           str(data["questions"]), "-o", str(out), "--reward", "eos", "--max-steps", "16", "--save-steps", "8", "--learning-rate", "2e-3",
           "--max-completion-length", "64", "--logging-steps", "4", "--report-to", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint-8" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "no first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "kotune.json").read_text(encoding="utf-8"))["status"] == "running"
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=_subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ev = data["folder"] / "eval-eos"
    res = call_cli(["eval", "--questions", data["eval"], "--models", f"sft={unstopping_sft}", f"grpo={out}",
                    "-o", ev, "--max-new-tokens", "64"])
    assert res.code == 0, res.err
    before, after = _overall(ev, "sft")["eos_rate"], _overall(ev, "grpo")["eos_rate"]
    assert before < 0.6 and after >= before + 0.25, (before, after)

    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    sft = json.loads((unstopping_sft / "kotune.json").read_text(encoding="utf-8"))
    assert info["status"] == "complete" and info["final"]["steps"] == 16
    g = info["grpo"]
    assert g["rewards"] == {"eos": 1.0} and g["from_run"] == str(unstopping_sft.resolve())
    assert g["num_generations"] == 4 and g["max_completion_length"] == 64 and g["questions"] == 52
    curve = g["reward_curve"]  # the killed run's first points come back with its checkpoint
    assert [p["step"] for p in curve] == [4, 8, 12, 16] and curve[-1]["eos"] >= curve[0]["eos"], curve
    # The SFT run's decisions carry over: template, EOS ids, base.
    assert info["template"] == sft["template"] and info["eos_token_ids"] == sft["eos_token_ids"]
    assert info["base_model"] == sft["base_model"]


def test_abstain_reward_declines_held_out_unanswerable_questions_more_often(data, abstaining_sft):
    out = data["folder"] / "grpo-abstain"
    res = call_cli(["train", "--method", "grpo", "--from", abstaining_sft, "--data", data["questions"], "-o", out,
                    "--reward", "abstain", "--max-steps", "16", "--max-completion-length", "24", "--logging-steps", "4",
                    "--report-to", "none"])
    assert res.code == 0, res.err
    before = _abstention_probability(abstaining_sft, data["held_out"])
    after = _abstention_probability(out, data["held_out"])
    assert after >= before + 0.1, (before, after)
    info = json.loads((out / "kotune.json").read_text(encoding="utf-8"))
    assert info["abstention"] == ABSTAIN and info["grpo"]["unanswerable"] == 32
    ev = data["folder"] / "eval-abstain"
    res = call_cli(["eval", "--questions", data["eval_unanswerable"], "--models", f"grpo={out}", "-o", ev,
                    "--max-new-tokens", "24"])
    assert res.code == 0, res.err
    assert _overall(ev, "grpo")["abstain_rate"] >= 0.75  # greedy: the run's own sentence, recognised by eval


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written
def test_bad_reward_options_are_one_error_line(tmp_path):
    q = _write(tmp_path / "q.jsonl", [{"question": "질문", "reference": "답입니다."}])
    out = tmp_path / "o"
    base = ["train", "--method", "grpo", "--from", tmp_path / "sft", "--data", q, "-o", out]
    one_error_line(call_cli(base + ["--reward", "facts,kindness"]), "unknown --reward 'kindness'", "facts, grounded")
    one_error_line(call_cli(base + ["--reward", "facts=high"]), "--reward facts: the weight must be a number, got 'high'")
    one_error_line(call_cli(["train", "--method", "grpo", "--data", q, "-o", out]), "--method grpo needs --from")
    one_error_line(call_cli(["train", "--data", q, "-o", out, "--reward", "eos"]), "--reward applies to --method grpo")
    assert not out.exists()


def test_facts_without_references_and_abstain_without_unanswerable_are_refused(data, unstopping_sft, tmp_path):
    out = tmp_path / "o"
    q = _write(tmp_path / "q.jsonl", [{"question": "예산은 얼마인가요?", "reference": "4,500억 원입니다."},
                                      {"question": "기간은 언제까지인가요?"}])
    base = ["train", "--method", "grpo", "--from", unstopping_sft, "--data", q, "-o", out]
    one_error_line(call_cli(base + ["--reward", "facts"]), "q.jsonl: question 2", "no \"reference\" or \"keywords\"")
    one_error_line(call_cli(base + ["--reward", "eos,abstain"]), "the abstain reward needs unanswerable questions")
    assert not out.exists()


# ---------------------------------------------------------------- the rewards are eval's metrics
def test_each_reward_scores_answers_as_eval_does():
    from kotune.eval.metrics import score_rows
    from kotune.options import parse_rewards
    from kotune.rl.rewards import Scorer, reward_functions

    assert parse_rewards(None) == {"facts": 1.0, "grounded": 1.0, "abstain": 1.0, "eos": 0.5, "repetition": 0.5}
    names = ["facts", "grounded", "abstain", "eos", "repetition", "korean"]
    scorer = Scorer(eos_ids=[1], abstention="문서에 해당 내용이 없습니다.")
    funcs = dict(zip(names, reward_functions(names, scorer)))
    ref = "총사업비는 4,500억 원입니다."
    completions = ["총사업비는 4,500억 원입니다.", "총사업비는 1조 5,000억 원입니다.", "문서에 해당 내용이 없습니다.",
                   "문서에 해당 내용이 없습니다.", "총사업비는 4,500억 원 원 원 원 원 원 원 원 원 원 원 원 원 원 원 원",
                   "The budget is 4,500억 원."]
    ids = [[5, 1], [5, 1], [5, 1], [5, 1], [5, 5], [5, 1]]
    columns = {"reference": [ref, ref, ref, "", ref, ref], "keywords": [[]] * 6, "question": ["총사업비는?"] * 6,
               "context": [""] * 6, "input": [""] * 6, "answerable": [True, True, True, False, True, True]}
    got = {n: f(prompts=[""] * 6, completions=completions, completion_ids=ids, **columns) for n, f in funcs.items()}
    rows = score_rows([{"answer": a, "reference": r or None, "question": "총사업비는?", "answerable": ok}
                       for a, r, ok in zip(completions, columns["reference"], columns["answerable"])])["per_row"]
    assert got["facts"][0] == pytest.approx(rows[0]["rougeL"] / 100) and got["facts"][0] > got["facts"][1]
    assert got["facts"][3] is None  # unanswerable: no facts to have
    assert got["grounded"][0] == pytest.approx(1 - rows[0]["unsupported_rate"])
    assert got["grounded"][0] > got["grounded"][1]
    assert got["grounded"][2] == 1.0  # an abstention states nothing unsupported
    assert got["abstain"][:4] == [0.0, 0.0, -1.0, 1.0]
    assert got["eos"] == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert got["repetition"][4] < got["repetition"][0] == 1.0
    assert got["korean"][0] == 1.0 and got["korean"][5] < 0.5
