"""kotune.model.openai_client against a stub server on 127.0.0.1: Retry-After, fatal 401,
key rotation, the server's max_tokens limit, giving up, dropped connections,
model detection, and the URL/key helpers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from kotune.data.teacher import TeacherStats
from kotune.errors import KotuneError
from kotune.model.openai_client import (
    OpenAIClient,
    RequestFailed,
    chat_url,
    models_url,
    read_api_keys,
    token_limit_from_error,
)

Reply = tuple[int, Any, dict[str, str]]


def ok(content: str = "답변입니다.") -> Reply:
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}, {}


class StubServer:
    """An OpenAI-compatible stub: ``answer(k, request)`` → ``(status, body, headers)`` for the
    k-th POST (0-based); every request is logged with its path, Authorization and JSON body."""

    def __init__(self, answer: Callable[[int, dict[str, Any]], Reply] | None = None,
                 models: list[str] | None = None) -> None:
        self.answer = answer or (lambda k, req: ok())
        self.models = models if models is not None else ["stub-model"]
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = body.encode("utf-8") if isinstance(body, str) else json.dumps(body, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with stub.lock:
                    stub.log.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m} for m in stub.models]}, {})
                else:
                    self._send(404, {"error": {"message": "no such route"}}, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                req = {"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                with stub.lock:
                    k = sum(e["method"] == "POST" for e in stub.log)
                    stub.log.append(req)
                status, payload, headers = stub.answer(k, req)
                self._send(status, payload, headers)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def posts(self) -> list[dict[str, Any]]:
        return [e for e in self.log if e["method"] == "POST"]

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def record_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the client waits between retries, recorded instead of slept."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        slept.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return slept


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return record_sleeps(monkeypatch)


MESSAGES = [{"role": "user", "content": "국가센터란 무엇인가요?"}]


def ask(client: OpenAIClient, *max_tokens: int, temperature: float = 0.0) -> list[str]:
    """One chat per ``max_tokens`` value, in one session."""
    async def run() -> list[str]:
        async with client:
            return [await client.chat(MESSAGES, max_tokens=m, temperature=temperature) for m in max_tokens]

    return asyncio.run(run())


# ------------------------------------------------------------------ retries
def test_retry_after_is_honoured(sleeps: list[float]) -> None:
    replies = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}),
               (503, {"error": {"message": "busy"}}, {"Retry-After": "0.25"}), ok("정답입니다.")]
    with StubServer(lambda k, req: replies[k]) as server:
        client = OpenAIClient(server.url, "m")
        assert ask(client, 64) == ["정답입니다."]
    assert sleeps == [7.0, 0.25]
    assert len(server.posts) == 3
    s = client.stats
    assert (s.requests, s.retries, s.errors, s.token_limit_retries) == (3, 2, 2, 0)


def test_without_retry_after_the_backoff_is_jittered_and_bounded(sleeps: list[float]) -> None:
    with StubServer(lambda k, req: (500, "oops", {}) if k < 4 else ok()) as server:
        client = OpenAIClient(server.url, "m", backoff_base=0.5, backoff_cap=1.5)
        ask(client, 64)
    assert len(sleeps) == 4
    assert all(0 <= d <= min(1.5, 0.5 * 2 ** i) for i, d in enumerate(sleeps))


def test_retries_give_up_with_the_last_error(sleeps: list[float]) -> None:
    with StubServer(lambda k, req: (503, {"error": {"message": "down"}}, {})) as server:
        client = OpenAIClient(server.url, "m", max_retries=2)
        with pytest.raises(RequestFailed) as info:
            ask(client, 64)
    assert str(info.value) == "HTTP 503 (gave up after 2 retries)"
    assert info.value.status == 503 and not info.value.transport
    assert len(server.posts) == 3 and len(sleeps) == 2
    assert (client.stats.requests, client.stats.retries, client.stats.errors) == (3, 2, 3)


def test_a_malformed_reply_is_retried(sleeps: list[float]) -> None:
    with StubServer(lambda k, req: (200, {"choices": []}, {}) if k == 0 else ok("두 번째입니다.")) as server:
        client = OpenAIClient(server.url, "m")
        assert ask(client, 64) == ["두 번째입니다."]
    assert len(server.posts) == 2 and client.stats.errors == 1 and client.stats.retries == 1


def test_an_unexpected_4xx_fails_at_once_with_the_servers_message(sleeps: list[float]) -> None:
    with StubServer(lambda k, req: (422, {"error": {"message": "messages:  must be a list"}}, {})) as server:
        client = OpenAIClient(server.url, "m")
        with pytest.raises(RequestFailed, match=r"^HTTP 422: messages: must be a list$") as info:
            ask(client, 64)
    assert info.value.status == 422
    assert len(server.posts) == 1 and sleeps == [] and client.stats.errors == 1


def test_an_unreachable_server_is_a_transport_failure(sleeps: list[float]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1)
    with pytest.raises(RequestFailed, match=r"gave up after 1 retries") as info:
        ask(client, 64)
    assert info.value.transport and info.value.status is None
    assert (client.stats.requests, client.stats.errors, client.stats.retries) == (2, 2, 1)


# ------------------------------------------------------------------ fatal answers
@pytest.mark.parametrize("status, words", [(401, "--api-key-env"), (403, "access denied"), (404, "check the URL")])
def test_fatal_statuses_stop_at_once_with_one_line(status: int, words: str, sleeps: list[float]) -> None:
    with StubServer(lambda k, req: (status, {"error": {"message": "no\nway"}}, {})) as server:
        client = OpenAIClient(server.url, "m", api_keys=["sk-secret"], name="teacher")
        with pytest.raises(KotuneError) as info:
            ask(client, 64)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"teacher {server.url}/chat/completions answered HTTP {status}")
    assert words in msg and "no way" in msg and "sk-secret" not in msg
    assert len(server.posts) == 1 and sleeps == [] and client.stats.errors == 0


def test_a_rejected_key_names_the_callers_option() -> None:
    with StubServer(lambda k, req: (401, {"error": {"message": "bad key"}}, {})) as server:
        client = OpenAIClient(server.url, "m", name="judge endpoint", key_option="--judge-api-key-env")
        with pytest.raises(KotuneError, match=r"^judge endpoint .* HTTP 401: .*--judge-api-key-env NAME"):
            ask(client, 64)


# ------------------------------------------------------------------ keys
def test_keys_rotate_round_robin_and_a_retry_takes_the_next_key(sleeps: list[float]) -> None:
    with StubServer(lambda k, req: (429, "", {"Retry-After": "0"}) if k == 1 else ok()) as server:
        client = OpenAIClient(server.url, "m", api_keys=["k1", "k2", "k3"])
        ask(client, 64, 64, 64, 64, 64)
    assert [e["auth"] for e in server.posts] == ["Bearer k1", "Bearer k2", "Bearer k3", "Bearer k1", "Bearer k2",
                                                 "Bearer k3"]
    assert sleeps == [0.0]


def test_without_keys_no_authorization_is_sent() -> None:
    with StubServer() as server:
        ask(OpenAIClient(server.url, "m"), 64)
    assert server.posts[0]["auth"] is None


def test_read_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_A", " sk-a ")
    monkeypatch.setenv("KT_B", "sk-b")
    monkeypatch.delenv("KT_NONE", raising=False)
    assert read_api_keys("KT_A, KT_B") == ["sk-a", "sk-b"]
    assert read_api_keys(None) == [] and read_api_keys("") == []
    with pytest.raises(KotuneError, match=r"^--judge-api-key-env: environment variable KT_NONE is not set$"):
        read_api_keys("KT_A,KT_NONE", option="--judge-api-key-env")


# ------------------------------------------------------------------ the server's max_tokens limit
def test_token_limit_is_respected_and_remembered(sleeps: list[float]) -> None:
    def answer(k: int, req: dict[str, Any]) -> Reply:
        asked = req["body"]["max_tokens"]
        if asked > 1024:
            return 400, {"error": {"message": f"'max_tokens' is {asked}, over this server's limit of 1024"}}, {}
        return ok(f"{asked} 토큰입니다.")

    with StubServer(answer) as server:
        client = OpenAIClient(server.url, "m")
        assert ask(client, 1632, 2000, 512) == ["1024 토큰입니다.", "1024 토큰입니다.", "512 토큰입니다."]
    assert [e["body"]["max_tokens"] for e in server.posts] == [1632, 1024, 1024, 512]
    assert client.token_cap == 1024 and sleeps == []
    s = client.stats
    assert (s.requests, s.retries, s.errors, s.token_limit_retries) == (4, 0, 0, 1)


def test_a_400_about_something_else_is_not_a_token_limit() -> None:
    assert token_limit_from_error("'messages' must be a list", 1632) is None
    with StubServer(lambda k, req: (400, {"error": {"message": "'messages' must be a list"}}, {})) as server:
        client = OpenAIClient(server.url, "m")
        with pytest.raises(RequestFailed, match="HTTP 400"):
            ask(client, 1632)
    assert len(server.posts) == 1 and client.stats.token_limit_retries == 0


# ------------------------------------------------------------------ request body, model, stats
def test_the_request_body_and_the_shared_stats_object() -> None:
    stats = TeacherStats()
    with StubServer() as server:
        client = OpenAIClient(server.url + "/", "m7", stats=stats)
        ask(client, 33, temperature=0.5)
    (post,) = server.posts
    assert post["path"] == "/v1/chat/completions"
    assert post["body"] == {"model": "m7", "messages": MESSAGES, "temperature": 0.5, "max_tokens": 33}
    assert stats.requests == 1 and stats.errors == 0


def test_the_model_is_the_servers_first_when_not_given() -> None:
    async def detect(client: OpenAIClient) -> str:
        async with client:
            return await client.detect_model()

    with StubServer(models=["first", "second"]) as server:
        client = OpenAIClient(server.url, api_keys=["k1"])
        assert asyncio.run(detect(client)) == "first" and client.model == "first"
        ask(client, 8)
    assert server.log[0]["method"] == "GET" and server.log[0]["path"] == "/v1/models"
    assert server.log[0]["auth"] == "Bearer k1" and server.posts[0]["body"]["model"] == "first"
    with StubServer(models=[]) as server:
        with pytest.raises(KotuneError, match=r"--model is required: .*/v1/models did not list a model"):
            asyncio.run(detect(OpenAIClient(server.url)))


def test_a_client_can_be_entered_again(sleeps: list[float]) -> None:
    with StubServer() as server:
        client = OpenAIClient(server.url, "m", api_keys=["a", "b"], rpm=6000)
        ask(client, 8)
        ask(client, 8)  # a second asyncio.run: new connections and buckets, the key turn goes on
    assert [e["auth"] for e in server.posts] == ["Bearer a", "Bearer b"]


def test_urls() -> None:
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://api.x.com/v1/chat/completions") == "https://api.x.com/v1/chat/completions"
    assert chat_url("https://h/api/v2beta") == "https://h/api/v2beta/chat/completions"
    assert models_url("http://h:8000") == "http://h:8000/v1/models"
    assert models_url("https://api.x.com/v1/chat/completions") == "https://api.x.com/v1/models"
