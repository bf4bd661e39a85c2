"""The layering contract of `make lint` (import-linter): the package reads bottom up, and a new upward import fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (the test extra has it)"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's own contract, on the copy of the package under ``root``."""
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env={"PYTHONPATH": str(root)}, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("ichor/data/upward.py", "from ichor.models import ViTEncoder3D"),  # data must not know the models
        ("ichor/evaluation/upward.py", "import ichor.benchmark.run"),  # the cycle that once broke CI
        ("ichor/models/upward.py", "from ichor.training.optim import AdamW"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    shutil.copytree(REPO / "ichor", tmp_path / "ichor", ignore=shutil.ignore_patterns("__pycache__"))
    assert lint_imports(tmp_path).returncode == 0, "the package as shipped keeps its layers"
    (tmp_path / module).write_text(upward + "\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and module.removesuffix(".py").replace("/", ".") in result.stdout
