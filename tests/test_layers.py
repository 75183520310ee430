"""The import-layer contracts (pyproject.toml ``[tool.importlinter]``) can fail.

``make lint`` and ``make test`` run ``lint-imports`` on the tree.  These tests
run the same contracts on a scratch copy of the three packages: clean, the copy
keeps every contract; with one planted violation each, the contract it breaks
fails and names the import.  Type-only imports (under ``TYPE_CHECKING``) count.
The ``acyclic_modules`` contract type is ours (scripts/import_contracts.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocols", "p2pnode", "simnet")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A scratch copy of the packages and of the contracts."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "scripts").mkdir()  # the acyclic_modules contract type
    shutil.copy(ROOT / "scripts" / "import_contracts.py", tmp_path / "scripts")
    return tmp_path


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # The scratch copy, not the installed packages: only ``tree`` on the path.
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "200"}
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def plant(path: Path, line: str) -> None:
    """Add ``line`` right after the module's ``from __future__`` import."""
    text = path.read_text()
    future = "from __future__ import annotations\n"
    assert future in text, path
    path.write_text(text.replace(future, future + line + "\n", 1))


def broken(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The names of the broken contracts ("<name> BROKEN", maybe "(N ignored imports)")."""
    return [m[1] for line in result.stdout.splitlines()
            if (m := re.fullmatch(r"(.+) BROKEN( \(.*\))?", line))]


def test_the_clean_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("planted", [
    "import time",  # a wall-clock read
    "import trio",
    "import socket",
    "from p2pnode import timefmt",
    "from simnet.engine import derive_seed",
])
def test_protocols_importing_io_breaks_the_sans_io_contract(tree: Path, planted: str) -> None:
    plant(tree / "protocols" / "units.py", planted)
    result = lint_imports(tree)
    assert result.returncode == 1
    # (a planted simnet import also breaks "p2pnode does not import simnet":
    # indirect imports count, and p2pnode imports protocols.units.)
    assert "protocols is sans-IO" in broken(result)
    assert "protocols.units -> " in result.stdout


def test_p2pnode_importing_the_simulator_breaks_its_contract(tree: Path) -> None:
    plant(tree / "p2pnode" / "timefmt.py", "import simnet.workload")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert broken(result) == ["p2pnode does not import simnet"]
    assert "p2pnode.timefmt -> simnet.workload" in result.stdout


def test_a_type_only_import_circle_in_simnet_breaks_the_acyclic_contract(tree: Path) -> None:
    # The circle this issue removed: sources -> harness (for a type hint only)
    # while harness -> connector -> sources.
    plant(tree / "simnet" / "sources.py",
          "from typing import TYPE_CHECKING\n"
          "if TYPE_CHECKING:\n"
          "    from simnet.harness import Cluster  # noqa: F401")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert broken(result) == ["no import cycle in p2pnode or simnet",
                              "no import cycle between modules"]
    assert ".sources -> .harness" in result.stdout
    assert "simnet.sources -> simnet.harness" in result.stdout


def test_an_import_circle_in_protocols_breaks_the_acyclic_contract(tree: Path) -> None:
    # units.py is imported by messages.py (via spec) and others: make it import back.
    plant(tree / "protocols" / "units.py",
          "from typing import TYPE_CHECKING\n"
          "if TYPE_CHECKING:\n"
          "    from protocols.spec import JobSpec  # noqa: F401")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert broken(result) == ["no import cycle between modules", "no import cycle in protocols"]
    assert ".units -> .spec" in result.stdout


def test_a_module_importing_its_own_package_back_breaks_the_module_contract(
        tree: Path) -> None:
    # protocols/spec/__init__.py imports spec.model; model importing the
    # package back is a circle acyclic_siblings does not see (not siblings).
    plant(tree / "protocols" / "spec" / "model.py",
          "from typing import TYPE_CHECKING\n"
          "if TYPE_CHECKING:\n"
          "    from protocols.spec import SpecError  # noqa: F401")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert broken(result) == ["no import cycle between modules"]
    assert "- protocols.spec -> protocols.spec.model -> protocols.spec" in result.stdout
