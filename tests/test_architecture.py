"""The layering contract: import-linter passes on the tree and fails on a forbidden import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )


def _copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    for package in ("domain", "application", "adapters", "api"):
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tree


@pytest.mark.parametrize(
    ("package", "module"),
    [
        ("domain", "litestar"),
        ("domain", "msgspec"),
        ("application", "psycopg"),
        ("application", "sqlite3"),
        ("application", "stripe"),
        ("domain", "api.app"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, package: str, module: str) -> None:
    tree = _copy_tree(tmp_path)
    (tree / package / "forbidden.py").write_text(f"import {module}\n")
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_the_tree_keeps_the_contract(tmp_path: Path) -> None:
    result = _lint(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout
