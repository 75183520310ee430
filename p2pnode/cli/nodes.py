"""``p2pnode node list``: the peers a node knows."""

from __future__ import annotations

import click

from p2pnode.cli.common import call_node, data_dir_option, output_option
from p2pnode.cli.context import CliContext, pass_cli
from p2pnode.cli.output import emit_document, render_table


@click.group()
def node() -> None:
    """Inspect the network as a node sees it."""


@node.command(name="list")
@data_dir_option
@output_option
@pass_cli
def list_nodes(cli: CliContext) -> None:
    """This node and the peers in its view (labels, capacity, executors)."""
    peers = call_node(cli, lambda c: c.call("peers"))
    if cli.output != "table":
        emit_document({"items": peers}, cli.output)
        return
    rows = [
        {
            **p,
            "labels": ",".join(f"{k}={v}" for k, v in sorted(p["labels"].items())),
            "executors": ",".join(p["executors"]) or "-",
            "node_id": p["node_id"] + (" (self)" if p["self"] else ""),
        }
        for p in peers
    ]
    click.echo(render_table(rows, ["node_id", "labels", "cpu", "executors", "compute"]))
