"""Validation errors of a job spec: each names the field it is about.

Outside the ``protocols.spec`` package (which re-exports them from
``protocols.spec.errors``) so that importing the classes does not import the
validator: ``p2pnode.errors`` subclasses ``SpecValidationError``, and the
CLI's commands that only ask a node never load the spec machinery.
"""

from __future__ import annotations

import attrs

__all__ = ["DOCUMENT", "SpecError", "SpecValidationError"]

# The path of errors about the document as a whole (parse errors, wrong type
# of the top level, size limit).
DOCUMENT = "<document>"


@attrs.frozen
class SpecError:
    """One problem in a spec.

    ``path`` locates the field: dotted keys and ``[i]`` list indexes, e.g.
    ``tasks.work.depends_on[0]``; :data:`DOCUMENT` for the whole document.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecValidationError(ValueError):
    """A spec is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        lines = "\n".join(f"  {error}" for error in self.errors)
        super().__init__(f"{count} error{'s' if count != 1 else ''} in spec:\n{lines}")
