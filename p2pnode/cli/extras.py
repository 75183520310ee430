"""``p2pnode version``, ``p2pnode completion bash|zsh|fish`` and ``p2pnode http-token``."""

from __future__ import annotations

from typing import Any

import click

from p2pnode.cli.common import EXIT_NO_NODE, data_dir_option, output_option
from p2pnode.cli.context import CliContext, fail, pass_cli
from p2pnode.cli.output import emit_document
from p2pnode.client import Client
from p2pnode.errors import ControlError
from p2pnode.version import package_version

SHELLS = ("bash", "zsh", "fish")


@click.command()
@data_dir_option
@output_option
@pass_cli
def version(cli: CliContext) -> None:
    """The client's version, and that of the node serving --data-dir if one runs.

    With --output json/yaml: {client, node: {node_id, version} or null}.
    """
    node: dict[str, Any] | None = None
    problem = ""
    try:
        answer = Client(cli.data_dir).ping()
        node = {"node_id": answer["node_id"], "version": answer.get("version", "unknown")}
    except ControlError as exc:  # NodeNotRunning included: the client's version still shows
        problem = str(exc)
    if cli.output != "table":
        emit_document({"client": package_version(), "node": node}, cli.output)
        return
    click.echo(f"client: {package_version()}")
    if node is not None:
        click.echo(f"node:   {node['version']} ({node['node_id']})")
    else:
        click.echo(f"node:   - ({problem})")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@output_option  # accepted like everywhere; the script is shell code whatever it says
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash: eval "$(p2pnode completion bash)"   (e.g. in ~/.bashrc)
    zsh:  eval "$(p2pnode completion zsh)"    (e.g. in ~/.zshrc)
    fish: p2pnode completion fish > ~/.config/fish/completions/p2pnode.fish
    """
    from click.shell_completion import get_completion_class

    from p2pnode.cli import cli

    completer = get_completion_class(shell)
    assert completer is not None  # every name in SHELLS is one of click's
    click.echo(completer(cli, {}, "p2pnode", "_P2PNODE_COMPLETE").source())


@click.command(name="http-token")
@data_dir_option
@output_option
@click.option(
    "--url", "show_url", is_flag=True,
    help="Print the dashboard's login address instead (needs the node running with --http-listen).",
)  # fmt: skip
@click.option(
    "--rotate", is_flag=True,
    help="Replace the token with a new one first: the running node refuses the old one "
    "(and the browser cookies holding it) from its next request.",
)  # fmt: skip
@pass_cli
def http_token(cli: CliContext, show_url: bool, rotate: bool) -> None:
    """Print the token of the HTTP API of the node serving --data-dir.

    It is created (0600, in the data dir) if there is none yet.  Send it as
    `Authorization: Bearer TOKEN`; a browser logs in once at the address
    --url prints (http://HOST:PORT/?token=TOKEN).  With --output json/yaml:
    {token, url: the login address or null}.  --rotate makes a new token (the
    running node takes it at once; log in again with the new --url).
    """
    from p2pnode.web.auth import load_or_create_token, login_url, rotate_token

    try:
        token = rotate_token(cli.data_dir) if rotate else load_or_create_token(cli.data_dir)
    except OSError as exc:  # TokenFileError included: one line, the file's problem
        fail(f"cannot use the HTTP token: {exc}")
    url: str | None = None
    if show_url or cli.output != "table":
        try:
            base = Client(cli.data_dir).ping().get("http")
        except ControlError as exc:
            if show_url:
                fail(f"no login address: {exc}", code=EXIT_NO_NODE)
            base = None
        if base:
            url = login_url(base, token)
        elif show_url:
            fail(
                "no login address: the node serving this data dir has no HTTP API"
                " (start it with serve --http-listen HOST:PORT)",
                code=EXIT_NO_NODE,
            )
    if cli.output != "table":
        emit_document({"token": token, "url": url}, cli.output)
        return
    click.echo(url if show_url else token)
