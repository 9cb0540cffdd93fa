"""The package's shape, read from its source: no import circles, no import running up the layers, no module
outside tasks/ branching on a task kind. Imports inside functions count too: a lazy import hides a circle
without removing it. (``python tests/test_architecture.py`` prints the layer of every module.)"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "textune"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("textune._version", "textune.errors", "textune._atomic", "textune._seed", "textune._math", "textune.startup"),
    ("textune.recipe", "textune.device"),
    ("textune.data", "textune.report.plots"),  # data knows no task and no model
    ("textune.tasks", "textune.models", "textune.run"),
    # onnx_export: the ONNX graph of a model directory and its runtime (export --onnx, predict --engine onnx)
    ("textune.encoder", "textune.safe_paths", "textune.onnx_export"),
    ("textune.features",),
    ("textune.prepare",),  # the one data path: task, splits, tokens, features
    # ensemble: the fold ensemble that Predictor.load dispatches to (it does not import predict: no circle)
    ("textune.predict", "textune.report", "textune.ensemble"),
    ("textune.training",),
    (
        "textune.baseline",
        "textune.check",
        "textune.tune",
        "textune.export",
        "textune.embed",
        "textune.params",
        "textune.serve",
        "textune.cv",
    ),
    ("textune.cli", "textune"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC.parent).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    if found is None:
        raise AssertionError(f"{module}: not in any layer of tests/test_architecture.py; add it to LAYERS")
    return found


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at any depth of its code."""
    path = MODULES[module]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                out.add(name)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_up_the_layers():
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    # a circle inside one layer is still a circle: depth-first search for a back edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_only_tasks_name_a_task_kind():
    """Code outside tasks/ asks the Task object; it never compares a task's name to a kind."""
    from textune.tasks import TASKS

    found = []
    for module, path in MODULES.items():
        if module.startswith("textune.tasks"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    values = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                    for v in values:
                        if isinstance(v, ast.Constant) and v.value in TASKS:
                            found.append(f"{path.relative_to(SRC.parent)}:{node.lineno} compares with {v.value!r}")
    assert not found, "\n".join(found)


def test_the_layer_rule_can_fail():
    """The checks above are only worth something if they catch a bad import: data importing a task would."""
    fake = {**GRAPH, "textune.data.io": GRAPH["textune.data.io"] | {"textune.tasks.base"}}
    assert any(layer_of(t) > layer_of(m) for m, ts in fake.items() for t in ts)


if __name__ == "__main__":
    for m in sorted(MODULES, key=lambda m: (layer_of(m), m)):
        print(layer_of(m), m, "->", ", ".join(sorted(GRAPH[m])))
