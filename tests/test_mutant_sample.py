"""scripts/mutant_sample.py builds real mutants: each parses, changes the
code, and the sample is determined by its seed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import mutant_sample


def test_every_mutant_of_two_core_modules_parses_and_changes_the_code() -> None:
    files = mutant_sample.core_files()
    assert "protocols/holder.py" in files and "protocols/owner/auction.py" in files
    total = 0
    for file in ("protocols/holder.py", "protocols/owner/auction.py"):
        source = (mutant_sample.ROOT / file).read_bytes()
        for mutant in mutant_sample.mutants_of(file):
            changed = mutant.apply(source)
            assert changed != source, mutant.what
            ast.parse(changed)  # SyntaxError: a broken mutant
            total += 1
    assert total > 150


def test_a_mutant_is_the_change_it_names() -> None:
    source = b"def f(a, b):\n    if a < b and b:\n        g()\n    return True\n"
    path = mutant_sample.ROOT / "tests" / "_mutant_probe.py"
    path.write_bytes(source)
    try:
        found = {m.what.split(" ", 1)[1]: m.apply(source).decode()
                 for m in mutant_sample.mutants_of("tests/_mutant_probe.py")}
    finally:
        path.unlink()
    assert "if a <= b and b:" in found["< -> <="]
    assert "if a < b or b:" in found["and -> or"]
    assert "if not (a < b and b):" in found["condition negated"]
    assert "        pass\n" in found["deleted `g()`"]
    assert "return False" in found["return False"]
