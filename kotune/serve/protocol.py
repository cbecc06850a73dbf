"""The OpenAI API as kotune serve speaks it: request models, errors and response bodies.

Requests are parsed into :class:`ChatRequest` and :class:`CompletionRequest`;
anything malformed becomes an :class:`ApiError` whose body is OpenAI's
``{"error": {"message", "type", "param", "code"}}``, so OpenAI clients show
the message. Why not pydantic request models: their validation errors would
need rewriting into OpenAI's messages field by field, and the parsing here is
what OpenAI's own server accepts (``developer`` role, text content parts,
``max_completion_tokens``), no more.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from kotune.model.generation import Answer, GenerationSettings


# ---------------------------------------------------------------- errors (OpenAI-shaped)
class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- request parsing
def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ApiError(400, f"messages[{index}].content: only text parts are supported", param="messages")
        return "".join(parts)
    if content is None:
        return ""
    raise ApiError(400, f"messages[{index}].content must be a string", param="messages")


def parse_messages(raw: Any) -> list[dict[str, str]]:
    if raw is None:
        raise ApiError(400, "'messages' is a required property", param="messages", code="missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a 'role'", param="messages")
        role = m["role"]
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role {role!r} is not supported (system, user, assistant)", param="messages")
        out.append({"role": role, "content": _message_text(m.get("content"), i)})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "'messages' needs at least one user message", param="messages")
    return out


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be a number between {lo:g} and {hi:g}", param=key)
    return float(v)


def parse_settings(body: dict, *, limit: int, default_max: int) -> GenerationSettings:
    max_tokens = body.get("max_tokens")
    key = "max_tokens"
    if max_tokens is None and body.get("max_completion_tokens") is not None:
        max_tokens, key = body["max_completion_tokens"], "max_completion_tokens"
    if max_tokens is None:
        max_tokens = min(default_max, limit)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"'{key}' must be a positive integer", param=key)
    if max_tokens > limit:
        raise ApiError(400, f"'{key}' is {max_tokens}, over this server's limit of {limit}", param=key,
                       code="max_tokens_exceeded")
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        stops = list(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of up to 16 strings", param="stop")
    stops = [s for s in stops if s]
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        top_p = 1e-6
    return GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stops)


@dataclass
class Limits:
    """What this server accepts: the max_tokens cap and default, and prompts per request."""

    max_tokens: int = 1024
    default_max_tokens: int = 256
    max_prompts: int = 64


def model_name(body: dict[str, Any]) -> Any:
    """The requested model's name (checked first: an unknown model is a 404 before anything else)."""
    if "model" not in body:
        raise ApiError(400, "'model' is a required property", param="model", code="missing_required_parameter")
    return body["model"]


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    opts = body.get("stream_options")
    return bool(body.get("stream")), bool(opts.get("include_usage")) if isinstance(opts, dict) else False


@dataclass
class ChatRequest:
    """``POST /v1/chat/completions``. ``category`` (kotune's extension) picks a per-category system prompt."""

    model: Any
    messages: list[dict[str, str]]
    settings: GenerationSettings
    category: str = ""
    stream: bool = False
    include_usage: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any], limits: Limits) -> "ChatRequest":
        model = model_name(body)
        messages = parse_messages(body.get("messages"))
        settings = parse_settings(body, limit=limits.max_tokens, default_max=limits.default_max_tokens)
        category = body.get("category") if isinstance(body.get("category"), str) else ""
        return cls(model, messages, settings, category, *_stream(body))


@dataclass
class CompletionRequest:
    """``POST /v1/completions``: prompts already in the model's format."""

    model: Any
    prompts: list[str]
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any], limits: Limits) -> "CompletionRequest":
        model = model_name(body)
        raw = body.get("prompt")
        if isinstance(raw, str):
            prompts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
            prompts = list(raw)
        elif raw is None:
            raise ApiError(400, "'prompt' is a required property", param="prompt", code="missing_required_parameter")
        else:
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise ApiError(400, f"at most {limits.max_prompts} prompts per request", param="prompt")
        settings = parse_settings(body, limit=limits.max_tokens, default_max=limits.default_max_tokens)
        if body.get("echo"):
            raise ApiError(400, "'echo' is supported for scoring prompts: max_tokens 0 or 1 with logprobs", param="echo")
        stream, include_usage = _stream(body)
        if stream and len(prompts) != 1:
            raise ApiError(400, "streaming takes one prompt", param="prompt")
        return cls(model, prompts, settings, stream, include_usage)


MAX_TOP_LOGPROBS = 20


@dataclass
class ScoreRequest:
    """``POST /v1/completions`` with ``echo`` and ``logprobs``: the prompt's own token
    log-probabilities (what lm-evaluation-harness's ``local-completions`` model asks for
    its loglikelihood tasks, and vLLM answers), plus at most one greedy next token."""

    model: Any
    prompts: list[str | list[int]]
    top: int
    max_tokens: int

    @classmethod
    def wants(cls, body: dict[str, Any]) -> bool:
        return bool(body.get("echo")) and body.get("logprobs") is not None and not body.get("stream")

    @classmethod
    def parse(cls, body: dict[str, Any], limits: Limits) -> "ScoreRequest":
        model = model_name(body)
        raw = body.get("prompt")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
            prompts: list[str | list[int]] = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(p, str) or (isinstance(p, list) and p and all(
                isinstance(t, int) for t in p)) for p in raw):
            prompts = list(raw)
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise ApiError(400, f"at most {limits.max_prompts} prompts per request", param="prompt")
        top = body.get("logprobs")
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"'logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}]", param="logprobs")
        max_tokens = body.get("max_tokens", 1)
        if max_tokens not in (0, 1):
            raise ApiError(400, "with 'echo', 'max_tokens' must be 0 or 1 (prompt scoring)", param="max_tokens")
        return cls(model, prompts, top, int(max_tokens))


def scored_completion(model: str, scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The response to a :class:`ScoreRequest` (OpenAI's legacy completions ``logprobs`` object)."""
    prompt_tokens = sum(s["prompt_tokens"] for s in scored)
    completion_tokens = sum(len(s["tokens"]) - s["prompt_tokens"] for s in scored)
    return {
        "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": s["text"], "finish_reason": "length",
                     "logprobs": {k: s[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}}
                    for i, s in enumerate(scored)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


# ---------------------------------------------------------------- responses
def finish_reason(reason: str) -> str:
    """kotune's ``eos``/``stop``/``length`` → OpenAI's ``stop``/``length``."""
    return "length" if reason == "length" else "stop"


def usage(answers: list[Answer]) -> dict[str, int]:
    p = sum(a.prompt_tokens for a in answers)
    c = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def chat_completion(model: str, answer: Answer) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "logprobs": None, "finish_reason": finish_reason(answer.finish_reason)}],
        "usage": usage([answer]),
    }


def text_completion(model: str, answers: list[Answer]) -> dict[str, Any]:
    return {
        "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": a.text, "logprobs": None, "finish_reason": finish_reason(a.finish_reason)}
                    for i, a in enumerate(answers)],
        "usage": usage(answers),
    }


class StreamChunks:
    """The ``data:`` events of one streamed answer (chat.completion.chunk or text_completion)."""

    def __init__(self, model: str, *, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": [choice]}

    def usage(self, answer: Answer) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": [],
                "usage": usage([answer])}
