"""Reading and checking one control request, and naming what went wrong.

Everything a client sends is untrusted: a task the node runs could reach a
control socket, and a buggy script can send anything.  So a request is bounded
(``MAX_REQUEST`` bytes, ``MAX_DEPTH`` levels of nesting, no NaN/Infinity), its
fields are checked against ``REQUEST_FIELDS`` before a handler sees them, and
every failure is turned into an error reply with a stable ``code`` by
:func:`error_reply`, never an exception that could stop the node.

Fields not listed for an operation are ignored (forward compatibility: a newer
CLI may send more); a listed field of the wrong type is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from p2pnode.errors import (
    AmbiguousJobError,
    BlobError,
    FetchError,
    NodeStoppedError,
    NotFoundError,
    P2PNodeError,
    UnreachableError,
)
from protocols.errors import LocalProtocolError
from protocols.spec_errors import SpecValidationError  # not protocols.spec: no validator

MAX_REQUEST = 1024 * 1024  # bytes of the request line; a spec is at most 64 KiB
MAX_DEPTH = 32  # nesting of the request's JSON (a spec object needs ~10)
MAX_JOB_ID = 128  # characters (ids are "j-" + 16 hex digits)
MAX_TIMEOUT = 366 * 24 * 3600.0  # seconds a wait may ask for

# The ``code`` of an error reply (the client's ControlError.code).
BAD_REQUEST = "bad_request"  # not JSON, too big/deep, a field missing or of the wrong type
UNKNOWN_OP = "unknown_op"
INVALID_SPEC = "invalid_spec"  # ``errors`` lists every problem
REFUSED = "refused"  # the node refused: unknown job, wrong kind of job, ...
TIMEOUT = "timeout"  # a wait's timeout passed; the job goes on
UNAVAILABLE = "unavailable"  # outputs cannot be fetched, the node is stopping, I/O error
BUSY = "busy"  # too many connections at once
PERMISSION_DENIED = "permission_denied"
INTERNAL = "internal"  # a bug: logged with its traceback on the node
NOT_FOUND = "not_found"  # "no such job: X" (not here, and no peer owns it)
AMBIGUOUS = "ambiguous"  # a job id prefix names several jobs: the message lists them
UNREACHABLE = "unreachable"  # "job X is owned by <peer>, not reachable"
ERROR_CODES = frozenset(
    {BAD_REQUEST, UNKNOWN_OP, INVALID_SPEC, REFUSED, TIMEOUT, UNAVAILABLE, BUSY}
    | {PERMISSION_DENIED, INTERNAL, NOT_FOUND, AMBIGUOUS, UNREACHABLE}
)


class BadRequest(P2PNodeError):
    """The request itself is malformed (reply code ``bad_request``)."""


class UnknownOperation(P2PNodeError):
    """The ``op`` names no operation (reply code ``unknown_op``)."""


# --- parsing -----------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a valid JSON number")


def parse_request(line: bytes) -> dict[str, Any]:
    """The request object in ``line`` (without its newline), checked for size,
    nesting and JSON validity.  Raises ``BadRequest``."""
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"request over the limit of {MAX_REQUEST // 1024} KiB")
    if not line.strip():
        raise BadRequest('empty request; send one JSON object such as {"op": "ping"}')
    try:
        request = json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadRequest(f"request nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digit limit
        raise BadRequest(f"request is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"request must be a JSON object, got {type(request).__name__}")
    if nesting_depth(request) > MAX_DEPTH:
        raise BadRequest(f"request nested deeper than {MAX_DEPTH} levels")
    return request


def nesting_depth(value: Any) -> int:
    """Levels of lists/objects in ``value`` (iterative: no recursion limit)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


# --- fields ------------------------------------------------------------------------

Check = Callable[[str, Any], Any]


def job_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string, got {_shown_type(value)}")
    if len(value) > MAX_JOB_ID or not value.isprintable():
        raise BadRequest(f"{name} must be at most {MAX_JOB_ID} printable characters")
    return value


MAX_LIST_LIMIT = 1_000_000  # jobs a listing may ask for
MAX_STATES = 32  # states one listing may filter by


def states(name: str, value: Any) -> list[str] | None:
    """A job state, or a list of them (any of them matches)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or not 0 < len(items) <= MAX_STATES
        or not all(isinstance(i, str) and 0 < len(i) <= 32 for i in items)
    ):
        raise BadRequest(f"{name} must be a state or a list of at most {MAX_STATES} states")
    return list(items)


def positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LIST_LIMIT:
        raise BadRequest(f"{name} must be an integer from 1 to {MAX_LIST_LIMIT}")
    return value


def epoch_ms(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise BadRequest(f"{name} must be a time in unix milliseconds (an integer)")
    return value


def spec(name: str, value: Any) -> str | dict[str, Any]:
    if not isinstance(value, (str, dict)):
        raise BadRequest(
            f"{name} must be the spec's YAML/JSON text or an object, got {_shown_type(value)}"
        )
    return value


def timeout(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number of seconds or null, got {_shown_type(value)}")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMEOUT:
        raise BadRequest(f"{name} must be between 0 and {MAX_TIMEOUT:g} seconds")
    return seconds


def optional_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise BadRequest(f"{name} must be a string of at most 1000 characters")
    return value


# Submissions that may be repeated name themselves with a key (p2pnode.node).
MAX_IDEMPOTENCY_KEY = 200  # characters


def idempotency_key(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(
            f"{name} must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters"
        )
    return value


def absolute_path(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise BadRequest(f"{name} must be an absolute path, got {_shown_type(value)}")
    return value


def flag(name: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {_shown_type(value)}")
    return value


MAX_TAIL_LINES = 1_000_000


def line_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TAIL_LINES:
        raise BadRequest(f"{name} must be a number of lines from 0 to {MAX_TAIL_LINES} or null")
    return value


# op -> field -> (required, check).  Handlers read only these fields.
REQUEST_FIELDS: dict[str, dict[str, tuple[bool, Check]]] = {
    "ping": {},
    "jobs": {
        "state": (False, states),
        "type": (False, optional_text),
        "name": (False, optional_text),
        "limit": (False, positive_int),
        "since": (False, epoch_ms),
        "runs": (False, flag),
    },
    "peers": {},
    "stats": {},
    "submit": {"spec": (True, spec), "idempotency_key": (False, idempotency_key)},
    "update": {"job_id": (True, job_id), "spec": (True, spec)},
    "suspend": {"job_id": (True, job_id)},
    "resume": {"job_id": (True, job_id)},
    "runs": {"job_id": (True, job_id)},
    "describe": {"job_id": (True, job_id)},
    "cancel": {"job_id": (True, job_id), "reason": (False, optional_text)},
    "wait": {"job_id": (True, job_id), "timeout": (False, timeout)},
    "get": {"job_id": (True, job_id), "output_dir": (True, absolute_path)},
    "logs": {"job_id": (True, job_id), "follow": (False, flag), "tail": (False, line_count)},
    "history": {"job_id": (True, job_id)},
}


def checked_request(
    request: dict[str, Any], known_ops: frozenset[str]
) -> tuple[str, dict[str, Any]]:
    """(op, request) once ``op`` is known and every listed field is valid.

    The returned request holds the checked values (``timeout`` as a float)
    and every other field as sent.  Raises ``BadRequest`` / ``UnknownOperation``.
    """
    op = request.get("op")
    if not isinstance(op, str):
        raise BadRequest(f"op must be a string, got {_shown_type(op)}")
    if op not in known_ops:
        shown = op if len(op) <= 40 and op.isprintable() else repr(op[:40])
        raise UnknownOperation(
            f"unknown operation {shown!r}; known: {', '.join(sorted(known_ops))}"
        )
    checked = dict(request)
    for field, (required, check) in REQUEST_FIELDS.get(op, {}).items():
        if field not in request:
            if required:
                raise BadRequest(f"{op} needs the field {field!r}")
            continue
        checked[field] = check(field, request[field])
    return op, checked


def _shown_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- failures ----------------------------------------------------------------------


def error_reply(exc: BaseException) -> tuple[dict[str, Any], bool]:
    """The error reply for a request that raised ``exc``, and whether the
    failure is a bug (``internal``: the caller logs the traceback).

    Nurseries in handlers wrap exceptions in groups: a group is classified by
    its first leaf.
    """
    leaf = _first_leaf(exc)
    if isinstance(leaf, SpecValidationError):
        errors = [{"path": e.path, "message": e.message} for e in leaf.errors]
        return {
            "ok": False,
            "code": INVALID_SPEC,
            "error": "invalid job spec",
            "errors": errors,
        }, False
    code = _code_of(leaf)
    message = str(leaf) or type(leaf).__name__
    if code == INTERNAL:
        message = f"internal error ({type(leaf).__name__}: {message[:200]}); see the node's log"
    return {"ok": False, "code": code, "error": message}, code == INTERNAL


def _code_of(exc: BaseException) -> str:
    import trio  # loaded already where requests are served; the CLI reads only the limits

    if isinstance(exc, BadRequest):
        return BAD_REQUEST
    if isinstance(exc, RecursionError):
        return BAD_REQUEST
    if isinstance(exc, UnknownOperation):
        return UNKNOWN_OP
    if isinstance(exc, NotFoundError):
        return NOT_FOUND
    if isinstance(exc, AmbiguousJobError):
        return AMBIGUOUS
    if isinstance(exc, UnreachableError):
        return UNREACHABLE
    if isinstance(exc, LocalProtocolError):
        return REFUSED
    if isinstance(exc, (TimeoutError, trio.TooSlowError)):
        return TIMEOUT
    if isinstance(exc, (FetchError, BlobError, NodeStoppedError, OSError)):
        return UNAVAILABLE
    return INTERNAL


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
