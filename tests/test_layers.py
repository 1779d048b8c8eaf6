"""The package's structure, read from its code: no import cycle (lazy imports inside functions included),
no module over ~400 lines, and the torch-free modules stay free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "siglip_cli"
MAX_LINES = 400
# Imported by `siglip --help` and by what runs before a model is needed: torch costs seconds to import.
TORCH_FREE = ["atomic", "bars", "catalog", "checkpoint", "choices", "cli", "cli_learn", "cli_text", "config", "console",
              "decode", "errors", "folder_index", "hashes", "hub", "inputs", "options", "plan", "preprocess",
              "progress", "ray_engine", "search", "signals", "store", "tokenizer", "views", "writers"]


def imports(module: str) -> set[str]:
    """The package's modules this one imports, anywhere in its code (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y, from . import x
            names = [node.module] if node.module else [a.name for a in node.names]
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("siglip_cli."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("siglip_cli."))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]  # __init__'s lazy attributes: import_module(f".{_LAZY[name]}", ...)
            if isinstance(arg, ast.JoinedStr) and module == "__init__":
                found.update(_lazy_targets(tree))
    return {m for m in found if (PACKAGE / f"{m}.py").exists()} - {module}


def _lazy_targets(tree: ast.Module) -> set[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            return {v.value for v in node.value.values}
    return set()


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p.stem) for p in sorted(PACKAGE.glob("*.py"))}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert "hub" in imports("model")  # a lazy import inside from_pretrained counts


def test_no_import_cycle():
    edges = graph()
    assert len(edges) > 20
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_loading_layers_never_import_the_model_or_the_network_layer_upwards():
    edges = graph()
    for low in ("config", "checkpoint", "layouts", "weights", "hashes"):
        assert not edges[low] & {"model", "hub", "embed", "batch", "cli"}, (low, edges[low])
    assert "model" not in edges["hub"] and "weights" not in edges["checkpoint"]


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_module_is_over_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines"


def test_torch_free_modules_import_no_torch():
    code = ("import importlib, sys\n"
            f"for m in {TORCH_FREE!r}:\n"
            "    importlib.import_module('siglip_cli.' + m)\n"
            "    assert 'torch' not in sys.modules, m\n"
            "    assert 'ray' not in sys.modules, m  # only --engine ray imports it\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
