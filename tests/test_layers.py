"""The codebase's layering, read from its own imports (function-level imports included):
no import cycle, the core never imports the data pipeline, no module takes another
module's private names, and the run record is read only through kotune.runinfo."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kotune"

# What every step stands on. None of it may import the pipeline steps in kotune.data
# (retrieval reading chunks through data.generate was such an upward import).
CORE = ("errors", "io", "korean", "templates", "metrics", "records", "runinfo", "models", "resolver", "generation",
        "retrieval", "openai_client", "judge", "report", "batching", "openai_protocol", "engine")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(("kotune",) + p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken) for every kotune import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kotune"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("kotune")]
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names in _imports(p):
            for t in [target] + [f"{target}.{n}" for n in names]:
                if t in mods and t != m:
                    graph[m].add(t)
    return graph


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_core_modules_do_not_import_the_data_pipeline() -> None:
    graph = _graph()
    upward = {f"kotune.{c}": sorted(t for t in graph[f"kotune.{c}"] if t.startswith("kotune.data")) for c in CORE}
    assert {m: ts for m, ts in upward.items() if ts} == {}


def test_no_module_takes_another_modules_private_names() -> None:
    taken = []
    for m, p in _modules().items():
        for target, names in _imports(p):
            taken += [f"{m}: {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
        aliases = {a.asname or a.name for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Import) for a in node.names if a.name.startswith("kotune")}
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                taken.append(f"{m}: {node.value.id}.{node.attr}")
    assert taken == []


def test_the_run_record_is_read_only_through_runinfo() -> None:
    """kotune.json is parsed in kotune/runinfo.py alone; elsewhere it is a RunInfo's attributes."""
    readers = []
    for m, p in _modules().items():
        if m == "kotune.runinfo":
            continue
        text = p.read_text(encoding="utf-8")
        if re.search(r"json\.loads?\([^)]*kotune\.json|RUN_FILE[^\n]*read_text|\brun(_info)?\.get\(|\brun\[\"", text):
            readers.append(m)
    assert readers == []
