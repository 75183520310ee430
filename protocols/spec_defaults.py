"""Resource defaults of a task spec, apart from the validator: the CLI's
inline-job flags show them without loading the spec machinery."""

from __future__ import annotations

MIB = 1024**2
DEFAULT_CPU = 0.1  # cores a task gets when its spec names none
DEFAULT_MEMORY = 256 * MIB  # bytes a task gets when its spec names none
