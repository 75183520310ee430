"""Entry points of validation: text -> document -> :class:`JobSpec`."""

from __future__ import annotations

import re
from typing import Any, NoReturn

import attrs
import yaml

from protocols.messages import MAX_DURATION_MS, MAX_ID_LEN, MAX_LABELS
from protocols.spec.check import Ctx, Fields, show
from protocols.spec.errors import DOCUMENT, SpecError, SpecValidationError
from protocols.spec.kinds import (
    NAME,
    NAME_HINT,
    check_dag_tasks,
    check_schedule,
    check_stages,
    check_stream,
)
from protocols.spec.model import JOB_TYPES, Constraints, JobSpec, Rollout, TaskSpec
from protocols.spec.task import MAX_TIMEOUT_MS, check_task
from protocols.units import format_duration_ms

__all__ = [
    "MAX_SPEC_BYTES",
    "load_spec_text",
    "parse_spec",
    "parse_spec_bytes",
    "validate_spec",
    "validate_task",
]

MAX_SPEC_BYTES = 64 * 1024
MAX_COUNT = 10_000
MAX_QUEUE_TIMEOUT_MS = MAX_DURATION_MS  # 30 days
# PyYAML parses deep flow nesting ([[[[...) in quadratic time before failing
# on recursion; a spec never needs more than a few levels.
MAX_FLOW_DEPTH = 64
_BRACKETS = re.compile(r"[\[\]{}]")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")

LONG_RUNNING = ("daemon", "service")
COMMON_KEYS = ("name", "type", "constraints", "queue_timeout")
STREAM_KEYS = ("partitions", "run_for", "checkpoint_every", "mode", "source", "batch")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "batch": ("count", "task"),
    "service": ("count", "task", "rollout"),
    "cron": ("count", "task", "schedule"),
    "ops": ("task",),
    "daemon": ("task", "rollout"),
    "dag": ("tasks", "cache"),
    "chain": ("stages",),
    "stream": ("task", *STREAM_KEYS),
}
ALL_KIND_KEYS = tuple(dict.fromkeys(key for keys in KIND_KEYS.values() for key in keys))

# Why a key of another kind is refused, where a generic message would not help.
_NOT_HERE_HINTS = {
    ("task", "dag"): "dag jobs define their tasks under 'tasks'",
    ("task", "chain"): "chain jobs define one task per stage under 'stages'",
    ("count", "ops"): "ops jobs run once on every matching node",
    ("count", "daemon"): "daemon jobs run once on every matching node",
}


def load_spec_text(text: str) -> Any:
    """Parse YAML (or JSON, a subset of it) holding exactly one document.

    Raises SpecValidationError (path ``<document>``) when the text is too big,
    is not valid YAML, is empty or holds several documents.
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_SPEC_BYTES:
        _fail(f"the spec is {size} bytes; the limit is {MAX_SPEC_BYTES // 1024} KiB")
    if _flow_depth(text) > MAX_FLOW_DEPTH:
        _fail(f"invalid YAML: brackets nested deeper than {MAX_FLOW_DEPTH} levels")
    try:
        # Empty documents (a stray leading or trailing ---) do not count.
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "invalid YAML"
        _fail(f"invalid YAML at {where}{problem}")
    except yaml.YAMLError as err:
        _fail(f"invalid YAML: {err}")
    except RecursionError:
        _fail("invalid YAML: nested too deeply")
    except (ValueError, TypeError, AttributeError, OverflowError) as err:
        # PyYAML's constructors leak these on bad tagged or implicit scalars
        # (!!int x, 2024-13-45, a 5000-digit int).
        _fail(f"invalid YAML value: {str(err)[:200]}")
    if not docs:
        _fail("the spec is empty")
    if len(docs) > 1:
        _fail(f"found {len(docs)} YAML documents; a spec file holds exactly one")
    return docs[0]


def _flow_depth(text: str) -> int:
    """Deepest nesting of [ and { (brackets inside strings count too: a
    harmless overestimate for real specs)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(text):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(depth - 1, 0)
    return deepest


def _fail(message: str) -> NoReturn:
    raise SpecValidationError([SpecError(DOCUMENT, message)])


def validate_spec(doc: Any, *, canonical: bool = False) -> JobSpec:
    """Validate a parsed spec document and return its typed view.

    ``canonical=True`` reads the canonical form (durations as integer ms,
    sizes as integer bytes): the inverse of :meth:`JobSpec.canonical`.
    Raises SpecValidationError listing every error found.
    """
    ctx = Ctx(canonical=canonical)
    spec = _check_job(ctx, doc)
    if ctx.errors:
        raise SpecValidationError(_in_document_order(ctx.final_errors(), doc))
    return spec


def _in_document_order(errors: list[SpecError], doc: Any) -> list[SpecError]:
    """Sort errors by where their top-level key is in the document (stable).

    Within one top-level section errors stay in the order they were found;
    errors about missing keys and the whole document come last.
    """
    if not isinstance(doc, dict):
        return errors
    position = {key: i for i, key in enumerate(doc) if isinstance(key, str)}

    def rank(error: SpecError) -> int:
        head = re.split(r"[.\[]", error.path, maxsplit=1)[0]
        found = position.get(error.path, position.get(head))
        return len(position) if found is None else found

    return sorted(errors, key=rank)


def validate_task(data: Any, *, canonical: bool = True) -> TaskSpec:
    """Validate one task, by default in canonical form (as peers send it)."""
    ctx = Ctx(canonical=canonical)
    task, _ = check_task(ctx, data, "")
    if ctx.errors:
        raise SpecValidationError(ctx.final_errors())
    return task


def parse_spec(text: str) -> JobSpec:
    """``validate_spec(load_spec_text(text))``."""
    return validate_spec(load_spec_text(text))


def parse_spec_bytes(data: bytes) -> JobSpec:
    """Validate the raw bytes of a spec file (pure: the caller reads the file).

    Raises SpecValidationError if it is not a valid spec, including too big
    (read at most ``MAX_SPEC_BYTES + 1`` bytes to detect that) or not UTF-8.
    """
    if len(data) > MAX_SPEC_BYTES:
        _fail(f"the spec is over the limit of {MAX_SPEC_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        _fail(f"not UTF-8 text (byte {err.start})")
    return parse_spec(text)


# --- the job -------------------------------------------------------------------


def _check_job(ctx: Ctx, doc: Any) -> JobSpec:
    placeholder = JobSpec(name="")
    if not isinstance(doc, dict):
        ctx.error(DOCUMENT, f"a spec must be a mapping (name, type, task, ...), got {show(doc)}")
        return placeholder
    raw_type = doc.get("type")
    kind = "batch" if raw_type is None else ctx.choice(raw_type, "type", JOB_TYPES)
    if kind is None:
        # Unknown type: check every key we know of, require none of them.
        fields = ctx.mapping(doc, "", (*COMMON_KEYS, *ALL_KIND_KEYS))
        kind_keys: tuple[str, ...] = ALL_KIND_KEYS
    else:
        kind_keys = KIND_KEYS[kind]
        fields = ctx.mapping(doc, "", (*COMMON_KEYS, *kind_keys), _not_here(kind))
    assert fields is not None  # doc is a dict

    def wanted(key: str) -> bool:
        """Validate ``key``: it is required for this kind, or present."""
        return key in kind_keys and (kind is not None or fields.has(key))

    spec = JobSpec(
        name=fields.string("name", max_len=63, pattern=NAME, pattern_hint=NAME_HINT),
        type=kind or "batch",
        constraints=_constraints(ctx, fields),
        queue_timeout_ms=fields.opt_duration("queue_timeout", lo=0, hi=MAX_QUEUE_TIMEOUT_MS),
        count=fields.integer("count", 1, lo=1, hi=MAX_COUNT) if wanted("count") else None,
        task=_task(ctx, fields) if wanted("task") else None,
        schedule=_required(fields, "schedule", check_schedule) if wanted("schedule") else None,
        rollout=_rollout(ctx, fields) if wanted("rollout") else None,
        tasks=_required(fields, "tasks", check_dag_tasks) if wanted("tasks") else None,
        cache=fields.boolean("cache", False) if wanted("cache") else None,
        stages=tuple(_required(fields, "stages", check_stages) or ()) if wanted("stages") else None,
        stream=check_stream(ctx, fields) if kind == "stream" else None,
    )
    if spec.type in LONG_RUNNING and spec.task is not None and not _task_has_timeout(fields):
        # A daemon or service runs until stopped: without an explicit timeout an
        # execution is only recycled after the longest allowed one.
        spec = attrs.evolve(spec, task=attrs.evolve(spec.task, timeout_ms=MAX_TIMEOUT_MS))
    if spec.stream is not None and spec.task is not None and spec.stream.mode == "consume":
        run_for = spec.stream.run_for_ms
        if spec.task.timeout_ms < run_for:
            default = "" if _task_has_timeout(fields) else " (it defaults to 30m)"
            ctx.error(
                "task.timeout",
                f"must be at least run_for ({format_duration_ms(run_for)}) so a consumer "
                f"run can finish{default}",
            )
    return spec


def _rollout(ctx: Ctx, fields: Fields) -> Rollout:
    if not fields.has("rollout"):
        return Rollout()
    sub = ctx.mapping(fields.get("rollout"), fields.at("rollout"), ("max_unavailable",))
    if sub is None:
        return Rollout()
    return Rollout(max_unavailable=sub.integer("max_unavailable", 1, lo=1, hi=MAX_COUNT))


def _not_here(kind: str) -> dict[str, str]:
    """Messages for keys that belong to other kinds of job."""
    messages = {}
    for key in ALL_KIND_KEYS:
        if key in KIND_KEYS[kind]:
            continue
        owners = ", ".join(t for t in JOB_TYPES if key in KIND_KEYS[t])
        hint = _NOT_HERE_HINTS.get((key, kind), f"only for type {owners}")
        messages[key] = f"not allowed for type '{kind}' ({hint})"
    return messages


def _required(fields: Fields, key: str, check: Any) -> Any:
    if not fields.has(key):
        fields.missing(key)
        return None
    return check(fields.ctx, fields.get(key), fields.at(key))


def _task(ctx: Ctx, fields: Fields) -> TaskSpec | None:
    if not fields.has("task"):
        fields.missing("task", " (what to run: task: {engine: {type: process, command: [...]}})")
        return None
    task, _ = check_task(ctx, fields.get("task"), "task")
    return task


def _task_has_timeout(fields: Fields) -> bool:
    task = fields.get("task")
    return isinstance(task, dict) and task.get("timeout") is not None


def _constraints(ctx: Ctx, fields: Fields) -> Constraints:
    if not fields.has("constraints"):
        return Constraints()
    sub = ctx.mapping(fields.get("constraints"), fields.at("constraints"), ("labels",))
    if sub is None or not sub.has("labels"):
        return Constraints()
    labels = ctx.str_map(
        sub.get("labels"),
        sub.at("labels"),
        max_items=MAX_LABELS,
        key_pattern=LABEL_KEY,
        key_hint="must be a label name (letters, digits, '.', '_', '/', '-')",
        max_key_len=MAX_ID_LEN,
        max_value_len=MAX_ID_LEN,
    )
    return Constraints(labels=labels or {})
