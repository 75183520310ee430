"""``p2pnode node list``: the peers a node knows; ``node stats``: its counters."""

from __future__ import annotations

import click

from p2pnode.cli.common import call_node, data_dir_option, output_option, wide_option
from p2pnode.cli.context import CliContext, pass_cli
from p2pnode.cli.output import emit_document, render_table, short_id


@click.group()
def node() -> None:
    """Inspect the network as a node sees it."""


@node.command(name="list")
@data_dir_option
@output_option
@wide_option
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
            "node_id": short_id(p["node_id"], cli.wide) + (" (self)" if p["self"] else ""),
        }
        for p in peers
    ]
    click.echo(render_table(rows, ["node_id", "labels", "cpu", "executors", "compute"]))


@node.command(name="stats")
@data_dir_option
@output_option
@pass_cli
def node_stats(cli: CliContext) -> None:
    """Counters of this node: frames, drops, and what each peer cost it.

    The table shows the peers with rejected frames (by reason), their score
    and ban, and the askers whose asks expired unused; -o json or yaml prints
    every counter (field names in docs/architecture.md, "Abusive peers")."""
    stats = call_node(cli, lambda c: c.call("stats"))
    if cli.output != "table":
        emit_document(stats, cli.output)
        return
    peers = stats.get("peers", {})
    rows = [
        {
            "peer": peer,
            "rejected": ",".join(f"{k}={v}" for k, v in sorted(rejected.items())),
            "score": peers["score_by_peer"].get(peer, 0),
            "banned_for_s": peers["banned"].get(peer, "-"),
            "bans": peers["bans_by_peer"].get(peer, 0),
        }
        for peer, rejected in sorted(peers.get("rejected_by_peer", {}).items())
    ]
    click.echo(f"node {stats['node_id']}: {stats['frames_sent']} frames sent")
    click.echo("\npeers with rejected frames:")
    click.echo(render_table(rows, ["peer", "rejected", "score", "banned_for_s", "bans"]))
    click.echo("\naskers (their reservations: expired unused, closed, declined over share):")
    asks = [
        {"asker": asker, **counters} for asker, counters in sorted(stats.get("asks", {}).items())
    ]
    columns = ["asker", "expired", "closed", "over_share", "ignored", "backoffs", "ignored_for_s"]
    click.echo(render_table(asks, columns))
