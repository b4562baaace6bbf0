"""Heavy optional dependencies (matplotlib, TensorBoard) are extras: not required by the package, imported
only inside the features that use them, and a missing one is a one-line error naming its extra, raised
before any work (nothing written)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advprompts.cli.app import app
from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"matplotlib": "plot", "tensorboard": "tensorboard"}


def test_heavy_dependencies_are_extras_that_the_test_extra_includes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    for package, extra in EXTRAS.items():
        assert package not in required
        assert any(d.startswith(package) for d in project["optional-dependencies"][extra])
        assert any(d.startswith(package) for d in project["optional-dependencies"]["test"])  # CI has every feature


def _module_level_imports(tree: ast.Module):
    """Modules imported when the file is imported (function bodies run later, if ever)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""
        else:
            stack.extend(ast.iter_child_nodes(node))


def test_extras_are_imported_lazily():
    for path in (ROOT / "src" / "advprompts").rglob("*.py"):
        for module in _module_level_imports(ast.parse(path.read_text())):
            assert not module.startswith(("matplotlib", "tensorboard", "torch.utils.tensorboard")), \
                f"{path.relative_to(ROOT)} imports {module} at import time; import it where it is used"


@pytest.mark.parametrize("args,missing", [
    (["optimize", "--config", "tiny-ap", "--set", "optim.steps=1"], "tensorboard"),  # tiny-ap logs to TensorBoard
    (["demo", "--quick"], "matplotlib"),
    (["experiment", "--config", "demo-quick"], "matplotlib"),
])
def test_a_missing_extra_is_one_line_naming_it_before_any_work(tmp_path, monkeypatch, args, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    line = one_line_error(result, f"pip install 'advprompts[{EXTRAS[missing]}]'")
    assert missing in line and not out.exists()
    if missing == "tensorboard":
        assert "or set log.tensorboard=false" in line
