"""``docs/wire-schema.json``: the frames as JSON Schema, from the codec's own specs.

Built from :func:`protocols.codec.field_specs`, the same specs the codec
validates with, so the schema states exactly the bounds the codec enforces.
Another implementation validates a frame by decoding its msgpack into the JSON
data model and checking it against this schema, with two conventions that JSON
cannot express (stated in the schema's ``description``):

* ``integer`` means a msgpack **int**.  JSON Schema also calls ``4.0`` an
  integer; a msgpack float in an integer field is nevertheless invalid, so a
  validator must be configured to accept only true integers (the test does so).
* a ``bin`` value (``x-msgpack: bin``) is represented as the object
  ``{"$bin": "<lowercase hex>"}``: distinct from a str, and two hex digits
  per byte, so ``maxLength`` bounds the bytes exactly.

What the schema cannot express, the codec still enforces (free-form maps:
nesting depth and total item count; the 256 KiB frame size).
"""

from __future__ import annotations

import json
from typing import Any

from protocols.codec import (
    FREE_MAX_DEPTH,
    FREE_MAX_ITEMS,
    FREE_MAX_STR,
    MAX_FRAME,
    MAX_ITEM_LEN,
    MAX_KEY_LEN,
    PROTOCOL_VERSION,
    FieldSpec,
    field_specs,
)
from protocols.messages import ALL_MESSAGES, MAX_ID_LEN, Message

SCHEMA_ID = "https://p2pnode.invalid/docs/wire-schema.json"
DESCRIPTION = (
    f"p2pnode wire protocol v{PROTOCOL_VERSION}: one frame, decoded from msgpack into the "
    "JSON data model (docs/protocol.md is normative). 'integer' means a msgpack int: an "
    "integral float is invalid there, configure the validator accordingly. Fields marked "
    'x-msgpack \'bin\' are msgpack bin, represented as the object {"$bin": "<lowercase '
    'hex>"} (also inside free-form maps). Also enforced, not '
    f"expressible here: frame size <= {MAX_FRAME} bytes; free-form maps nest at most "
    f"{FREE_MAX_DEPTH} levels with at most {FREE_MAX_ITEMS} items in the whole tree; no map "
    "holds a key twice; floats are finite."
)


def _ref(cls: type[Message]) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{cls.TYPE}"}


def _bin(max_bytes: int) -> dict[str, Any]:
    hex_digits = {"type": "string", "pattern": "^([0-9a-f]{2})*$", "maxLength": 2 * max_bytes}
    return {
        "type": "object",
        "properties": {"$bin": hex_digits},
        "required": ["$bin"],
        "additionalProperties": False,
        "x-msgpack": "bin",
    }


def field_schema(fs: FieldSpec) -> dict[str, Any]:
    """The JSON Schema of one field."""
    kind = fs.kind
    if kind == "bool":
        return {"type": "boolean"}
    if kind in ("int", "float"):
        return {
            "type": "integer" if kind == "int" else "number",
            "minimum": fs.lo if kind == "float" else int(fs.lo or 0),
            "maximum": fs.hi if kind == "float" else int(fs.hi or 0),
        }
    if kind == "str":
        return {"type": "string", "maxLength": fs.max_len}
    if kind == "bin":
        assert fs.max_len is not None
        return _bin(fs.max_len)
    if kind == "list[str]":
        return {
            "type": "array",
            "maxItems": fs.max_len,
            "items": {"type": "string", "maxLength": MAX_ITEM_LEN},
        }
    if kind == "map[str,str]":
        return {
            "type": "object",
            "maxProperties": fs.max_len,
            "propertyNames": {"maxLength": MAX_KEY_LEN},
            "additionalProperties": {"type": "string", "maxLength": MAX_ITEM_LEN},
        }
    if kind == "message":
        assert fs.nested is not None
        return _ref(fs.nested)
    if kind == "list[message]":
        assert fs.nested is not None
        return {"type": "array", "maxItems": fs.max_len, "items": _ref(fs.nested)}
    if kind == "free":
        out: dict[str, Any] = {"$ref": "#/$defs/free_map"}
        if fs.max_len is not None:
            out = {"allOf": [out], "maxProperties": fs.max_len}
        return out
    raise TypeError(f"docgen: no JSON Schema for field kind {kind!r}")


def _body_schema(cls: type[Message]) -> dict[str, Any]:
    specs = field_specs(cls)
    return {
        "title": cls.__name__,
        "type": "object",
        "properties": {fs.name: field_schema(fs) for fs in specs},
        "required": [fs.name for fs in specs],
        "additionalProperties": False,
    }


def _frame_schema(cls: type[Message]) -> dict[str, Any]:
    peer_str = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}
    return {
        "type": "object",
        "properties": {
            "v": {"const": PROTOCOL_VERSION},
            "t": {"const": cls.TYPE},
            "id": peer_str,
            "from": peer_str,
            "body": _ref(cls),
        },
        "required": ["v", "t", "id", "from", "body"],
        "additionalProperties": False,
    }


def schema() -> dict[str, Any]:
    """The whole schema: the frame of the type its ``t`` names."""
    defs: dict[str, Any] = {
        "free_value": {
            "anyOf": [
                {"type": ["null", "boolean", "integer", "number"]},
                {"type": "string", "maxLength": FREE_MAX_STR},
                _bin(FREE_MAX_STR),
                {"type": "array", "items": {"$ref": "#/$defs/free_value"}},
                {"$ref": "#/$defs/free_map"},
            ]
        },
        "free_map": {
            "type": "object",
            "propertyNames": {"maxLength": FREE_MAX_STR},
            "additionalProperties": {"$ref": "#/$defs/free_value"},
        },
    }
    for cls in ALL_MESSAGES:
        defs[cls.TYPE] = _body_schema(cls)
        defs[f"frame_{cls.TYPE}"] = _frame_schema(cls)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"p2pnode frame (protocol v{PROTOCOL_VERSION})",
        "description": DESCRIPTION,
        # Dispatch on the type tag (if/then, not oneOf: errors then name the field).
        "type": "object",
        "required": ["t"],
        "properties": {"t": {"enum": [cls.TYPE for cls in ALL_MESSAGES]}},
        "allOf": [
            {
                "if": {"properties": {"t": {"const": cls.TYPE}}},
                "then": {"$ref": f"#/$defs/frame_{cls.TYPE}"},
            }
            for cls in ALL_MESSAGES
        ],
        "$defs": defs,
    }


def render() -> str:
    """The text of ``docs/wire-schema.json``."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"
