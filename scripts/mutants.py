"""``make mutants``: the mutation catalogue of simnet/mutants.py (see its docstring).

Usage: ``python scripts/mutants.py [--only NAME] [--output json] [--list]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simnet.mutants import main

if __name__ == "__main__":
    sys.exit(main())
