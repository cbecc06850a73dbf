"""kotune.eval.judge against a stub OpenAI-compatible judge: both orders asked at temperature 0
with max_tokens 8, the verdicts mapped to models, the API key sent, and one-line errors."""

from __future__ import annotations

from typing import Any

import pytest

from kotune.errors import KotuneError
from kotune.eval.judge import judge_pairs
from test_openai_client import StubServer, ok, record_sleeps

RESPONSES = [
    {"id": "q1", "question": "국가센터란 무엇인가요?", "reference": "국가 초고성능컴퓨팅 센터입니다.",
     "answers": {"base": {"text": "센터입니다."}, "tuned": {"text": "국가 초고성능컴퓨팅 센터를 말합니다."}}},
    {"id": "q2", "question": "총사업비는 얼마인가요?", "reference": "",
     "answers": {"base": {"text": "총사업비는 1조 2,000억 원으로 계획되어 있습니다."}, "tuned": {"text": "1조 원입니다."}}},
]


def longer_answer_wins(k: int, req: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    """A judge that always prefers the longer answer, whichever position it is in."""
    prompt = req["body"]["messages"][0]["content"]
    a = prompt.split("[답변 A]\n", 1)[1].split("\n\n[답변 B]", 1)[0]
    b = prompt.split("[답변 B]\n", 1)[1].strip()
    return ok("A" if len(a) > len(b) else "B")


def test_every_pair_is_judged_in_both_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_JUDGE_KEY", "sk-judge")
    steps: list[int] = []
    with StubServer(longer_answer_wins) as server:
        result = judge_pairs(RESPONSES, ["base", "tuned"], url=server.url, judge_model="judge-m",
                             api_key_env="KT_JUDGE_KEY", on_step=lambda: steps.append(1))
    assert len(server.posts) == 4 and len(steps) == 2  # 2 questions × both orders
    for post in server.posts:
        assert post["path"] == "/v1/chat/completions" and post["auth"] == "Bearer sk-judge"
        body = post["body"]
        assert body["model"] == "judge-m" and body["temperature"] == 0 and body["max_tokens"] == 8
    first, second = (p["body"]["messages"][0]["content"] for p in server.posts[:2])
    assert "[답변 A]\n센터입니다." in first and "[답변 B]\n센터입니다." in second  # answers swapped
    assert "(없음)" in server.posts[2]["body"]["messages"][0]["content"]  # no reference given
    assert result["judge_model"] == "judge-m" and result["baseline"] == "base"
    pair = result["pairs"]["tuned"]
    assert [q["winner"] for q in pair["per_question"]] == ["tuned", "base"]
    assert [q["orders"] for q in pair["per_question"]] == [["B", "A"], ["A", "B"]]
    assert (pair["win_rate"], pair["loss_rate"], pair["tie_rate"], pair["order_disagreement"]) == (0.5, 0.5, 0.0, 0.0)


def test_a_judge_that_follows_the_position_gives_ties() -> None:
    with StubServer(lambda k, req: ok("A")) as server:
        result = judge_pairs(RESPONSES, ["base", "tuned"], url=server.url, judge_model="j")
    pair = result["pairs"]["tuned"]
    assert pair["tie_rate"] == 1.0 and pair["order_disagreement"] == 1.0
    assert all(p["auth"] is None for p in server.posts)


def test_a_failing_judge_is_one_error_line_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = record_sleeps(monkeypatch)
    with StubServer(lambda k, req: (503, {"error": {"message": "down"}}, {})) as server:
        with pytest.raises(KotuneError) as info:
            judge_pairs(RESPONSES, ["base", "tuned"], url=server.url, judge_model="j")
    assert str(info.value) == f"{server.url}/chat/completions: judge endpoint answered HTTP 503"
    assert len(server.posts) == 4 and len(sleeps) == 3  # 3 retries, then the error


def test_a_rejected_judge_key_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_JUDGE_KEY", "sk-judge")
    with StubServer(lambda k, req: (401, {"error": {"message": "invalid key"}}, {})) as server:
        with pytest.raises(KotuneError) as info:
            judge_pairs(RESPONSES, ["base", "tuned"], url=server.url, judge_model="j", api_key_env="KT_JUDGE_KEY")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("judge endpoint ") and "HTTP 401" in msg
    assert "--judge-api-key-env" in msg and "sk-judge" not in msg
    assert len(server.posts) == 1


def test_a_missing_key_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KT_JUDGE_NONE", raising=False)
    with pytest.raises(KotuneError, match="environment variable KT_JUDGE_NONE is not set"):
        judge_pairs(RESPONSES, ["base", "tuned"], url="http://127.0.0.1:9/v1", judge_model="j",
                    api_key_env="KT_JUDGE_NONE")
