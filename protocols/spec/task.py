"""Validation of one task: engine, env, resources, timeout and retry."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from protocols.messages import MAX_LABELS, MAX_LIST_LEN, MAX_TEXT_LEN
from protocols.spec.check import Ctx, Fields, join, show
from protocols.spec.model import (
    DAY_MS,
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_MS,
    DEFAULT_CPU,
    DEFAULT_MEMORY,
    DEFAULT_SIM_DURATION_MS,
    DEFAULT_TIMEOUT_MS,
    DEFAULT_WASM_ENTRYPOINT,
    HOUR_MS,
    MIB,
    DockerEngine,
    Engine,
    ProcessEngine,
    Resources,
    Retry,
    SimEngine,
    TaskSpec,
    WasmEngine,
)

TASK_KEYS = ("engine", "env", "resources", "timeout", "retry", "network")
# What the task may reach: "none" (its own empty network namespace) or "host".
NETWORK_MODES = ("none", "host")
ENGINE_KEYS: dict[str, tuple[str, ...]] = {
    "process": ("type", "command"),
    "docker": ("type", "image", "command", "workdir"),
    "sim": ("type", "duration", "exit_code", "output_bytes", "fail_rate", "hang"),
    "wasm": ("type", "module", "entrypoint", "args"),
}

# Bounds.  The timeout is the hard limit of one execution: never unbounded.
MAX_TIMEOUT_MS = 7 * DAY_MS
MAX_BACKOFF_MS = 1 * HOUR_MS
MAX_ATTEMPTS = 100
MAX_CPU = 1024.0
MIN_MEMORY = 1 * MIB
MAX_MEMORY = 2**40  # 1 TiB
MAX_OUTPUT_BYTES = 2**40
MAX_ENV = MAX_LABELS  # LeaseGrant.env carries them and is bounded the same
MAX_ENV_NAME = 128
MAX_IMAGE = 256

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV_PREFIX = "P2PNODE_"
IMAGE = re.compile(r"\S+")
ABS_PATH = re.compile(r"/.*")
# A wasm module: a local path as written; its content id once submitted.
MODULE_ID = re.compile(r"sha256:[0-9a-f]{64}")
MAX_MODULE_PATH = 4096
MAX_ENTRYPOINT = 256

_TASK_MISPLACED = {
    key: f"belongs under engine (engine.{key})"
    for key in ("type", "command", "image", "workdir", "module", "entrypoint", "args")
}


def check_task(
    ctx: Ctx,
    value: Any,
    path: str,
    extra_keys: Collection[str] = (),
    misplaced: Mapping[str, str] | None = None,
) -> tuple[TaskSpec, Fields | None]:
    """Validate a task mapping; also returns its fields so callers can read
    ``extra_keys`` (a DAG node's ``depends_on`` ...) from the same mapping."""
    fields = ctx.mapping(
        value, path, (*TASK_KEYS, *extra_keys), {**_TASK_MISPLACED, **(misplaced or {})}
    )
    if fields is None:
        return TaskSpec(engine=ProcessEngine(command=())), None
    if fields.has("engine"):
        engine = check_engine(ctx, fields.get("engine"), fields.at("engine"))
    else:
        fields.missing("engine", " (e.g. engine: {type: process, command: [echo, hi]})")
        engine = ProcessEngine(command=())
    env: dict[str, str] = {}
    if fields.has("env"):
        env = (
            ctx.str_map(
                fields.get("env"),
                fields.at("env"),
                max_items=MAX_ENV,
                key_pattern=ENV_NAME,
                key_hint="must be a variable name (letters, digits, _; not starting with a digit)",
                max_key_len=MAX_ENV_NAME,
                max_value_len=MAX_TEXT_LEN,
                reserved_prefix=RESERVED_ENV_PREFIX,
            )
            or {}
        )
    task = TaskSpec(
        engine=engine,
        env=env,
        resources=_resources(ctx, fields),
        timeout_ms=fields.duration("timeout", DEFAULT_TIMEOUT_MS, lo=1, hi=MAX_TIMEOUT_MS),
        retry=_retry(ctx, fields),
        network=fields.choice("network", NETWORK_MODES, "none"),
    )
    return task, fields


def _resources(ctx: Ctx, task: Fields) -> Resources:
    if not task.has("resources"):
        return Resources()
    fields = ctx.mapping(task.get("resources"), task.at("resources"), ("cpu", "memory"))
    if fields is None:
        return Resources()
    return Resources(
        cpu=fields.number("cpu", DEFAULT_CPU, lo=0.0, hi=MAX_CPU, lo_open=True),
        memory_bytes=fields.size("memory", DEFAULT_MEMORY, lo=MIN_MEMORY, hi=MAX_MEMORY),
    )


def _retry(ctx: Ctx, task: Fields) -> Retry:
    if not task.has("retry"):
        return Retry()
    fields = ctx.mapping(task.get("retry"), task.at("retry"), ("attempts", "backoff"))
    if fields is None:
        return Retry()
    return Retry(
        attempts=fields.integer("attempts", DEFAULT_ATTEMPTS, lo=1, hi=MAX_ATTEMPTS),
        backoff_ms=fields.duration("backoff", DEFAULT_BACKOFF_MS, lo=0, hi=MAX_BACKOFF_MS),
    )


def _misplaced(kind: str) -> dict[str, str]:
    """Keys of the other engines get a precise message instead of "unknown key"."""
    misplaced: dict[str, str] = {}
    for key in {key for keys in ENGINE_KEYS.values() for key in keys} - set(ENGINE_KEYS[kind]):
        owners = [name for name, keys in ENGINE_KEYS.items() if key in keys]
        plural = "s" if len(owners) > 1 else ""
        misplaced[key] = f"only allowed for the {' and '.join(owners)} engine{plural}"
    return misplaced


# Built once: every task of every grant is checked (a hot path in simnet).
_MISPLACED: dict[str, dict[str, str]] = {kind: _misplaced(kind) for kind in ENGINE_KEYS}


def check_engine(ctx: Ctx, value: Any, path: str) -> Engine:
    placeholder = ProcessEngine(command=())
    if not isinstance(value, dict):
        ctx.error(path, f"must be a mapping, got {show(value)}")
        return placeholder
    if value.get("type") is None:
        ctx.error(join(path, "type"), f"required (one of: {', '.join(sorted(ENGINE_KEYS))})")
        return placeholder
    kind = ctx.choice(value["type"], join(path, "type"), ENGINE_KEYS)
    if kind is None:
        return placeholder
    fields = ctx.mapping(value, path, ENGINE_KEYS[kind], _MISPLACED[kind])
    assert fields is not None  # value is a dict
    if kind == "process":
        return ProcessEngine(command=_command(ctx, fields, required=True) or ())
    if kind == "docker":
        return DockerEngine(
            image=fields.string(
                "image", max_len=MAX_IMAGE, pattern=IMAGE, pattern_hint="must not contain spaces"
            ),
            command=_command(ctx, fields, required=False),
            workdir=fields.opt_string(
                "workdir", pattern=ABS_PATH, pattern_hint="must be an absolute path"
            ),
        )
    if kind == "wasm":
        return _wasm(ctx, fields)
    return SimEngine(
        duration_ms=fields.duration("duration", DEFAULT_SIM_DURATION_MS, lo=0, hi=MAX_TIMEOUT_MS),
        exit_code=fields.integer("exit_code", 0, lo=0, hi=255),
        output_bytes=fields.size("output_bytes", 0, lo=0, hi=MAX_OUTPUT_BYTES),
        fail_rate=fields.number("fail_rate", 0.0, lo=0.0, hi=1.0),
        hang=fields.boolean("hang", False),
    )


def _wasm(ctx: Ctx, engine: Fields) -> WasmEngine:
    """``module``: a spec file names the module's file; at submit the CLI turns
    it into the file's content id (``MODULE_ID``), which is all a peer gets.
    The node refuses a submitted spec whose module is not a content id."""
    module = engine.string("module", max_len=MAX_MODULE_PATH)
    args: tuple[str, ...] = ()
    if isinstance(engine.get("args"), str):
        ctx.error(engine.at("args"), "must be a list of strings like [--verbose, in.txt], "
                                     "got a string")
    elif engine.has("args"):
        items = ctx.str_list(
            engine.get("args"),
            engine.at("args"),
            min_items=0,
            max_items=MAX_LIST_LEN,
            allow_empty=True,
            max_len=MAX_TEXT_LEN,
        )
        args = tuple(items or ())
    return WasmEngine(
        module=module,
        entrypoint=engine.string(
            "entrypoint", DEFAULT_WASM_ENTRYPOINT, max_len=MAX_ENTRYPOINT
        ),
        args=args,
    )


def _command(ctx: Ctx, engine: Fields, *, required: bool) -> tuple[str, ...] | None:
    if not engine.has("command"):
        if required:
            engine.missing("command", " (a list like [echo, hi])")
        return None
    raw = engine.get("command")
    path = engine.at("command")
    if isinstance(raw, str):
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        ctx.error(path, f"must be a list of arguments like [sh, -c, {shown!r}], got a string")
        return None
    items = ctx.str_list(
        raw, path, min_items=1, max_items=MAX_LIST_LEN, allow_empty=True, max_len=MAX_TEXT_LEN
    )
    if items is None:
        return None
    if raw and raw[0] == "":
        ctx.error(f"{path}[0]", "the program name must not be empty")
        return None
    return tuple(items)
