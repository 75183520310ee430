"""Every way `serve` can be misused ends with one readable line and a meaningful
exit code, never a traceback (and never a second node sharing a busy port)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realnet import cluster, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "zone"], "must look like key=value"),
        (["--bootstrap", "/ip4/127.0.0.1/tcp/1"], "must end in /p2p/<peer id>"),
        (["--executors", "podman"], "unknown executor"),
        (["--memory", "lots"], "must be a size"),
        (["--listen", "/ip9/nope"], "bad --listen address"),
        (["--p2p-mode", "inbox"], "inbox mode was removed"),
    ],
)
def test_bad_serve_flags_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("serve", "--data-dir", tmp_path / "n", *args)
    assert result.returncode == 2, result.explain()
    assert result.stderr.startswith("p2pnode: ") and message in result.stderr, result.explain()
    assert len(result.stderr.splitlines()) == 1, result.explain()


def test_busy_data_dir_and_busy_port_are_refused(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        first = c.add("a", listen="/ip4/127.0.0.1/tcp/0")
        first.wait_ready()
        port = first.addrs[0].split("/tcp/")[1].split("/")[0]
        same_dir = run_cli("serve", "--data-dir", first.data_dir, timeout=60)
        assert same_dir.returncode == 1, same_dir.explain()
        assert "in use by another process" in same_dir.stderr, same_dir.explain()
        same_port = run_cli(
            "serve", "--data-dir", tmp_path / "b", "--listen", f"/ip4/127.0.0.1/tcp/{port}",
            timeout=60,
        )
        assert same_port.returncode == 1, same_port.explain()
        assert "Address already in use" in same_port.stderr, same_port.explain()
        assert "Traceback" not in same_dir.stderr + same_port.stderr
