"""`kotune serve` under load: concurrent chat requests, and teacher generation with 1 vs 8 workers.

Starts a real `kotune serve` process on a loopback port (``builtin:tiny-ko``,
plus ``--adapter NAME=PATH`` when given) and measures, in one run:

1. **Chat**: the same N chat requests (default 32) sent one at a time and all at
   once (asyncio + httpx): requests/s, completion tokens/s, p50/p95 latency, and
   whether every request succeeded.
2. **Teacher generation**: ``kotune generate --teacher URL`` (the real
   ``OpenAITeacher``: journal, validation of every answer, re-asks) with
   ``--workers 1`` and ``--workers 8`` against a ``teacher`` adapter: tiny-ko
   distilled from the rule teacher to answer kotune's generation request
   (``distillation_records``, trained here first unless ``--teacher-adapter`` is
   given), so the records it writes are real. The server batches concurrent
   requests, so throughput grows with workers.

Each pass runs against ``--batching continuous`` (the default: requests join the
running batch at every decode step) and ``--batching static`` (one ``generate``
per collected batch), one server after the other.

    python benchmarks/bench_serve.py --write benchmarks/RESULTS.md
    python benchmarks/bench_serve.py --adapter policy=runs/demo/model --model policy
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, kotune_serve, load1, publish  # noqa: E402

sys.path.insert(0, str(ROOT))
QUESTIONS = ["국가초고성능컴퓨팅 육성 기본계획의 목표는 무엇인가요?", "국가센터의 역할은 무엇인가요?",
             "전문인력 양성 계획을 설명해 주세요.", "총사업비는 얼마인가요?", "초고성능컴퓨팅이란 무엇인가요?",
             "전문센터는 어떤 분야를 맡나요?", "2030년까지의 목표 성능은 얼마인가요?", "추진 체계를 설명해 주세요."]


def running_server(adapters: list[str], max_batch: int, log: Path, batching: str = "continuous"):
    """``kotune serve`` of builtin:tiny-ko (and ``adapters``) in a subprocess, until the block ends
    (yields its base URL)."""
    args = ["--model", "builtin:tiny-ko", "--max-batch", str(max_batch), "--batching", batching]
    for a in adapters:
        args += ["--adapter", a]
    return kotune_serve(args, log)


async def chat_load(url: str, model: str, n: int, concurrent: bool, max_tokens: int) -> dict:
    import httpx

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, int, int]:
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i + 1})"}]}
        t0 = time.perf_counter()
        r = await client.post(url + "/chat/completions", json=body)
        dt_ = time.perf_counter() - t0
        tokens = r.json().get("usage", {}).get("completion_tokens", 0) if r.status_code == 200 else 0
        return dt_, r.status_code, tokens

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(one(client, i) for i in range(n)))
        else:
            results = [await one(client, i) for i in range(n)]
        wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    return {"wall": wall, "ok": sum(r[1] == 200 for r in results), "n": n, "tokens": sum(r[2] for r in results),
            "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]}


def teacher_run(url: str, model: str, workers: int, chunks: list[dict], max_tokens: int, per_chunk: int) -> dict:
    from kotune.data.generate import generate_file
    from kotune.data.http_teacher import OpenAITeacher

    teacher = OpenAITeacher(url, model, workers=workers, max_tokens=max_tokens, temperature=0.0, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        records = generate_file(chunks, teacher, Path(tmp) / "qa.jsonl", per_chunk=per_chunk)
        wall = time.perf_counter() - t0
    s = teacher.stats
    return {"workers": workers, "wall": wall, "chunks": len(chunks), "records": len(records), "requests": s.requests,
            "errors": s.errors}


def distill_teacher(work: Path, n_chunks: int, pairs: int, epochs: int) -> tuple[Path, list[dict]]:
    """A teacher adapter (tiny-ko LoRA) taught to answer with ``pairs`` QA pairs, and its chunks."""
    from kotune.data.chunk import prepare
    from kotune.data.qa import distillation_records
    from kotune.data.rule_teacher import RuleTeacher
    from kotune.records import write_records
    from kotune.train.sft import TrainConfig, train

    chunks = [c.to_dict() for c in prepare([ROOT / "recipes/data/policy/policy_plan.txt"], chunk_chars=400,
                                           overlap=0)][:n_chunks]
    rule = RuleTeacher()
    qa = [r for c in chunks for r in rule.generate(c, pairs)]
    write_records(work / "distill.jsonl", distillation_records(chunks, qa))
    train(TrainConfig(base_model="builtin:tiny-ko", data=str(work / "distill.jsonl"), output_dir=str(work / "teacher"),
                      epochs=epochs, batch_size=4, eval_split=0.0, report_to="none"), log=lambda *_: None)
    return work / "teacher", chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", action="append", default=[], help="NAME=PATH served beside the base (repeatable)")
    ap.add_argument("--model", default="builtin:tiny-ko", help="served name the requests ask for")
    ap.add_argument("--requests", type=int, default=32, help="chat requests per pass")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each chat request")
    ap.add_argument("--chunks", type=int, default=48, help="chunks per teacher run (the taught ones, cycled)")
    ap.add_argument("--teacher-adapter", type=Path, help="a teacher adapter to use instead of distilling one")
    ap.add_argument("--per-chunk", type=int, default=3, help="QA pairs asked per chunk (and taught to the teacher)")
    ap.add_argument("--teacher-max-tokens", type=int, default=256)
    ap.add_argument("--teacher-epochs", type=int, default=80, help="epochs of the distilled teacher's training")
    ap.add_argument("--max-batch", type=int, default=32, help="kotune serve --max-batch")
    ap.add_argument("--batching", nargs="+", default=["continuous", "static"], choices=["continuous", "static"],
                    help="kotune serve --batching modes to measure, one server each")
    ap.add_argument("--write", type=Path, help="replace this script's section of a Markdown file")
    args = ap.parse_args()

    from kotune.korean import kiwi

    kiwi().tokenize("워밍업 문장입니다.")  # Kiwi's first call takes seconds; keep it out of the timings
    load_before, started = load1(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if args.teacher_adapter:
            adapter, taught = args.teacher_adapter, None
        else:
            print("distilling a teacher adapter from the rule teacher ...", flush=True)
            adapter, taught = distill_teacher(Path(tmp), 12, args.per_chunk, args.teacher_epochs)
        if taught is None:
            from bench_teacher import sample_chunks

            chunks = sample_chunks(args.chunks)
        else:  # the taught chunks, cycled, with unique ids
            chunks = [{**taught[k % len(taught)], "chunk_id": f"{taught[k % len(taught)]['chunk_id']}#{k}"}
                      for k in range(args.chunks)]
        runs: dict[str, dict] = {}
        for batching in args.batching:
            with running_server([*args.adapter, f"teacher={adapter}"], args.max_batch,
                                Path(tmp) / f"serve-{batching}.log", batching) as base:
                url = base + "/v1"
                asyncio.run(chat_load(url, args.model, 4, True, 8))  # warm-up: first batches allocate
                seq = asyncio.run(chat_load(url, args.model, args.requests, False, args.max_tokens))
                print(f"[{batching}] chat one at a time: {seq['wall']:.1f} s", flush=True)
                con = asyncio.run(chat_load(url, args.model, args.requests, True, args.max_tokens))
                print(f"[{batching}] chat {args.requests} at once: {con['wall']:.1f} s, {con['ok']} ok", flush=True)
                teach = []
                for w in (1, 8):
                    teach.append(teacher_run(url, "teacher", w, chunks, args.teacher_max_tokens, args.per_chunk))
                    print(f"[{batching}] teacher workers={w}: {teach[-1]['wall']:.1f} s", flush=True)
            runs[batching] = {"seq": seq, "con": con, "teach": teach}

    lines = [*header("`kotune serve` under load: concurrent chat and teacher generation", started, load_before),
             f"- Server: `kotune serve --model builtin:tiny-ko --max-batch {args.max_batch} --batching {{{','.join(args.batching)}}}"
             + "".join(f" --adapter {a}" for a in args.adapter) + " --adapter teacher=…`, greedy", "",
             f"Chat: {args.requests} requests to `{args.model}`, max_tokens {args.max_tokens}.", "",
             "| batching | pass | succeeded | wall | requests/s | completion tokens/s | p50 latency | p95 latency | speed-up |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batching, run in runs.items():
        seq, con = run["seq"], run["con"]
        for name, r in (("one at a time", seq), (f"{args.requests} concurrent", con)):
            lines.append(f"| {batching} | {name} | {r['ok']}/{r['n']} | {r['wall']:.1f} s | {r['n'] / r['wall']:.2f} | "
                         f"{r['tokens'] / r['wall']:.0f} | {r['p50']:.2f} s | {r['p95']:.2f} s | "
                         f"{seq['wall'] / r['wall']:.1f}× |")
    lines += ["", f"Teacher generation (`OpenAITeacher` → the `teacher` adapter of this server, tiny-ko distilled "
              f"from the rule teacher on 12 chunks of the bundled sample): {args.chunks} chunks (those 12, cycled), "
              f"`--per-chunk {args.per_chunk}`, temperature 0, max_tokens {args.teacher_max_tokens}, every answer validated against "
              "its chunk (re-asked up to twice when none passes). Speed-up: against 1 worker on the same server.", "",
              "| batching | workers | wall | chunks/s | requests | requests/s | records kept | errors | speed-up |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batching, run in runs.items():
        teach = run["teach"]
        for r in teach:
            lines.append(f"| {batching} | {r['workers']} | {r['wall']:.1f} s | {r['chunks'] / r['wall']:.2f} | {r['requests']} | "
                         f"{r['requests'] / r['wall']:.2f} | {r['records']} | {r['errors']} | "
                         f"{teach[0]['wall'] / r['wall']:.1f}× |")
    body = "\n".join(lines) + "\n"
    publish(body, args.write, "bench_serve")
    failed = sum(r["con"]["n"] - r["con"]["ok"] for r in runs.values())
    if failed:
        sys.exit(f"{failed} concurrent requests failed")


if __name__ == "__main__":
    main()
