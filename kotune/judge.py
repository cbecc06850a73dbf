"""LLM-as-judge over any OpenAI-compatible endpoint, judging every pair in both orders.

Judges prefer whichever answer they see first (position bias), so each pair is
asked twice with the answers swapped; a model wins a question only when both
orders agree, otherwise it is a tie.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from kotune.errors import KotuneError

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


def _ask(url: str, model: str, prompt: str, api_key: str | None, timeout: float = 60, retries: int = 3) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0, "max_tokens": 8}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    endpoint = url.rstrip("/") + "/chat/completions"
    for attempt in range(retries + 1):
        try:
            req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = json.loads(resp.read().decode("utf-8"))
            return str(data["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as e:
            if e.code in (429, 500, 502, 503, 504) and attempt < retries:
                time.sleep(float(e.headers.get("Retry-After") or 2 ** attempt))
                continue
            raise KotuneError(f"judge endpoint answered HTTP {e.code}", path=endpoint) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt < retries:
                time.sleep(2 ** attempt)
                continue
            raise KotuneError(f"judge endpoint unreachable ({getattr(e, 'reason', e)})", path=endpoint) from None
    raise AssertionError("unreachable")


def _verdict(text: str) -> str:
    m = re.search(r"\b(TIE|A|B)\b", text.strip().upper())
    return m.group(1) if m else "TIE"


def judge_pairs(responses: list[dict[str, Any]], models: list[str], *, url: str, judge_model: str,
                api_key_env: str | None = None, on_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Compare the first model with each other model on every question, in both orders."""
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise KotuneError(f"environment variable {api_key_env} is not set")
    base = models[0]
    result: dict[str, Any] = {"judge_model": judge_model, "baseline": base, "pairs": {}}
    for other in models[1:]:
        wins = losses = ties = 0
        order_disagreements = 0
        per_question = []
        for r in responses:
            a, b = r["answers"][base]["text"], r["answers"][other]["text"]
            common = dict(question=r["question"], reference=r.get("reference") or "(없음)")
            first = _verdict(_ask(url, judge_model, JUDGE_PROMPT.format(a=a, b=b, **common), api_key))
            second = _verdict(_ask(url, judge_model, JUDGE_PROMPT.format(a=b, b=a, **common), api_key))
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
                                  "tie_rate": round(ties / n, 4), "order_disagreement": round(order_disagreements / n, 4),
                                  "per_question": per_question}
    return result
