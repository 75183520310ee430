"""`serve`'s configuration (issue 14): flags from the command line, from
P2PNODE_<FLAG> environment variables and from a TOML --config file, in that
order of precedence; the documented default port; and the addresses a node
listening on 0.0.0.0 advertises (its interfaces', never 0.0.0.0)."""

from __future__ import annotations

import importlib
import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from p2pnode.cli import cli
from p2pnode.cli.serve import DEFAULT_PORT, serve
from p2pnode.cli.serveconfig import config_defaults, env_name
from p2pnode.net.addrs import expand_unspecified, host_ips
from tests.realnet import Cluster, ServeNode, cli_argv, cluster, run_cli

GIB = 2**30
# The module (p2pnode.cli's attribute `serve` is the command).
serve_module = importlib.import_module("p2pnode.cli.serve")


# --- pure parts ----------------------------------------------------------------------


def test_an_unspecified_listener_becomes_every_interface_address_loopback_last() -> None:
    addrs = ["/ip4/0.0.0.0/tcp/4021/p2p/P", "/ip6/::/tcp/4021/p2p/P", "/ip4/10.0.0.9/tcp/1/p2p/P"]
    ips = ["127.0.0.1", "192.0.2.2", "::1", "fe80::1", "fd00::2", "10.1.1.1", "192.0.2.2"]
    assert expand_unspecified(addrs, ips) == [
        "/ip4/192.0.2.2/tcp/4021/p2p/P",
        "/ip4/10.1.1.1/tcp/4021/p2p/P",
        "/ip4/127.0.0.1/tcp/4021/p2p/P",
        "/ip6/fd00::2/tcp/4021/p2p/P",  # fe80:: (link-local) needs a zone: left out
        "/ip6/::1/tcp/4021/p2p/P",
        "/ip4/10.0.0.9/tcp/1/p2p/P",  # a specific listener stays as it is
    ]


def test_every_serve_flag_has_its_environment_variable_shown_in_help() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    flags = [p for p in serve.params if isinstance(p, click.Option) and not p.hidden]
    for param in flags:
        flag = param.opts[0]
        if flag in ("--data-dir", "--help", "--output"):
            continue  # the root options' (`p2pnode --help`): P2PNODE_DATA_DIR; -o prints
        assert param.envvar == env_name(flag), flag
        assert f"env var: {env_name(flag)}" in result.output, flag
    assert f"/ip4/127.0.0.1/tcp/{DEFAULT_PORT}" in result.output


def _defaults(table: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    with click.Context(serve) as ctx:
        return config_defaults(ctx, table)


def test_a_config_table_maps_onto_the_flags_and_lists_every_error() -> None:
    good, errors = _defaults(
        {
            "lease-ttl": 30,
            "max_executions": 2,
            "labels": {"zone": "b", "tier": 1},
            "executors": ["process", "docker"],
            "listen": "/ip4/0.0.0.0/tcp/4021",
            "no-compute": True,
            "memory": "4GiB",
        }
    )
    assert errors == []
    assert good == {
        "lease_ttl": 30,
        "max_executions": 2,
        "labels": "zone=b,tier=1",
        "executors": "process,docker",
        "listen": ["/ip4/0.0.0.0/tcp/4021"],
        "no_compute": True,
        "memory": "4GiB",
    }
    _, errors = _defaults(
        {
            "lease-ttl": "soon",
            "listen": 5,
            "bogus": 1,
            "fault-drop": ["hello"],  # test-only fault injection: not a config key
            "no-compute": "yes",
            "memory": "0",
            "max-executions": 0,
            "cpu": True,
        }
    )
    assert [e.split(":")[0] for e in errors] == [
        "lease-ttl",
        "listen",
        "bogus",
        "fault-drop",
        "no-compute",
        "memory",
        "max-executions",
        "cpu",
    ], errors
    assert "'soon' is not a number" in errors[0]
    assert "unknown key" in errors[2] and "lease-ttl" in errors[2]


def test_a_bad_config_file_is_every_error_then_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('lease-ttl = "soon"\nbogus = 1\nmemory = "lots"\n')
    result = run_cli("serve", "--data-dir", tmp_path / "n", "--config", config)
    assert result.returncode == 2, result.explain()
    assert result.stderr.splitlines() == [
        f"{config}: lease-ttl: 'soon' is not a number",
        f"{config}: bogus: unknown key (serve's flags: bootstrap, cpu, data-dir, executors, "
        "http-listen, labels, lease-ttl, listen, max-executions, memory, no-compute, p2p-mode, "
        "sandbox, sandbox-ro)",
        f"{config}: memory: must be a size like 256MiB, 1GiB, 512M or a whole number of "
        "bytes, got 'lots'",
        f"p2pnode: 3 errors in config file {config}",
    ], result.explain()
    assert not (tmp_path / "n").exists()  # nothing started


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read config file"),
        ("listen = [", "invalid TOML"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_an_unreadable_config_file_is_one_line(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    config = tmp_path / "node.toml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    elif content is not None:
        config.write_text(content)
    result = run_cli("serve", "--data-dir", tmp_path / "n", "--config", config)
    assert result.returncode == 2, result.explain()
    assert result.stderr.startswith("p2pnode: ") and message in result.stderr, result.explain()
    assert len(result.stderr.splitlines()) == 1, result.explain()


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "P2PNODE_LEASE_TTL": "soon", "P2PNODE_MAX_EXECUTIONS": "3"}
    env.pop("P2PNODE_DATA_DIR", None)
    done = subprocess.run(
        cli_argv("serve", "--data-dir", tmp_path / "n"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "p2pnode: Invalid value for '--lease-ttl' (from $P2PNODE_LEASE_TTL): 'soon' is not a "
        "number (see p2pnode serve --help)\n"
    )


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The NodeSettings `serve` would start a node with (the node is not started)."""
    seen: list[Any] = []

    async def record(
        settings: Any, faults: Any, notice: str = "", http_listen: str | None = None
    ) -> None:
        seen.append(settings)

    monkeypatch.setattr(serve_module, "_serve", record)
    monkeypatch.delenv("P2PNODE_DATA_DIR", raising=False)
    return seen


def test_the_data_dir_from_the_root_option_or_its_variable_beats_the_config_file(
    tmp_path: Path, started: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'data-dir = "{tmp_path / "from-file"}"\nlisten = "/ip4/127.0.0.1/tcp/0"\n')
    runner = CliRunner()
    for args, env, expected in [
        (["serve", "--config", str(config)], {}, "from-file"),
        (["--data-dir", str(tmp_path / "root"), "serve", "--config", str(config)], {}, "root"),
        (["serve", "--config", str(config)], {"P2PNODE_DATA_DIR": str(tmp_path / "env")}, "env"),
        (["serve", "--config", str(config), "--data-dir", str(tmp_path / "flag")], {}, "flag"),
        (["serve", "--data-dir", str(tmp_path / "first"), "--config", str(config)], {}, "first"),
    ]:
        started.clear()
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, (args, result.output)
        assert [s.data_dir.name for s in started] == [expected], args
        assert started[0].listen == ("/ip4/127.0.0.1/tcp/0",)


# --- real serve processes ------------------------------------------------------------


def _serve(c: Cluster, name: str, args: list[str], env: dict[str, str] | None = None) -> ServeNode:
    node = ServeNode(name, c.root / name, c.log_dir, args)
    c.nodes[name] = node
    node.start(env=env)
    return node


def _self_row(node: ServeNode) -> dict[str, Any]:
    return next(p for p in node.control("peers") if p["node_id"] == node.node_id)


@pytest.mark.slow
def test_command_line_beats_environment_beats_config_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'listen = "/ip4/127.0.0.1/tcp/0"\n'
        'labels = {zone = "from-file"}\n'
        "cpu = 3\n"
        'memory = "3GiB"\n'
        "lease_ttl = 2\n"
    )
    env = {"P2PNODE_CPU": "2", "P2PNODE_LABELS": "zone=from-env", "P2PNODE_CONFIG": str(config)}
    with cluster(tmp_path) as c:
        node = _serve(c, "a", ["--cpu", "1.5"], env=env)
        node.wait_ready()
        row = _self_row(node)
        assert row["cpu"] == 1.5  # command line > environment > file
        assert row["labels"] == {"zone": "from-env"}  # environment > file
        assert row["memory"] == 3 * GIB  # file > default
        assert node.addrs[0].startswith("/ip4/127.0.0.1/tcp/")
        assert f"/tcp/{DEFAULT_PORT}/" not in node.addrs[0]  # the file's listen, not the default


@pytest.mark.slow
def test_on_0000_a_node_advertises_its_interfaces_and_is_dialled_on_one(tmp_path: Path) -> None:
    routable = [
        ip
        for ip in host_ips()
        if ipaddress.ip_address(ip).version == 4 and not ipaddress.ip_address(ip).is_loopback
    ]
    config = tmp_path / "node.toml"
    config.write_text('listen = ["/ip4/0.0.0.0/tcp/0"]\nlease-ttl = 2\n')
    with cluster(tmp_path) as c:
        a = _serve(c, "a", ["--config", str(config)])
        a.wait_ready()
        addrs = a.addrs
        assert not any("/0.0.0.0/" in addr for addr in addrs), addrs
        port = a.tcp_port
        expected = [f"/ip4/{ip}/tcp/{port}/p2p/{a.node_id}" for ip in routable]
        assert addrs == [*expected, f"/ip4/127.0.0.1/tcp/{port}/p2p/{a.node_id}"], addrs
        assert a.control("ping")["addrs"] == addrs
        assert _self_row(a)["addrs"] == addrs  # what its hello tells peers
        # Another node joins through the first advertised address (routable if any).
        b = _serve(
            c,
            "b",
            ["--listen", "/ip4/127.0.0.1/tcp/0", "--lease-ttl", "2", "--bootstrap", addrs[0]],
        )
        b.wait_ready()
        c.wait_connected([a, b])
        assert next(p for p in b.control("peers") if p["node_id"] == a.node_id)["addrs"] == addrs


@pytest.mark.slow
def test_the_default_port_and_a_free_one_for_a_second_node(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        # Started together: both may probe the port before either binds it.
        first, second = _serve(c, "first", []), _serve(c, "second", [])
        first.wait_ready()
        second.wait_ready()
        warning = (
            f"p2pnode: warning: the default port {DEFAULT_PORT} is taken; listening on a free "
            "port (choose one with --listen)"
        )
        assert first.tcp_port != second.tcp_port, c.explain()  # never one port shared
        warned = 0
        for node in (first, second):
            assert node.addrs[0].startswith("/ip4/127.0.0.1/")  # the default stays local
            if warning in node.stderr_path.read_text():
                warned += 1
            else:
                assert node.tcp_port == DEFAULT_PORT, node.explain()
        assert warned >= 1, c.explain()
        # A port given explicitly (here from the environment) is never swapped.
        taken = f"/ip4/127.0.0.1/tcp/{first.tcp_port}"
        third = _serve(c, "third", [], env={"P2PNODE_LISTEN": taken})
        assert third.wait_exit() == 1, third.explain()
        assert "Address already in use" in third.stderr_path.read_text(), third.explain()
