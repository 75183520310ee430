"""The examples in docs/client.md (a plain script, asyncio, trio) run as
written against a real ``p2pnode serve`` process (docs must not rot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realnet import ServeNode, cluster

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parent.parent / "docs" / "client.md"


def examples() -> dict[str, str]:
    """Each ```python block, by the heading of its section."""
    found = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading, _, body = section.partition("\n")
        blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
        if blocks:
            [found[heading]] = blocks
    return found


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeNode]:
    with cluster(tmp_path_factory.mktemp("docs")) as c:
        serve = c.add("a")
        serve.wait_ready()
        yield serve


def run_example(code: str, node: ServeNode) -> str:
    env = {**os.environ, "P2PNODE_DATA_DIR": str(node.data_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:] + node.explain()
    return done.stdout


def test_the_doc_has_the_three_examples() -> None:
    assert list(examples()) == ["A plain script", "asyncio", "trio"]


def test_plain_script_example(node: ServeNode, tmp_path: Path) -> None:
    code = examples()["A plain script"]
    out = tmp_path / "out"
    patched = code.replace('"/tmp/client-out"', repr(str(out)))
    assert patched != code, "the example's output dir moved: update this test"
    lines = run_example(patched, node).splitlines()
    assert lines[0].startswith("j-") and lines[0].endswith(" completed"), lines
    assert lines[1:] == ["hi.txt hi"]
    assert (out / "hi.txt").read_text() == "hi\n"


def test_asyncio_example(node: ServeNode) -> None:
    lines = run_example(examples()["asyncio"], node).splitlines()
    assert lines[0] == "['0', '1', '4']"
    assert lines[1] in ("refused: refused", "refused: not_found")


def test_trio_example(node: ServeNode) -> None:
    lines = run_example(examples()["trio"], node).splitlines()
    assert lines[0] in ("still queued", "still running"), lines
    assert lines[1:] == ["now stopped", "nodes: 1"]
