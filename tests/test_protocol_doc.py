"""docs/protocol.md and docs/wire-schema.json: generated, drift-checked, and right.

* The generated parts (message tables, constants table, JSON Schema) match the
  code, and a planted change in the code makes the check fail.
* The schema accepts a real encoded frame of every message type, agrees with
  the codec on every field edge value of ``tests/test_codec.py`` that JSON
  Schema can express, and refuses planted wrong frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import codec, docgen, docgen_constants, docgen_schema
from protocols.config import Timings
from protocols.messages import ALL_MESSAGES, Hello, Message, NodeInfo
from tests.test_codec import (
    GRANT,
    MSG_ID,
    SENDER,
    _edge_cases,
    _raw_frame,
    _to_wire,
    message_strategy,
    minimal,
)

SCHEMA = json.loads(docgen.SCHEMA_PATH.read_text(encoding="utf-8"))


def _strict_ints() -> type[jsonschema.protocols.Validator]:
    """Draft 2020-12, with ``integer`` meaning a msgpack int: Python ``int``
    only (JSON Schema's own reading also takes 4294967296.0), never bool."""
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: type(value) is int
    ).redefine("number", lambda _checker, value: type(value) in (int, float))
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)


VALIDATOR = _strict_ints()(SCHEMA)


def json_model(value: Any) -> Any:
    """A decoded msgpack value in the JSON data model (bin as {"$bin": hex})."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        if not all(type(k) is str for k in value):
            raise TypeError("JSON objects have str keys only")
        return {k: json_model(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_model(v) for v in value]
    return value


def frame_errors(data: bytes) -> list[str]:
    """Schema violations of one encoded frame (empty: valid)."""
    obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    return [e.message for e in VALIDATOR.iter_errors(json_model(obj))]


# --- drift ------------------------------------------------------------------------------


def test_protocol_md_and_wire_schema_are_current() -> None:
    assert docgen.stale() == [], "run `python -m protocols.docgen --write`"
    assert docgen.main(["--check"]) == 0


def test_the_check_fails_when_the_code_changes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A planted change of a default the constants table shows.
    @attrs.frozen(kw_only=True)
    class Longer(Timings):
        lease_grace: float = 2.5

    monkeypatch.setattr(docgen_constants, "Timings", Longer)
    assert docgen.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "GENERATED CONSTANTS" in out and "wire-schema" not in out
    # A planted change of a bound: the message tables and the schema drift.
    monkeypatch.undo()
    monkeypatch.setattr(docgen_schema, "MAX_ID_LEN", 64)
    assert [line for line in docgen.stale() if "wire-schema.json" in line]


def test_write_repairs_stale_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc, schema = tmp_path / "protocol.md", tmp_path / "wire-schema.json"
    shutil.copy(docgen.DOC_PATH, doc)
    text = doc.read_text(encoding="utf-8")
    doc.write_text(
        text.replace("| `MAX_FRAME` | 262144 |", "| `MAX_FRAME` | 1 |"), encoding="utf-8"
    )
    schema.write_text("{}", encoding="utf-8")
    monkeypatch.setattr(docgen, "DOC_PATH", doc)
    monkeypatch.setattr(docgen, "SCHEMA_PATH", schema)
    assert len(docgen.stale()) == 2
    assert docgen.main(["--write"]) == 0
    assert docgen.stale() == []
    assert doc.read_text(encoding="utf-8") == text


def test_a_new_timing_without_a_meaning_stops_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    meanings = dict(docgen_constants.TIMINGS)
    del meanings["daemon_scan"]
    monkeypatch.setattr(docgen_constants, "TIMINGS", meanings)
    with pytest.raises(LookupError, match=r"Timings\.daemon_scan needs a meaning"):
        docgen_constants.render()


def test_constants_come_from_the_shell_sources_without_importing_them() -> None:
    rows = {name: value for _, _, group in docgen_constants.groups() for name, value, *_ in group}
    assert rows["FRAME_PROTOCOL"] == "/p2pnode/frame/1.0.0"
    assert rows["BLOB_PROTOCOL"] == "/p2pnode/blob/1.0.0"
    assert rows["max_frame"] == codec.MAX_FRAME
    assert rows["GuardLimits.weights"] == (
        ("bad_varint", 5.0),
        ("absurd_length", 5.0),
        ("forged", 5.0),
    )
    assert rows["Timings.renew_interval"] == Timings().lease_ttl / 3


def test_docgen_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == SCHEMA
    assert docgen.main(["--bogus"]) == 2
    assert "usage" in capsys.readouterr().err


# --- the schema is right ------------------------------------------------------------------


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert {f"frame_{cls.TYPE}" for cls in ALL_MESSAGES} <= set(SCHEMA["$defs"])


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
def test_a_real_frame_of_every_type_is_valid(cls: type[Message]) -> None:
    samples = [minimal(cls)] + ([GRANT] if cls is type(GRANT) else [])
    for message in samples:
        assert frame_errors(codec.encode(message, msg_id=MSG_ID, sender=SENDER)) == []


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_encoded_frames_validate(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    try:
        frame = codec.encode(message, msg_id=MSG_ID, sender=SENDER)
    except codec.LocalProtocolError:
        return  # over the frame size: never sent
    assert frame_errors(frame) == []


# Free-form rules the codec enforces and JSON Schema cannot say (protocol.md, 14).
_INEXPRESSIBLE = ("nested deeper", "items in total")


@pytest.mark.parametrize(("cls", "name", "value", "valid"), list(_edge_cases()))
def test_schema_agrees_with_the_codec_on_field_edges(
    cls: type[Message], name: str, value: Any, valid: bool
) -> None:
    frame = _raw_frame(minimal(cls))
    frame["body"][name] = _to_wire(value)
    try:
        data = msgpack.packb(frame, use_bin_type=True)
        json_model(msgpack.unpackb(data, raw=False, strict_map_key=True))
    except (OverflowError, ValueError, TypeError):
        return  # not msgpack the JSON data model can hold (ext types, int keys, 2**64)
    if valid:
        assert frame_errors(data) == []
        return
    try:
        codec.decode(data)
    except codec.RemoteProtocolError as exc:
        reason = str(exc)
    else:  # pragma: no cover - test_codec.py checks this
        raise AssertionError("the codec accepted an invalid edge value")
    if "must be finite" in reason:
        return  # NaN and infinities: no JSON number
    if name == "task" and any(part in reason for part in _INEXPRESSIBLE):
        return
    assert frame_errors(data), f"the schema accepts what the codec refuses: {reason}"


def _hello_with_float_memory() -> dict[str, Any]:
    info = NodeInfo(node_id=SENDER, memory=2**32)
    raw: dict[str, Any] = msgpack.unpackb(
        codec.encode(Hello(info=info), msg_id=MSG_ID, sender=SENDER)
    )
    raw["body"]["info"]["memory"] = float(2**32)
    return raw


def test_planted_wrong_frames_fail_the_schema() -> None:
    float_memory = _hello_with_float_memory()
    assert any("is not of type 'integer'" in e for e in frame_errors(msgpack.packb(float_memory)))
    # Why the validator must be configured: JSON Schema's own "integer" takes 4294967296.0.
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(json_model(float_memory))
    wrong = [
        _raw_frame(GRANT, v=2),
        _raw_frame(GRANT, t="bid"),
        _raw_frame(GRANT, id=""),
        {**_raw_frame(GRANT), "extra": 1},
        _raw_frame(GRANT, body={**_to_wire(GRANT), "epoch": 0}),
        _raw_frame(GRANT, body={k: v for k, v in _to_wire(GRANT).items() if k != "env"}),
        _raw_frame(GRANT, body={**_to_wire(GRANT), "env": {"A": 1}}),
        _raw_frame(GRANT, body={**_to_wire(GRANT), "inputs": [{"name": "x"}]}),
    ]
    for frame in wrong:
        data = msgpack.packb(frame, use_bin_type=True)
        with pytest.raises(codec.RemoteProtocolError):
            codec.decode(data)
        assert frame_errors(data), frame
