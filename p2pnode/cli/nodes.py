"""``p2pnode node list``: the peers a node knows; ``node stats``: its counters."""

from __future__ import annotations

from typing import Any

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
    """This node and the peers in its view: health (STATUS alive / suspect /
    gone, LAST_SEEN ago), load (RUNNING of max executions), capacity, version,
    first address, labels and executors.  A peer that said goodbye shows
    "gone" for a while; it is no longer in the view (never asked to run work)."""
    peers = call_node(cli, lambda c: c.call("peers"))
    if cli.output != "table":
        emit_document({"items": peers}, cli.output)
        return
    rows = [
        {
            **p,
            "labels": ",".join(f"{k}={v}" for k, v in sorted(p["labels"].items())) or "-",
            "executors": ",".join(p["executors"]) or "-",
            "node_id": short_id(p["node_id"], cli.wide) + (" (self)" if p["self"] else ""),
            "status": p.get("status", "alive"),
            "last_seen": "-" if p["self"] else _age(p.get("last_seen_s", 0.0)),
            "running": f"{p.get('running', 0)}/{p.get('max_executions', 0)}",
            "memory": _human_bytes(int(p.get("memory", 0))),
            "version": p.get("version") or "-",
            "addr": _table_addr((p.get("addrs") or ["-"])[0], cli.wide),
        }
        for p in peers
    ]
    columns = ["node_id", "status", "last_seen", "running", "cpu", "memory", "version"]
    click.echo(render_table(rows, [*columns, "addr", "labels", "executors"]))


def _age(seconds: float) -> str:
    """``12s ago``, ``3m ago``, ``2h ago``."""
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _human_bytes(n: int) -> str:
    """``23.4GiB``: three significant digits are enough to compare capacity."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1024
    return f"{n}B"


@node.command(name="stats")
@data_dir_option
@output_option
@pass_cli
def node_stats(cli: CliContext) -> None:
    """Counters of this node: frames, drops, and what each peer cost it.

    The table shows the peers with rejected frames (by reason), their score
    and ban, and the askers whose asks expired unused; -o json or yaml prints
    every counter (field names in docs/architecture.md, "Abusive peers", and
    docs/metrics.md)."""
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
    click.echo(_activity_line(stats))
    click.echo("\npeers with rejected frames:")
    click.echo(render_table(rows, ["peer", "rejected", "score", "banned_for_s", "bans"]))
    click.echo("\naskers (their reservations: expired unused, closed, declined over share):")
    asks = [
        {"asker": asker, **counters} for asker, counters in sorted(stats.get("asks", {}).items())
    ]
    columns = ["asker", "expired", "closed", "over_share", "ignored", "backoffs", "ignored_for_s"]
    click.echo(render_table(asks, columns))


def _activity_line(stats: dict[str, Any]) -> str:
    """Frames received, rejections by reason, leases, handovers and executions
    in one line (the counters behind ``/metrics``, docs/metrics.md)."""

    def pairs(counts: dict[str, int]) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"

    executions = stats.get("executions", {})
    finished = {
        f"{executor}/{outcome}": n
        for executor, by_outcome in executions.get("finished", {}).items()
        for outcome, n in by_outcome.items()
    }
    leases = stats.get("leases", {})
    return (
        f"{stats.get('frames_received', 0)} frames received; "
        f"rejected: {pairs(stats.get('rejected_by_reason', {}))}; "
        f"lease renewals {leases.get('renewals', 0)}, lapses {leases.get('lapses', 0)}; "
        f"handovers: {pairs(stats.get('handovers', {}))}; "
        f"executions running {executions.get('running', 0)}, ended: {pairs(finished)}"
    )


def _table_addr(addr: str, wide: bool) -> str:
    """A peer's first address for the table: without its ``/p2p/<peer id>``
    tail (the NODE_ID column names the peer) unless ``--wide``."""
    if wide:
        return addr
    return addr.split("/p2p/", 1)[0]
