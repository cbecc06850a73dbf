"""LLM teachers for `kotune generate`: an OpenAI-compatible teacher against fake
servers on 127.0.0.1 (workers, API keys, 429/dropped connections, SIGKILL and
--resume, shards, validation-and-retry), the local-model teacher, and the
prompt/reply parsing underneath."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import REPO, _subprocess_env, leftover_temp_files, read_jsonl
from kotune.data.generate import generate_file, journal_path, make_teacher, parse_shard, shard_chunks
from kotune.data.http_teacher import OpenAITeacher
from kotune.data.qa import answer_problem, build_messages, parse_qa
from kotune.errors import KotuneError
from kotune.model.openai_client import TokenBucket, backoff_delay, chat_url, parse_retry_after
from kotune.records import load_chunks

_BULLET = re.compile(r"^(?:[○●◦▪■□◆◇※•·\-–*]|\d+\)|[①-⑳])\s*")


def grounded_pairs(text: str, n: int, offset: int = 0) -> list[dict[str, str]]:
    """QA pairs whose answers are sentences of ``text`` (so they are grounded)."""
    lines = [_BULLET.sub("", ln.strip()) for ln in text.split("\n")]
    good = [ln for ln in lines if len(ln) >= 15 and ln.endswith("다.")]
    good = good[offset:] + good[:offset]
    return [{"질문": f"{ln[:-1]}, 이 내용이 맞나요?", "답변": ln, "유형": "사실"} for ln in good[:n]]


class FakeOpenAI:
    """A chat/completions server that answers from the chunk in the prompt.

    ``plan(k, chunk_id)`` → ``"ok"``, ``"429"``, ``"503"``, ``"401"`` or ``"drop"``
    for the k-th request (0-based); ``reply(chunk, n, k_for_chunk, reask)`` →
    the assistant text. Every request is logged: chunk_id, Authorization, action.
    """

    def __init__(self, chunks: list[dict], *, latency: float = 0.0,
                 plan: Callable[[int, str], str] | None = None,
                 reply: Callable[[dict, int, int, bool], str] | None = None) -> None:
        self.chunks = chunks
        self.latency = latency
        self.plan = plan or (lambda k, cid: "ok")
        self.reply = reply or self.grounded_reply
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.per_chunk: Counter = Counter()
        self.in_flight = self.max_in_flight = 0  # requests being answered at once (concurrency, not time)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "no such route"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                user = body["messages"][-1]["content"]
                chunk = next(c for c in server.chunks if c["text"] in user)
                n = int(re.search(r"질문-답변 쌍 (\d+)개", user).group(1))
                reask = "[주의]" in user
                with server.lock:
                    k = len(server.log)
                    action = server.plan(k, chunk["chunk_id"])
                    entry = {"chunk_id": chunk["chunk_id"], "auth": self.headers.get("Authorization"),
                             "action": action, "reask": reask, "model": body.get("model"), "seed": body.get("seed")}
                    server.log.append(entry)
                if action == "drop":  # close the socket without a response
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if action == "429":
                    self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.1"})
                    return
                if action in ("503", "401"):
                    self._send(int(action), {"error": {"message": f"fake {action}"}})
                    return
                if server.latency:
                    with server.lock:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    time.sleep(server.latency)
                    with server.lock:
                        server.in_flight -= 1
                with server.lock:
                    nth = server.per_chunk[chunk["chunk_id"]]
                    server.per_chunk[chunk["chunk_id"]] += 1
                content = server.reply(chunk, n, nth, reask)
                entry["done"] = True
                self._send(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}]})

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up (the run was stopped) is not news

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def grounded_reply(chunk: dict, n: int, nth: int, reask: bool) -> str:
        pairs = grounded_pairs(chunk["text"], n)
        style = sum(map(ord, chunk["chunk_id"])) % 3
        if style == 0:
            return "```json\n" + json.dumps(pairs, ensure_ascii=False, indent=2) + "\n```"
        if style == 1:
            return "\n".join(json.dumps(p, ensure_ascii=False) for p in pairs)
        return "다음은 생성한 데이터입니다.\n" + json.dumps(pairs, ensure_ascii=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def done_per_chunk(self) -> Counter:
        return Counter(e["chunk_id"] for e in self.log if e.get("done"))

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def chunks(sample_chunks: Path) -> list[dict]:
    return load_chunks(sample_chunks)


def assert_every_chunk_once(records: list[dict], chunks: list[dict], per_chunk: int) -> None:
    """Each chunk's records form one run, in chunk order, with per_chunk records; no duplicate ids."""
    order = [c["chunk_id"] for c in chunks]
    runs = [cid for i, cid in enumerate(r["chunk_id"] for r in records) if i == 0 or records[i - 1]["chunk_id"] != cid]
    assert runs == order  # no gaps, no chunk twice, chunk order
    expected = {c["chunk_id"]: min(per_chunk, len(grounded_pairs(c["text"], per_chunk))) for c in chunks}
    assert Counter(r["chunk_id"] for r in records) == Counter(expected)
    assert len({r["id"] for r in records}) == len(records)


# ------------------------------------------------------------------ (a) many workers
def test_eight_workers_make_valid_records_for_every_chunk(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(chunks) as server:
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m1",
                   "--workers", "8", "--per-chunk", "2"])
    assert res.code == 0, res.err
    records = read_jsonl(out)
    assert_every_chunk_once(records, chunks, 2)
    by_id = {c["chunk_id"]: c for c in chunks}
    for r in records:
        assert r["output"] in by_id[r["chunk_id"]]["text"] or _BULLET.sub("", r["output"]) in by_id[r["chunk_id"]]["text"]
        assert r["source"] == "policy_plan.txt" and r["generator"] == "teacher:m1" and r["category"] == "사실"
        assert r["instruction"].endswith("?")
    assert {e["model"] for e in server.log} == {"m1"}
    assert server.done_per_chunk() == Counter({c["chunk_id"]: 1 for c in chunks})
    assert "27 records from 14 chunks" in res.err and "0 retries" in res.err
    assert not journal_path(out).exists() and leftover_temp_files(tmp_path) == []


def test_workers_run_concurrently_and_model_defaults_to_the_servers(tmp_path: Path, chunks: list[dict]) -> None:
    from kotune.korean import content_morphemes

    for c in chunks[:8]:  # Kiwi's first pass over a text is slow; time the requests, not the warm-up
        content_morphemes(c["text"])
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(chunks[:8], latency=0.5) as server:
        teacher = OpenAITeacher(server.url, None, workers=8)
        records = generate_file(chunks[:8], teacher, out, per_chunk=1)
        concurrent = server.max_in_flight
        one = teacher.generate(chunks[1], 2)  # the plain Teacher interface works too
    assert len(records) == 8 and teacher.model == "fake-model"
    assert all(r.extra["generator"] == "teacher:fake-model" for r in records)
    assert concurrent >= 4, concurrent  # one worker at a time would be 1 (measured by the server, not a clock)
    assert len(one) == 2 and all(r.chunk_id == chunks[1]["chunk_id"] for r in one)


# ------------------------------------------------------------------ (b) 429s and dropped connections
def test_rate_limits_and_dropped_connections_are_retried(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path) -> None:
    # 3 in 10 requests get 429 (Retry-After: 0.1), 1 in 10 is dropped without a response.
    pattern = ["429", "ok", "ok", "429", "ok", "drop", "429", "ok", "ok", "ok"]
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(chunks, plan=lambda k, cid: pattern[k % len(pattern)]) as server:
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m",
                   "--workers", "8", "--per-chunk", "2"])
    assert res.code == 0, res.err
    assert_every_chunk_once(read_jsonl(out), chunks, 2)
    actions = Counter(e["action"] for e in server.log)
    assert actions["429"] >= 3 and actions["drop"] >= 1
    # every chunk was answered exactly once: nothing generated twice, nothing missing
    assert server.done_per_chunk() == Counter({c["chunk_id"]: 1 for c in chunks})
    m = re.search(r"(\d+) retries, (\d+) errors", res.err)
    assert m and int(m.group(1)) == actions["429"] + actions["drop"] == int(m.group(2))


def test_retries_give_up_and_resume_finishes_the_rest(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path) -> None:
    bad = {chunks[2]["chunk_id"], chunks[5]["chunk_id"]}
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(chunks, plan=lambda k, cid: "503" if cid in bad else "ok") as server:
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m",
                   "--workers", "4", "--per-chunk", "1", "--max-retries", "2"])
        assert res.code == 2
        assert len(res.err_lines) == 1 and "2 of 14 chunks failed" in res.err_lines[0] and "--resume" in res.err_lines[0]
        assert Counter(e["chunk_id"] for e in server.log if e["action"] == "503") == Counter({c: 3 for c in bad})
        assert not out.exists()
        journaled = [json.loads(line)["chunk_id"] for line in journal_path(out).read_text(encoding="utf-8").splitlines()]
        assert sorted(journaled) == sorted(c["chunk_id"] for c in chunks if c["chunk_id"] not in bad)

        server.plan = lambda k, cid: "ok"
        server.log.clear()
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m", "--resume", "--per-chunk", "1"])
    assert res.code == 0, res.err
    assert {e["chunk_id"] for e in server.log} == bad
    assert_every_chunk_once(read_jsonl(out), chunks, 1)


def test_a_rejected_key_stops_the_run_with_one_line(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(chunks, plan=lambda k, cid: "401") as server:
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m", "--workers", "4"])
    assert res.code == 2 and len(res.err_lines) == 1
    assert "HTTP 401" in res.err_lines[0] and "API key" in res.err_lines[0]
    assert len(server.log) <= 4  # no retries of a rejected key
    assert not out.exists() and not journal_path(out).exists()  # nothing finished, nothing to --resume


# ------------------------------------------------------------------ (c) SIGKILL mid-run, then --resume
def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path) -> None:
    out = tmp_path / "qa.jsonl"
    journal = journal_path(out)
    with FakeOpenAI(chunks, latency=0.4) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kotune", "generate", str(sample_chunks), "-o", str(out), "--teacher", server.url,
             "--model", "m", "--workers", "4", "--per-chunk", "2"],
            cwd=REPO, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if journal.exists() and journal.read_text(encoding="utf-8").count("\n") >= 3:
                    break
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        assert not out.exists()
        lines = journal.read_text(encoding="utf-8").splitlines()
        journaled = [json.loads(line)["chunk_id"] for line in lines if line.endswith("}")]
        assert 3 <= len(journaled) < len(chunks)
        assert len(set(journaled)) == len(journaled)

        server.log.clear()
        server.latency = 0.0
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m",
                   "--workers", "4", "--per-chunk", "2", "--resume"])
    assert res.code == 0, res.err
    asked = {e["chunk_id"] for e in server.log}
    assert asked.isdisjoint(journaled)  # no new requests for finished chunks
    assert asked | set(journaled) == {c["chunk_id"] for c in chunks}
    assert_every_chunk_once(read_jsonl(out), chunks, 2)
    assert not journal.exists() and leftover_temp_files(tmp_path) == []


# ------------------------------------------------------------------ (d) API keys
def test_api_keys_are_spread_across_requests(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("KT_KEY_A", "sk-aaa"), ("KT_KEY_B", "sk-bbb"), ("KT_KEY_C", "sk-ccc")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(chunks) as server:
        res = cli(["generate", sample_chunks, "-o", out, "--teacher", server.url, "--model", "m",
                   "--workers", "4", "--per-chunk", "1", "--api-key-env", "KT_KEY_A,KT_KEY_B,KT_KEY_C"])
    assert res.code == 0, res.err
    used = Counter(e["auth"] for e in server.log)
    assert set(used) == {"Bearer sk-aaa", "Bearer sk-bbb", "Bearer sk-ccc"}
    assert max(used.values()) - min(used.values()) <= 1  # round-robin
    assert "sk-" not in res.err  # keys are never printed


def test_missing_api_key_variable_is_a_one_line_error(tmp_path: Path, cli, sample_chunks: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_KEY_A", "sk-aaa")
    monkeypatch.delenv("KT_KEY_MISSING", raising=False)
    out = tmp_path / "qa.jsonl"
    res = cli(["generate", sample_chunks, "-o", out, "--teacher", "http://127.0.0.1:9/v1", "--model", "m",
               "--api-key-env", "KT_KEY_A,KT_KEY_MISSING"])
    assert res.code == 2
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error:") and "KT_KEY_MISSING" in res.err_lines[0]
    assert not out.exists() and not journal_path(out).exists()


class VirtualClock:
    """Time that passes only when a bucket waits: rate limits are checked by the waits
    they impose, not by a wall clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_rpm_limits_requests_per_key() -> None:
    clock = VirtualClock()

    async def run() -> None:
        bucket = TokenBucket(rpm=600, clock=clock, sleep=clock.sleep)  # 10 per second
        await asyncio.gather(*(bucket.acquire() for _ in range(6)))

    asyncio.run(run())
    assert clock.now == pytest.approx(0.5) and len(clock.waits) == 5  # the first at once, then one per 0.1 s


def test_rpm_spreads_over_keys(tmp_path: Path, chunks: list[dict], monkeypatch) -> None:
    import kotune.model.openai_client as client_module

    clocks: list[VirtualClock] = []

    class Bucket(TokenBucket):  # one virtual clock per key's bucket
        def __init__(self, rpm: float, burst: int = 1) -> None:
            clocks.append(VirtualClock())
            super().__init__(rpm, burst, clock=clocks[-1], sleep=clocks[-1].sleep)

    monkeypatch.setattr(client_module, "TokenBucket", Bucket)
    with FakeOpenAI(chunks[:6]) as server:
        teacher = OpenAITeacher(server.url, "m", workers=6, api_keys=["k1", "k2"], rpm=300)  # 5/s per key
        generate_file(chunks[:6], teacher, tmp_path / "qa.jsonl", per_chunk=1)
    assert Counter(e["auth"] for e in server.log) == Counter({"Bearer k1": 3, "Bearer k2": 3})
    assert len(clocks) == 2 and all(c.now == pytest.approx(0.4) for c in clocks)  # 3 per key at 5/s: 2 waits of 0.2 s


# ------------------------------------------------------------------ (e) shards
def test_shards_cover_all_chunks_and_merge_with_validate(tmp_path: Path, cli, chunks: list[dict], sample_chunks: Path) -> None:
    with FakeOpenAI(chunks) as server:
        for i in (1, 2):
            res = cli(["generate", sample_chunks, "-o", tmp_path / f"part{i}.jsonl", "--teacher", server.url,
                       "--model", "m", "--per-chunk", "2", "--shard", f"{i}/2"])
            assert res.code == 0, res.err
            assert f"(shard {i}/2 of 14)" in res.err
    p1, p2 = read_jsonl(tmp_path / "part1.jsonl"), read_jsonl(tmp_path / "part2.jsonl")
    ids = [c["chunk_id"] for c in chunks]
    assert {r["chunk_id"] for r in p1} == set(ids[0::2]) and {r["chunk_id"] for r in p2} == set(ids[1::2])
    merged = tmp_path / "merged.jsonl"
    res = cli(["validate", tmp_path / "part1.jsonl", tmp_path / "part2.jsonl", "--chunks", sample_chunks, "-o", merged])
    assert res.code == 0, res.err
    assert {r["chunk_id"] for r in read_jsonl(merged)} == set(ids)
    assert server.done_per_chunk() == Counter({cid: 1 for cid in ids})


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard_is_an_error(spec: str) -> None:
    with pytest.raises(KotuneError, match="--shard"):
        parse_shard(spec)


def test_shards_are_disjoint_and_complete() -> None:
    items = [{"chunk_id": str(i)} for i in range(11)]
    parts = [shard_chunks(items, (i, 3)) for i in (1, 2, 3)]
    assert sorted(int(c["chunk_id"]) for p in parts for c in p) == list(range(11))
    assert [c["chunk_id"] for c in parts[1]] == ["1", "4", "7", "10"]


# ------------------------------------------------------------------ (f) validation and re-asking
def test_ungrounded_answers_are_reasked_and_evasive_ones_dropped(tmp_path: Path, chunks: list[dict]) -> None:
    few = chunks[1:5]
    hopeless = few[3]["chunk_id"]
    invented = {"질문": "화성 기지는 언제 완공되나요?", "답변": "화성 탐사 기지는 2045년에 완공되어 우주 관광객을 받을 예정입니다.", "유형": "사실"}
    evasive = {"질문": "예산 집행 세부 일정은 어떻게 되나요?", "답변": "제공된 문서에는 해당 내용이 명시되어 있지 않습니다.", "유형": "사실"}
    cut_off = {"질문": "추진 배경은 무엇인가요?", "답변": "정부는 초고성능컴퓨팅 자원을 확충하기 위하여", "유형": "사실"}

    def reply(chunk: dict, n: int, nth: int, reask: bool) -> str:
        if chunk["chunk_id"] == hopeless or nth == 0:  # first answer: all bad
            return json.dumps([invented, evasive, cut_off], ensure_ascii=False)
        good = grounded_pairs(chunk["text"], 1)
        return json.dumps([evasive, good[0], invented], ensure_ascii=False)

    with FakeOpenAI(few, reply=reply) as server:
        teacher = OpenAITeacher(server.url, "m", workers=4)
        records = generate_file(few, teacher, tmp_path / "qa.jsonl", per_chunk=3)
    per = Counter(e["chunk_id"] for e in server.log)
    assert per[hopeless] == 3  # asked, then re-asked twice
    assert all(per[c["chunk_id"]] == 2 for c in few if c["chunk_id"] != hopeless)
    assert all(e["reask"] == (i > 0) for cid in per for i, e in enumerate(x for x in server.log if x["chunk_id"] == cid))
    assert {r.chunk_id for r in records} == {c["chunk_id"] for c in few} - {hopeless}
    assert len(records) == 3  # only the grounded answer of each re-ask is kept
    by_id = {c["chunk_id"]: c["text"] for c in few}
    assert all(r.output in by_id[r.chunk_id] for r in records)
    stats = teacher.stats
    assert stats.reasks == 2 + 3 and stats.accepted == 3
    # round 1: 4 chunks × (ungrounded, evasive, cut off); round 2: 3 × (evasive, ungrounded) + hopeless;
    # round 3: hopeless only
    assert stats.rejected["ungrounded"] == 4 + 3 + 1 + 1 and stats.rejected["evasive"] == 4 + 3 + 1 + 1
    assert stats.rejected["incomplete"] == 4 + 1 + 1
    # Every request carries a sampling seed fixed by --seed, the chunk and the round: a re-ask
    # draws a new sample, and a rerun sends the same seeds whatever order the workers ran in.
    seeds = {(e["chunk_id"], e["reask"], i): e["seed"] for cid in per
             for i, e in enumerate(x for x in server.log if x["chunk_id"] == cid)}
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds.values())
    assert len(set(seeds.values())) == len(seeds)
    with FakeOpenAI(few, reply=reply) as again:
        generate_file(few, OpenAITeacher(again.url, "m", workers=2), tmp_path / "qa2.jsonl", per_chunk=3)
    assert {(e["chunk_id"], e["reask"], i): e["seed"] for cid in per
            for i, e in enumerate(x for x in again.log if x["chunk_id"] == cid)} == seeds


def test_answer_checks() -> None:
    source = "정부는 2030년까지 국가 인공지능 컴퓨팅 센터를 구축한다. 총사업비는 1조 2,000억 원이다."
    assert answer_problem("언제 구축하나요?", "정부는 2030년까지 국가 인공지능 컴퓨팅 센터를 구축합니다.", source) is None
    assert answer_problem("누가?", "문서에 명시되어 있지 않습니다. 다만 참고하세요.", source) == "evasive"
    assert answer_problem("무엇?", "화성 탐사 기지는 2045년에 완공되어 관광객을 받습니다.", source) == "ungrounded"
    assert answer_problem("무엇?", "정부는 2030년까지 국가 인공지능 컴퓨팅", source) == "incomplete"
    assert answer_problem("", "정부는 2030년까지 센터를 구축합니다.", source) == "missing_fields"


# ------------------------------------------------------------------ prompt and reply parsing
def test_prompt_is_the_rag_style_generation_request(chunks: list[dict]) -> None:
    msgs = build_messages(chunks[1], 5)
    user = msgs[-1]["content"]
    assert msgs[0]["role"] == "system" and "근거" in msgs[0]["content"]
    assert "질문-답변 쌍 5개" in user and "[문서]" in user and chunks[1]["text"] in user
    assert "제N조에 따르면" in user and "추측하지 말고" in user and "사실/절차/조건/예외" in user
    assert user.rstrip().endswith(chunks[1]["text"].rstrip())
    assert "[주의]" in build_messages(chunks[1], 5, reask=True)[-1]["content"]


@pytest.mark.parametrize("reply", [
    '```json\n[{"질문": "Q1?", "답변": "A1입니다."}, {"질문": "Q2?", "답변": "A2입니다."}]\n```',
    '[{"question": "Q1?", "answer": "A1입니다."},\n {"question": "Q2?", "answer": "A2입니다.",},]',
    '{"질문": "Q1?", "답변": "A1입니다."}\n{"질문": "Q2?", "답변": "A2입니다."}\n',
    '<think>생각 중 [x]</think>다음과 같습니다:\n```\n{"qa_pairs": [{"Q": "Q1?", "A": "A1입니다."}, {"q": "Q2?", "a": "A2입니다."}]}\n```\n끝.',
    '1. 질문: Q1?\n답변: A1입니다.\n\n2. 질문: Q2?\n답변: A2입니다.',
    '**질문 1**: Q1?\n**답변 1**: A1입니다.\n**질문 2**: Q2?\n**답변 2**: A2입니다.',
])
def test_parse_qa_tolerates_common_reply_shapes(reply: str) -> None:
    pairs = parse_qa(reply)
    assert [(p["question"], p["answer"]) for p in pairs] == [("Q1?", "A1입니다."), ("Q2?", "A2입니다.")]


def test_parse_qa_keeps_category_and_rejects_junk() -> None:
    assert parse_qa('[{"질문": "Q?", "답변": "A입니다.", "유형": "절차", "난이도": "중급"}]')[0]["category"] == "절차"
    assert parse_qa("의미 없는 출력 ### 지시 ###") == []
    assert parse_qa("") == [] and parse_qa('[{"x": 1}]') == []


def test_retry_helpers() -> None:
    assert parse_retry_after("0.1") == pytest.approx(0.1)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0001  # in the past → now
    assert all(0 <= backoff_delay(a, base=0.5, cap=30) <= min(30, 0.5 * 2 ** a) for a in range(12) for _ in range(20))
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://api.x.com/v1/chat/completions") == "https://api.x.com/v1/chat/completions"


def test_teacher_specs() -> None:
    assert make_teacher("http://127.0.0.1:1/v1", "m", workers=3).workers == 3
    assert make_teacher("hf:builtin:tiny-ko").name == "teacher:builtin:tiny-ko"
    with pytest.raises(KotuneError, match="hf:PATH needs a model"):
        make_teacher("hf:")


# ------------------------------------------------------------------ local model teacher
def test_local_model_teacher_runs_end_to_end(tmp_path: Path, cli, tiny_model: Path, chunks: list[dict]) -> None:
    few = tmp_path / "chunks.jsonl"
    shortest = sorted(chunks, key=lambda c: len(c["text"]))[:1]  # a CPU-sized run: short prompt, short replies
    few.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in shortest), encoding="utf-8")
    out = tmp_path / "qa.jsonl"
    res = cli(["generate", few, "-o", out, "--teacher", "hf:builtin:tiny-ko", "--per-chunk", "1", "--workers", "2",
               "--max-new-tokens", "16"])
    assert res.code == 0, res.err
    assert re.search(r"\d+ records from 1 chunks", res.err)
    assert re.search(r"teacher:builtin:tiny-ko: \d+ requests", res.err)
    assert out.exists() and not journal_path(out).exists()
    for r in read_jsonl(out):  # tiny-ko mostly writes junk; whatever passed is grounded and complete
        assert r["generator"] == "teacher:builtin:tiny-ko"
        assert answer_problem(r["instruction"], r["output"], next(c["text"] for c in chunks if c["chunk_id"] == r["chunk_id"])) is None
