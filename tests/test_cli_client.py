"""The CLI on the client library, over a real ``p2pnode serve`` process:
``job run --wait --timeout``, short peer ids and ``--wide``, ``version``,
``completion``, ``-o`` everywhere, reasons in human units, and the quick
path of one-request commands (no trio, no py-libp2p imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from p2pnode.cli import cli
from p2pnode.version import package_version
from tests.realnet import PYTHON, ServeNode, cluster, run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "specs" / "hello.yaml"
LONG_SPEC = """\
name: long
task:
  engine: {type: process, command: [sh, -c, "sleep 120"]}
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 5m
"""
NEEDS_DOCKER = """\
name: nowhere
task:
  engine: {type: docker, image: "alpine:3"}
  resources: {cpu: 0.5, memory: 256MiB}
  timeout: 1m
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeNode]:
    with cluster(tmp_path_factory.mktemp("cli")) as c:
        serve = c.add("a")  # the process executor only
        serve.wait_ready()
        yield serve


def test_run_wait_timeout_exits_4_and_leaves_the_job_and_the_node(
    node: ServeNode, tmp_path: Path
) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG_SPEC)
    result = node.cli("job", "run", spec, "--wait", "--timeout", "2", "-o", "json")
    assert result.returncode == 4, result.explain()
    view = result.json()
    assert view["state"] not in ("completed", "failed", "stopped"), result.explain()
    assert "after 2s; not stopped" in result.stderr, result.explain()
    # The job goes on, on a node still serving.
    assert node.running and node.control("ping")["node_id"] == node.node_id
    assert node.describe(view["job_id"])["state"] not in ("failed", "stopped")
    node.control("cancel", job_id=view["job_id"])


def test_timeout_without_wait_on_a_spec_file_is_a_usage_error(node: ServeNode) -> None:
    before = node.control("jobs")
    result = node.cli("job", "run", HELLO, "--timeout", "2")
    assert result.returncode == 2, result.explain()
    assert "--timeout needs --wait" in result.stderr and result.stdout == ""
    assert node.control("jobs") == before  # nothing submitted


def test_tables_show_12_character_peer_ids_unless_wide(node: ServeNode) -> None:
    short = node.node_id[-12:]
    table = node.cli("node", "list")
    assert table.returncode == 0, table.explain()
    assert f"{short} (self)" in table.stdout and node.node_id not in table.stdout
    for args in (("node", "list", "--wide"), ("--wide", "node", "list")):
        wide = node.cli(*args)
        assert f"{node.node_id} (self)" in wide.stdout, wide.explain()
    listed = node.cli("node", "list", "-o", "json")
    assert [p["node_id"] for p in listed.json()["items"]] == [node.node_id]  # json: whole


def test_version_reports_the_client_and_the_running_node(node: ServeNode, tmp_path: Path) -> None:
    text = node.cli("version")
    assert text.returncode == 0, text.explain()
    assert f"client: {package_version()}" in text.stdout
    assert f"node:   {package_version()} ({node.node_id})" in text.stdout
    doc = node.cli("version", "-o", "json").json()
    assert doc == {
        "client": package_version(),
        "node": {"node_id": node.node_id, "version": package_version()},
    }
    alone = run_cli("--data-dir", tmp_path / "none", "-o", "json", "version")
    assert alone.returncode == 0 and alone.json() == {"client": package_version(), "node": None}


def test_no_match_reason_in_human_units_hints_at_executors(
    node: ServeNode, tmp_path: Path
) -> None:
    spec = tmp_path / "nowhere.yaml"
    spec.write_text(NEEDS_DOCKER)
    result = node.cli("job", "run", spec, "--wait", "-o", "json", timeout=120)
    assert result.returncode == 4, result.explain()
    reason = result.json()["reason"]
    assert "no node matches" in reason and "memory 256MiB" in reason, reason
    assert "--executors docker" in reason, reason


# --- the quick path ------------------------------------------------------------------------


HEAVY = ("trio", "libp2p", "rich", "protocols.spec", "p2pnode.node", "p2pnode.cli.serve")

# Runs the CLI in this interpreter, then prints which heavy modules it imported.
PROBE = """\
import sys
{plant}
from p2pnode.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def imported_by(argv: list[str], plant: str = "") -> dict[str, object]:
    code = "import json\n" + PROBE.format(plant=plant, heavy=HEAVY)
    env = {k: v for k, v in os.environ.items() if k != "P2PNODE_DATA_DIR"}
    done = subprocess.run(
        [PYTHON, "-c", code, *argv], capture_output=True, text=True, timeout=60, env=env
    )
    result: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return result


def test_one_request_commands_import_neither_trio_nor_libp2p(node: ServeNode) -> None:
    for argv in (["job", "list", "-o", "json"], ["node", "list"], ["version"]):
        probe = imported_by(["--data-dir", str(node.data_dir), *argv])
        assert probe == {"code": 0, "heavy": []}, (argv, probe)
    # The probe sees an import that sneaks in (a planted one).
    planted = imported_by(["--data-dir", str(node.data_dir), "job", "list"], plant="import trio")
    assert planted == {"code": 0, "heavy": ["trio"]}
    # A command that waits runs in trio, as before.
    waited = imported_by(["--data-dir", str(node.data_dir), "job", "run", str(HELLO), "--wait"])
    assert waited["code"] == 0 and "trio" in waited["heavy"], waited


# --- offline -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "explain"])
def test_output_option_on_offline_commands_too(command: str) -> None:
    for args in (["job", command, str(HELLO), "-o", "json"], ["-o", "yaml", "job", command]):
        if args[-1] == command:
            args = [*args, str(HELLO)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        text = result.stdout
        doc = json.loads(text) if "json" in args else __import__("yaml").safe_load(text)
        assert doc["ok"] is True and doc["digest"].startswith("sha256:")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.explain()
    assert "_P2PNODE_COMPLETE" in result.stdout


def test_completion_completes_commands_and_rejects_other_shells() -> None:
    env = {**os.environ, "_P2PNODE_COMPLETE": "bash_complete", "COMP_WORDS": "p2pnode jo"}
    env["COMP_CWORD"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "p2pnode"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0 and "plain,job" in done.stdout.split(), done
    bad = run_cli("completion", "powershell")
    assert bad.returncode == 2 and "powershell" in bad.stderr


def test_every_command_accepts_the_output_option() -> None:
    ctx = click.Context(cli)

    def leaves(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from leaves(sub, (*path, name))
        else:
            options = {o for p in command.params for o in getattr(p, "opts", [])}
            if not {"-o", "--output"} <= options:
                yield path

    assert list(leaves(cli, ())) == []
    # The walk finds a command without it (a planted one).
    cli.add_command(click.Command("planted", callback=lambda: None))
    try:
        assert list(leaves(cli, ())) == [("planted",)]
    finally:
        cli.commands.pop("planted")
