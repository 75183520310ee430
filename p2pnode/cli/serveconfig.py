"""Where ``serve``'s flags come from: the command line, ``P2PNODE_<FLAG>``
environment variables, a ``--config FILE`` (TOML), or the defaults, in that
order of precedence.

click resolves command line > environment > ``ctx.default_map`` > default by
itself; the config file fills ``default_map``.  Its keys are the flag names
(``lease-ttl = 30`` or ``lease_ttl = 30``); every key is checked before the
node starts and every unknown key or bad value is listed (exit 2), the way
``job validate`` lists a spec's errors.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from p2pnode.cli.context import EXIT_USAGE, fail
from p2pnode.cli.output import plural
from protocols.units import UnitError, parse_size

ENV_PREFIX = "P2PNODE_"
CONFIG_ENV = "P2PNODE_CONFIG"
MAX_CONFIG_BYTES = 64 * 1024
# Flags a config file cannot set: itself, test-only fault injection, and how
# this one invocation prints (-o is every command's, not the node's setting).
NOT_CONFIGURABLE = frozenset(
    {"config", "fault_drop", "fault_loss", "fault_reset", "fault_seed", "help", "output"}
)

MIN_MEMORY = 2**20  # the smallest memory a task may ask for
MAX_MEMORY = 2**50

F = TypeVar("F", bound=Callable[..., Any])


class EnvOption(click.Option):
    """An option with an environment variable, shown in ``--help``; an error
    about its value names the variable only when the value came from it."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        hint = " / ".join(f"'{opt}'" for opt in self.opts)
        source = ctx.get_parameter_source(self.name or "") if ctx is not None else None
        if source == ParameterSource.ENVIRONMENT:
            hint += f" (from ${self.envvar})"
        return hint


def env_name(flag: str) -> str:
    """``lease-ttl`` -> ``P2PNODE_LEASE_TTL``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def check_memory(text: str) -> int:
    """``--memory``'s value in bytes; ValueError (UnitError) when bad."""
    size = parse_size(text)
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ValueError(f"{text!r} is out of range: must be 1MiB to 1PiB")
    return size


def config_option(f: F) -> F:
    return click.option(
        "--config",
        cls=EnvOption,
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=CONFIG_ENV,
        show_envvar=True,
        is_eager=True,  # read before the flags it gives defaults to
        expose_value=False,
        callback=_load_config,
        metavar="FILE",
        help="TOML file of serve flags (keys are flag names: lease-ttl = 30, "
        'listen = ["/ip4/0.0.0.0/tcp/4021"]).  Precedence: command line, then '
        "P2PNODE_<FLAG> environment variables, then this file, then the defaults.",
    )(f)


def _load_config(ctx: click.Context, _param: click.Parameter, path: Path | None) -> None:
    if path is None or ctx.resilient_parsing:
        return
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        fail(f"cannot read config file {path}: {exc.strerror or exc}")
    if len(data) > MAX_CONFIG_BYTES:
        fail(f"config file {path} is over the limit of {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        fail(f"config file {path}: not UTF-8 text (byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        fail(f"config file {path}: invalid TOML: {exc}")
    defaults, errors = config_defaults(ctx, table)
    if errors:
        for error in errors:
            click.echo(f"{path}: {error}", err=True)
        fail(f"{plural(len(errors), 'error')} in config file {path}", code=EXIT_USAGE)
    root = ctx.find_root()
    if root is not ctx and root.get_parameter_source("data_dir") not in (
        None,
        ParameterSource.DEFAULT,
    ):
        defaults.pop("data_dir", None)  # `p2pnode --data-dir D serve` or P2PNODE_DATA_DIR win
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def config_defaults(ctx: click.Context, table: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The ``default_map`` a config table gives, and its errors (``key: message``)."""
    params = {
        p.name: p
        for p in ctx.command.params
        if isinstance(p, click.Option) and p.name and p.name not in NOT_CONFIGURABLE
    }
    defaults: dict[str, Any] = {}
    errors: list[str] = []
    for key, raw in table.items():
        name = key.replace("-", "_")
        param = params.get(name)
        if param is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in params))
            errors.append(f"{key}: unknown key (serve's flags: {known})")
            continue
        if name in defaults:
            errors.append(f"{key}: given twice (as {name} and {name.replace('_', '-')})")
            continue
        try:
            value = _config_value(name, param, raw)
            param.type_cast_value(ctx, value)  # the checks the flag itself gets
            if name == "memory":
                check_memory(value)
        except click.BadParameter as exc:
            errors.append(f"{key}: {exc.message}")
            continue
        except (ValueError, UnitError) as exc:
            errors.append(f"{key}: {exc}")
            continue
        defaults[name] = value
    return defaults, errors


def _config_value(name: str, param: click.Option, raw: Any) -> Any:
    """A TOML value in the form the flag takes on the command line."""
    if param.multiple:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"must be a string or a list of strings, got {_show(raw)}")
        return items
    if param.is_flag:
        if not isinstance(raw, bool):
            raise ValueError(f"must be true or false, got {_show(raw)}")
        return raw
    if name == "labels" and isinstance(raw, dict):  # labels = {zone = "b"}
        if not all(isinstance(v, str | int | float) for v in raw.values()):
            raise ValueError("label values must be strings or numbers")
        return ",".join(f"{k}={v}" for k, v in raw.items())
    if name == "executors" and isinstance(raw, list):  # executors = ["process", "docker"]
        if not all(isinstance(i, str) for i in raw):
            raise ValueError(f"must be a list of executor names, got {_show(raw)}")
        return ",".join(raw)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"must be a string or a number, got {_show(raw)}")
    return raw


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


__all__ = [
    "CONFIG_ENV",
    "EnvOption",
    "check_memory",
    "config_defaults",
    "config_option",
    "env_name",
]
