"""A hypothesis fuzz of the control protocol, over a real unix socket.

``run_fuzz`` sends ``examples`` requests to the control socket at ``socket``:
well-formed requests with fields of every JSON type (ids of real jobs, valid
and mutated specs, odd timeouts), and raw byte mutations of them (truncated,
bit-flipped, spliced, unterminated).  Each answer must be JSON lines: progress
events, then exactly one final reply, either ``ok`` or an error with a known
``code`` that is not ``internal`` (an unclassified exception is a bug even if
the node survives it).  A ``wait`` may legitimately outlast the client's
patience (its job runs on): the client then hangs up.

Used by test_control_fuzz.py against a ``serve`` process, and against a node
with a planted bug to show that the checks fail.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from p2pnode.control_request import ERROR_CODES, INTERNAL, REQUEST_FIELDS

READ_TIMEOUT = 5.0  # seconds a client waits for the final reply of anything but a wait
WAIT_PATIENCE = 0.6  # seconds a client waits for a wait (its job may run for long)

SIM_SHORT: dict[str, Any] = {
    "name": "fuzz-short",
    "task": {"engine": {"type": "sim", "duration": "50ms"}, "timeout": "10s"},
}
SIM_LONG: dict[str, Any] = {
    "name": "fuzz-long",
    "task": {"engine": {"type": "sim", "duration": "1h"}, "timeout": "2h"},
}
SIM_SERVICE: dict[str, Any] = {
    "name": "fuzz-svc",
    "type": "service",
    "task": {"engine": {"type": "sim", "duration": "1h"}, "timeout": "2h"},
}
VALID_SPECS = (SIM_SHORT, SIM_LONG, SIM_SERVICE)
SPEC_TEXT = "name: fuzz-text\ntask:\n  engine: {type: sim, duration: 20ms}\n  timeout: 5s\n"

# --- strategies ----------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Inside specs: small numbers (a count of 10 000 is the spec validator's
# business, tested elsewhere; here it would only load the node).
spec_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=50)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["1s", "10ms", "sim", "process", "1GiB", "-1s", "batch", "daemon"])
    | st.lists(st.integers(-3, 50) | st.text(max_size=5), max_size=3)
    | st.dictionaries(st.text(max_size=6), st.text(max_size=6) | st.integers(-3, 50), max_size=3)
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """A valid spec with one to three places replaced by odd values or removed."""
    spec = json.loads(json.dumps(draw(st.sampled_from(VALID_SPECS))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(spec)))
        if not path:
            return draw(spec_leaves)
        parent = spec
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(spec_leaves)
    return spec


@attrs.define
class Targets:
    """What a fuzz run points its requests at."""

    job_ids: Sequence[str]  # real jobs: running, completed, stopped
    output_dir: Path  # where ``get`` may write


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` four times in five, else ``other`` (one_of picks uniformly)."""
    return st.integers(0, 4).flatmap(lambda n: usual if n else other)


def field_values(field: str, targets: Targets) -> st.SearchStrategy[Any]:
    odd = json_values
    if field == "job_id":
        return mostly(st.sampled_from(list(targets.job_ids)), st.text(max_size=40) | odd)
    if field == "spec":
        valid = st.sampled_from(VALID_SPECS) | st.just(SPEC_TEXT)
        return (
            valid | mutated_specs() | mutated_specs().map(json.dumps) | st.text(max_size=80) | odd
        )
    if field == "timeout":
        return st.floats(min_value=0, max_value=0.3) | st.none() | odd
    if field == "output_dir":
        inside = st.text("abc", min_size=1, max_size=4).map(lambda n: str(targets.output_dir / n))
        return inside | st.text(max_size=20) | odd
    return st.text(max_size=40) | odd


@st.composite
def requests(draw: st.DrawFn, targets: Targets) -> dict[str, Any]:
    ops = sorted(REQUEST_FIELDS)
    op = draw(mostly(st.sampled_from(ops), st.text(max_size=12) | json_values))
    request: dict[str, Any] = {"op": op} if draw(st.integers(0, 19)) else {}
    fields = REQUEST_FIELDS.get(op, {}) if isinstance(op, str) else {}
    for field in sorted({*fields, "job_id", "spec", "timeout"}):
        if draw(st.integers(0, 9)) < (8 if field in fields else 1):
            request[field] = draw(field_values(field, targets))
    request.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return request


@st.composite
def raw_mutations(draw: st.DrawFn, targets: Targets) -> bytes:
    """The bytes of a request, damaged."""
    data = bytearray(json.dumps(draw(requests(targets))).encode() + b"\n")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "splice", "unterminate"]))
        position = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[position:]
        elif kind == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "splice":
            data[position:position] = draw(st.sampled_from([b"[" * 40, b"{", b'"', b"\\", b"\n"]))
        elif kind == "unterminate":
            data = data.rstrip(b"\n")
    return bytes(data)


# --- one exchange -----------------------------------------------------------------------


@attrs.define
class Tally:
    """What a fuzz run did (for the report)."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = attrs.Factory(dict)
    patient_waits: int = 0  # waits the client gave up on (their job still ran)


def exchange(path: Path, payload: bytes, *, patience: float) -> tuple[list[bytes], bool]:
    """Send ``payload``, half-close, and read until the node closes (it does
    after its final reply) or ``patience`` runs out between two reads.
    Returns (lines, whether the time ran out)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(patience)
        sock.connect(str(path))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node answered (and closed) before reading it all
        buf = b""
        try:
            while chunk := sock.recv(65536):
                buf += chunk
        except TimeoutError:
            return buf.split(b"\n"), True
        return buf.split(b"\n"), False


def check_answer(payload: bytes, lines: list[bytes], timed_out: bool, tally: Tally) -> None:
    """The assertions every answer must pass (see the module docstring)."""
    tally.sent += 1
    lines = [line for line in lines if line.strip()]
    messages = [json.loads(line) for line in lines]
    assert all(isinstance(m, dict) for m in messages), (payload, lines)
    finals = [m for m in messages if "ok" in m]
    assert all("event" in m for m in messages if "ok" not in m), (payload, lines)
    if timed_out and not finals:
        assert _op_of(payload) == "wait", f"no answer to {payload[:300]!r}: {lines}"
        tally.patient_waits += 1
        return
    assert len(finals) == 1 and "ok" in messages[-1], (payload, lines)
    final = finals[0]
    if final["ok"] is True:
        assert "result" in final, (payload, final)
        tally.ok += 1
        return
    assert final["ok"] is False, (payload, final)
    code = final.get("code")
    assert code in ERROR_CODES, (payload, final)
    assert code != INTERNAL, f"unclassified failure for {payload[:300]!r}: {final}"
    assert isinstance(final.get("error"), str) and final["error"], (payload, final)
    tally.errors[code] = tally.errors.get(code, 0) + 1


def _op_of(payload: bytes) -> Any:
    try:
        return json.loads(payload.split(b"\n", 1)[0]).get("op")
    except (ValueError, AttributeError, RecursionError):
        return None


def run_fuzz(
    path: Path,
    targets: Targets,
    *,
    examples: int,
    tally: Tally,
    shrink: bool = True,
    fixed_seed: int | None = None,
) -> None:
    """``examples`` requests on the control socket ``path``, two thirds
    well-formed and a third raw mutations; raises on the first answer that
    breaks the rules (shrunk to a small example unless ``shrink`` is false).
    ``fixed_seed`` makes the requests drawn the same on every run."""

    @settings(
        max_examples=examples,
        phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
        deadline=None,
        derandomize=False,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        if data.draw(st.integers(0, 2), label="raw") == 0:  # a third damaged
            payload = data.draw(raw_mutations(targets), label="payload")
        else:
            request = data.draw(requests(targets), label="request")
            payload = json.dumps(request).encode() + b"\n"
        patience = WAIT_PATIENCE if _op_of(payload) == "wait" else READ_TIMEOUT
        lines, timed_out = exchange(path, payload, patience=patience)
        check_answer(payload, lines, timed_out, tally)

    if fixed_seed is not None:
        one = seed(fixed_seed)(one)
    one()
