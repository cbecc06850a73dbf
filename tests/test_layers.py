"""The codebase's layering, read from its own imports (function-level imports included).

The packages are layers, lowest first (:data:`LAYERS`); a module may import its own
layer and the layers below it, never one above. Beyond that: no import cycle, no module
takes another module's private names (through any import form), the run record is read
only through kotune.model.runinfo (never by string keys, ``config.get(...)`` included),
and only the model-access layer touches the endpoint client, the generators (the continuous
batcher included) and the loader.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kotune"

# Lowest first. A layer is a package (or a top-level module); peers share a rank and may
# not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("kotune", "kotune.errors", "kotune.io", "kotune.ui", "kotune.korean", "kotune.records"),  # foundation
    ("kotune.model",),     # spec → Model: run record, templates, loading, retrieval, generation, endpoints
    ("kotune.options",),   # one options model per command; allowed values from the registries below it
    ("kotune.data",),      # documents → chunks → records (teachers, validate, split, preferences)
    ("kotune.train",),     # SFT, preference tuning, packing, doctor
    ("kotune.eval",),      # metrics, evaluate, pairs, judge, general ability, report
    ("kotune.rl",),        # GRPO: online RL with eval's metrics as rewards
    ("kotune.serve", "kotune.export"),   # peers: the OpenAI server and terminal chat; export
    ("kotune.recipe",),    # recipe schema, plan, steps
    ("kotune.studio",),    # web UI
    ("kotune.cli", "kotune.__main__"),
]
PEERS_APART = {7}  # serve and export do not import each other

# What only the model-access layer may import: how a model is reached.
MODEL_INTERNALS = ("kotune.model.batching", "kotune.model.endpoint", "kotune.model.generation", "kotune.model.loading",
                   "kotune.model.openai_client")
# Everything else goes through kotune.model.access: models that answer (open_model/open_models),
# serve's one loaded base with several adapters (open_shared: kotune.model.shared, with
# kotune.model.batching's continuous batcher; serve keeps the requests, the lock and the
# batchers' event-loop side), chat clients for callers that write their own messages (the
# HTTP teacher, the judge: open_chat_client), and weights to train or inspect (load_trainable
# and the base's facts). No module is an exception.
INTERNAL_ALLOWED: dict[str, tuple[str, ...]] = {}


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


def _rank(module: str) -> tuple[int, str]:
    """(layer index, layer name) of a module: the longest layer name it is or falls under."""
    best = (-1, "")
    for i, layer in enumerate(LAYERS):
        for name in layer:
            hit = module == name if i == 0 else (module == name or module.startswith(name + "."))
            if hit and len(name) > len(best[1]):
                best = (i, name)
    return best


def test_every_module_is_in_a_layer() -> None:
    """A new module outside the packages must be placed in LAYERS (or, better, in a package)."""
    assert sorted(m for m in _modules() if _rank(m)[0] < 0) == []


def test_imports_go_down_the_layers_only() -> None:
    upward = []
    for m, targets in _graph().items():
        rank, layer = _rank(m)
        for t in targets:
            trank, tlayer = _rank(t)
            if trank > rank or (trank == rank and tlayer != layer and rank in PEERS_APART):
                upward.append(f"{m} -> {t}")
    assert sorted(upward) == []


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


def test_only_the_model_layer_reaches_endpoints_generators_and_loaders() -> None:
    """Eval, pairs, chat, studio, general ability: a model is opened by kotune.model.access."""
    direct = []
    for m, targets in _graph().items():
        if m.startswith("kotune.model"):
            continue
        for t in targets:
            if t in MODEL_INTERNALS and t not in INTERNAL_ALLOWED.get(m, ()):
                direct.append(f"{m} -> {t}")
    assert sorted(direct) == []


def _module_aliases(tree: ast.AST, mods: dict[str, Path]) -> set[str]:
    """Local names bound to kotune modules: ``import kotune.x as a``, ``from kotune.x import mod``."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("kotune")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kotune"):
            aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in mods}
    return aliases


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_no_module_takes_another_modules_private_names() -> None:
    mods = _modules()
    taken = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for target, names in _imports(p):
            taken += [f"{m}: {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
        aliases = _module_aliases(tree, mods)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and _root_name(node.value) in aliases):
                taken.append(f"{m}: {ast.unparse(node)}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2 and _root_name(node.args[0]) in aliases
                  and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")):
                taken.append(f"{m}: {ast.unparse(node)}")
    assert taken == []


def test_the_run_record_is_read_only_through_runinfo() -> None:
    """kotune.json is parsed in kotune/model/runinfo.py alone; elsewhere it is a RunInfo's attributes
    (a run's ``config`` dict read by string key is such a parse too)."""
    readers = []
    for m, p in _modules().items():
        if m == "kotune.model.runinfo":
            continue
        text = p.read_text(encoding="utf-8")
        if re.search(r"json\.loads?\([^)]*kotune\.json|RUN_FILE[^\n]*read_text|\brun(_info)?\.get\(|\brun\[\""
                     r"|\b(info|run|run_info|ref\.run|self\.run)\.config\.get\(|\b(info|run|run_info)\.config\[", text):
            readers.append(m)
    assert readers == []


# Inside the model layer, a model argument travels down this order only (answers: the types
# every backend returns, importing nothing): access opens a
# Model, resolve decides it (loading finds and loads the weights), generation and the
# endpoint answer (batching: the continuous batcher, a generator over rows that join at
# different steps), the journal keeps answers, shared is serve's one base with several
# adapters. No module calls back up into one above it.
MODEL_ORDER = ("kotune.model.answers", "kotune.model.templates", "kotune.model.runinfo", "kotune.model.loading", "kotune.model.resolve",
               "kotune.model.retrieval", "kotune.model.openai_client", "kotune.model.generation", "kotune.model.batching",
               "kotune.model.journal", "kotune.model.endpoint", "kotune.model.llamacpp", "kotune.model.shared",
               "kotune.model.access")


def test_a_model_spec_goes_down_the_model_layer_only() -> None:
    graph = _graph()
    inside = sorted(m for m in graph if m.startswith("kotune.model."))
    assert sorted(MODEL_ORDER) == inside, "place a new kotune.model module in MODEL_ORDER"
    up = [f"{m} -> {t}" for m in MODEL_ORDER for t in graph[m]
          if t in MODEL_ORDER and MODEL_ORDER.index(t) > MODEL_ORDER.index(m)]
    assert up == []


def test_templates_are_asked_their_properties_not_their_names() -> None:
    """The template registry (kotune.model.templates) decides what a template does; elsewhere a
    template is asked ``is_chat`` / ``needs_context`` / ``chat_template``, never compared by name."""
    named = []
    for m, p in _modules().items():
        if m == "kotune.model.templates":
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\.name\s*(==|!=|in)\s*\(?[\"'](kotune|alpaca|koalpaca|rag|chat)[\"']", line):
                named.append(f"{m}:{i}")
    assert named == []


def test_opening_the_model_access_layer_loads_no_torch() -> None:
    """The CLI, the teacher and the judge import kotune.model.access; torch and transformers load
    with a model (about 2 s), not with the import."""
    import subprocess
    import sys

    code = ("import sys, kotune.model.access, kotune.data.http_teacher, kotune.eval.judge, kotune.serve.engine; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
