"""Launching recipes from the studio: an ordinary ``kotune run`` process.

The form is checked exactly as ``kotune run`` checks its options (:func:`kotune.recipe.plan.load_recipe`
and the plan's input checks), so the studio shows the CLI's own error line. The process
gets its own session and writes its output to ``OUT/studio.log``: closing the browser,
or stopping the studio, does not stop it. Stopping sends SIGTERM to its process group;
resuming starts the same command again, and the recipe resumes where it stopped
(up-to-date steps are skipped, a killed training run continues from its checkpoint).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.io import write_json
from kotune.options import PRESET_NAMES as PRESETS  # the launch form's choices: kotune.options' preset registry
from kotune.studio.root import LAUNCH_FILE, LAUNCH_LOG, Root, read_json_file, process_alive


@dataclass
class LaunchForm:
    recipe: str                       # relative to ROOT
    output: str = ""                  # relative to ROOT; default runs/<recipe name>
    base_model: str = ""
    profile: str = ""
    preset: str = ""
    overrides: list[str] = field(default_factory=list)   # KEY=VALUE, as --set takes them

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "LaunchForm":
        raw = body.get("overrides") or []
        if isinstance(raw, str):
            raw = raw.splitlines()
        overrides = [str(x).strip() for x in raw if str(x).strip() and not str(x).strip().startswith("#")]
        return cls(recipe=str(body.get("recipe") or ""), output=str(body.get("output") or "").strip(),
                   base_model=str(body.get("base_model") or "").strip(), profile=str(body.get("profile") or "").strip(),
                   preset=str(body.get("preset") or "").strip(), overrides=overrides)


@dataclass
class Checked:
    recipe: Path
    output: Path
    argv: list[str]                   # kotune run's arguments
    name: str
    steps: list[str]

    def command(self, root: Root) -> str:
        """The command line as typed in ROOT."""
        return "kotune " + shlex.join(a.replace(str(root.dir) + "/", "") for a in self.argv)


def check(root: Root, form: LaunchForm) -> Checked:
    """The form as ``kotune run`` would take it; KotuneError with the CLI's message."""
    from kotune.recipe.plan import load_recipe

    if not form.recipe:
        raise KotuneError("choose a recipe")
    recipe = root.path(form.recipe)
    if recipe.suffix.lower() not in (".yaml", ".yml") or not recipe.is_file():
        raise KotuneError(f"{form.recipe}: not a recipe file (.yaml)")
    overrides = list(form.overrides)
    if form.preset:
        overrides.append(f"steps.train.preset={form.preset}")  # what kotune run --preset does
    plan = load_recipe(recipe, overrides, profile=form.profile or None, base_model=form.base_model or None)
    out = root.path(form.output, must_exist=False) if form.output else root.path(f"runs/{plan.recipe.name}",
                                                                                   must_exist=False)
    calls = plan.calls(out)  # every input checked before anything starts, as kotune run does
    # Absolute paths: the run records the paths it was given (kotune.json's data path), and
    # the studio reads them back from its own working folder.
    argv = ["run", str(recipe), "-o", str(out)]
    for item in form.overrides:
        argv += ["--set", item]
    if form.preset:
        argv += ["--preset", form.preset]
    if form.profile:
        argv += ["--profile", form.profile]
    if form.base_model:
        argv += ["--base-model", form.base_model]
    return Checked(recipe, out, argv, plan.recipe.name, [c.label or c.name for c in calls])


class Launcher:
    """Starts, stops and resumes ``kotune run`` processes; each one's exit is recorded
    in ``OUT/studio.json`` by a thread that waits for it."""

    def __init__(self, root: Root):
        self.root = root
        self._lock = threading.Lock()

    def start(self, checked: Checked) -> Path:
        out = checked.output
        with self._lock:
            state = read_json_file(out / LAUNCH_FILE)
            if process_alive(state.get("pid")):
                raise KotuneError(f"{self.root.rel(out)}: a run is already going in this folder")
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / LAUNCH_LOG, "ab")
            log.write(f"\n$ {checked.command(self.root)}\n".encode("utf-8"))
            log.flush()
            env = dict(os.environ, COLUMNS="120", PYTHONUNBUFFERED="1", NO_COLOR="1")
            proc = subprocess.Popen([sys.executable, "-m", "kotune", *checked.argv], cwd=self.root.dir,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
            log.close()
            write_json(out / LAUNCH_FILE, {"name": checked.name, "recipe": self.root.rel(checked.recipe),
                                           "argv": checked.argv, "pid": proc.pid, "started": time.time()})
        threading.Thread(target=self._wait, args=(out, proc), daemon=True).start()
        return out

    def _wait(self, out: Path, proc: subprocess.Popen) -> None:
        rc = proc.wait()
        with self._lock:
            state = read_json_file(out / LAUNCH_FILE)
            if state.get("pid") == proc.pid:
                state.update(returncode=rc, ended=time.time())
                write_json(out / LAUNCH_FILE, state)

    def stop(self, out: Path) -> None:
        state = read_json_file(out / LAUNCH_FILE)
        pid = state.get("pid")
        if not process_alive(pid):
            raise KotuneError(f"{self.root.rel(out)}: not running")
        state["stopped"] = True
        write_json(out / LAUNCH_FILE, state)
        try:
            os.killpg(pid, signal.SIGTERM)  # the whole session: kotune run and anything it started
        except ProcessLookupError:
            pass

    def resume(self, out: Path) -> Path:
        state = read_json_file(out / LAUNCH_FILE)
        argv = state.get("argv")
        if not isinstance(argv, list) or not argv:
            raise KotuneError(f"{self.root.rel(out)}: not launched from the studio (run kotune run again to resume)")
        recipe = self.root.path(state.get("recipe") or "")
        return self.start(Checked(recipe, out, [str(a) for a in argv], str(state.get("name") or out.name), []))
