"""``kotune studio``: one process serving a web UI over the runs and files under ROOT.

Why this stack: FastAPI (kotune serve's) renders the pages on the server with Jinja2
(the HTML report's), and one small script of our own (``assets/studio/studio.js``)
draws the live loss curves and streams chat answers. Gradio, as LLaMA Board uses, would
add a large dependency tree and a front end that fetches assets at run time; this works
offline with what kotune already installs: no CDN, no web fonts.

Security: loopback by default. Any other host needs a token (``--token-env`` or one
generated and printed once), compared in constant time and never logged (no access log).
Requests must name this server in ``Host`` (DNS rebinding), state-changing requests must
carry the ``X-Kotune-Studio`` header (a cross-site form cannot), bodies are bounded,
and every path parameter passes :meth:`kotune.studio.root.Root.path`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from kotune.errors import KotuneError
from kotune.studio import launch as launching
from kotune.studio import views
from kotune.studio.chatting import ChatModels, answer_abstains, chat_retrieval, check_question, settings_from
from kotune.studio.i18n import LANGS, words
from kotune.studio.root import LAUNCH_LOG, OutsideRoot, Root, find, tail

MAX_BODY_BYTES = 256 * 1024
COOKIE = "kotune_studio_token"
HEADER = "x-kotune-studio"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = {"studio.js": "text/javascript; charset=utf-8", "studio.css": "text/css; charset=utf-8"}


class StudioError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@functools.lru_cache(maxsize=1)
def _env():
    import jinja2

    folder = resources.files("kotune") / "assets" / "studio"
    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: (folder / name).read_text(encoding="utf-8")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson_attr"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


@functools.lru_cache(maxsize=None)
def _static(name: str) -> str:
    return (resources.files("kotune") / "assets" / "studio" / name).read_text(encoding="utf-8")


def create_app(root: str | Path, *, token: str | None = None, allowed_hosts: tuple[str, ...] | None = LOOPBACK):
    """The studio app over ``root``. ``token``: required on every request (other hosts);
    ``allowed_hosts``: the names a request's Host may carry (None: any, behind a token)."""
    r = Root(root)
    launcher = launching.Launcher(r)
    chat_models = ChatModels(r)
    app = FastAPI(title="kotune studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.root, app.state.launcher = r, launcher

    # ------------------------------------------------------------ the gate
    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if allowed_hosts is not None and host not in allowed_hosts:
            return JSONResponse({"error": "error: unknown Host header (open the studio at the address it printed)"},
                                status_code=403)
        if token is not None:
            given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
            auth = request.headers.get("authorization") or ""
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
                return JSONResponse({"error": "error: a valid studio token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            if request.query_params.get("token"):  # from the printed link: keep it in a cookie, out of the URL
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                resp = RedirectResponse(request.url.path + ("?" + urlencode(rest) if rest else ""), status_code=303)
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return resp
        if request.method not in ("GET", "HEAD"):
            if request.headers.get(HEADER) != "1":
                return JSONResponse({"error": f"error: missing {HEADER} header"}, status_code=403)
            declared = request.headers.get("content-length")
            if declared is None or not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
                return JSONResponse({"error": f"error: request body over {MAX_BODY_BYTES} bytes (or no length)"},
                                    status_code=413)
        lang = request.query_params.get("lang")
        response = await call_next(request)
        if lang in LANGS:
            response.set_cookie("lang", lang, samesite="strict")
        return response

    def lang_of(request: Request) -> str:
        lang = request.query_params.get("lang") or request.cookies.get("lang") or "ko"
        return lang if lang in LANGS else "ko"

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        lang = lang_of(request)
        t = words(lang)
        other = "en" if lang == "ko" else "ko"
        switch = request.url.path + "?" + urlencode(
            [(k, v) for k, v in request.query_params.multi_items() if k != "lang"] + [("lang", other)])
        html = _env().get_template(name).render(t=t, lang=lang, switch=switch, nav=name.split(".")[0],
                                                path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise StudioError(413, f"error: request body over {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise StudioError(400, "error: the body must be JSON") from None
        if not isinstance(data, dict):
            raise StudioError(400, "error: the body must be a JSON object")
        return data

    def status_of(e: Exception) -> int:
        return 403 if isinstance(e, OutsideRoot) else 400

    @app.exception_handler(KotuneError)
    async def _kotune_error(request: Request, exc: KotuneError):
        message = f"error: {exc}".replace(str(r.dir) + "/", "")  # the CLI's one line, as run in ROOT
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status_of(exc))
        return page(request, "error.html.j2", status=status_of(exc), message=message)

    @app.exception_handler(StudioError)
    async def _studio_error(request: Request, exc: StudioError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    # ------------------------------------------------------------ pages
    @app.get("/")
    async def index():
        return RedirectResponse("/runs", status_code=303)

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC:
            raise StudioError(404, "error: not found")
        return Response(_static(name), media_type=STATIC[name])

    @app.get("/runs", response_class=HTMLResponse)
    async def runs(request: Request):
        outputs = await asyncio.to_thread(r.scan)
        return page(request, "runs.html.j2", outputs=outputs)

    @app.get("/run", response_class=HTMLResponse)
    async def run(request: Request, path: str):
        out = await asyncio.to_thread(find, r, path)
        findings = {}
        for m in out.models:
            if m.status == "finished":
                findings[m.rel] = await asyncio.to_thread(views.doctor_findings, m.dir)
        log = tail(out.dir / LAUNCH_LOG) if out.launch else ""
        return page(request, "run.html.j2", o=out, findings=findings, log=log, summary=out.summary())

    @app.get("/data", response_class=HTMLResponse)
    async def data(request: Request, path: str = "", source: str = "kept", category: str = "", reason: str = "",
                   q: str = "", model: str = ""):
        if not path:
            candidates = [o for o in await asyncio.to_thread(r.scan) if o.has_data]
            return page(request, "pick.html.j2", items=[o.rel for o in candidates], target="/data", what="data")
        folder = r.path(path)
        view = await asyncio.to_thread(views.data_page, r, folder, source=source, category=category, reason=reason,
                                       query=q[:200], page=_int(request.query_params.get("page"), 1),
                                       model=model)
        return page(request, "data.html.j2", d=view, folder=r.rel(folder),
                    filters={"source": view.source, "category": category, "reason": reason, "q": q, "model": view.model})

    @app.get("/eval", response_class=HTMLResponse)
    async def eval_(request: Request, path: str = "", a: str = "", b: str = "", flip: str = "", metric: str = "rougeL",
                    error: str = "", category: str = ""):
        if not path:
            # Every eval folder under ROOT (recipe outputs' included): one walk.
            folders = list(dict.fromkeys(Path(f).parent.as_posix()
                                         for f in await asyncio.to_thread(r.files, "metrics.json")))
            return page(request, "pick.html.j2", items=folders, target="/eval", what="eval")
        from kotune.eval.report import build_report, charts

        folder = r.path(path)
        view = await asyncio.to_thread(views.eval_page, r, folder, a=a, b=b, flip_=flip if flip in views.FLIPS else "",
                                       metric=metric, error=error, category=category)
        report = build_report(view.metrics, [])
        figures, error_chart = charts(view.metrics, [])
        return page(request, "eval.html.j2", e=view, report=report, figures=figures, error_chart=error_chart,
                    folder=r.rel(folder), filters={"a": view.a, "b": view.b, "flip": flip, "metric": metric,
                                                   "error": error, "category": category})

    @app.get("/chunk", response_class=HTMLResponse)
    async def chunk(request: Request, path: str, id: str):
        chunk_row = await asyncio.to_thread(views.find_chunk, r.path(path), id)
        if chunk_row is None:
            raise KotuneError(f"{path}: no chunk {id!r}")
        return page(request, "chunk.html.j2", c=chunk_row, file=path)

    @app.get("/chat", response_class=HTMLResponse)
    async def chat(request: Request):
        outputs = await asyncio.to_thread(r.scan)
        return page(request, "chat.html.j2", choices=chat_models.choices(outputs), chunks=r.files("chunks*.jsonl"))

    @app.get("/launch", response_class=HTMLResponse)
    async def launch_page(request: Request):
        recipes = await asyncio.to_thread(r.recipes)
        return page(request, "launch.html.j2", recipes=recipes, presets=launching.PRESETS)

    # ------------------------------------------------------------ JSON
    @app.get("/api/runs")
    async def api_runs():
        return {"runs": [o.summary() for o in await asyncio.to_thread(r.scan)]}

    @app.get("/api/run")
    async def api_run(path: str):
        out = await asyncio.to_thread(find, r, path)
        return {**out.summary(), "log": tail(out.dir / LAUNCH_LOG) if out.launch else ""}

    @app.post("/api/launch/check")
    async def api_check(request: Request):
        form = launching.LaunchForm.parse(await body_of(request))
        checked = await asyncio.to_thread(launching.check, r, form)
        return {"ok": True, "output": r.rel(checked.output), "steps": checked.steps,
                "command": checked.command(r)}

    @app.post("/api/launch")
    async def api_launch(request: Request):
        form = launching.LaunchForm.parse(await body_of(request))
        checked = await asyncio.to_thread(launching.check, r, form)
        out = launcher.start(checked)
        return {"ok": True, "path": r.rel(out)}

    @app.post("/api/stop")
    async def api_stop(request: Request):
        out = r.path(str((await body_of(request)).get("path") or ""))
        launcher.stop(out)
        return {"ok": True}

    @app.post("/api/resume")
    async def api_resume(request: Request):
        out = r.path(str((await body_of(request)).get("path") or ""))
        launcher.resume(out)
        return {"ok": True, "path": r.rel(out)}

    @app.post("/api/chat")
    async def api_chat(request: Request):
        body = await body_of(request)
        settings = settings_from(body)
        question = check_question(str(body.get("question") or ""))
        context_file = str(body.get("context") or "")
        loaded = await asyncio.to_thread(chat_models.get, str(body.get("model") or ""), str(body.get("template_from") or ""))
        # A chosen chunks file for every model; else a grounded run's own chunks and top_k (kotune chat's rule).
        retrieval = await asyncio.to_thread(chat_retrieval, r, loaded, context_file, body.get("top_k"))
        passages = await asyncio.to_thread(retrieval.passages, question) if retrieval is not None else None
        context = (passages.text or None) if passages is not None else None
        pieces = chat_models.answer(loaded, question, settings, context)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def produce() -> None:
            try:
                for item in pieces:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except KotuneError as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)
            except Exception as e:  # shown in the answer's column, not lost in a log
                loop.call_soon_threadsafe(queue.put_nowait, KotuneError(f"{type(e).__name__}: {e}"))
            loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=produce, daemon=True).start()

        async def events():
            head: dict[str, Any] = {"model": loaded.label, "template": loaded.model.template.name}
            if retrieval is not None:  # the passages the model is asked with, shown above its answer
                source = Path(retrieval.source)
                head["retrieval"] = {**retrieval.describe(), "chunks": r.rel(source) if r.inside(source) else source.name}
                head["passages"] = passages.listed()
            yield _sse(head)
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, KotuneError):
                    yield _sse({"error": f"error: {item}"})
                elif isinstance(item, str):
                    yield _sse({"text": item})
                else:
                    done = {"done": True, "finish_reason": item.finish_reason, "completion_tokens": item.completion_tokens}
                    if context:
                        done["abstained"] = await asyncio.to_thread(answer_abstains, loaded, item.text)
                    yield _sse(done)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def token_for(host: str, env_var: str | None) -> str | None:
    """The token other hosts need: from ``env_var`` when given, else a new random one;
    None on loopback."""
    import os

    if host in LOOPBACK:
        return None
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise KotuneError(f"--token-env {env_var}: that environment variable is not set (or empty)")
        return value
    return secrets.token_urlsafe(24)


def run_studio(root: Path, *, host: str = "127.0.0.1", port: int = 7860, token_env: str | None = None, log=print) -> None:
    import uvicorn

    token = token_for(host, token_env)
    r = Root(root)
    allowed = LOOPBACK if host in LOOPBACK else None
    app = create_app(r.dir, token=token, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/runs"
    log(f"kotune studio over {r.dir}")
    if token is None:
        log(f"open {url}")
    else:
        log(f"open {url}?token={token}" if not token_env else f"open {url} (token from ${token_env})")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", server_header=False)
