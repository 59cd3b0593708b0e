"""The package's layers: imports go one way (data -> models -> scoring -> evaluation -> pipeline -> cli),
no package imports another in a cycle, and `mmccd.evaluation` works without torch.

Run as a script to print the package -> package import graph:  python tests/test_layers.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmccd"
#: the layer of each top-level unit: a unit may import only units of its own or a lower layer
LAYERS = {
    "errors": 0, "paths": 0, "config": 0, "atomic": 0, "provenance": 0, "distributed": 0, "progress": 0,
    "runtime": 1, "masks": 1, "data": 1, "locks": 1, "memory": 1,
    "models": 2, "checkpoints": 2, "training": 3,
    "scoring": 4, "evaluation": 4,
    "pipeline": 5, "api": 6, "cli": 6,
}


def unit(module: str) -> str:
    """'mmccd.scoring.base' -> 'scoring'; 'mmccd' -> 'mmccd'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    """unit -> the mmccd units its modules import (module-level and function-level imports alike)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # `if TYPE_CHECKING:` imports are for annotations, never run
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("mmccd.") and unit(name) != unit(module):
                    graph[unit(module)].add(unit(name))
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_between_packages():
    assert cycles(package_graph()) == []


def test_imports_go_one_way():
    wrong = [(a, b) for a, targets in package_graph().items() for b in targets
             if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]]
    assert wrong == [], f"imports against the layer order: {wrong}"
    assert set(package_graph()) <= set(LAYERS) | {"mmccd"}, "a new top-level unit needs its layer in LAYERS"


def test_config_imports_nothing_from_scoring_and_evaluation_imports_no_torch():
    graph = package_graph()
    assert "scoring" not in graph["config"]
    assert not {"scoring", "models", "training", "data", "runtime"} & graph["evaluation"]
    code = ("import sys, mmccd.evaluation, mmccd.evaluation.protocol, mmccd.evaluation.report; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


if __name__ == "__main__":
    for name, targets in sorted(package_graph().items(), key=lambda kv: LAYERS.get(kv[0], 9)):
        print(f"{name:12s} -> {', '.join(sorted(targets, key=lambda t: LAYERS.get(t, 9))) or '(nothing)'}")
    print("cycles:", cycles(package_graph()) or "none")
