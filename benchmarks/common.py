"""Shared by the benchmark scripts: machine description and RESULTS.md sections.

Each script owns one section of ``benchmarks/RESULTS.md`` between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; rerunning a script replaces
its own section and leaves the others alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
TITLE = ("# Benchmark results\n\nEach section is written by the script it names, with the command that produced it; "
         "see `benchmarks/README.md`.\n")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load1() -> float:
    return os.getloadavg()[0]


def machine() -> str:
    """One line: CPU, cores, Python and library versions."""
    import torch
    import transformers

    parts = [f"{cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
             f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"]
    try:
        import peft
        import trl

        parts[-1] += f", trl {trl.__version__}, peft {peft.__version__}"
    except ImportError:
        pass
    return "; ".join(parts)


def header(title: str, started: float, load_before: float) -> list[str]:
    """A section's first lines: title, the command that ran, date, load and machine."""
    import datetime as dt
    import sys
    import time

    import shlex

    # shlex: an argument with spaces (--train-args "--epochs 3") stays one argument when pasted back
    command = shlex.join(["python", Path(sys.argv[0]).as_posix().split(str(ROOT.as_posix()) + "/")[-1], *sys.argv[1:]])
    return [f"## {title}", "",
            f"- Command: `{command}` ({(time.time() - started) / 60:.1f} min)",
            f"- Date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; load average (1 min) {load_before:.2f} before, "
            f"{load1():.2f} after",
            f"- Machine: {machine()}"]


def run_script(script: str, args: list[str], log: Path) -> None:
    """``python SCRIPT ARGS`` in a fresh process (its own peak memory), output to ``log``;
    a failure raises with the log's last lines."""
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, script, *args], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        tail = "".join(open(log, encoding="utf-8", errors="replace").readlines()[-25:])
        raise RuntimeError(f"{' '.join(args[:4])} failed (exit {proc.returncode}); log {log}:\n{tail}")


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the ``name`` section of ``path`` atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else TITLE
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end) + r"\n?", lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def publish(body: str, path: Path | None, name: str) -> None:
    """Print a section and, with ``--write PATH``, replace it in that file."""
    print()
    print(body)
    if path:
        write_section(path, name, body)
        print(f"wrote {path}")


@contextlib.contextmanager
def kotune_serve(args: list[str], log: Path | None = None, timeout: float = 180) -> Iterator[str]:
    """``python -m kotune serve ARGS`` on a free loopback port, its output to ``log``; yields the base
    URL once ``/health`` answers and stops the server when the block ends."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = open(log, "w", encoding="utf-8") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "kotune", "serve", *args, "--port", str(port)], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"kotune serve exited ({proc.returncode})" + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"kotune serve did not start in {timeout:.0f} s" + (f"; see {log}" if log else ""))
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


def timed_process(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one process run from the repository root, output to
    ``log``; a failure exits with the log's last lines."""
    import time

    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); log {log}:\n{tail}")
    return wall, usage.ru_maxrss / 1024 / 1024


def table_cell(text: str, n: int) -> str:
    """One Markdown table cell: whitespace folded, pipes escaped, cut at ``n`` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"
