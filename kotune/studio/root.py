"""What kotune studio shows: the runs, recipe outputs, evals and recipes under ROOT,
each with its status, and the one gate every path parameter passes through.

Every path the browser sends is relative to ROOT and goes through :meth:`Root.path`,
which resolves symbolic links and ``..`` first and refuses anything that lands
outside ROOT; nothing else in the studio opens a path it was given.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from kotune.errors import KotuneError
from kotune.model.runinfo import RUN_FILE, RunInfo

# Folders never searched for runs: tooling, caches and a run's own internals.
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "checkpoints", "logs", "site-packages",
             ".pytest_cache", ".mypy_cache", ".cache"}
MAX_DEPTH = 6
RECIPE_STATE = "run.json"        # kotune run's state (kotune.recipe.plan)
LAUNCH_FILE = "studio.json"      # a run the studio launched: its command, pid and exit
LAUNCH_LOG = "studio.log"
# One model construction at a time in the studio's threads: transformers' loading and
# accelerate's init_empty_weights (the doctor's meta model) patch process-wide state, and
# two at once left one model on the meta device.
MODEL_LOCK = threading.RLock()


class OutsideRoot(KotuneError):
    """A path parameter that leaves ROOT (HTTP 403)."""


class Root:
    def __init__(self, root: str | Path):
        self.dir = Path(root).resolve()
        if not self.dir.is_dir():
            raise KotuneError("--root: no such folder", path=root)

    # ------------------------------------------------------------ the gate
    def path(self, rel: str | None, *, must_exist: bool = True) -> Path:
        """``rel`` (relative to ROOT) as an absolute path inside ROOT, or OutsideRoot."""
        if rel is None or "\x00" in rel:
            raise OutsideRoot("path outside the studio root")
        rel = rel.strip()
        p = Path(rel)
        if p.is_absolute() or rel.startswith("~"):
            raise OutsideRoot(f"{rel}: path outside the studio root (give a path relative to it)")
        full = (self.dir / p).resolve()
        if full != self.dir and self.dir not in full.parents:
            raise OutsideRoot(f"{rel}: path outside the studio root")
        if must_exist and not full.exists():
            raise KotuneError(f"{rel}: no such file or folder under the studio root")
        return full

    def rel(self, p: Path) -> str:
        """``p`` relative to ROOT ("." for ROOT itself)."""
        r = Path(p).resolve().relative_to(self.dir).as_posix()
        return r or "."

    def inside(self, p: str | Path) -> bool:
        full = Path(p).resolve()
        return full == self.dir or self.dir in full.parents

    # ------------------------------------------------------------ finding things
    def walk(self) -> Iterator[Path]:
        """Every folder under ROOT worth looking at (breadth-first, bounded depth)."""
        level = [self.dir]
        for _ in range(MAX_DEPTH + 1):
            nxt: list[Path] = []
            for d in level:
                yield d
                try:
                    children = sorted(c for c in d.iterdir() if c.is_dir() and not c.is_symlink())
                except OSError:
                    continue
                nxt += [c for c in children if c.name not in SKIP_DIRS and not c.name.startswith(".")]
            level = nxt

    def scan(self) -> list["Output"]:
        """Every recipe output and training run under ROOT; a recipe's own model folders
        are listed inside it, not again on their own."""
        found: list[Output] = []
        claimed: set[Path] = set()
        for d in self.walk():
            if d in claimed:
                continue
            if (d / RECIPE_STATE).exists() or (d / LAUNCH_FILE).exists():
                out = recipe_output(self, d)
                claimed.update(m.dir for m in out.models)
                found.append(out)
            elif (d / RUN_FILE).exists() and not any(p in claimed for p in d.parents):
                found.append(train_output(self, d))
        return sorted(found, key=lambda o: o.updated, reverse=True)

    def recipes(self) -> list[dict[str, Any]]:
        """Recipe files under ROOT: YAML mappings with ``name`` and ``steps``."""
        import yaml

        out = []
        for d in self.walk():
            for f in sorted(d.glob("*.y*ml")):
                try:
                    data = yaml.safe_load(f.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, yaml.YAMLError):
                    continue
                if isinstance(data, dict) and isinstance(data.get("steps"), dict) and data.get("name"):
                    profiles = data.get("profiles") if isinstance(data.get("profiles"), dict) else {}
                    out.append({"path": self.rel(f), "name": str(data["name"]),
                                "description": str(data.get("description") or ""),
                                "base_model": str(data.get("base_model") or ""), "profiles": list(profiles),
                                "steps": list(data["steps"])})
        return out

    def files(self, pattern: str) -> list[str]:
        """Files named ``pattern`` (a glob) under ROOT, relative."""
        return [self.rel(f) for d in self.walk() for f in sorted(d.glob(pattern)) if f.is_file()]


# ---------------------------------------------------------------- statuses
def process_alive(pid: int | None) -> bool:
    """A live (not zombie) kotune process with this pid."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():  # Linux: rule out zombies and a pid reused by another program
        try:
            if proc.joinpath("stat").read_text().split(")")[-1].split()[0] == "Z":
                return False
            return "kotune" in proc.joinpath("cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            return False
    return True


def read_json_file(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class ModelRun:
    """One training run's folder and record."""

    dir: Path
    rel: str
    info: RunInfo | None
    status: str                     # running | finished | killed | failed
    resumable: bool = False
    error: str = ""

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.info.history) if self.info else []


def model_run(root: Root, d: Path) -> ModelRun:
    try:
        info = RunInfo.read(d)
    except KotuneError as e:
        return ModelRun(d, root.rel(d), None, "failed", error=str(e))
    if info is None:
        return ModelRun(d, root.rel(d), None, "failed", error="no kotune.json")
    if info.complete:
        return ModelRun(d, root.rel(d), info, "finished")
    alive = process_alive(info.pid)
    checkpoints = d / "checkpoints"
    resumable = not alive and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    return ModelRun(d, root.rel(d), info, "running" if alive else "killed", resumable=resumable)


@dataclass
class Output:
    """A recipe output (``kind`` recipe) or a lone training run (``kind`` train)."""

    kind: str
    dir: Path
    rel: str
    name: str
    status: str                                  # running | finished | failed | killed | stopped
    resumable: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelRun] = field(default_factory=list)
    evals: list[str] = field(default_factory=list)
    base_model: str = ""
    recipe: str = ""
    error: str = ""
    launch: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    headline: dict[str, float] = field(default_factory=dict)   # ROUGE-L per model in OUT/eval

    @property
    def updated_text(self) -> str:
        import time

        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated)) if self.updated else ""

    @property
    def has_data(self) -> bool:
        return self.kind == "train" or (self.dir / "clean.jsonl").exists() or (self.dir / "train.jsonl").exists()

    def summary(self) -> dict[str, Any]:
        """The JSON the pages poll."""
        return {"kind": self.kind, "path": self.rel, "name": self.name, "status": self.status,
                "resumable": self.resumable, "steps": self.steps, "error": self.error, "base_model": self.base_model,
                "models": [{"path": m.rel, "status": m.status, "resumable": m.resumable, "history": m.history,
                            "estimate": (m.info.estimate or {}) if m.info else {},
                            "final": m.info.final.model_dump() if m.info and m.info.final else None}
                           for m in self.models],
                "evals": self.evals, "launched": bool(self.launch)}


def _mtime(*paths: Path) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def train_output(root: Root, d: Path) -> Output:
    m = model_run(root, d)
    info = m.info
    return Output("train", d, root.rel(d), d.name, m.status, resumable=m.resumable, models=[m],
                  base_model=info.base_model if info else "", error=m.error,
                  updated=_mtime(d / RUN_FILE))


def recipe_output(root: Root, d: Path) -> Output:
    """A recipe output's status from ``run.json`` (kotune.recipe.plan), its model folders'
    records and, when the studio launched it, ``studio.json``."""
    state = read_json_file(d / RECIPE_STATE)
    launch = read_json_file(d / LAUNCH_FILE)
    done_steps: dict[str, Any] = state.get("steps") if isinstance(state.get("steps"), dict) else {}
    planned = [s for s in state.get("steps_planned") or [] if isinstance(s, str)] or list(done_steps)
    steps = []
    for label in planned:
        s = done_steps.get(label) or {}
        steps.append({"label": label, "status": s.get("status", "pending"), "seconds": s.get("seconds"),
                      "started": s.get("started"), "finished": s.get("finished"), "error": s.get("error", "")})
    models = [model_run(root, m) for m in sorted(d.glob("model*")) if (m / RUN_FILE).exists()]
    evals = [root.rel(e) for e in sorted(d.glob("eval*")) if (e / "metrics.json").exists()]
    alive = process_alive(state.get("pid")) or process_alive(launch.get("pid"))
    failed = [s for s in steps if s["status"] == "failed"]
    if alive:
        status = "running"
    elif steps and all(s["status"] == "done" for s in steps):
        status = "finished"
    elif launch.get("stopped"):
        status = "stopped"
    elif failed or (launch.get("returncode") not in (None, 0)):
        status = "failed"
    else:
        status = "killed"
    error = failed[0]["error"] if failed else ""
    if status == "failed" and not error and launch:
        error = last_error_line(d / LAUNCH_LOG)
    models_metrics = read_json_file(d / "eval" / "metrics.json").get("models") or {}
    headline = {name: m["overall"]["rougeL"] for name, m in models_metrics.items()
                if isinstance(m, dict) and isinstance((m.get("overall") or {}).get("rougeL"), (int, float))}
    return Output("recipe", d, root.rel(d), str(state.get("name") or launch.get("name") or d.name), status,
                  resumable=status in ("killed", "stopped", "failed"), steps=steps, models=models, evals=evals,
                  base_model=str(state.get("base_model") or ""), recipe=str(state.get("recipe") or launch.get("recipe") or ""),
                  error=error, launch=launch, headline=headline, updated=_mtime(d / RECIPE_STATE, d / LAUNCH_FILE, *(m.dir / RUN_FILE for m in models)))


def last_error_line(log: Path) -> str:
    """The ``error: ...`` line a failed kotune command printed (its log's last one)."""
    lines = tail(log, 200).splitlines()
    errors = [l.strip() for l in lines if l.strip().startswith("error:")]
    return errors[-1] if errors else ""


def tail(path: Path, max_lines: int = 200, max_bytes: int = 64_000) -> str:
    """The end of a text file (a live log), bounded in bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    return "\n".join(text.splitlines()[-max_lines:])


def find(root: Root, rel: str) -> Output:
    """The recipe output or training run at ``rel``."""
    d = root.path(rel)
    if (d / RECIPE_STATE).exists() or (d / LAUNCH_FILE).exists():
        return recipe_output(root, d)
    if (d / RUN_FILE).exists():
        return train_output(root, d)
    raise KotuneError(f"{rel}: not a kotune run (no run.json or kotune.json)")
