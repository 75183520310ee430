"""Strings a task chooses (its output file names, its logs) never reach a
terminal raw: an escape sequence in a file name could rewrite the screen or
hide what was fetched.  Tables escape them always; logs when on a terminal
(a pty here), and stay exact when piped; json keeps the exact names."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from tests.realnet import cli_argv, cluster

pytestmark = pytest.mark.slow

EVIL_SPEC = r"""
name: evil
task:
  engine:
    type: process
    command: [sh, -c, 'printf x > "$P2PNODE_OUTPUTS/$(printf "red\033[31mname")";
      printf y > "$P2PNODE_OUTPUTS/$(printf "two\nlines")";
      printf "title\033]0;pwned\007 \033[2Jdone\n"']
  timeout: 30s
"""


def _on_a_terminal(args: list[str | os.PathLike[str]]) -> str:
    """What ``p2pnode ARGS`` writes to a terminal (stdout and stderr, a pty)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cli_argv(*args), stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        proc.wait(timeout=60)
    return out.decode(errors="replace")


def test_task_chosen_names_and_logs_are_escaped_on_terminals(tmp_path: Path) -> None:
    spec = tmp_path / "evil.yaml"
    spec.write_text(EVIL_SPEC)
    with cluster(tmp_path) as c:
        node = c.add("a", executors="process")
        node.wait_ready()
        ran = node.cli("job", "run", spec, "--wait", "--timeout", "60")
        assert ran.returncode == 0, ran.explain()
        job_id = ran.stdout.split()[0]

        listed = node.cli("job", "get", job_id, "--output-dir", tmp_path / "out")
        assert listed.returncode == 0, listed.explain()
        assert "\x1b" not in listed.stdout, listed.explain()
        out = tmp_path / "out"
        assert sorted(listed.stdout.splitlines()) == [
            f"{out}/red\\x1b[31mname",
            f"{out}/two\\x0alines",
        ]
        exact = node.cli("-o", "json", "job", "get", job_id, "--output-dir", tmp_path / "o2")
        names = sorted(Path(f).name for f in exact.json()["files"])
        assert names == ["red\x1b[31mname", "two\nlines"], exact.explain()
        assert (tmp_path / "out" / "red\x1b[31mname").read_text() == "x"

        piped = node.cli("job", "logs", job_id)  # exactly as the task wrote it
        assert piped.stdout == "title\x1b]0;pwned\x07 \x1b[2Jdone\n", piped.explain()
        shown = _on_a_terminal(node.cli_args("job", "logs", job_id))
        assert "\x1b" not in shown and "\x07" not in shown, repr(shown)
        assert "title\\x1b]0;pwned\\x07 \\x1b[2Jdone" in shown, repr(shown)

        described = _on_a_terminal(node.cli_args("job", "describe", job_id))
        assert "\x1b" not in described and job_id in described, repr(described)
