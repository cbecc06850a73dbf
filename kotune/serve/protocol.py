"""The OpenAI API as kotune serve speaks it: request models, errors and response bodies.

Requests are parsed into :class:`ChatRequest` and :class:`CompletionRequest`;
anything malformed becomes an :class:`ApiError` whose body is OpenAI's
``{"error": {"message", "type", "param", "code"}}``, so OpenAI clients show
the message. Why not pydantic request models: their validation errors would
need rewriting into OpenAI's messages field by field, and the parsing here is
what OpenAI's own server accepts (``developer`` role, text content parts,
``max_completion_tokens``), no more.

An honest protocol: kotune serve never answers 200 to a request field it
ignores. Every top-level field of a request is one of (:data:`CHAT_FIELDS`,
:data:`COMPLETION_FIELDS`):

- implemented: ``model``, ``messages``/``prompt``, ``max_tokens`` (chat also
  ``max_completion_tokens``; both only when equal), ``temperature``, ``top_p``,
  ``stop``, ``stream``, ``stream_options`` (``include_usage``; only with
  ``stream``), ``seed`` (sampling), ``repetition_penalty`` (vLLM's extension),
  ``category`` (kotune's, chat: a per-category system prompt); chat
  ``logprobs``/``top_logprobs`` (0-20) and completions ``logprobs`` (0-20, on
  generation; with ``echo``: prompt scoring, :class:`ScoreRequest`): the
  model's log-probabilities of the answer's tokens, computed by one forward
  pass over prompt + answer (the raw model's, before temperature, top-p and
  repetition penalty; streamed as one chunk before the last).
- accepted only at a neutral value, which asks for nothing kotune serve would
  have to do (anything else is a 400 naming the field): ``n`` 1,
  ``best_of`` 1, ``frequency_penalty``/``presence_penalty`` 0, ``logit_bias``
  ``{}``, ``echo`` false, ``suffix`` ``""``; chat: ``tools``/``functions``
  ``[]``, ``tool_choice``/``function_call`` ``"none"`` or ``"auto"`` (no tools
  to call), ``parallel_tool_calls`` (a boolean: there are no tools),
  ``response_format`` ``{"type": "text"}`` (no JSON mode, no structured
  outputs), ``store`` false, ``service_tier`` ``"auto"``/``"default"``,
  ``modalities`` ``["text"]``, ``reasoning_effort`` ``"none"``, ``verbosity``
  ``"medium"`` (the default), ``prompt_cache_retention`` ``"in_memory"``,
  ``stream_options.include_obfuscation`` false.
- accepted as information that cannot change an answer: ``user``,
  ``safety_identifier``, ``prompt_cache_key`` (strings) and ``metadata``
  (string to string).
- refused whatever the value: ``audio``, ``prediction``,
  ``web_search_options``, ``moderation``, ``prompt_cache_options``.
- any other field: 400 ``Unrecognized request argument supplied: NAME``.

A field sent as JSON ``null`` counts as absent. Messages take ``role`` and
``content`` only (``name``, ``tool_calls``, ... are refused with
``param: "messages"``).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from kotune.model.answers import Answer, GenerationSettings


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


# ---------------------------------------------------------------- request fields (module docstring)
MAX_TOP_LOGPROBS = 20

# A field's rule: None = implemented (parsed by its request class), else (accepts the
# value?, the message of the 400 when not).
Fields = dict[str, tuple[Callable[[Any], bool], str] | None]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _never(_v: Any) -> bool:
    return False


def _neutral(key: str, what: str, neutral: str) -> str:
    return f"'{key}' is not supported by kotune serve ({what}); leave it out or send {neutral}"


def _refused(key: str, what: str) -> str:
    return f"'{key}' is not supported by kotune serve ({what}); leave it out"


_SHARED: Fields = {
    "model": None, "max_tokens": None, "temperature": None, "top_p": None, "stop": None, "stream": None,
    "stream_options": None, "seed": None, "logprobs": None,
    "repetition_penalty": None,  # vLLM's extension of the API; kotune's endpoint client sends it
    "n": (lambda v: _int(v) and v == 1, "only n=1 is supported (one choice per request)"),
    "frequency_penalty": (_zero, _neutral("frequency_penalty", "repetition_penalty is", "0")),
    "presence_penalty": (_zero, _neutral("presence_penalty", "repetition_penalty is", "0")),
    "logit_bias": (lambda v: v == {}, _neutral("logit_bias", "no logit biasing", "{}")),
    "user": (lambda v: isinstance(v, str), "'user' must be a string"),
}

CHAT_FIELDS: Fields = {
    **_SHARED,
    "messages": None, "max_completion_tokens": None, "top_logprobs": None,
    "category": None,  # kotune's extension: the template's per-category system prompt
    "tools": (lambda v: v == [], _neutral("tools", "no tool or function calling", "[]")),
    "functions": (lambda v: v == [], _neutral("functions", "no tool or function calling", "[]")),
    "tool_choice": (lambda v: v in ("none", "auto"),
                    _neutral("tool_choice", "no tool or function calling", "'none' or 'auto'")),
    "function_call": (lambda v: v in ("none", "auto"),
                      _neutral("function_call", "no tool or function calling", "'none' or 'auto'")),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "'parallel_tool_calls' must be a boolean"),
    "response_format": (lambda v: v == {"type": "text"},
                        _neutral("response_format", "no JSON mode or structured outputs", "{\"type\": \"text\"}")),
    "store": (lambda v: v is False, _neutral("store", "answers are not stored", "false")),
    "metadata": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
                 "'metadata' must be an object of strings"),
    "service_tier": (lambda v: v in ("auto", "default"), _neutral("service_tier", "one tier", "'auto' or 'default'")),
    "modalities": (lambda v: v == ["text"], _neutral("modalities", "text only", "[\"text\"]")),
    "reasoning_effort": (lambda v: v == "none", _neutral("reasoning_effort", "no reasoning models", "'none'")),
    "verbosity": (lambda v: v == "medium", _neutral("verbosity", "answers at the default verbosity", "'medium'")),
    "prompt_cache_key": (lambda v: isinstance(v, str), "'prompt_cache_key' must be a string"),
    "prompt_cache_retention": (lambda v: v == "in_memory",
                               _neutral("prompt_cache_retention", "an in-memory prefix cache", "'in_memory'")),
    "safety_identifier": (lambda v: isinstance(v, str), "'safety_identifier' must be a string"),
    "audio": (_never, _refused("audio", "text only")),
    "prediction": (_never, _refused("prediction", "no predicted outputs")),
    "web_search_options": (_never, _refused("web_search_options", "no web search")),
    "moderation": (_never, _refused("moderation", "no moderation")),
    "prompt_cache_options": (_never, _refused("prompt_cache_options", "no cache breakpoints or TTLs")),
}

COMPLETION_FIELDS: Fields = {
    **_SHARED,
    "prompt": None, "echo": None,
    "best_of": (lambda v: _int(v) and v == 1, "only best_of=1 is supported (one choice per request)"),
    "suffix": (lambda v: v == "", _neutral("suffix", "no insertion", "\"\"")),
}


def check_fields(body: dict[str, Any], fields: Fields) -> None:
    """400 for the first field of ``body`` that kotune serve would otherwise ignore (module docstring)."""
    for key, value in body.items():
        if value is None:
            continue
        if key not in fields:
            raise ApiError(400, f"Unrecognized request argument supplied: {key} (kotune serve answers 400 to what "
                           "it does not implement)", param=key, code="unknown_parameter")
        rule = fields[key]
        if rule is not None and not rule[0](value):
            raise ApiError(400, rule[1], param=key, code="unsupported_parameter")


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    opts = body.get("stream_options")
    if opts is None:
        return bool(stream), False
    if not stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    for key, value in opts.items():
        if value is None:
            continue
        if key == "include_usage" and isinstance(value, bool):
            continue
        if key == "include_obfuscation" and value is False:
            continue
        what = ("leave it out or send false (no obfuscation fields)" if key == "include_obfuscation"
                else "kotune serve takes include_usage (a boolean)")
        raise ApiError(400, f"'stream_options.{key}' is not supported: {what}", param="stream_options")
    return True, bool(opts.get("include_usage"))


def _top(body: dict[str, Any], key: str) -> int:
    v = body.get(key)
    if not _int(v) or not 0 <= v <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"'{key}' must be an integer in [0, {MAX_TOP_LOGPROBS}]", param=key)
    return int(v)


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
        for key, value in m.items():
            if key not in ("role", "content") and value is not None:
                raise ApiError(400, f"messages[{i}].{key} is not supported by kotune serve (messages take 'role' and "
                               "'content')", param="messages")
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
    if body.get("max_completion_tokens") is not None:
        if max_tokens is not None and max_tokens != body["max_completion_tokens"]:
            raise ApiError(400, "'max_tokens' and 'max_completion_tokens' differ; send one of them",
                           param="max_completion_tokens")
        max_tokens, key = body["max_completion_tokens"], "max_completion_tokens"
    if max_tokens is None:
        max_tokens = min(default_max, limit)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"'{key}' must be a positive integer", param=key)
    if max_tokens > limit:
        raise ApiError(400, f"'{key}' is {max_tokens}, over this server's limit of {limit}", param=key,
                       code="max_tokens_exceeded")
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
    penalty = body.get("repetition_penalty")
    if penalty is None:
        penalty = 1.0
    elif isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 0 < penalty <= 10:
        raise ApiError(400, "'repetition_penalty' must be a number in (0, 10]", param="repetition_penalty")
    seed = body.get("seed")
    if seed is not None and not (_int(seed) and -2**63 <= seed < 2**63):
        raise ApiError(400, "'seed' must be a 64-bit integer", param="seed")
    return GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                              repetition_penalty=float(penalty), stop=stops, seed=seed)


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


@dataclass
class ChatRequest:
    """``POST /v1/chat/completions``. ``category`` (kotune's extension) picks a per-category system prompt;
    ``logprobs`` is None, or how many likeliest tokens (``top_logprobs``) to list beside each answer token's."""

    model: Any
    messages: list[dict[str, str]]
    settings: GenerationSettings
    category: str = ""
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None

    @classmethod
    def parse(cls, body: dict[str, Any], limits: Limits) -> "ChatRequest":
        model = model_name(body)
        check_fields(body, CHAT_FIELDS)
        messages = parse_messages(body.get("messages"))
        settings = parse_settings(body, limit=limits.max_tokens, default_max=limits.default_max_tokens)
        category = body.get("category")
        if category is not None and not isinstance(category, str):
            raise ApiError(400, "'category' must be a string", param="category")
        wants = body.get("logprobs")
        if wants is not None and not isinstance(wants, bool):
            raise ApiError(400, "'logprobs' must be a boolean", param="logprobs")
        logprobs = None
        if body.get("top_logprobs") is not None:
            if not wants:
                raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            logprobs = _top(body, "top_logprobs")
        elif wants:
            logprobs = 0
        return cls(model, messages, settings, category or "", *_stream(body), logprobs=logprobs)


def check_category(category: str, messages: list[dict[str, str]], template: Any) -> None:
    """400 unless ``category`` picks the system prompt the prompt is built with: only the
    chat template writes one, from its own per-category prompts, and only when the client
    sent no system message (:meth:`kotune.model.templates.Template.chat_prompt`)."""
    if not category:
        return
    if not template.is_chat:
        why = f"this model's template ({template.name}) has no system prompt"
    elif category not in template.system_prompts:
        known = ", ".join(sorted(template.system_prompts)) or "none"
        why = f"this model's template has no system prompt for it (categories: {known})"
    elif any(m["role"] == "system" for m in messages):
        why = "the request's own system message is used instead"
    else:
        return
    raise ApiError(400, f"'category' {category!r} would change nothing: {why}", param="category")


def _echo(body: dict[str, Any]) -> bool:
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise ApiError(400, "'echo' must be a boolean", param="echo")
    return bool(echo)


@dataclass
class CompletionRequest:
    """``POST /v1/completions``: prompts already in the model's format. ``logprobs``: None, or how many
    likeliest tokens to list beside each answer token's log-probability."""

    model: Any
    prompts: list[str]
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None

    @classmethod
    def parse(cls, body: dict[str, Any], limits: Limits) -> "CompletionRequest":
        model = model_name(body)
        check_fields(body, COMPLETION_FIELDS)
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
        if _echo(body):
            raise ApiError(400, "'echo' is supported for scoring prompts: not streamed, with 'logprobs' and "
                           "'max_tokens' 0 or 1", param="echo")
        logprobs = _top(body, "logprobs") if body.get("logprobs") is not None else None
        stream, include_usage = _stream(body)
        if stream and len(prompts) != 1:
            raise ApiError(400, "streaming takes one prompt", param="prompt")
        return cls(model, prompts, settings, stream, include_usage, logprobs)


@dataclass
class ScoreRequest:
    """``POST /v1/completions`` with ``echo`` and ``logprobs``: the prompt's own token
    log-probabilities (what lm-evaluation-harness's ``local-completions`` model asks for
    its loglikelihood tasks, and vLLM answers), plus at most one greedy next token.
    Nothing is sampled: ``temperature`` 0, ``top_p`` 1, no ``stop`` nor
    ``repetition_penalty`` (``seed`` then changes nothing and is accepted)."""

    model: Any
    prompts: list[str | list[int]]
    top: int
    max_tokens: int

    @classmethod
    def wants(cls, body: dict[str, Any]) -> bool:
        return body.get("echo") is True and body.get("logprobs") is not None and not body.get("stream")

    @classmethod
    def parse(cls, body: dict[str, Any], limits: Limits) -> "ScoreRequest":
        model = model_name(body)
        check_fields(body, COMPLETION_FIELDS)
        raw = body.get("prompt")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_int(t) for t in raw)):
            prompts: list[str | list[int]] = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(p, str) or (isinstance(p, list) and p and all(
                _int(t) for t in p)) for p in raw):
            prompts = list(raw)
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise ApiError(400, f"at most {limits.max_prompts} prompts per request", param="prompt")
        top = _top(body, "logprobs")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = 1
        if not _int(max_tokens) or max_tokens not in (0, 1):
            raise ApiError(400, "with 'echo', 'max_tokens' must be 0 or 1 (prompt scoring)", param="max_tokens")
        settings = parse_settings({k: v for k, v in body.items() if k != "max_tokens"}, limit=1, default_max=1)
        for key, bad in (("temperature", settings.temperature != 0), ("top_p", settings.top_p != 1),
                         ("repetition_penalty", settings.repetition_penalty != 1), ("stop", bool(settings.stop))):
            if bad:
                raise ApiError(400, f"'{key}' is not supported with 'echo' (prompt scoring; the one token after the "
                               "prompt is the greedy one): leave it out", param=key)
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


# An answer token's log-probability and the likeliest tokens there: (id, logprob, [(id, logprob), ...]).
TokenLogprob = tuple[int, float, list[tuple[int, float]]]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode`` inverted: the characters byte-level BPE tokens are written in → bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """A token's own bytes. A token that holds part of a UTF-8 character (byte-level BPE splits
    Hangul syllables) decodes to U+FFFD; its bytes then come from its vocabulary entry."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text.encode("utf-8")
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and piece:
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # SentencePiece byte fallback
        if m:
            return bytes([int(m.group(1), 16)])
        if all(c in _BYTES for c in piece):  # byte-level BPE
            return bytes(_BYTES[c] for c in piece)
    return text.encode("utf-8")


def token_text(tokenizer: Any, token_id: int) -> tuple[str, bytes]:
    """(the token as OpenAI writes it, its bytes): part of a character is ``bytes:\\xeb\\x85``."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text, text.encode("utf-8")
    raw = token_bytes(tokenizer, token_id)
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def chat_logprobs(tokenizer: Any, entries: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}``."""
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**one(i, lp), "top_logprobs": [one(j, v) for j, v in top]} for i, lp, top in entries],
            "refusal": None}


def completion_logprobs(tokenizer: Any, entries: list[TokenLogprob]) -> dict[str, Any]:
    """A completion choice's legacy ``logprobs``: tokens, token_logprobs, top_logprobs (the
    likeliest tokens and the chosen one, as OpenAI's "up to logprobs+1"), text_offset (from
    the start of the completion, as vLLM counts without echo)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    pos = 0
    for i, lp, top in entries:
        text = tokenizer.decode([i])
        tokens.append(text)
        token_logprobs.append(lp)
        offsets.append(pos)
        pos += len(text)
        entry: dict[str, float] = {}
        for j, v in top:
            entry.setdefault(tokenizer.decode([j]), v)
        entry.setdefault(text, lp)
        top_logprobs.append(entry)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def chat_completion(model: str, answer: Answer, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "logprobs": logprobs, "finish_reason": finish_reason(answer.finish_reason)}],
        "usage": usage([answer]),
    }


def text_completion(model: str, answers: list[Answer], logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": a.text, "logprobs": logprobs[i] if logprobs else None,
                     "finish_reason": finish_reason(a.finish_reason)} for i, a in enumerate(answers)],
        "usage": usage(answers),
    }


class StreamChunks:
    """The ``data:`` events of one streamed answer (chat.completion.chunk or text_completion)."""

    def __init__(self, model: str, *, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def chunk(self, text: str | None, finish: str | None, first: bool = False,
              logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": [choice]}

    def usage(self, answer: Answer) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": [],
                "usage": usage([answer])}
