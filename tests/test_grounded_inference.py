"""Grounded everywhere at inference: a grounded run records its retrieval (``kotune train
--chunks``), and eval, chat, serve and the studio ask it with passages retrieved that way
unless ``--context`` says otherwise; closed-book runs and plain bases get none. One decision,
:func:`kotune.model.retrieval.retrieval_for`; a grounded run whose chunks are gone is one error
line. Most tests need no model: runs are records behind a canned OpenAI endpoint (``@RUN``) or a
stand-in serving engine; the last one trains a grounded run on builtin:tiny-ko."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import call_cli, read_jsonl
from helpers.canned import canned_openai
from helpers.cli import one_error_line
from kotune.errors import KotuneError
from kotune.model.retrieval import Retrieval, Retriever, format_context, holds_passages, retrieval_for
from kotune.model.runinfo import RetrievalInfo, RunInfo
from kotune.model.templates import ABSTENTION
from kotune.records import Record, grounded_passages

QUESTIONS = ["총사업비는 얼마인가요?", "위원장은 누구인가요?", "국가센터는 어디인가요?"]
ANSWERS = {  # the grounded run declines the third question
    "base": ["3조 원입니다.", "장관입니다.", "KISTI입니다."],
    "closed": ["3조 원입니다.", "장관입니다.", "KISTI입니다."],
    "grounded": ["3조 원입니다. [문서 1]", "장관입니다. [문서 1]", ABSTENTION],
}
K = 2  # the grounded run's recorded top_k


def _run(folder: Path, *, template: str = "kotune", retrieval: RetrievalInfo | None = None) -> Path:
    """A finished run's record (no weights: it is asked behind the canned endpoint)."""
    folder.mkdir(parents=True)
    RunInfo(status="complete", base_model="builtin:tiny-ko", method="lora", template={"name": template},
            retrieval=retrieval).write(folder)
    return folder


@pytest.fixture()
def runs(tmp_path, sample_chunks) -> SimpleNamespace:
    chunks = tmp_path / "chunks.jsonl"
    shutil.copy(sample_chunks, chunks)
    return SimpleNamespace(
        chunks=chunks,
        closed=_run(tmp_path / "closed"),
        grounded=_run(tmp_path / "grounded", template="rag", retrieval=RetrievalInfo(chunks=str(chunks.resolve()), top_k=K)),
        gone=_run(tmp_path / "gone", template="rag", retrieval=RetrievalInfo(chunks=str(tmp_path / "moved.jsonl"), top_k=K)),
        unrecorded=_run(tmp_path / "unrecorded", template="rag", retrieval=RetrievalInfo(chunks=None, top_k=K)),
    )


def _expected(chunks: Path, question: str, k: int) -> list[tuple[dict, float]]:
    hits = Retriever.from_file(chunks).search(question, k=k)
    assert hits, question  # the sample answers these questions
    return hits


def _questions(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    path = tmp_path / "q.jsonl"
    rows = rows or [{"question": q} for q in QUESTIONS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the run record and the one rule
def test_grounded_training_data_is_decided_once() -> None:
    plain = [Record("q", "a"), Record("q2", "a2", input="본문")]
    assert grounded_passages(plain) is None
    grounded = [Record("q", "a", extra={"passages": ["c1", "c2"], "answerable": True}),
                Record("q2", ABSTENTION, extra={"passages": ["c3", "c4", "c5"], "answerable": False})]
    assert grounded_passages(plain + grounded) == 3
    assert grounded_passages([Record("q", ABSTENTION, extra={"answerable": False})]) == 0  # grounded, no list


def test_the_run_records_its_retrieval_and_older_records_read_as_closed_book() -> None:
    run = RunInfo(base_model="x", retrieval=RetrievalInfo(chunks="/data/chunks.jsonl", top_k=2))
    back = RunInfo.model_validate(run.to_dict())
    assert back.grounded and back.retrieval.chunks == "/data/chunks.jsonl" and back.retrieval.top_k == 2
    assert back.retrieval.label == "문서"
    old = RunInfo(base_model="x")
    assert "retrieval" not in old.to_dict() and not old.grounded


def test_one_decision_per_model(runs) -> None:
    grounded, closed = RunInfo.read(runs.grounded), RunInfo.read(runs.closed)
    r = retrieval_for(grounded, name="g")
    assert (r.source, r.k, r.from_run) == (str(runs.chunks.resolve()), K, True)
    assert retrieval_for(grounded, name="g", top_k=5).k == 5                 # an explicit --top-k wins
    assert retrieval_for(closed, name="c") is None and retrieval_for(None, name="base") is None
    explicit = {n: retrieval_for(run, name=n, context=runs.chunks) for n, run in
                (("g", grounded), ("c", closed), ("base", None))}
    assert {n: (r.k, r.from_run) for n, r in explicit.items()} == {"g": (K, False), "c": (3, False), "base": (3, False)}
    with pytest.raises(KotuneError, match=r"model g: a grounded run .* is missing; pass --context CHUNKS\.jsonl"):
        retrieval_for(RunInfo.read(runs.gone), name="g")
    with pytest.raises(KotuneError, match=r"records no chunks file"):
        retrieval_for(RunInfo.read(runs.unrecorded), name="g")
    assert retrieval_for(RunInfo.read(runs.gone), name="g", context=runs.chunks) is not None  # --context is enough


def test_a_runs_own_retrieval_keeps_the_passages_a_question_brings(runs) -> None:
    """Grounded test records carry the passages they were made with (an unanswerable one without its
    source): a run's own chunks leave them as they are; --context retrieves again, as in use."""
    own = retrieval_for(RunInfo.read(runs.grounded), name="g")
    assert not own.passages("총사업비는 얼마인가요?", input="[문서 1]\n본문")
    assert own.passages("총사업비는 얼마인가요?").chunk_ids
    live = Retrieval(runs.chunks, K)
    assert live.passages("총사업비는 얼마인가요?", input="[문서 1]\n본문").chunk_ids


def test_holds_passages() -> None:
    assert holds_passages("질문\n\n[문서 1] (개요)\n본문") and not holds_passages("[문서 2]를 보세요")


# ---------------------------------------------------------------- kotune eval: each model its own passages
def _eval(tmp_path: Path, runs, *extra: str, out: str = "ev"):
    with canned_openai(ANSWERS, QUESTIONS) as url:
        return call_cli(["eval", "--questions", _questions(tmp_path), "--models", f"base=openai:{url}#base",
                         f"closed=openai:{url}#closed@{runs.closed}", f"grounded=openai:{url}#grounded@{runs.grounded}",
                         "-o", tmp_path / out, *extra])


def test_eval_asks_a_grounded_run_with_its_recorded_chunks_and_the_others_without(tmp_path, runs) -> None:
    res = _eval(tmp_path, runs)
    assert res.code == 0, res.err
    rows = read_jsonl(tmp_path / "ev" / "responses.jsonl")
    for row, q in zip(rows, QUESTIONS):
        hits = _expected(runs.chunks, q, K)
        grounded = row["answers"]["grounded"]
        assert grounded["retrieved"] == [str(c["chunk_id"]) for c, _ in hits]
        assert format_context(hits) in grounded["prompt"]             # the prompt the run was trained with
        for name in ("base", "closed"):
            assert row["answers"][name]["retrieved"] == [] and "[문서" not in json.dumps(row["answers"][name]["prompt"],
                                                                                     ensure_ascii=False)
    assert [r["answers"]["grounded"]["abstained"] for r in rows] == [False, False, True]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    models = metrics["models"]
    assert models["grounded"]["retrieval"] == {"chunks": str(runs.chunks.resolve()), "top_k": K, "from": "run"}
    assert models["base"]["retrieval"] is None and models["closed"]["retrieval"] is None
    assert [models[n]["closed_book"] for n in ("base", "closed", "grounded")] == [True, True, False]
    assert "retrieval of grounded runs" in (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")


def test_eval_context_and_top_k_given_hold_for_every_model(tmp_path, runs) -> None:
    res = _eval(tmp_path, runs, "--context", runs.chunks, "--top-k", "1")
    assert res.code == 0, res.err
    rows = read_jsonl(tmp_path / "ev" / "responses.jsonl")
    for row, q in zip(rows, QUESTIONS):
        want = [str(c["chunk_id"]) for c, _ in _expected(runs.chunks, q, 1)]
        assert {n: a["retrieved"] for n, a in row["answers"].items()} == {"base": want, "closed": want, "grounded": want}
    models = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["models"]
    assert {m["retrieval"]["from"] for m in models.values()} == {"--context"}

    res = _eval(tmp_path, runs, "--top-k", "1", out="ev-k")                 # --top-k alone: the run's chunks, k=1
    assert res.code == 0, res.err
    rows = read_jsonl(tmp_path / "ev-k" / "responses.jsonl")
    assert all(len(r["answers"]["grounded"]["retrieved"]) == 1 and r["answers"]["base"]["retrieved"] == [] for r in rows)


def test_eval_journals_answers_per_context(tmp_path, runs) -> None:
    """A journal (a killed eval's answers) holds this model's answers to prompts without passages:
    the grounded run, asked with its passages now, asks again; answers to the same prompts with
    its passages are taken from the journal."""
    from kotune.model.access import GenerationSettings, open_model
    from kotune.model.answers import Answer
    from kotune.model.journal import answer_key, journal_path, open_journal, write_answer
    from kotune.options import EvalOptions

    o = EvalOptions()
    settings = GenerationSettings(max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p,
                                  repetition_penalty=o.repetition_penalty, stop=list(o.stop), seed=o.seed)
    out = tmp_path / "ev"
    for with_passages in (False, True):
        asked: list[dict] = []
        with canned_openai(ANSWERS, QUESTIONS, asked) as url:
            spec = f"openai:{url}#grounded@{runs.grounded}"
            model = open_model(spec)
            own = retrieval_for(model.run, name="grounded")
            with open_journal(journal_path(out, "grounded")) as f:
                for q in QUESTIONS:
                    context = own.passages(q).text if with_passages else None
                    write_answer(f, answer_key(model.prompt(q, context=context), settings), Answer("STALE", "eos", 1, 1))
            res = call_cli(["eval", "--questions", _questions(tmp_path), "--models", f"grounded={spec}", "-o", out])
        assert res.code == 0, res.err
        texts = [r["answers"]["grounded"]["text"] for r in read_jsonl(out / "responses.jsonl")]
        assert (len(asked), texts) == ((0, ["STALE"] * 3) if with_passages else (3, ANSWERS["grounded"]))


def test_eval_grounded_test_records_keep_their_passages(tmp_path, runs) -> None:
    rows = [{"question": q, "input": f"[문서 1]\n{ANSWERS['base'][i]}", "passages": ["x"]} for i, q in enumerate(QUESTIONS)]
    with canned_openai(ANSWERS, QUESTIONS) as url:
        res = call_cli(["eval", "--questions", _questions(tmp_path, rows), "--models", f"base=openai:{url}#base",
                        f"grounded=openai:{url}#grounded@{runs.grounded}", "-o", tmp_path / "ev"])
    assert res.code == 0, res.err
    for row in read_jsonl(tmp_path / "ev" / "responses.jsonl"):
        assert row["answers"]["grounded"]["retrieved"] == [] and row["input"] in row["answers"]["grounded"]["prompt"]


@pytest.mark.parametrize("which,needle", [("gone", "is missing"), ("unrecorded", "records no chunks file")])
def test_eval_of_a_grounded_run_without_its_chunks_is_one_error_line(tmp_path, runs, which, needle) -> None:
    with canned_openai(ANSWERS, QUESTIONS) as url:
        res = call_cli(["eval", "--questions", _questions(tmp_path), "--models", f"base=openai:{url}#base",
                        f"g=openai:{url}#grounded@{getattr(runs, which)}", "-o", tmp_path / "ev"])
    one_error_line(res, "model g", needle, "--context CHUNKS.jsonl")
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- kotune chat
def test_chat_retrieves_for_a_grounded_run_and_marks_its_abstention(runs) -> None:
    from kotune.options import ChatOptions
    from kotune.serve.chat import run_chat

    asked: list[dict] = []
    with canned_openai(ANSWERS, QUESTIONS, asked) as url:
        out = io.StringIO()
        run_chat(ChatOptions.check({"model": f"openai:{url}#grounded@{runs.grounded}"}),
                 stdin=io.StringIO(f"{QUESTIONS[0]}\n{QUESTIONS[2]}\n/exit\n"), stdout=out)
        closed = io.StringIO()
        run_chat(ChatOptions.check({"model": f"openai:{url}#closed@{runs.closed}"}),
                 stdin=io.StringIO(f"{QUESTIONS[0]}\n/exit\n"), stdout=closed)
    text = out.getvalue()
    hits = _expected(runs.chunks, QUESTIONS[0], K)
    assert f"retrieving {K} passages per question from {runs.chunks.resolve()}" in text
    assert f"(retrieved: {', '.join(str(c['chunk_id']) for c, _ in hits)})" in text
    assert format_context(hits) in asked[0]["prompt"]
    assert text.count("abstained]") == 1                                     # the third question's answer
    assert "[문서" not in asked[-1]["prompt"] and "(retriev" not in closed.getvalue()  # a closed-book run: none


def test_chat_of_a_grounded_run_without_its_chunks_is_one_error_line(runs) -> None:
    with canned_openai(ANSWERS, QUESTIONS) as url:
        res = call_cli(["chat", "--model", f"openai:{url}#grounded@{runs.gone}"])
    one_error_line(res, "a grounded run", "--context CHUNKS.jsonl")


# ---------------------------------------------------------------- kotune serve (a stand-in engine: no model)
class _Generator:
    def __init__(self, run: RunInfo | None):
        from kotune.model.templates import get_template

        self.resolved = SimpleNamespace(run=run)
        self.template = get_template(run.template.name if run and run.template else "kotune")
        self.tokenizer = None
        self.eos_ids = [0]


class _Engine:
    """What the routes use of :class:`kotune.serve.engine.Engine`; answers ``answer`` and keeps the prompts."""

    def __init__(self, runs: dict[str, RunInfo | None], answer: str):
        from kotune.serve.engine import Served

        self.served = {n: Served(n, None, _Generator(r), n) for n, r in runs.items()}
        self.base_name = next(iter(runs))
        self.answer, self.prompts = answer, []
        self.model = None

    @property
    def names(self) -> list[str]:
        return list(self.served)

    def get(self, name):
        return self.served[name]

    def check_length(self, served, prompt, max_new_tokens) -> None:
        pass

    def generate(self, name, prompts, settings, batch_size=16):
        from kotune.model.answers import Answer

        self.prompts += prompts
        return [Answer(self.answer, "eos", 1, 1) for _ in prompts]

    def stream(self, name, prompt, settings):
        from kotune.model.answers import Answer

        self.prompts.append(prompt)
        yield self.answer[:4]
        yield self.answer[4:]
        yield Answer(self.answer, "eos", 1, 2)


def _serve(runs, answer: str = ABSTENTION):
    from fastapi.testclient import TestClient

    from kotune.options import ServeOptions
    from kotune.serve.server import create_app

    engine = _Engine({"base": None, "grounded": RunInfo.read(runs.grounded)}, answer)
    return engine, TestClient(create_app(engine, ServeOptions.check({"batching": "static"})))


def _ask(client, model: str, content: str, **kw):
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                     **kw})


def test_serve_returns_the_passages_and_the_abstention_with_each_answer(runs) -> None:
    engine, app = _serve(runs)
    hits = _expected(runs.chunks, QUESTIONS[0], K)
    with app as client:
        body = _ask(client, "grounded", QUESTIONS[0]).json()
        assert body["choices"][0]["message"]["content"] == ABSTENTION
        assert body["kotune"] == {"abstained": True, "passages": [
            {"n": n, "chunk_id": str(c["chunk_id"]), "text": c["text"].strip()} for n, (c, _) in enumerate(hits, 1)]}
        assert format_context(hits) in engine.prompts[-1]
        plain = _ask(client, "base", QUESTIONS[0]).json()                      # a plain base: no passages, no field
        assert "kotune" not in plain and "[문서" not in engine.prompts[-1]
        own = f"{QUESTIONS[0]}\n\n[문서 1] (개요)\n총사업비는 3조 원이다."        # a client that retrieved itself
        body = _ask(client, "grounded", own).json()
        assert body["kotune"]["passages"] == [] and engine.prompts[-1].count("[문서 1]") == 1
        completion = client.post("/v1/completions", json={"model": "grounded", "prompt": "x", "max_tokens": 4}).json()
        assert "kotune" not in completion and engine.prompts[-1] == "x"


def test_serve_streams_the_passages_on_the_finishing_chunk(runs) -> None:
    engine, app = _serve(runs, answer="총사업비는 3조 원입니다. [문서 1]")
    with app as client:
        res = _ask(client, "grounded", QUESTIONS[0], stream=True)
        events = [json.loads(line[5:]) for line in res.text.splitlines() if line.startswith("data:") and "[DONE]" not in line]
    with_field = [e for e in events if "kotune" in e]
    assert len(with_field) == 1 and with_field[0]["choices"][0]["finish_reason"] == "stop"
    assert [p["chunk_id"] for p in with_field[0]["kotune"]["passages"]] == \
        [str(c["chunk_id"]) for c, _ in _expected(runs.chunks, QUESTIONS[0], K)]
    assert with_field[0]["kotune"]["abstained"] is False
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "총사업비는 3조 원입니다. [문서 1]"


def test_serve_with_context_retrieves_for_every_name(runs) -> None:
    from fastapi.testclient import TestClient

    from kotune.options import ServeOptions
    from kotune.serve.server import create_app

    engine = _Engine({"base": None, "grounded": RunInfo.read(runs.grounded)}, "답")
    opts = ServeOptions.check({"batching": "static", "context": str(runs.chunks), "top_k": 1})
    with TestClient(create_app(engine, opts)) as client:
        for name in ("base", "grounded"):
            assert len(_ask(client, name, QUESTIONS[1]).json()["kotune"]["passages"]) == 1


def test_serve_of_a_grounded_run_without_its_chunks_is_one_error_line(runs) -> None:
    res = call_cli(["serve", "--model", runs.gone])
    one_error_line(res, str(runs.gone), "a grounded run", "--context CHUNKS.jsonl")


# ---------------------------------------------------------------- kotune studio's chat
def _studio_chat(root: Path, body: dict) -> tuple[int, list[dict]]:
    from fastapi.testclient import TestClient

    from kotune.studio.app import create_app

    client = TestClient(create_app(root), base_url="http://127.0.0.1")
    with client.stream("POST", "/api/chat", json=body, headers={"X-Kotune-Studio": "1"}) as res:
        if res.status_code != 200:
            res.read()
            return res.status_code, [res.json()]
        return 200, [json.loads(line[5:]) for line in res.iter_lines() if line.startswith("data:")]


def test_studio_chat_retrieves_with_the_runs_settings_and_shows_the_passages(tmp_path, sample_chunks) -> None:
    root = tmp_path / "root"
    root.mkdir()
    chunks = root / "chunks.jsonl"
    shutil.copy(sample_chunks, chunks)
    run = _run(root / "grounded", template="rag", retrieval=RetrievalInfo(chunks=str(chunks.resolve()), top_k=K))
    away = _run(tmp_path / "away", template="rag", retrieval=RetrievalInfo(chunks=str(sample_chunks), top_k=K))
    with canned_openai(ANSWERS, QUESTIONS) as url:
        code, events = _studio_chat(root, {"model": f"openai:{url}#grounded@{run}", "question": QUESTIONS[2]})
        assert code == 200, events
        head, done = events[0], events[-1]
        want = [str(c["chunk_id"]) for c, _ in _expected(chunks, QUESTIONS[2], K)]
        assert [p["chunk_id"] for p in head["passages"]] == want and [p["n"] for p in head["passages"]] == [1, 2]
        assert head["retrieval"] == {"chunks": "chunks.jsonl", "top_k": K, "from": "run"}
        assert done["done"] and done["abstained"] is True
        code, events = _studio_chat(root, {"model": f"openai:{url}#grounded@{run}", "question": QUESTIONS[2],
                                           "context": "chunks.jsonl", "top_k": 1})
        assert code == 200 and events[0]["retrieval"]["from"] == "--context" and len(events[0]["passages"]) == 1
        code, events = _studio_chat(root, {"model": f"openai:{url}#base", "question": QUESTIONS[2]})
        assert code == 200 and "passages" not in events[0] and "abstained" not in events[-1]
        code, (err,) = _studio_chat(root, {"model": f"openai:{url}#grounded@{away}", "question": QUESTIONS[2]})
        assert code == 400 and "outside the studio root" in err["error"]


# ---------------------------------------------------------------- kotune train --chunks
def test_train_chunks_that_do_not_exist_is_one_error_line(tmp_path, sample_qa) -> None:
    res = call_cli(["train", "--data", sample_qa, "-o", tmp_path / "out", "--chunks", tmp_path / "missing.jsonl"])
    one_error_line(res, "--chunks", "no such file")
    assert not (tmp_path / "out").exists()


def test_preference_and_resumed_runs_keep_the_retrieval_they_continue(tmp_path) -> None:
    from kotune.train.sft import TrainConfig, retrieval_info

    sft = RetrievalInfo(chunks="/data/chunks.jsonl", top_k=2)
    config = TrainConfig(base_model="builtin:tiny-ko", data="prefs.jsonl", output_dir="out", method="dpo")
    assert retrieval_info([], config, inherited=sft, log=lambda *_: None) == sft        # DPO from a grounded SFT run
    moved = TrainConfig(base_model="builtin:tiny-ko", data="d", output_dir="o", chunks=str(tmp_path / "c.jsonl"))
    assert retrieval_info([], moved, inherited=sft, log=lambda *_: None).chunks == str((tmp_path / "c.jsonl").resolve())
    grounded = [Record("q", "a [문서 1]", extra={"passages": ["c1", "c2", "c3"]})]
    resumed = retrieval_info(grounded, TrainConfig(base_model="b", data="d", output_dir="o"), inherited=sft,
                             log=lambda *_: None)
    assert (resumed.chunks, resumed.top_k) == ("/data/chunks.jsonl", 3)              # --resume without --chunks
    notes: list[str] = []
    assert retrieval_info([Record("q", "a")], moved, log=notes.append) is None and "ignored" in notes[0]


def test_a_grounded_run_on_tiny_ko_records_its_retrieval_and_is_asked_with_it(tmp_path, sample_chunks, tiny_model,
                                                                               monkeypatch) -> None:
    """End to end: kotune generate --grounded, kotune train --chunks (relative path, stored absolute),
    then kotune chat and kotune eval ask the run with its own passages, the base without."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(sample_chunks, "chunks.jsonl")
    assert call_cli(["generate", "chunks.jsonl", "-o", "qa.jsonl", "--grounded", "--grounded-k", str(K),
                     "--per-chunk", "2"]).code == 0
    res = call_cli(["train", "--base-model", "builtin:tiny-ko", "--data", "qa.jsonl", "-o", "run", "--template", "rag",
                    "--max-steps", "2", "--report-to", "none", "--chunks", "chunks.jsonl"])
    assert res.code == 0, res.err
    info = RunInfo.read(tmp_path / "run")
    assert info.retrieval.chunks == str((tmp_path / "chunks.jsonl").resolve()) and info.retrieval.top_k == K

    from kotune.options import ChatOptions
    from kotune.serve.chat import run_chat

    out = io.StringIO()
    run_chat(ChatOptions.check({"model": str(tmp_path / "run"), "max_new_tokens": 4}),
             stdin=io.StringIO(f"{QUESTIONS[0]}\n/exit\n"), stdout=out)
    ids = [str(c["chunk_id"]) for c, _ in _expected(tmp_path / "chunks.jsonl", QUESTIONS[0], K)]
    assert f"(retrieved: {', '.join(ids)})" in out.getvalue()

    res = call_cli(["eval", "--questions", _questions(tmp_path), "--models", "base=builtin:tiny-ko", "grounded=run",
                    "-o", "ev", "--max-new-tokens", "4"])
    assert res.code == 0, res.err
    row = read_jsonl(tmp_path / "ev" / "responses.jsonl")[0]
    assert row["answers"]["grounded"]["retrieved"] == ids and row["answers"]["base"]["retrieved"] == []
    assert "[문서 1]" in row["answers"]["grounded"]["prompt"] and "[문서" not in row["answers"]["base"]["prompt"]
