"""``kotune serve``: an OpenAI-compatible HTTP API over one base model and its adapters.

The base model is loaded once; every ``--adapter NAME=OUT`` (a kotune output)
is attached to it as a named PEFT adapter and switched per batch. Each served
name answers in its own run's template and stops at its own EOS ids — the same
prompts ``kotune eval`` and ``kotune chat`` build, through the same
:class:`~kotune.generation.Generator` code.

Concurrency: the event loop only parses, validates and answers. Generation
runs in one thread. For full-attention decoders (GPT-NeoX, Llama, Qwen2, ...)
it is :class:`~kotune.batching.ContinuousBatcher`: every request, streaming
or not, joins the running batch at the next decode step and leaves it when it
is done. Other models use :class:`Batcher`: requests collected for up to
``batch_wait_ms`` (or until ``max_batch`` prompts) are grouped by model and
sampling settings, and each group is one batched ``generate``; streaming
requests then run in their own thread. Every generation holds the engine's
lock, because the active adapter is model-wide state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from fastapi import Request  # module level: FastAPI resolves the (string) annotations from here

from kotune.errors import KotuneError
from kotune.generation import Answer, GenerationSettings, Generator, TextPieces
from kotune.models import ModelRef, load_causal_lm, load_tokenizer, pick_device, resolve_model, run_trusts_remote_code
from kotune.templates import Template, choose_template, encode_prompt, eos_ids, get_template

BASE_ALIAS = "base"


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


# ---------------------------------------------------------------- the models
@dataclass
class Served:
    """One name the API answers to: the shared model with one adapter (or none) active."""

    name: str
    adapter: str | None          # internal PEFT adapter name; None = adapters disabled
    generator: Generator         # shares the one model; own tokenizer, template and EOS ids
    source: str                  # what the user passed (path or id), for /v1/models
    created: int = field(default_factory=lambda: int(time.time()))


def _generator_view(model, tokenizer, template: Template, eos: list[int], ref: ModelRef, device: str) -> Generator:
    """A :class:`Generator` over an already-loaded (shared) model: same prompt
    encoding, batching, stop handling and streaming as everywhere else."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = eos[0]
    gen = Generator.__new__(Generator)
    gen.ref, gen.device, gen.tokenizer, gen.model = ref, device, tokenizer, model
    gen.template, gen.eos_ids = template, list(eos)
    return gen


def _same_model(a: str, b: str) -> bool:
    """The same HF id, or the same folder however it was written."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def parse_adapter_args(items: list[str] | None) -> list[tuple[str, str]]:
    """``NAME=PATH`` (or a bare PATH, named after its folder) → ``[(name, path)]``."""
    out: list[tuple[str, str]] = []
    for item in items or []:
        for part in item.split():
            name, sep, path = part.partition("=")
            if not sep:
                name, path = Path(part).name, part
            if not name or not path:
                raise KotuneError(f"--adapter takes NAME=PATH, got {part!r}")
            out.append((name, path))
    return out


class Engine:
    """The loaded model, its served names, and the lock every generation holds."""

    def __init__(self, model_spec: str, adapters: list[tuple[str, str]] | None = None, *, template: str | None = None,
                 device: str | None = None, log=print):
        self.device = device or pick_device()
        self.lock = threading.Lock()
        adapters = list(adapters or [])
        ref = resolve_model(model_spec, log=log)
        base_path = ref.base
        run = ref.run
        choose_template(run, template, spec=model_spec)  # refuse a conflicting --template before loading
        if ref.adapter is None and run and run.get("method") == "merged" and (Path(model_spec) / "config.json").exists():
            base_path = str(model_spec)  # a `kotune export` folder: its own (merged) weights
        # Every name, its adapter folder (or None) and its run info.
        entries: list[tuple[str, str | None, dict[str, Any] | None, str]] = [(model_spec, ref.adapter, run, model_spec)]
        names = {model_spec, BASE_ALIAS}
        for name, path in adapters:
            if name in names:
                raise KotuneError(f"adapter name {name!r} is taken (the base is served as {model_spec!r} and {BASE_ALIAS!r}; "
                                  "names must be unique)")
            names.add(name)
            if not Path(path).is_dir():
                raise KotuneError("no such adapter folder", path=path)
            aref = resolve_model(path, log=log)
            if aref.adapter is None:
                raise KotuneError("not a LoRA adapter (a full or merged model); serve it with --model", path=path)
            if not _same_model(aref.base, base_path):
                raise KotuneError(f"adapter was trained on {(aref.run or {}).get('base_model') or aref.base}, "
                                  f"not on {model_spec}", path=path)
            entries.append((name, aref.adapter, aref.run, path))

        log(f"loading {model_spec} on {self.device} ...")
        base_tok_path = ref.adapter or base_path
        trust = any(run_trusts_remote_code(r) for _, _, r, _ in entries)
        tokenizers = [load_tokenizer(a or base_tok_path, trust) for _, a, _, _ in entries]
        model = load_causal_lm(base_path, device=self.device, trust_remote_code=trust)
        vocab = max(len(t) for t in tokenizers)
        if vocab > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(vocab)
        peft_names: list[str | None] = []
        for i, (name, adapter, _, _) in enumerate(entries):
            if adapter is None:
                peft_names.append(None)
                continue
            internal = f"a{i}"  # PEFT names become module keys: no dots or colons
            from peft import PeftModel

            if isinstance(model, PeftModel):
                model.load_adapter(adapter, adapter_name=internal)
            else:
                model = PeftModel.from_pretrained(model, adapter, adapter_name=internal)
            peft_names.append(internal)
            log(f"adapter {name} ← {adapter}")
        self.model = model.eval()
        self.is_peft = any(a is not None for a in peft_names)  # then self.model is a PeftModel

        # Templates: each run its own; the plain base --template, else the first adapter's, else kotune.
        first_adapter = next((t for t in (choose_template(r, None) for _, a, r, _ in entries[1:] if a) if t), None)
        fallback = first_adapter or get_template("kotune")
        self.served: dict[str, Served] = {}
        for i, ((name, adapter, run_info, source), tok, internal) in enumerate(zip(entries, tokenizers, peft_names)):
            # --template is for the --model entry when it is a plain base; a run keeps its own
            # (choose_template refuses another), and --adapter runs always answer in theirs.
            tmpl = choose_template(run_info, template if i == 0 else None, spec=source) or fallback
            eos = list((run_info or {}).get("eos_token_ids") or eos_ids(tok))
            sub_ref = ModelRef(source, base_path, adapter, run_info)
            self.served[name] = Served(name, internal, _generator_view(self.model, tok, tmpl, eos, sub_ref, self.device),
                                       source)
        self.base_name = model_spec
        cfg = getattr(self.model, "config", None)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None

    # ------------------------------------------------------------ lookup
    @property
    def names(self) -> list[str]:
        return list(self.served)

    def get(self, name: Any) -> Served:
        if isinstance(name, str):
            if name == BASE_ALIAS and BASE_ALIAS not in self.served:
                return self.served[self.base_name]
            if name in self.served:
                return self.served[name]
        available = ", ".join(self.names + ([BASE_ALIAS] if BASE_ALIAS not in self.served else []))
        raise ApiError(404, f"The model {name!r} does not exist. Available models: {available}",
                       param="model", code="model_not_found")

    # ------------------------------------------------------------ generation (call with nothing held)
    @contextlib.contextmanager
    def _active(self, served: Served) -> Iterator[None]:
        if not self.is_peft:
            yield
        elif served.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(served.adapter)
            yield

    def check_length(self, served: Served, prompt: str, max_new_tokens: int) -> None:
        """400 when prompt + max_tokens cannot fit the model's context (fast tokenizers
        encode concurrently without trouble; nothing here changes tokenizer state)."""
        if self.max_context is None:
            return
        n = len(encode_prompt(served.generator.tokenizer, prompt, served.generator.template))
        if n + max_new_tokens > self.max_context:
            raise ApiError(400, f"This model's maximum context length is {self.max_context} tokens; the prompt has {n} "
                           f"and max_tokens is {max_new_tokens}.", param="messages", code="context_length_exceeded")

    def generate(self, name: str, prompts: list[str], settings: GenerationSettings, batch_size: int = 16) -> list[Answer]:
        """One batched generation with ``name``'s adapter active."""
        served = self.served[name]
        with self.lock, self._active(served):
            return served.generator.generate(prompts, settings, batch_size=batch_size)

    def stream(self, name: str, prompt: str, settings: GenerationSettings) -> Iterator[str | Answer]:
        """Text pieces, then the final Answer. Holds the lock until the answer is complete."""
        served = self.served[name]
        with self.lock, self._active(served):
            # Consumed to the end even if nobody listens: Generator.stream's own
            # generate thread must finish before the adapter may change.
            yield from served.generator.stream(prompt, settings)


# ---------------------------------------------------------------- batching
@dataclass
class _Job:
    model: str
    prompts: list[str]
    settings: GenerationSettings
    future: asyncio.Future

    @property
    def key(self) -> tuple:
        s = self.settings
        return (self.model, s.max_new_tokens, s.temperature, s.top_p, s.repetition_penalty, tuple(s.stop))


class Batcher:
    """Collects concurrent non-streaming requests and answers them in batched generate calls.

    One asyncio task takes the first waiting job, then keeps taking jobs until
    ``wait_s`` has passed since that first one or ``max_batch`` prompts are
    collected; jobs that queued up while the previous batch ran are taken at
    once without waiting. The collected jobs are grouped by (model, settings) and
    each group is one ``Engine.generate`` in a single worker thread, so the event
    loop keeps answering (health checks, errors, new requests) meanwhile.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 16, wait_s: float = 0.01):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_s))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kotune-gen")
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # prompts per generate call (recent), for /health and tests

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, model: str, prompts: list[str], settings: GenerationSettings) -> list[Answer]:
        assert self.queue is not None, "Batcher.start() was not awaited"
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(model, prompts, settings, fut))
        return await fut

    async def _collect(self) -> list[_Job]:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        size = len(jobs[0].prompts)
        deadline = loop.time() + self.wait_s
        while size < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
            jobs.append(job)
            size += len(job.prompts)
        return jobs

    async def stream(self, model: str, prompt: str, settings: GenerationSettings):
        """Engine.stream in its own thread, its items handed to the event loop as they come."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        done = object()

        def hand(item) -> None:
            _to_loop(loop, q.put_nowait, item)

        def work():
            try:
                for item in self.engine.stream(model, prompt, settings):
                    hand(item)
            except BaseException as e:  # noqa: BLE001 - handed to the response
                hand(e)
            hand(done)

        threading.Thread(target=work, daemon=True, name="kotune-stream").start()
        while True:
            item = await q.get()
            if item is done:
                return
            yield item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # the client may have gone away
                    groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                prompts = [p for j in group for p in j.prompts]
                self.batches = (self.batches + [len(prompts)])[-1000:]
                try:
                    results = await loop.run_in_executor(self.executor, self.engine.generate, group[0].model, prompts,
                                                         group[0].settings, self.max_batch)
                except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                at = 0
                for j in group:
                    part = results[at:at + len(j.prompts)]
                    at += len(j.prompts)
                    if not j.future.done():
                        j.future.set_result(part)


class LiveBatcher:
    """The event loop's side of :class:`~kotune.batching.ContinuousBatcher`.

    The same ``submit`` as :class:`Batcher`, and ``stream`` for streaming
    requests, which join the running batch like any other. A request whose
    client goes away leaves the batch at the next step."""

    def __init__(self, engine: Engine, *, max_batch: int = 16):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.core = None

    async def start(self) -> None:
        from kotune.batching import ContinuousBatcher

        engine = self.engine
        self.core = ContinuousBatcher(lambda name: engine.served[name].generator,
                                      lambda name: engine._active(engine.served[name]),
                                      max_batch=self.max_batch, lock=engine.lock)

    async def stop(self) -> None:
        if self.core is not None:
            await asyncio.to_thread(self.core.close)

    def _row(self, model: str, prompt: str, settings: GenerationSettings, done, on_tokens=None):
        from kotune.batching import Row

        gen = self.engine.served[model].generator
        return self.core.submit(Row(model, encode_prompt(gen.tokenizer, prompt, gen.template), settings, done, on_tokens))

    async def submit(self, model: str, prompts: list[str], settings: GenerationSettings) -> list[Answer]:
        assert self.core is not None, "LiveBatcher.start() was not awaited"
        loop = asyncio.get_running_loop()
        futures, rows = [], []
        for p in prompts:
            fut = loop.create_future()
            futures.append(fut)
            rows.append(self._row(model, p, settings, lambda a, fut=fut: _settle(loop, fut, a)))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for r in rows:  # no-op for finished rows; a client that went away frees its slots
                r.cancel()

    async def stream(self, model: str, prompt: str, settings: GenerationSettings):
        """Text pieces as the row's tokens come, then the final Answer (or an exception)."""
        assert self.core is not None, "LiveBatcher.start() was not awaited"
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def hand(item) -> None:
            _to_loop(loop, q.put_nowait, item)

        gen = self.engine.served[model].generator
        pieces = TextPieces(gen.tokenizer, gen.eos_ids, settings.stop)
        row = self._row(model, prompt, settings, hand, hand)
        try:
            while True:
                item = await q.get()
                if isinstance(item, list):
                    piece = pieces.add(item)
                    if piece:
                        yield piece
                    continue
                if isinstance(item, Answer):
                    rest = pieces.rest(item)
                    if rest:
                        yield rest
                yield item
                return
        finally:
            row.cancel()


def _to_loop(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """Run ``fn(*args)`` on the event loop, from a generation thread."""
    with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down)
        loop.call_soon_threadsafe(fn, *args)


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result: Answer | BaseException) -> None:
    """Hand a result from the batching thread to a waiting future."""

    def put() -> None:
        if fut.done():
            return
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    _to_loop(loop, put)


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


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _include_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    return bool(opts.get("include_usage")) if isinstance(opts, dict) else False


def _usage(answers: list[Answer]) -> dict[str, int]:
    p = sum(a.prompt_tokens for a in answers)
    c = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


# ---------------------------------------------------------------- the app
@dataclass
class ServeOptions:
    api_key: str | None = None
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    max_batch: int = 16
    batch_wait_ms: float = 10.0
    continuous: bool = True      # continuous batching where the model allows it (kotune.batching.supports)
    context: str | None = None   # chunks JSONL for retrieval
    top_k: int = 3


def create_app(engine: Engine, options: ServeOptions | None = None):
    """The FastAPI app (no server started): routes, auth, limits, batching."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    opts = options or ServeOptions()
    from kotune.batching import supports

    if opts.continuous and supports(engine.model):
        batcher: Batcher | LiveBatcher = LiveBatcher(engine, max_batch=opts.max_batch)
    else:
        batcher = Batcher(engine, max_batch=opts.max_batch, wait_s=opts.batch_wait_ms / 1000.0)
    retriever = None
    if opts.context:
        from kotune.retrieval import Retriever

        retriever = Retriever.from_file(opts.context)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="kotune", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
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

    def authenticate(request: Request) -> None:
        if opts.api_key is None:
            return
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if not header:
            raise ApiError(401, "Missing API key: send 'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), opts.api_key.encode("utf-8"))
        if not ok:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> dict[str, Any]:
        limit = opts.max_body_bytes
        too_big = ApiError(413, f"request body is over this server's limit of {limit} bytes",
                           code="request_too_large")
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

    def retrieve(question: str) -> str | None:
        if retriever is None:
            return None
        from kotune.retrieval import format_context

        hits = retriever.search(question, k=opts.top_k)
        return format_context(hits) or None

    def chat_prompt(served: Served, messages: list[dict[str, str]], category: str) -> str:
        gen = served.generator
        template = gen.template
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        question = messages[last_user]["content"]
        context = retrieve(question)
        if template.name != "chat":
            # Instruction templates were trained on one question: the last user message.
            return gen.prompt(question, category=category, context=context)
        msgs = [dict(m) for m in messages]
        if context:
            msgs[last_user]["content"] = f"{question}\n\n{context}"
        system = template.system_prompts.get(category) or template.default_system
        if system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system})
        return gen.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def streaming(name: str, prompt: str, settings: GenerationSettings, *, chat: bool, include_usage: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice]}

        async def events():
            if chat:
                yield sse(chunk("", None, first=True))
            answer = None
            try:
                async for item in batcher.stream(name, prompt, settings):
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, Answer):
                        answer = item
                    elif item:
                        yield sse(chunk(item, None))
            except Exception as e:  # noqa: BLE001 - the stream has started; report in-band
                yield sse(ApiError(500, f"internal error: {type(e).__name__}", type="server_error").body())
                yield "data: [DONE]\n\n"
                return
            yield sse(chunk(None if chat else "", _finish(answer.finish_reason if answer else "stop")))
            if include_usage and answer is not None:
                usage = {"id": rid, "object": obj, "created": created, "model": name, "choices": [],
                         "usage": _usage([answer])}
                yield sse(usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------ routes
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": engine.names,
                "batching": "continuous" if isinstance(batcher, LiveBatcher) else "static"}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authenticate(request)
        data = [{"id": s.name, "object": "model", "created": s.created, "owned_by": "kotune",
                 "root": engine.base_name, "parent": None if s.name == engine.base_name else engine.base_name}
                for s in engine.served.values()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        authenticate(request)
        s = engine.get(model_id)
        return {"id": s.name, "object": "model", "created": s.created, "owned_by": "kotune"}

    async def model_request(request: Request) -> tuple[dict[str, Any], Served]:
        """Authenticated JSON body and the served model it names."""
        authenticate(request)
        body = await read_json(request)
        if "model" not in body:
            raise ApiError(400, "'model' is a required property", param="model", code="missing_required_parameter")
        return body, engine.get(body["model"])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body, served = await model_request(request)
        messages = parse_messages(body.get("messages"))
        settings = parse_settings(body, limit=opts.max_tokens_limit, default_max=opts.default_max_tokens)
        category = body.get("category") if isinstance(body.get("category"), str) else ""
        prompt = chat_prompt(served, messages, category)
        engine.check_length(served, prompt, settings.max_new_tokens)
        if body.get("stream"):
            return streaming(served.name, prompt, settings, chat=True, include_usage=_include_usage(body))
        answer = (await batcher.submit(served.name, [prompt], settings))[0]
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": served.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "logprobs": None, "finish_reason": _finish(answer.finish_reason)}],
            "usage": _usage([answer]),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body, served = await model_request(request)
        raw = body.get("prompt")
        if isinstance(raw, str):
            prompts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
            prompts = list(raw)
        elif raw is None:
            raise ApiError(400, "'prompt' is a required property", param="prompt", code="missing_required_parameter")
        else:
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        if len(prompts) > max(opts.max_batch, 16) * 4:
            raise ApiError(400, f"at most {max(opts.max_batch, 16) * 4} prompts per request", param="prompt")
        settings = parse_settings(body, limit=opts.max_tokens_limit, default_max=opts.default_max_tokens)
        if body.get("echo"):
            raise ApiError(400, "'echo' is not supported", param="echo")
        for p in prompts:
            engine.check_length(served, p, settings.max_new_tokens)
        if body.get("stream"):
            if len(prompts) != 1:
                raise ApiError(400, "streaming takes one prompt", param="prompt")
            return streaming(served.name, prompts[0], settings, chat=False, include_usage=_include_usage(body))
        answers = await batcher.submit(served.name, prompts, settings)
        return {
            "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": served.name,
            "choices": [{"index": i, "text": a.text, "logprobs": None, "finish_reason": _finish(a.finish_reason)}
                        for i, a in enumerate(answers)],
            "usage": _usage(answers),
        }

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


def serve(model: str, adapters: list[tuple[str, str]], *, host: str = "127.0.0.1", port: int = 8000,
          template: str | None = None, options: ServeOptions | None = None, access_log: bool = False, log=print) -> None:
    """Load the model and adapters once, then run uvicorn until interrupted."""
    import uvicorn

    opts = options or ServeOptions()
    if opts.context and not Path(opts.context).exists():
        raise KotuneError("no such file", path=opts.context)
    engine = Engine(model, adapters, template=template, log=log)
    app = create_app(engine, opts)
    names = ", ".join(engine.names)
    log(f"serving {names} (alias {BASE_ALIAS!r} = {engine.base_name}) at http://{host}:{port}/v1"
        + ("; API key required" if opts.api_key else "; no API key"))
    kind = "continuous" if isinstance(app.state.batcher, LiveBatcher) else "static"
    log(f"batching: {kind}, up to {opts.max_batch} prompts together"
        + ("" if kind == "continuous" or not opts.continuous else " (this model has sliding-window or linear attention layers)"))
    for s in engine.served.values():
        log(f"  {s.name}: template {s.generator.template.name}, eos {s.generator.eos_ids}")
    if not opts.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: listening on {host} without an API key (use --api-key-env VAR)")
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info", server_header=False)


__all__ = ["ApiError", "Batcher", "Engine", "LiveBatcher", "ServeOptions", "Served", "api_key_from_env", "create_app",
           "parse_adapter_args", "serve"]
