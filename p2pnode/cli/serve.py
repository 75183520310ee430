"""``p2pnode serve``: run this host's peer until SIGTERM / Ctrl-C."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import click
import trio
from click.core import ParameterSource

from p2pnode.cli.common import BoundedFloat, data_dir_option, output_option, parse_labels
from p2pnode.cli.context import (
    EXIT_BAD_KEY,
    EXIT_CANNOT_START,
    EXIT_NO_ENGINE,
    CliContext,
    fail,
    pass_cli,
)
from p2pnode.cli.serveconfig import EnvOption, check_memory, config_option, env_name
from p2pnode.testing import Faults
from p2pnode.web.address import parse_listen
from protocols.config import Timings
from protocols.units import UnitError

if TYPE_CHECKING:
    from p2pnode.node import NodeSettings

ADDRS_FILE = "addrs"

# The documented default: this host only, on a port that survives restarts
# (bootstrap addresses of other nodes stay valid).  Tests and the tour run
# several nodes on one host: when the port is taken, a free one is used.
DEFAULT_PORT = 4021
DEFAULT_LISTEN = f"/ip4/127.0.0.1/tcp/{DEFAULT_PORT}"
FREE_PORT_LISTEN = "/ip4/127.0.0.1/tcp/0"

SERVE_EPILOG = f"""\b
Every flag can also come from a P2PNODE_<FLAG> environment variable (shown
above) or from --config FILE (TOML, keys = flag names, e.g. lease-ttl = 30);
the command line wins over the environment, which wins over the file.
Default listen address: {DEFAULT_LISTEN}.
"""

# Ranges of the capacity flags: values outside are usage errors (exit 2).
MAX_CPU = 4096
MAX_EXECUTIONS = 10_000
MAX_LEASE_TTL = 3600.0


@click.command(epilog=SERVE_EPILOG)
@config_option
@data_dir_option
@output_option  # accepted like everywhere; serve prints logs only
@click.option(
    "--listen",
    multiple=True,
    default=(DEFAULT_LISTEN,),
    show_default=True,
    envvar=env_name("listen"),
    show_envvar=True,
    cls=EnvOption,
    help="Multiaddr to listen on (repeatable; several in the variable: space-separated).  "
    f"The default port {DEFAULT_PORT}, when taken (a second node on this host), "
    "becomes a free port, with a warning.  /ip4/0.0.0.0/tcp/PORT accepts other hosts "
    "and advertises this host's interface addresses.",
)
@click.option(
    "--bootstrap",
    multiple=True,
    envvar=env_name("bootstrap"),
    show_envvar=True,
    cls=EnvOption,
    help="Multiaddr (…/p2p/<peer id>) of a peer to join through (repeatable).",
)
@click.option(
    "--labels",
    default="",
    envvar=env_name("labels"),
    show_envvar=True,
    cls=EnvOption,
    help="Labels of this node: k=v,k2=v2.",
)
@click.option(
    "--executors",
    default="",
    envvar=env_name("executors"),
    show_envvar=True,
    cls=EnvOption,
    help="Executors to enable (process,docker,sim,wasm); none by default, "
    "since they run commands that arrive from the network.",
)
@click.option(
    "--no-compute",
    is_flag=True,
    envvar=env_name("no-compute"),
    show_envvar=True,
    cls=EnvOption,
    help="Own jobs but never run any.",
)
@click.option(
    "--cpu",
    type=BoundedFloat(0, MAX_CPU, low_open=True),
    default=None,
    envvar=env_name("cpu"),
    show_envvar=True,
    cls=EnvOption,
    help=f"CPU capacity offered, above 0 and at most {MAX_CPU} [default: all cores].",
)
@click.option(
    "--memory",
    default=None,
    envvar=env_name("memory"),
    show_envvar=True,
    cls=EnvOption,
    help="Memory offered, 1MiB to 1PiB, e.g. 4GiB [default: all].",
)
@click.option(
    "--max-executions",
    type=click.IntRange(1, MAX_EXECUTIONS),
    default=4,
    show_default=True,
    envvar=env_name("max-executions"),
    show_envvar=True,
    cls=EnvOption,
    help=f"Executions run at once, 1 to {MAX_EXECUTIONS}.",
)
@click.option(
    "--lease-ttl",
    type=BoundedFloat(0.5, MAX_LEASE_TTL),
    default=Timings().lease_ttl,
    show_default=True,
    envvar=env_name("lease-ttl"),
    show_envvar=True,
    cls=EnvOption,
    help="Seconds a lease lives without renewal (the owner re-grants after ttl + grace), "
    f"0.5 to {MAX_LEASE_TTL:g}.",
)
@click.option(
    "--p2p-mode",
    type=click.Choice(["stream", "inbox"]),
    default="stream",
    show_default=True,
    envvar=env_name("p2p-mode"),
    show_envvar=True,
    cls=EnvOption,
    help="Point-to-point path: direct streams (inbox was removed: any peer could read it).",
)
@click.option(
    "--sandbox",
    type=click.Choice(["bwrap", "none"]),
    default="bwrap",
    show_default=True,
    envvar=env_name("sandbox"),
    show_envvar=True,
    cls=EnvOption,
    help="Process executor isolation: bubblewrap, or none (tasks can read this "
    "node's key and database: trusted peers only).",
)
@click.option(
    "--sandbox-ro",
    multiple=True,
    type=click.Path(exists=True),
    metavar="PATH",
    envvar=env_name("sandbox-ro"),
    show_envvar=True,
    cls=EnvOption,
    help="Extra host path sandboxed tasks may read (repeatable).",
)
@click.option(
    "--http-listen",
    default=None,
    metavar="HOST:PORT",
    envvar=env_name("http-listen"),
    show_envvar=True,
    cls=EnvOption,
    help="Serve the HTTP API and dashboard here (off by default; port 0: any free "
    "port); requests need the token `p2pnode http-token` prints.",
)
@click.option(
    "--fault-drop",
    multiple=True,
    hidden=True,  # fault injection for the real-network tests, not for users
    help="Drop incoming frames of this message type (repeatable).",
)
@click.option(
    "--fault-loss",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    hidden=True,  # fault injection: a lossy link, as the simulator's --loss
    help="Drop this share of all incoming protocol frames, at random.",
)
@click.option(
    "--fault-reset",
    type=click.FloatRange(0.0, min_open=False),
    default=0.0,
    hidden=True,  # fault injection: connections cut, as a broken path would
    help="Cut the connection to one connected peer about every this many seconds "
    "(0: never).",
)
@click.option(
    "--fault-seed",
    type=int,
    default=0,
    hidden=True,
    help="Seed of --fault-loss's and --fault-reset's draws (a run's faults repeat with it).",
)
@pass_cli
@click.pass_context
def serve(
    ctx: click.Context,
    cli: CliContext,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    labels: str,
    executors: str,
    no_compute: bool,
    cpu: float | None,
    memory: str | None,
    max_executions: int,
    lease_ttl: float,
    p2p_mode: str,
    sandbox: str,
    sandbox_ro: tuple[str, ...],
    http_listen: str | None,
    fault_drop: tuple[str, ...],
    fault_loss: float,
    fault_reset: float,
    fault_seed: int,
) -> None:
    """Run a node: owner of the jobs submitted to it, and a compute node.

    Prints its listen multiaddrs (…/p2p/<peer id>) on stdout once ready and
    writes them to DATA_DIR/addrs.  SIGTERM or Ctrl-C stops it cleanly.
    """
    # Imported here: py-libp2p takes ~1 s to import, and client commands never need it.
    import multiaddr

    from p2pnode.node import NodeSettings, bootstrap_peer_id

    enabled = tuple(e for e in executors.replace(" ", "").split(",") if e)
    try:
        extra = {}
        if cpu is not None:
            extra["cpu"] = cpu
        if memory is not None:
            try:
                extra["memory"] = check_memory(memory)
            except ValueError as exc:
                raise ValueError(f"--memory {exc}") from None
        settings = NodeSettings(
            data_dir=cli.data_dir,
            listen=listen,
            bootstrap=bootstrap,
            labels=parse_labels(labels),
            executors=enabled,
            compute=not no_compute,
            max_executions=max_executions,
            timings=Timings(lease_ttl=lease_ttl, lease_grace=max(0.5, lease_ttl / 5)),
            p2p_mode=p2p_mode,
            sandbox="none" if sandbox == "none" else "bwrap",
            sandbox_ro_paths=sandbox_ro,
            **extra,  # type: ignore[arg-type]
        )
        for addr in bootstrap:
            bootstrap_peer_id(addr)
        for addr in listen:
            try:
                multiaddr.Multiaddr(addr)
            except Exception as exc:  # multiaddr raises its own error types
                raise ValueError(f"bad --listen address {addr!r}: {exc}") from None
            if not addr.startswith(("/ip4/", "/ip6/")):
                # py-libp2p 0.8.1 listens on every interface for a /dns address.
                raise ValueError(f"bad --listen address {addr!r}: must start with /ip4/ or /ip6/")
        if http_listen is not None:
            parse_listen(http_listen)
    except (ValueError, UnitError) as exc:
        fail(str(exc))
    if sandbox == "none":
        click.echo(
            "warning: --sandbox none: tasks from the network run unsandboxed, as this "
            "node's uid, and can read its key and database",
            err=True,
        )
    try:
        notice = ""
        if ctx.get_parameter_source("listen") == ParameterSource.DEFAULT:
            listen_default, notice = _default_listen()
            settings = attrs.evolve(settings, listen=listen_default)
        faults = Faults(
            drop=frozenset(fault_drop),
            loss=fault_loss,
            loss_seed=fault_seed,
            reset_every=fault_reset,
        )
        trio.run(_serve, settings, faults, notice, http_listen)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        failure = _start_failure(exc)
        if failure is None:
            raise
        fail(*failure)


def _default_listen() -> tuple[tuple[str, ...], str]:
    """The default listen address, or a free port when another process (a
    second node on this host) has the default one; and the warning to print
    once the node has started (a node that cannot start says one line only).

    py-libp2p binds with SO_REUSEPORT, so two nodes of one user starting at
    once would both pass a probe and then *share* the port.  A lock file per
    user and port, held while this process lives, makes the choice exclusive
    between p2pnode processes; the probe catches any other program.
    """
    from p2pnode.errors import ListenError
    from p2pnode.node import ensure_ports_free

    lock = Path(tempfile.gettempdir()) / f"p2pnode-{os.getuid()}-tcp-{DEFAULT_PORT}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return _free_port_listen()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ensure_ports_free((DEFAULT_LISTEN,))
    except (BlockingIOError, ListenError) as exc:
        os.close(fd)
        if isinstance(exc, ListenError) and exc.errno != errno.EADDRINUSE:
            raise
        return _free_port_listen()
    _HELD_LOCKS.append(fd)  # released when the process ends, however it ends
    return (DEFAULT_LISTEN,), ""


_HELD_LOCKS: list[int] = []


def _free_port_listen() -> tuple[tuple[str, ...], str]:
    warning = (
        f"p2pnode: warning: the default port {DEFAULT_PORT} is taken; listening on a "
        "free port (choose one with --listen)"
    )
    return (FREE_PORT_LISTEN,), warning


def _start_failure(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for a node that could not start, or None
    for anything else (a bug: its traceback is shown)."""
    from p2pnode.executors.common import ExecutorError
    from p2pnode.executors.sandbox import SandboxUnavailable
    from p2pnode.identity import KeyFileError
    from p2pnode.store import StoreError

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # nurseries wrap what escaped from them
    message = " ".join(str(exc).split())
    if isinstance(exc, SandboxUnavailable):
        return f"cannot start the node: {message}", EXIT_NO_ENGINE
    if isinstance(exc, KeyFileError):
        return f"unusable node key: {message}", EXIT_BAD_KEY
    if isinstance(exc, ExecutorError):
        return f"an enabled executor cannot run here: {message}", EXIT_NO_ENGINE
    if isinstance(exc, (OSError, StoreError)):
        return f"cannot start the node: {message}", EXIT_CANNOT_START
    return None


async def _serve(
    settings: NodeSettings, faults: Faults, notice: str = "", http_listen: str | None = None
) -> None:
    from p2pnode.control import serve_control
    from p2pnode.node import open_node
    from p2pnode.web import serve_http

    async with open_node(settings, _faults=faults) as node, trio.open_nursery() as nursery:
        await nursery.start(serve_control, node)
        if http_listen is not None:
            url = await nursery.start(serve_http, node, http_listen)
            click.echo(f"http: {url}/", err=True)
        if notice:
            click.echo(notice, err=True)
        addrs = node.listen_addrs()
        _write_addrs(settings.data_dir, addrs)
        for addr in addrs:
            click.echo(addr)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    (settings.data_dir / ADDRS_FILE).unlink(missing_ok=True)


def _write_addrs(data_dir: Path, addrs: list[str]) -> None:
    tmp = data_dir / f".{ADDRS_FILE}.tmp"
    tmp.write_text("".join(f"{a}\n" for a in addrs))
    tmp.replace(data_dir / ADDRS_FILE)
