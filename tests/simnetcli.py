"""``python -m simnet`` in a fresh interpreter, as the simnet suites run it
(a fresh process with its own ``PYTHONHASHSEED`` proves determinism does not
depend on the hash seed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_simnet(*args: str, hashseed: str = "0", timeout: float = 300) -> dict[str, Any]:
    """Run ``python -m simnet ARGS`` (with ``--output json``) and return its report.
    Exit status 1 (violations found) is a report too; anything else fails."""
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    proc = subprocess.run(
        [sys.executable, "-m", "simnet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report
