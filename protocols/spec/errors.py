"""Validation errors of a job spec (defined in ``protocols/spec_errors.py``)."""

from protocols.spec_errors import DOCUMENT, SpecError, SpecValidationError

__all__ = ["DOCUMENT", "SpecError", "SpecValidationError"]
