"""The shape of the package, checked: what may import a recipe, and who may name a task or a
method (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lmforge
from lmforge.methods.registry import METHOD_OPTIONS
from lmforge.tasks.registry import TASK_NAMES

pytestmark = pytest.mark.unit

PACKAGE = Path(lmforge.__file__).parent

# Entry points start recipes: the CLI, the Python API (lmforge.run picks a config's recipe; the
# Ray workers and the export recipe's training stages are handed it) and Ray Serve's app builder.
MAY_IMPORT_RECIPES = {
    "lmforge": None,
    "lmforge.cli": None,
    "lmforge.serving.ray_serve": {"lmforge.serving.recipe"},
}


def modules() -> list[tuple[str, ast.Module]]:
    out = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, ast.parse(file.read_text(encoding="utf-8"))))
    return out


def test_only_entry_points_import_a_recipe():
    wrong = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            target = node.module
            if not target.endswith(".recipe") or target == name:
                continue
            allowed = MAY_IMPORT_RECIPES.get(name, set())
            if allowed is not None and target not in allowed:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_only_tasks_and_methods_compare_with_their_own_names():
    """`if task == "regression"` outside tasks/ is the task's knowledge leaking: ask the task."""
    names = set(TASK_NAMES) | set(METHOD_OPTIONS)
    owners = ("lmforge.tasks", "lmforge.methods", "lmforge.config")  # config validates names
    wrong = []
    for name, tree in modules():
        if name.startswith(owners):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            about = " ".join(ast.unparse(side) for side in sides if not _literal(side))
            if "task" not in about and "method" not in about:
                continue  # e.g. `"instruction" in record`, `path.name == "adapter"`
            literals = {
                c.value
                for side in sides
                for c in ([side] if isinstance(side, ast.Constant) else getattr(side, "elts", []))
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
            if literals & names:
                wrong.append(f"{name}:{node.lineno} compares with {sorted(literals & names)}")
    assert not wrong, wrong


def _literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) or (
        isinstance(node, ast.Tuple | ast.List | ast.Set)
        and all(isinstance(e, ast.Constant) for e in node.elts)
    )


def test_the_engine_never_imports_the_applications():
    """Applications (lmforge.apps.*) build on the engine; the engine knows none of them, except
    the CLI that registers their commands."""
    wrong = []
    for name, tree in modules():
        if name.startswith("lmforge.apps") or name == "lmforge.cli":
            continue
        for node in ast.walk(tree):
            targets = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            wrong += [f"{name} imports {t}" for t in targets if t.startswith("lmforge.apps")]
    assert not wrong, wrong
