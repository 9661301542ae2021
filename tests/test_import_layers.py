"""Imports only go down the layers (docs/architecture.md):

    models/, data/, analysis/            the bottom: no project imports above them
    training/, lightning_module.py       the training layer
    train_hydra.py, hydra_plugins/       the entry point and its Hydra sweeper
    visualization/, audit/, main.py, benchmarks/   the scripts

A module may import its own layer and the layers below it, never one above, not even lazily
inside a function. Every import statement of every module is read with `ast`, so the rule holds
for code that never runs in the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, int] = {
    "models": 0,
    "data": 0,
    "analysis": 0,
    "training": 1,
    "lightning_module": 1,
    "train_hydra": 2,
    "hydra_plugins": 2,
    "visualization": 3,
    "audit": 3,
    "main": 3,
    "benchmarks": 3,
}
NOT_CHECKED = {"tests", "docs", "configs"}  # the tests may import anything; the others hold no modules


def project_modules(root: Path) -> list[Path]:
    """Every .py file of the project, outside hidden folders (.venv, .git) and the tests."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.relative_to(root).parts[0] not in NOT_CHECKED
    )


def top_level_name(path: Path, root: Path) -> str:
    """The layer key of a file: its top-level package, or its stem for a top-level module."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_top_level_names(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every project import in `path`, relative imports resolved."""
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from . import x` / `from ..pkg import x`: relative to this file's package
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, base[0] if base else (node.module or "").split(".")[0]))
            elif node.module:
                found.append((node.lineno, node.module.split(".")[0]))
    return [(line, name) for line, name in found if name in LAYERS]


def upward_imports(root: Path) -> list[str]:
    """One line per import that climbs a layer, or per module that belongs to no layer."""
    problems = []
    for path in project_modules(root):
        owner = top_level_name(path, root)
        where = path.relative_to(root)
        if owner not in LAYERS:
            problems.append(f"{where}: {owner} belongs to no layer; add it to LAYERS and docs/architecture.md")
            continue
        for line, name in imported_top_level_names(path, root):
            if LAYERS[name] > LAYERS[owner]:
                problems.append(
                    f"{where}:{line}: {owner} (layer {LAYERS[owner]}) imports {name} (layer {LAYERS[name]})"
                )
    return problems


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(ROOT) == []


def test_the_checker_sees_every_layer_of_the_project():
    assert {top_level_name(path, ROOT) for path in project_modules(ROOT)} >= {
        "models",
        "data",
        "training",
        "lightning_module",
        "train_hydra",
        "visualization",
        "audit",
        "main",
        "benchmarks",
    }


@pytest.mark.parametrize(
    "source, culprit",
    [
        ("from train_hydra import load_run\n", "imports train_hydra"),
        ("def main():\n    import lightning_module\n", "imports lightning_module"),
        ("from training.objectives import OBJECTIVES\n", "imports training"),
        ("from ..visualization import sweep_summary\n", "imports visualization"),
    ],
)
def test_the_checker_flags_a_planted_upward_import(tmp_path, source, culprit):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "good.py").write_text(
        "import torch\nfrom models.registry import register_model\nfrom data import text\n"
    )
    (tmp_path / "models" / "bad.py").write_text(source)
    problems = upward_imports(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("models/bad.py:") and culprit in problems[0]


def test_the_checker_flags_a_module_outside_every_layer(tmp_path):
    (tmp_path / "helpers.py").write_text("import os\n")
    assert upward_imports(tmp_path) == [
        "helpers.py: helpers belongs to no layer; add it to LAYERS and docs/architecture.md"
    ]
