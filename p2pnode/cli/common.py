"""Options and helpers shared by the commands that talk to a node."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click

from p2pnode.cli.context import OUTPUT_FORMATS, CliContext, fail
from p2pnode.client import AsyncClient, Client
from p2pnode.errors import ControlError, NodeNotRunning

EXIT_NO_NODE = 3  # no node serves the data dir
EXIT_NOT_COMPLETED = 4  # the job failed or was stopped
EXIT_REFUSED = 5  # the node refused the request (unknown job, ...)
EXIT_UNKNOWN = 6  # the connection was lost and retries ran out: the outcome is unknown

F = TypeVar("F", bound=Callable[..., Any])


def _override(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Let ``--data-dir`` / ``--output`` be given after the command too
    (``p2pnode serve --data-dir D``), overriding the root option."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None:
            updated = attrs.evolve(ctx.find_object(CliContext) or CliContext(), **{field: value})
            node: click.Context | None = ctx
            while node is not None:  # a subcommand's context copied its parent's obj
                node.obj = updated
                node = node.parent
        return value

    return callback


def data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_override("data_dir"),
        help="The node's data directory (same as the root option).",
    )(f)


def output_option(f: F) -> F:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(OUTPUT_FORMATS),
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_override("output"),
        help="table, json or yaml (same as the root option).",
    )(f)


def wide_option(f: F) -> F:
    return click.option(
        "--wide",
        is_flag=True,
        default=None,
        expose_value=False,
        is_eager=True,
        # Absent is False, not None: only a given --wide may override the root's.
        callback=lambda ctx, param, value: _override("wide")(ctx, param, value or None),
        help="Show whole peer ids in tables (same as the root option).",
    )(f)


class BoundedFloat(click.ParamType[float]):
    """A finite float in [low, high] (``low_open``: strictly above ``low``).

    click's FloatRange lets nan (and inf, unless bounded) through: every
    comparison with nan is false.
    """

    name = "float"

    def __init__(self, low: float, high: float, *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above_low = number > self.low if self.low_open else number >= self.low
        if not (math.isfinite(number) and above_low and number <= self.high):
            low = f"above {self.low:g}" if self.low_open else f"at least {self.low:g}"
            self.fail(
                f"{value!r} is out of range: must be {low} and at most {self.high:.15g}", param, ctx
            )
        return number


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} must look like key=value")
        labels[key] = value
    return labels


T = TypeVar("T")


class NodeCalls(AsyncClient):
    """What ``call_node`` hands a command: an ``AsyncClient`` (``await
    c.call(op, ...)``, ``async for item in c.stream(op, ...)``), whose
    ``call`` is also understood by ``call_node`` without being awaited.

    A command that is one request, ``call_node(cli, lambda c: c.call(op,
    ...))``, is then answered over a blocking socket, with no event loop: trio
    takes longer to import than the whole request (``job list`` stays well
    under half a second).  Awaiting the call instead runs it in the command's
    event loop, as usual.
    """

    def call(self, op: str, **args: Any) -> OneCall:  # type: ignore[override]
        return OneCall(self, op, args)


class OneCall:
    """A request not sent yet: awaited, it is sent on the running loop;
    returned to ``call_node``, it is sent over a blocking socket."""

    def __init__(self, client: NodeCalls, op: str, args: dict[str, Any]) -> None:
        self.client, self.op, self.args = client, op, args

    def __await__(self) -> Generator[Any, None, Any]:
        return AsyncClient.call(self.client, self.op, **self.args).__await__()


def call_node(cli: CliContext, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn`` against the node serving ``cli.data_dir``; map errors to exit codes.

    ``fn(client)`` (``client`` a ``NodeCalls``; typed ``Any`` so that commands
    annotated with ``ControlClient`` or ``AsyncClient`` type-check too) is a
    coroutine, run under trio, or a ``client.call(...)``, sent without an
    event loop."""
    client = NodeCalls(cli.data_dir)
    try:
        work = fn(client)
        if isinstance(work, OneCall):
            result: T = Client(cli.data_dir).call(work.op, **work.args)
            return result
        return run_async(work)
    except NodeNotRunning as exc:
        fail(str(exc), code=EXIT_NO_NODE)
    except ControlError as exc:
        for err in exc.errors:
            click.echo(f"{err['path']}: {err['message']}", err=True)
        fail(str(exc), code=1 if exc.errors else EXIT_REFUSED)
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def run_async(work: Awaitable[T]) -> T:
    import trio  # here: the one-request commands never pay for its import

    async def run() -> T:
        return await work

    return trio.run(run)
