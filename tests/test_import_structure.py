"""The package's structure: each piece in its Detectron2 home. ``evaluation/`` and ``data/`` import
nothing from ``modeling/``; ``engine/`` names no meta-architecture, branch or method (it asks the
model); multi-run experiments live in ``experiments/``."""
import ast
from pathlib import Path
from typing import Iterator, List

import pytest

from rba_plugin.modeling.loss_terms import LOSS_TERM_REGISTRY
from rba_plugin.modeling.pixel import PIXEL_OOD_METHOD_REGISTRY

from .conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "rba_plugin"


def _modules(folder: str) -> List[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _imported_modules(path: Path) -> Iterator[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                yield f"{prefix}.{node.module}" if node.module else prefix
            else:
                yield node.module


def _code_words(path: Path) -> Iterator[str]:
    """Identifiers and string constants of ``path``'s code (docstrings and comments excluded)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.alias):
            yield node.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_the_checks_see_imports_and_names():
    # The helpers themselves: a module known to import modeling, and one known to name a method.
    assert any(m.startswith("rba_plugin.modeling") for m in _imported_modules(PACKAGE / "experiments" / "incremental.py"))
    assert "PIXEL_OOD" in set(_code_words(PACKAGE / "modeling" / "pixel" / "segmentor.py"))


@pytest.mark.parametrize("folder", ["evaluation", "data"])
def test_evaluation_and_data_import_nothing_from_modeling(folder):
    offending = {str(p.relative_to(REPO_ROOT)): m for p in _modules(folder) for m in _imported_modules(p)
                 if m and m.startswith("rba_plugin.modeling")}
    assert not offending, offending


def test_engine_names_no_branch_or_method():
    methods = [name for name, _ in PIXEL_OOD_METHOD_REGISTRY]
    terms = [name for name, _ in LOSS_TERM_REGISTRY]
    forbidden = ["MaskFormer", "MASK_FORMER", "PixelOOD", "PIXEL_OOD", "pixel", "mask2former", *methods, *terms]
    found = {}
    for path in _modules("engine"):
        imports = [m for m in _imported_modules(path) if m and m.startswith("rba_plugin.modeling")]
        words = [w for w in _code_words(path) if any(f in w for f in forbidden)]
        if imports or words:
            found[str(path.relative_to(REPO_ROOT))] = imports + words
    assert not found, found


def test_multi_run_experiments_live_outside_the_engine():
    assert not (PACKAGE / "engine" / "comparison.py").exists() and not (PACKAGE / "engine" / "runs.py").exists()
    assert (PACKAGE / "experiments" / "comparison.py").exists() and (PACKAGE / "experiments" / "incremental.py").exists()
    assert not (PACKAGE / "modeling" / "pixel" / "incremental.py").exists()
    assert not (PACKAGE / "modeling" / "pixel" / "metrics.py").exists()  # metrics live in evaluation/
