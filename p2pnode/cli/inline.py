"""Inline jobs: ``p2pnode job run [--image IMAGE] [flags] -- CMD ARGS...``.

The flags and the command become a batch job spec (docker when ``--image`` is
given, else process), validated like any spec file: every error is listed,
named by the flag it came from (``--timeout: ...``, ``CMD: ...``).

click cannot tell ``job run SPEC`` from ``job run -- CMD`` (after ``--`` every
word is an argument), so :class:`RunCommand` splits the arguments at the first
``--`` itself and keeps the command in ``ctx.meta``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import click
from click.core import ParameterSource

from protocols.spec_defaults import DEFAULT_CPU, DEFAULT_MEMORY
from protocols.spec_errors import SpecError, SpecValidationError

INLINE_COMMAND = "p2pnode.inline_command"
INLINE_SOURCE = "<inline job>"  # how errors name the job (like a spec file's path)
DEFAULT_MEMORY_TEXT = f"{DEFAULT_MEMORY // 2**20}MiB"
# Flags that only make sense for an inline job (a SPEC file says these itself).
INLINE_ONLY = ("image", "count", "label", "env", "cpu", "memory", "name", "network")
_NOT_NAME = re.compile(r"[^a-z0-9._-]+")
_NUMBER = re.compile(r"\d+(\.\d+)?")

# Where a spec error's path came from, longest first.
_FLAG_OF_PATH = (
    ("constraints.labels", "--label"),
    ("task.engine.command", "CMD"),
    ("task.engine.image", "--image"),
    ("task.resources.memory", "--memory"),
    ("task.resources.cpu", "--cpu"),
    ("task.network", "--network"),
    ("task.timeout", "--timeout"),
    ("task.env", "--env"),
    ("count", "--count"),
    ("name", "--name"),
)

F = TypeVar("F", bound=Callable[..., Any])


class RunCommand(click.Command):
    """``job run``: arguments after the first ``--`` are an inline command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[INLINE_COMMAND] = tuple(args[cut + 1 :])
            args = args[:cut]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- CMD [ARGS]...]"]


def inline_command(ctx: click.Context) -> tuple[str, ...] | None:
    """The words after ``--``, or None when there was no ``--``."""
    command = ctx.meta.get(INLINE_COMMAND)
    return None if command is None else tuple(command)


def inline_options(f: F) -> F:
    """The flags of an inline job (``--timeout`` is ``job run``'s own)."""
    options = [
        click.option(
            "--image",
            default=None,
            help="Inline job: run CMD in this Docker image (docker engine).",
        ),
        click.option("--name", default=None, help="Inline job: its name [default: from CMD]."),
        click.option(
            "--count",
            type=int,
            default=1,
            show_default=True,
            help="Inline job: how many executions (slots) to run.",
        ),
        click.option(
            "--label",
            "labels",
            multiple=True,
            metavar="K=V",
            help="Inline job: run only on nodes with this label (repeatable).",
        ),
        click.option(
            "--env",
            "env",
            multiple=True,
            metavar="K=V",
            help="Inline job: an environment variable of the task (repeatable).",
        ),
        click.option(
            "--cpu",
            type=float,
            default=DEFAULT_CPU,
            show_default=True,
            help="Inline job: CPUs the task needs.",
        ),
        click.option(
            "--memory",
            default=DEFAULT_MEMORY_TEXT,
            show_default=True,
            help="Inline job: memory the task needs.",
        ),
        click.option(
            "--network",
            type=click.Choice(["none", "host"]),
            default=None,
            help="Inline job: the task's network [default: none].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@attrs.frozen
class InlineJob:
    """What the command line said about an inline job."""

    command: tuple[str, ...]
    image: str | None = None
    name: str | None = None
    count: int = 1
    labels: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: str | None = None
    cpu: float = DEFAULT_CPU
    memory: str = DEFAULT_MEMORY_TEXT
    network: str | None = None


def inline_spec(job: InlineJob) -> dict[str, Any]:
    """The spec document of an inline job, validated.

    Raises SpecValidationError listing every error, named by its flag.
    """
    from protocols.spec import validate_spec  # here: `job list` never loads the validator

    errors: list[SpecError] = []
    engine: dict[str, Any]
    if job.image is not None:
        engine = {"type": "docker", "image": job.image}
        if job.command:
            engine["command"] = list(job.command)
    else:
        engine = {"type": "process", "command": list(job.command)}
        if not job.command:
            errors.append(SpecError("CMD", "required: the command to run, after -- (or --image)"))
            engine["command"] = ["true"]  # the other errors are still found
    task: dict[str, Any] = {
        "engine": engine,
        "resources": {"cpu": job.cpu, "memory": job.memory},
    }
    env = _pairs(job.env, "--env", errors)
    if env:
        task["env"] = env
    if job.timeout is not None:
        # A bare number is seconds, as in a spec file (the spec wants 30s as text).
        text = job.timeout.strip()
        task["timeout"] = float(text) if _NUMBER.fullmatch(text) else job.timeout
    if job.network is not None:
        task["network"] = job.network
    doc: dict[str, Any] = {
        "name": job.name if job.name is not None else default_name(job),
        "type": "batch",
        "count": job.count,
        "task": task,
    }
    labels = _pairs(job.labels, "--label", errors)
    if labels:
        doc["constraints"] = {"labels": labels}
    try:
        validate_spec(doc)
    except SpecValidationError as invalid:
        errors += [SpecError(_flag_path(e.path), e.message) for e in invalid.errors]
    if errors:
        raise SpecValidationError(errors)
    return doc


def inline_spec_text(job: InlineJob) -> str:
    """``inline_spec`` as the YAML text submitted (what ``job describe`` shows)."""
    import yaml

    return yaml.safe_dump(inline_spec(job), sort_keys=False)


def default_name(job: InlineJob) -> str:
    """The command's program name (``/usr/bin/python3`` -> ``python3``), else
    the image's (``ghcr.io/org/tool:1.2`` -> ``tool``)."""
    if job.command:
        base = job.command[0].rstrip("/").rpartition("/")[2]
    elif job.image:
        base = job.image.partition("@")[0].rpartition("/")[2].partition(":")[0]
    else:
        base = ""
    slug = _NOT_NAME.sub("-", base.lower()).strip("-._")[:63].rstrip("-._")
    return slug or "inline"


def given_inline_flags(ctx: click.Context) -> list[str]:
    """The inline-only flags given on the command line."""
    return [
        "--" + name
        for name in INLINE_ONLY
        if ctx.get_parameter_source(name if name not in ("label",) else "labels")
        == ParameterSource.COMMANDLINE
    ]


def _pairs(items: Sequence[str], flag: str, errors: list[SpecError]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(SpecError(flag, f"must look like KEY=value, got {item!r}"))
            continue
        pairs[key] = value
    return pairs


def _flag_path(path: str) -> str:
    """``task.env.P2PNODE_X`` -> ``--env P2PNODE_X``; other paths as they are."""
    for prefix, flag in _FLAG_OF_PATH:
        if path == prefix:
            return flag
        if path.startswith((prefix + ".", prefix + "[")):
            rest = path[len(prefix) :]
            return flag + rest if rest.startswith("[") else f"{flag} {rest[1:]}"
    return path


__all__ = [
    "INLINE_SOURCE",
    "InlineJob",
    "RunCommand",
    "given_inline_flags",
    "inline_command",
    "inline_options",
    "inline_spec",
    "inline_spec_text",
]
