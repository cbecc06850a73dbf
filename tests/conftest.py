"""Shared fixtures: the bundled sample, CLI runners (in-process and real subprocess),
and the sample taken once through ``prepare`` and ``generate`` for the whole session."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DOC = REPO / "recipes" / "data" / "policy" / "policy_plan.txt"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def __iter__(self):  # ``code, out, err = run_cli([...])``
        return iter((self.code, self.out, self.err))

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def call_cli(args: list[str]) -> CliResult:
    """``kotune ARGS`` in this process (no Kiwi/typer start-up per call).

    The Rich console looks up ``sys.stderr`` at print time, so redirecting the
    standard streams captures everything the command prints.
    """
    from kotune.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KOTUNE_DEBUG", None)
    env["PYTHONIOENCODING"] = "utf-8"
    env["COLUMNS"] = "200"
    return env


def run_kotune(args: list[str], cwd: Path | None = None, timeout: float = 120) -> CliResult:
    """``python -m kotune ARGS`` as a real process: exit code, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "kotune", *map(str, args)],
        cwd=cwd or REPO, env=_subprocess_env(), capture_output=True, text=True,
        encoding="utf-8", errors="replace", timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(args: list, log: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """``kotune serve ARGS`` as a real process on a free loopback port; yields
    ``(base_url, process)`` once ``/health`` answers, and stops it afterwards."""
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "kotune", "serve", *map(str, args), "--port", str(port)],
                                cwd=REPO, env={**_subprocess_env(), **(env or {})}, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"kotune serve exited with {proc.returncode}:\n{log.read_text(encoding='utf-8')}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kotune serve did not come up:\n{log.read_text(encoding='utf-8')}")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def cli() -> Callable[[list], CliResult]:
    """In-process runner: ``cli(["prepare", ...])`` → CliResult(code, out, err)."""
    return call_cli


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """Subprocess runner for stderr/traceback behaviour: ``run_cli([...])`` → (code, out, err)."""
    return run_kotune


@pytest.fixture(scope="session")
def sample_doc() -> Path:
    assert SAMPLE_DOC.is_file(), f"bundled sample missing: {SAMPLE_DOC}"
    return SAMPLE_DOC


@pytest.fixture(scope="session")
def sample_chunks(tmp_path_factory, sample_doc) -> Path:
    """The bundled sample through ``kotune prepare`` (default options)."""
    out = tmp_path_factory.mktemp("sample") / "chunks.jsonl"
    res = call_cli(["prepare", sample_doc, "-o", out])
    assert res.code == 0, res.err
    return out


@pytest.fixture(scope="session")
def sample_qa(sample_chunks) -> Path:
    """The sample chunks through ``kotune generate`` (rule teacher)."""
    out = sample_chunks.parent / "qa.jsonl"
    res = call_cli(["generate", sample_chunks, "-o", out])
    assert res.code == 0, res.err
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def leftover_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).glob(".*.tmp"))


@pytest.fixture(scope="session")
def sample_split(sample_qa, sample_chunks) -> tuple[Path, Path]:
    """Validated sample QA split into train/test as `make demo` does."""
    folder = sample_qa.parent
    # 8 records a chunk (~100), as the recipes ask: the rule teacher's every fact (~270) would
    # make each tiny-ko training in the suite ~3x longer and test nothing more.
    qa, clean = folder / "qa-8.jsonl", folder / "clean.jsonl"
    assert call_cli(["generate", sample_chunks, "-o", qa, "--per-chunk", "8"]).code == 0
    assert call_cli(["validate", qa, "--chunks", sample_chunks, "-o", clean]).code == 0
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    res = call_cli(["split", clean, "--train", train, "--test", test, "--test-size", "0.15"])
    assert res.code == 0, res.err
    return train, test


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The builtin model (built into KOTUNE_HOME on first use, cached after)."""
    from kotune.model.loading import ensure_tiny_ko

    return ensure_tiny_ko(log=lambda *_: None)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, sample_split, tiny_model) -> Path:
    """`kotune train` with the default preset on the sample train split."""
    import time

    out = tmp_path_factory.mktemp("run") / "out"
    t0 = time.monotonic()
    res = call_cli(["train", "--base-model", "builtin:tiny-ko", "--data", sample_split[0], "--output-dir", out,
                    "--report-to", "none"])
    assert res.code == 0, res.err
    (out.parent / "wall_seconds.txt").write_text(f"{time.monotonic() - t0:.1f}", encoding="utf-8")
    return out


# ---------------------------------------------------------------- e2e marking
# A test is end-to-end when it needs a model: any fixture that loads, builds or trains
# one (directly or through another fixture: item.fixturenames is the closure), or an
# explicit @pytest.mark.slow / @pytest.mark.e2e. `make test-fast` deselects them
# (`-m "not e2e"`); `make test` runs everything.
MODEL_FIXTURES = {"tiny_model", "trained_run", "gemma_dir", "gemma_run", "merged", "engine", "generator"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
