"""Teacher generation throughput: one request at a time vs many workers.

Runs kotune's OpenAI-compatible teacher (``kotune generate --teacher URL``) over
the bundled sample's chunks with ``--workers 1`` and ``--workers 8`` (or the
values given) and prints a Markdown table of chunks/s and records/s. Every run
goes through the real path: journal, validation of every answer against its
chunk, re-asks.

    # against a server (vLLM, TGI, Ollama, `kotune serve`, a hosted API):
    python benchmarks/bench_teacher.py http://127.0.0.1:8000/v1 --model NAME [--api-key-env KEY]
    # self-contained: a fake server with a fixed latency per request
    python benchmarks/bench_teacher.py --fake-latency 0.2

With a fake server the speed-up is bounded by latency × chunks / workers plus
kotune's own per-chunk cost (Kiwi grounding checks, journal fsync); with a real
server it also shows how well the server batches concurrent requests.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "recipes" / "data" / "policy" / "policy_plan.txt"


def sample_chunks(n: int) -> list[dict[str, Any]]:
    """``n`` chunks: the bundled sample through ``prepare``, cycled (ids made unique)."""
    from kotune.data.chunk import prepare

    base = [c.to_dict() for c in prepare([SAMPLE])]
    out = []
    for k in range(n):
        c = dict(base[k % len(base)])
        c["chunk_id"] = f"{c['chunk_id']}#{k // len(base)}"
        out.append(c)
    return out


# ---------------------------------------------------------------- fake server
def _grounded_reply(user: str, n: int) -> str:
    doc = user.split("[문서]\n", 1)[-1]
    lines = [re.sub(r"^(?:[○●◦▪■□◆◇※•·\-–*]|\d+\))\s*", "", ln.strip()) for ln in doc.split("\n")]
    good = [ln for ln in lines if len(ln) >= 15 and ln.endswith("다.")][:n]
    return json.dumps([{"질문": f"{ln[:-1]}, 이 내용이 맞나요?", "답변": ln, "유형": "사실"} for ln in good], ensure_ascii=False)


def start_fake_server(latency: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, obj: Any) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"object": "list", "data": [{"id": "fake", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            user = body["messages"][-1]["content"]
            m = re.search(r"질문-답변 쌍 (\d+)개", user)
            time.sleep(latency)
            self._send({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": _grounded_reply(user, int(m.group(1)) if m else 2)}}]})

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


# ---------------------------------------------------------------- benchmark
def run_once(url: str, model: str | None, workers: int, chunks: list[dict], per_chunk: int,
             api_keys: list[str], rpm: float | None) -> dict[str, Any]:
    from kotune.data.generate import generate_file
    from kotune.data.http_teacher import OpenAITeacher

    teacher = OpenAITeacher(url, model, workers=workers, api_keys=api_keys, rpm=rpm)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        records = generate_file(chunks, teacher, Path(tmp) / "qa.jsonl", per_chunk=per_chunk)
        wall = time.perf_counter() - t0
    s = teacher.stats
    return {"workers": workers, "chunks": len(chunks), "records": len(records), "requests": s.requests,
            "retries": s.retries, "errors": s.errors, "rejected": sum(s.rejected.values()), "wall": wall,
            "model": teacher.model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", nargs="?", help="OpenAI-compatible base URL (omit with --fake-latency)")
    ap.add_argument("--model", default=None, help="model name (default: the server's first model)")
    ap.add_argument("--fake-latency", type=float, default=None, help="start a fake server answering after this many seconds")
    ap.add_argument("--workers", default="1,8", help="comma-separated worker counts to compare")
    ap.add_argument("--chunks", type=int, default=32, help="chunks per run (the sample's 14, cycled)")
    ap.add_argument("--per-chunk", type=int, default=2)
    ap.add_argument("--api-key-env", default=None, help="env var(s) with API keys, comma-separated")
    ap.add_argument("--rpm", type=float, default=None, help="requests per minute per key")
    args = ap.parse_args()
    if (args.url is None) == (args.fake_latency is None):
        ap.error("give a server URL or --fake-latency SECONDS (not both)")

    from kotune.model.openai_client import read_api_keys
    from kotune.korean import kiwi

    kiwi().tokenize("워밍업 문장입니다.")  # Kiwi's first call takes seconds; keep it out of the timings
    chunks = sample_chunks(args.chunks)
    server = None
    url = args.url
    if args.fake_latency is not None:
        server, url = start_fake_server(args.fake_latency)
    keys = read_api_keys(args.api_key_env)
    try:
        rows = [run_once(url, args.model, int(w), chunks, args.per_chunk, keys, args.rpm)
                for w in args.workers.split(",") if w.strip()]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()

    target = f"fake server, {args.fake_latency:g} s latency" if server is not None else f"{url} (model {rows[0]['model']})"
    print(f"### Teacher generation throughput — {target}\n")
    print(f"{len(chunks)} chunks of the bundled sample, --per-chunk {args.per_chunk}; "
          f"Python {platform.python_version()}, {platform.machine()}.\n")
    print("| workers | chunks | records | requests | retries | errors | rejected answers | wall (s) | chunks/s | records/s | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    first = rows[0]["wall"]
    for r in rows:
        print(f"| {r['workers']} | {r['chunks']} | {r['records']} | {r['requests']} | {r['retries']} | {r['errors']} | "
              f"{r['rejected']} | {r['wall']:.2f} | {r['chunks'] / r['wall']:.2f} | {r['records'] / r['wall']:.2f} | "
              f"{first / r['wall']:.1f}× |")


if __name__ == "__main__":
    main()
