"""The library example in README.md runs as written (docs must not rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_library_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [example] = [b for b in blocks if "open_node" in b]
    # Same code, its own data dir.
    code = example.replace('Path("/tmp/lib-node")', f"Path({str(tmp_path / 'node')!r})")
    assert code != example, "the example's data dir moved: update this test"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("completed ['hi 0\\n', 'hi 1\\n']"), result.stdout


def test_docs_library_example_runs(tmp_path: Path) -> None:
    doc = (README.parent / "docs" / "library.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    code = example.replace("/tmp/lib-node", str(tmp_path / "node")).replace(
        "/tmp/lib-out", str(tmp_path / "out")
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    squares = sorted((tmp_path / "out" / str(i) / "sq").read_text() for i in range(3))
    assert squares == ["0\n", "1\n", "4\n"]
