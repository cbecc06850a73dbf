"""A canned OpenAI-compatible server on 127.0.0.1: each model answers each question as told.

For eval tests that need exact answers and no model: question ``i`` is recognised in the
request's prompt (completions) or messages (chat), and model ``m`` answers ``answers[m][i]``;
``stream: true`` gets the answer as server-sent events (kotune chat, the studio's chat).
``asked``, when given, collects every request body the server received.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


@contextmanager
def canned_openai(answers: dict[str, list[str]], questions: list[str], asked: list[dict] | None = None) -> Iterator[str]:
    """Serve ``answers`` (model → the answer to each of ``questions``); yields the ``/v1`` URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, obj) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"object": "list", "data": [{"id": n, "object": "model"} for n in answers]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if asked is not None:
                asked.append(body)
            prompt = body.get("prompt") or json.dumps(body.get("messages"), ensure_ascii=False)
            text = answers[body["model"]][next(i for i, q in enumerate(questions) if q in prompt)]
            if body.get("stream"):
                self._stream(text, chat="prompt" not in body)
                return
            choice = {"text": text} if "prompt" in body else {"message": {"role": "assistant", "content": text}}
            self._send({"choices": [{"index": 0, "finish_reason": "stop", **choice}]})

        def _stream(self, text: str, *, chat: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            half = len(text) // 2
            for piece, finish in ((text[:half], None), (text[half:], None), ("", "stop")):
                choice = {"delta": {"content": piece}} if chat else {"text": piece}
                event = {"choices": [{"index": 0, "finish_reason": finish, **choice}]}
                self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode("utf-8"))
            self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
