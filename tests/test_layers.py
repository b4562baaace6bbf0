"""The package's layers hold: the import contracts in pyproject.toml (layers, the core apart from the
lab, no cycles), no import cycle between any two modules, no private name imported across modules,
and the core importing the lab only when a registry lookup needs it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "advprompts"
LAB = ("advprompts.world", "advprompts.zoo", "advprompts.experiments", "advprompts.perf", "advprompts.cli")


def test_import_contracts_are_kept():
    """`lint-imports` as CI would run it; its report names every import that breaks a contract."""
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                          "--no-cache", "--no-logo", "pyproject.toml"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " 0 broken" in run.stdout, run.stdout[-2000:]  # the contracts were read and run


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_others():
    """Module by module (a package's __init__ included), function-level imports counted."""
    assert _cycles(grimp.build_graph("advprompts", cache_dir=None)) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("advprompts"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offenders == []


def test_the_core_imports_the_lab_only_when_a_lookup_needs_it():
    """From a fresh interpreter: the core's entry points load no lab module, and the lab's names (an
    embedded model, a shipped benchmark, the experiment presets) are found all the same."""
    code = f"""
import sys
import advprompts.data, advprompts.generate, advprompts.models.loading, advprompts.optim.loop, advprompts.config.presets
loaded = sorted(m for m in sys.modules if m.startswith({LAB!r}))
assert not loaded, loaded
from advprompts.models.registry import PIPELINES, CLIPS
assert PIPELINES.find("embedded-inpaint") is not None and CLIPS.find("embedded-clip") is not None
from advprompts.data import list_datasets
assert "waterbirds-synth" in list_datasets()
from advprompts.config.presets import presets_by_kind
assert "demo" in presets_by_kind()["experiment"]
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
