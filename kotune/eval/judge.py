"""LLM-as-judge over any OpenAI-compatible endpoint, judging every pair in both orders.

Judges prefer whichever answer they see first (position bias), so each pair is
asked twice with the answers swapped; a model wins a question only when both
orders agree, otherwise it is a tie. Requests go through
:func:`kotune.model.access.open_chat_client` (the HTTP teacher's client: retries with
backoff and ``Retry-After``, a one-line error for a rejected key), one at a
time, at temperature 0 with ``max_tokens`` 8.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

from kotune.errors import KotuneError
from kotune.model.access import RequestFailed, endpoint_keys, open_chat_client

JUDGE_PROMPT = """당신은 한국어 답변을 공정하게 평가하는 심사위원입니다.
질문과 참고 답변을 보고, 두 답변 중 더 정확하고 근거가 있으며 간결한 답변을 고르세요.
출력은 반드시 "A", "B", "TIE" 중 하나만 쓰세요.

[질문]
{question}

[참고 답변]
{reference}

[답변 A]
{a}

[답변 B]
{b}
"""


async def _ask(client: Any, prompt: str) -> str:
    try:
        return await client.chat([{"role": "user", "content": prompt}], max_tokens=8, temperature=0)
    except RequestFailed as e:
        what = f"answered HTTP {e.status}" if e.status else f"unreachable ({e})" if e.transport else f"sent a {e}"
        raise KotuneError(f"judge endpoint {what}", path=client.url) from None


def _verdict(text: str) -> str:
    m = re.search(r"\b(TIE|A|B)\b", text.strip().upper())
    return m.group(1) if m else "TIE"


def judge_pairs(responses: list[dict[str, Any]], models: list[str], *, url: str, judge_model: str,
                api_key_env: str | None = None, on_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Compare the first model with each other model on every question, in both orders."""
    api_keys = endpoint_keys(api_key_env, option="--judge-api-key-env")
    client = open_chat_client(url, judge_model, api_keys=api_keys, max_retries=3, timeout=60, max_connections=1,
                              name="judge endpoint", key_option="--judge-api-key-env")
    return asyncio.run(_judge_all(client, responses, models, on_step))


async def _judge_all(client: Any, responses: list[dict[str, Any]], models: list[str],
                     on_step: Callable[[], None] | None) -> dict[str, Any]:
    base = models[0]
    result: dict[str, Any] = {"judge_model": client.model, "baseline": base, "pairs": {}}
    async with client:
        for other in models[1:]:
            wins = losses = ties = 0
            order_disagreements = 0
            per_question = []
            for r in responses:
                a, b = r["answers"][base]["text"], r["answers"][other]["text"]
                common = dict(question=r["question"], reference=r.get("reference") or "(없음)")
                first = _verdict(await _ask(client, JUDGE_PROMPT.format(a=a, b=b, **common)))
                second = _verdict(await _ask(client, JUDGE_PROMPT.format(a=b, b=a, **common)))
                # Map both verdicts to "which model": first order A=base, second order A=other.
                v1 = {"A": base, "B": other}.get(first, "tie")
                v2 = {"A": other, "B": base}.get(second, "tie")
                outcome = v1 if v1 == v2 else "tie"
                if v1 != v2:
                    order_disagreements += 1
                wins += outcome == other
                losses += outcome == base
                ties += outcome == "tie"
                per_question.append({"id": r["id"], "orders": [first, second], "winner": outcome})
                if on_step:
                    on_step()
            n = max(len(responses), 1)
            result["pairs"][other] = {"win_rate": round(wins / n, 4), "loss_rate": round(losses / n, 4),
                                      "tie_rate": round(ties / n, 4),
                                      "order_disagreement": round(order_disagreements / n, 4),
                                      "per_question": per_question}
    return result
