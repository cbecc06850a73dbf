"""``kotune serve``: an OpenAI-compatible HTTP API over one base model and its adapters.

This module holds the routes (module level, on one ``APIRouter``), the app's
cross-cutting parts (API key, body limit, OpenAI-shaped errors) and the
``serve`` entry point. The request and response shapes live in
:mod:`kotune.serve.protocol`; the model, its adapters and the batchers in
:mod:`kotune.serve.engine`. Prompts are built by the served run's
:class:`~kotune.model.templates.Template`, as in training, eval and chat.

Retrieval is decided per served name (:func:`kotune.model.retrieval.retrieval_for`): with
``--context`` every name retrieves from it; without, a grounded run retrieves from the chunks
and ``top_k`` it recorded, and other names get no passages. A chat answer of a name that
retrieves carries the passages it was asked with and whether it abstained, in an extension
field OpenAI clients ignore: ``"kotune": {"passages": [{"n", "chunk_id", "text"}], "abstained"}``
(streamed: on the chunk with the finish reason). A last user message that already holds
``[문서 1]`` passages (a client that retrieved for itself) is asked as it is. ``/v1/completions``
takes rendered prompts and so retrieves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request  # module level: FastAPI resolves the (string) annotations from here

from kotune.serve.engine import BASE_ALIAS, Batcher, Engine, LiveBatcher, Served, parse_adapter_args
from kotune.errors import KotuneError
from kotune.model.answers import Answer, GenerationSettings
from kotune.model.retrieval import Passages, Retrieval, abstains, holds_passages, retrieval_for
from kotune.model.runinfo import RunInfo
from kotune.model.templates import ABSTENTION
from kotune.options import ServeOptions
from kotune.serve.protocol import (ApiError, ChatRequest, CompletionRequest, Limits, ScoreRequest, StreamChunks,
                                    chat_completion, chat_logprobs, check_category, completion_logprobs, finish_reason,
                                    model_name, scored_completion, text_completion)


@dataclass
class _State:
    """What the routes share, kept on ``app.state.kotune``: the engine, the batcher and
    ``kotune serve``'s options (:class:`kotune.options.ServeOptions`), with the API key they name."""

    engine: Engine
    batcher: Batcher | LiveBatcher
    options: ServeOptions
    retrievals: dict[str, Retrieval | None]   # per served name (module docstring)
    api_key: str | None = None   # read once from options.api_key_env at start; never printed

    @property
    def limits(self) -> Limits:
        o = self.options
        return Limits(o.max_tokens_limit, min(o.default_max_tokens, o.max_tokens_limit), max(o.max_batch, 16) * 4)

    def retrieve(self, name: str, question: str) -> Passages | None:
        """The passages for the last user message (kotune.model.retrieval.Retrieval's rule); None
        when ``name`` does not retrieve. A message that brings its own passages gets none added."""
        retrieval = self.retrievals.get(name)
        if retrieval is None:
            return None
        return Passages() if holds_passages(question) else retrieval.passages(question)

    def extension(self, served: Served, passages: Passages | None, answer: Answer | None) -> dict[str, Any]:
        """The ``kotune`` field of an answer of a name that retrieves: its passages and whether it abstained."""
        if passages is None:
            return {}
        run = served.generator.resolved.run
        sentence = run.abstention if run and run.abstention else ABSTENTION
        return {"kotune": {"passages": passages.listed(),
                           "abstained": abstains(answer.text, sentence) if answer is not None else None}}


def served_retrievals(entries: list[tuple[str, RunInfo | None]], options: ServeOptions) -> dict[str, Retrieval | None]:
    """Each served name's retrieval (one error line for a grounded run whose chunks are gone)."""
    return {name: retrieval_for(run, name=name, context=options.context, top_k=options.given("top_k"))
            for name, run in entries}


def _state(request: Request) -> _State:
    return request.app.state.kotune


# ---------------------------------------------------------------- request checks
def authenticate(request: Request) -> None:
    key = _state(request).api_key
    if key is None:
        return
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), key.encode("utf-8"))):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_json(request: Request) -> dict[str, Any]:
    """The JSON object body, read up to the server's body limit (413 beyond it)."""
    limit = _state(request).options.max_body_bytes
    too_big = ApiError(413, f"request body is over this server's limit of {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        data = json.loads(bytes(body))
    except ValueError as e:
        raise ApiError(400, f"We could not parse the JSON body of your request ({type(e).__name__}: {e})",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


# ---------------------------------------------------------------- streaming
def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _logprobs(state: _State, name: str, prompt: str, answer: Answer, settings: GenerationSettings, top: int,
                    *, chat: bool) -> dict[str, Any]:
    """The answer's ``logprobs`` object (chat's or the legacy completions' shape), from one forward pass."""
    entries = await asyncio.to_thread(state.engine.logprobs, name, prompt, answer, settings, top)
    tokenizer = state.engine.served[name].generator.tokenizer
    return chat_logprobs(tokenizer, entries) if chat else completion_logprobs(tokenizer, entries)


def _streaming(state: _State, name: str, prompt: str, settings: GenerationSettings, *, chat: bool, include_usage: bool,
               logprobs: int | None = None, passages: Passages | None = None):
    """The streamed answer; with ``logprobs``, every token's log-probability comes in one
    chunk after the text (OpenAI clients concatenate the chunks' logprobs). The ``kotune``
    field (passages, abstained) rides on the chunk with the finish reason."""
    from fastapi.responses import StreamingResponse

    chunks = StreamChunks(name, chat=chat)
    served = state.engine.get(name)

    async def events():
        if chat:
            yield _sse(chunks.chunk("", None, first=True))
        answer = None
        try:
            async for item in state.batcher.stream(name, prompt, settings):
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Answer):
                    answer = item
                elif item:
                    yield _sse(chunks.chunk(item, None))
            if logprobs is not None and answer is not None:
                lp = await _logprobs(state, name, prompt, answer, settings, logprobs, chat=chat)
                yield _sse(chunks.chunk(None if chat else "", None, logprobs=lp))
        except Exception as e:  # noqa: BLE001 - the stream has started; report in-band
            yield _sse(ApiError(500, f"internal error: {type(e).__name__}", type="server_error").body())
            yield "data: [DONE]\n\n"
            return
        extension = await asyncio.to_thread(state.extension, served, passages, answer)  # Kiwi: off the event loop
        yield _sse({**chunks.chunk(None if chat else "", finish_reason(answer.finish_reason if answer else "stop")),
                    **extension})
        if include_usage and answer is not None:
            yield _sse(chunks.usage(answer))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------- routes
router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = _state(request)
    return {"status": "ok", "models": state.engine.names,
            "batching": "continuous" if isinstance(state.batcher, LiveBatcher) else "static"}


@router.get("/v1/models")
async def list_models(request: Request):
    authenticate(request)
    engine = _state(request).engine
    data = [{"id": s.name, "object": "model", "created": s.created, "owned_by": "kotune",
             "root": engine.base_name, "parent": None if s.name == engine.base_name else engine.base_name,
             "kotune": _announce(s)} for s in engine.served.values()]
    return {"object": "list", "data": data}


def _announce(served: Served) -> dict[str, Any]:
    """What kotune eval needs to ask this model as it was trained (an extension field that
    OpenAI clients ignore): the run's template (None for a plain base: the caller's applies),
    and the EOS ids the server stops at."""
    run = served.generator.resolved.run
    own = run.own_template if run else None
    return {"template": own.to_dict() if own else None, "eos_token_ids": served.generator.eos_ids}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    authenticate(request)
    s = _state(request).engine.get(model_id)
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "kotune", "kotune": _announce(s)}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    authenticate(request)
    state = _state(request)
    body = await read_json(request)
    served: Served = state.engine.get(model_name(body))
    req = ChatRequest.parse(body, state.limits)
    gen = served.generator
    check_category(req.category, req.messages, gen.template)
    last_user = max(i for i, m in enumerate(req.messages) if m["role"] == "user")
    passages = await asyncio.to_thread(state.retrieve, served.name, req.messages[last_user]["content"])
    prompt = gen.template.chat_prompt(req.messages, category=req.category, tokenizer=gen.tokenizer,
                                      context=(passages.text or None) if passages is not None else None)
    state.engine.check_length(served, prompt, req.settings.max_new_tokens)
    if req.stream:
        return _streaming(state, served.name, prompt, req.settings, chat=True, include_usage=req.include_usage,
                          logprobs=req.logprobs, passages=passages)
    answer = (await state.batcher.submit(served.name, [prompt], req.settings))[0]
    lp = None
    if req.logprobs is not None:
        lp = await _logprobs(state, served.name, prompt, answer, req.settings, req.logprobs, chat=True)
    extension = await asyncio.to_thread(state.extension, served, passages, answer)
    return {**chat_completion(served.name, answer, lp), **extension}


@router.post("/v1/completions")
async def completions(request: Request):
    authenticate(request)
    state = _state(request)
    body = await read_json(request)
    served = state.engine.get(model_name(body))
    if ScoreRequest.wants(body):
        score = ScoreRequest.parse(body, state.limits)
        scored = await asyncio.to_thread(state.engine.score, served.name, score.prompts, score.top, score.max_tokens)
        return scored_completion(served.name, scored)
    req = CompletionRequest.parse(body, state.limits)
    for p in req.prompts:
        state.engine.check_length(served, p, req.settings.max_new_tokens)
    if req.stream:
        return _streaming(state, served.name, req.prompts[0], req.settings, chat=False, include_usage=req.include_usage,
                          logprobs=req.logprobs)
    answers = await state.batcher.submit(served.name, req.prompts, req.settings)
    lps = None
    if req.logprobs is not None:
        lps = [await _logprobs(state, served.name, p, a, req.settings, req.logprobs, chat=False)
               for p, a in zip(req.prompts, answers)]
    return text_completion(served.name, answers, lps)


# vLLM's tokenizer endpoints (at the server root, beside /v1): lm-evaluation-harness's
# remote tokenizer uses them to send token ids to /v1/completions for scoring.
def _tokenizer(state: _State, body: dict[str, Any]):
    served = state.engine.get(body["model"]) if body.get("model") is not None else state.engine.get(state.engine.base_name)
    return served.generator.tokenizer


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request):
    authenticate(request)
    state = _state(request)
    tok = _tokenizer(state, {})
    return {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
            "model_max_length": state.engine.max_context, "tokenizer_class": type(tok).__name__}


@router.post("/tokenize")
async def tokenize(request: Request):
    authenticate(request)
    state = _state(request)
    body = await read_json(request)
    if not isinstance(body.get("prompt"), str):
        raise ApiError(400, "'prompt' must be a string", param="prompt")
    tokens = list(_tokenizer(state, body)(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))
                  ["input_ids"])
    return {"tokens": tokens, "count": len(tokens), "max_model_len": state.engine.max_context}


@router.post("/detokenize")
async def detokenize(request: Request):
    authenticate(request)
    state = _state(request)
    body = await read_json(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ApiError(400, "'tokens' must be a list of token ids", param="tokens")
    return {"prompt": _tokenizer(state, body).decode(tokens)}


# ---------------------------------------------------------------- the app
def create_app(engine: Engine, options: ServeOptions | None = None):
    """The FastAPI app (no server started): the routes, OpenAI-shaped errors, the batcher's lifetime."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    opts = options or ServeOptions()
    api_key = api_key_from_env(opts.api_key_env)
    if opts.batching == "continuous" and engine.supports_continuous():
        batcher: Batcher | LiveBatcher = LiveBatcher(engine, max_batch=opts.max_batch)
    else:
        batcher = Batcher(engine, max_batch=opts.max_batch, wait_s=opts.batch_wait_ms / 1000.0)
    retrievals = served_retrievals([(s.name, s.generator.resolved.run) for s in engine.served.values()], opts)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="kotune", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.kotune = _State(engine, batcher, opts, retrievals, api_key)
    app.state.engine, app.state.batcher, app.state.options = engine, batcher, opts

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        return error_response(ApiError(400, "invalid request"))

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc: Exception):
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    app.include_router(router)
    return app


def api_key_from_env(var: str | None) -> str | None:
    """The key named by ``--api-key-env`` (read once at start; never printed)."""
    import os

    if not var:
        return None
    key = os.environ.get(var)
    if not key:
        raise KotuneError(f"--api-key-env {var}: that environment variable is not set (or empty)")
    return key


def serve_llamacpp(model: str, adapters: list[tuple[str, str]], opts: ServeOptions, *, log=print) -> None:
    """``kotune serve --model llamacpp:FILE.gguf``: llama.cpp's own OpenAI-compatible server (the
    runtime a CPU server runs an exported model with), on ``--host``/``--port`` with ``--api-key-env``,
    until interrupted. Its chat endpoint renders the GGUF's chat template (the run's prompt);
    kotune's batching and retrieval options do not apply to it."""
    import time

    from kotune.model.llamacpp import LlamaCppSpec, SERVED_NAME, exported_run, start_server

    spec = LlamaCppSpec.parse(model)
    if adapters:
        raise KotuneError("--adapter: a GGUF file is one merged model; export each run to its own file")
    if opts.context:
        raise KotuneError("--context: llama.cpp's server does not retrieve passages; serve the run itself "
                          "(kotune serve --model RUN) for grounded answers")
    if not spec.file.is_file():
        raise KotuneError("no such GGUF file", path=spec.file)
    key = api_key_from_env(opts.api_key_env)
    run = exported_run(spec.file)
    server = start_server(spec.file, parallel=min(opts.max_batch, 8), host=opts.host, port=opts.port, api_key=key)
    url = server.listening_address + "/v1"
    log(f"serving {spec.file.name} as {SERVED_NAME!r} with llama.cpp at {url}"
        + ("; API key required" if key else "; no API key"))
    if run is not None:
        log(f"  exported from {run.exported_from.run if run.exported_from else '?'}: template "
            f"{run.own_template.name if run.own_template else '?'} (its chat template), eos {run.eos_token_ids}")
        if run.exported_from:
            log(f"  evaluate it: kotune eval --models 'openai:{url}#{SERVED_NAME}@{run.exported_from.run}' "
                "--questions QUESTIONS.jsonl -o EVAL" + (f" --api-key-env {opts.api_key_env}" if key else ""))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("stopped")
    finally:
        del server


def serve(model: str, adapters: list[tuple[str, str]], options: ServeOptions | None = None, *, log=print) -> None:
    """Load the model and adapters once, then run uvicorn with ``kotune serve``'s options until interrupted."""
    import uvicorn

    opts = options or ServeOptions()
    if model.startswith("llamacpp:"):
        return serve_llamacpp(model, adapters, opts, log=log)
    api_key_from_env(opts.api_key_env)  # an unset variable fails before the model loads
    if opts.context and not Path(opts.context).exists():
        raise KotuneError("no such file", path=opts.context)
    # Retrieval decided before the weights load: a grounded run whose chunks are gone is one line.
    served_retrievals([(name, RunInfo.read(path) if Path(path).is_dir() else None)
                       for name, path in [(model, model), *adapters]], opts)
    engine = Engine(model, adapters, template=opts.template, log=log)
    app = create_app(engine, opts)
    host, port, keyed = opts.host, opts.port, app.state.kotune.api_key is not None
    names = ", ".join(engine.names)
    log(f"serving {names} (alias {BASE_ALIAS!r} = {engine.base_name}) at http://{host}:{port}/v1"
        + ("; API key required" if keyed else "; no API key"))
    kind = "continuous" if isinstance(app.state.batcher, LiveBatcher) else "static"
    log(f"batching: {kind}, up to {opts.max_batch} prompts together"
        + ("" if kind == opts.batching else " (this model has sliding-window or linear attention layers)"))
    retrievals = app.state.kotune.retrievals
    for s in engine.served.values():
        r = retrievals.get(s.name)
        how = "" if r is None else f", retrieving {r.k} passages from {r.source}" + (" (recorded)" if r.from_run else "")
        log(f"  {s.name}: template {s.generator.template.name}, eos {s.generator.eos_ids}{how}")
    if not keyed and host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: listening on {host} without an API key (use --api-key-env VAR)")
    uvicorn.run(app, host=host, port=port, access_log=opts.access_log, log_level="info", server_header=False)


__all__ = ["ApiError", "Batcher", "Engine", "LiveBatcher", "ServeOptions", "Served", "api_key_from_env", "create_app",
           "parse_adapter_args", "router", "serve"]
