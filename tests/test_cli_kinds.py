"""``p2pnode job update|suspend|resume|runs`` (and ``describe`` of the newer kinds)
against a real ``serve`` process: exit codes, error messages, output shapes.

Exit codes follow the other commands: 0 ok, 1 invalid spec (every error
listed), 2 usage or unreadable file, 3 no node, 5 the node refused (unknown
job, a job of a kind that cannot do it).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pnode.cli import cli
from tests.realnet import ServeNode, cluster, run_cli_parallel

SIM_TASK = {"engine": {"type": "sim", "duration": "100ms"}, "timeout": "10s"}
CRON = {"name": "tick", "type": "cron", "schedule": {"every": "1s"}, "task": SIM_TASK}
BATCH = {"name": "once", "task": SIM_TASK}
DAEMON = {
    "name": "agent",
    "type": "daemon",
    "task": {"engine": {"type": "sim", "duration": "5m"}, "timeout": "10m"},
}

CRON_V2 = """\
name: tock
type: cron
schedule: {every: 1s, overlap: skip}
task:
  engine: {type: sim, duration: 100ms}
  timeout: 10s
"""
SERVICE_SPEC = """\
name: agent
type: service
task:
  engine: {type: sim, duration: 5m}
  timeout: 10m
"""
# Three independent errors: all of them must be listed.
INVALID_SPEC = """\
name: Tick Tock
type: cron
schedule: {every: soon}
task:
  engine: {type: sim}
  timeout: forever
"""
INVALID_PATHS = ("name:", "schedule.every:", "task.timeout:")


def test_job_help_lists_the_new_commands() -> None:
    result = CliRunner().invoke(cli, ["job", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("update", "suspend", "resume", "runs"):
        assert f"\n  {command} " in result.output, result.output


def test_update_without_its_spec_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["job", "update", "j-1"])
    assert result.exit_code == 2
    assert "Missing argument 'SPEC'" in result.output


def _submit(node: ServeNode, spec: dict[str, Any]) -> str:
    return str(node.control("submit", spec=spec)["job_id"])


def _squeezed(text: str) -> list[str]:
    """Lines with their runs of spaces collapsed (table alignment is not asserted)."""
    return [" ".join(line.split()) for line in text.splitlines()]


@pytest.mark.slow
def test_update_suspend_resume_runs_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "v2.yaml").write_text(CRON_V2)
    (tmp_path / "service.yaml").write_text(SERVICE_SPEC)
    (tmp_path / "invalid.yaml").write_text(INVALID_SPEC)
    with cluster(tmp_path) as c:
        node = c.add("a", executors="sim")
        node.wait_ready()
        batch, cron, daemon = _submit(node, BATCH), _submit(node, CRON), _submit(node, DAEMON)
        c.wait_job(node, daemon, lambda v: v["live"] == 1, timeout=30, what="its daemon running")

        refusals = run_cli_parallel(
            [
                node.cli_args("job", "update", "j-unknown", tmp_path / "v2.yaml"),
                node.cli_args("job", "update", batch, tmp_path / "v2.yaml"),
                node.cli_args("job", "update", daemon, tmp_path / "service.yaml"),
                node.cli_args("job", "suspend", batch),
                node.cli_args("job", "suspend", daemon),
                node.cli_args("job", "resume", "j-unknown"),
                node.cli_args("job", "runs", batch),
                node.cli_args("job", "runs", "j-unknown", "-o", "json"),
            ],
            timeout=120,
        )
        expected = [
            "no such job: j-unknown",  # (since issue 14; was "... not owned by this node")
            f"{batch} is a batch job; only daemon, service and cron jobs change",
            f"{daemon} is a daemon job; an update cannot make it 'service'",
            f"{batch} is a batch job",
            f"{daemon} is a daemon job; only cron jobs suspend",
            "no such job: j-unknown",
            f"{batch} is not a cron job owned by this node",
            "no such job: j-unknown",
        ]
        for result, message in zip(refusals, expected, strict=True):
            assert result.returncode == 5, result.explain()
            assert result.stderr.startswith(("p2pnode: job ", "p2pnode: no such job: ")), (
                result.explain()
            )
            assert message in result.stderr, (
                result.explain()
            )
            assert len(result.stderr.splitlines()) == 1, result.explain()
            assert result.stdout == "", result.explain()

        invalid, invalid_json, unreadable, no_node = run_cli_parallel(
            [
                node.cli_args("job", "update", cron, tmp_path / "invalid.yaml"),
                node.cli_args("job", "update", cron, tmp_path / "invalid.yaml", "-o", "json"),
                node.cli_args("job", "update", cron, tmp_path / "missing.yaml"),
                ["--data-dir", tmp_path / "no-node-here", "job", "runs", cron],
            ],
            timeout=120,
        )
        # Invalid spec: exit 1, every error, the node not asked (still version 1).
        assert invalid.returncode == 1, invalid.explain()
        for path in INVALID_PATHS:
            assert any(line.startswith(path) for line in invalid.stdout.splitlines()), (
                invalid.explain()
            )
        assert invalid.stderr.startswith("3 errors in "), invalid.explain()
        assert invalid_json.returncode == 1, invalid_json.explain()
        document = invalid_json.json()
        assert document["ok"] is False
        assert sorted(e["path"] for e in document["errors"]) == [
            "name",
            "schedule.every",
            "task.timeout",
        ]
        assert unreadable.returncode == 2, unreadable.explain()
        assert "cannot read" in unreadable.stderr, unreadable.explain()
        assert no_node.returncode == 3, no_node.explain()
        assert node.describe(cron)["version"] == 1

        # Success: update, then suspend and resume (in that order).
        updated = node.cli("job", "update", cron, tmp_path / "v2.yaml", "-o", "json")
        assert updated.returncode == 0, updated.explain()
        assert updated.json() == {"job_id": cron, "version": 2}
        suspended = node.cli("job", "suspend", cron, "-o", "json")
        assert suspended.returncode == 0, suspended.explain()
        assert suspended.json()["state"] == "suspended"
        assert suspended.json()["schedule"]["suspended"] is True
        c.wait_until(
            lambda: any(
                r["reason"] == "the schedule is suspended"
                for r in node.control("runs", job_id=cron)
            ),
            timeout=10,
            what="a scheduled time skipped while suspended",
        )
        resumed = node.cli("job", "resume", cron)
        assert resumed.returncode == 0, resumed.explain()
        assert resumed.stdout == f"{cron} scheduled\n"

        c.wait_until(
            lambda: any(
                r["outcome"] == "completed" and r["version"] == 2
                for r in node.control("runs", job_id=cron)
            ),
            timeout=30,
            what="a completed run of version 2",
        )
        runs_json, runs_yaml, runs_table, cron_table, daemon_table = run_cli_parallel(
            [
                node.cli_args("job", "runs", cron, "-o", "json"),
                node.cli_args("--output", "yaml", "job", "runs", cron),
                node.cli_args("job", "runs", cron),
                node.cli_args("job", "describe", cron),
                node.cli_args("job", "describe", daemon),
            ]
        )
        assert runs_json.returncode == 0, runs_json.explain()
        rows = runs_json.json()
        assert isinstance(rows, list) and rows, runs_json.explain()
        for row in rows:
            assert {
                "run_id",
                "scheduled",
                "scheduled_ms",
                "version",
                "outcome",
                "reason",
                "executions",
            } <= set(row), row
            when = datetime.datetime.fromisoformat(row["scheduled"])
            assert when.utcoffset() == datetime.timedelta(0), row
            assert round(when.timestamp() * 1000) == row["scheduled_ms"], row
        done = [r for r in rows if r["outcome"] == "completed" and r["version"] == 2]
        assert done and done[0]["run_id"] == f"{cron}@{done[0]['scheduled_ms']}"
        assert [e["node"] for e in done[0]["executions"]] == [node.node_id]
        skipped = [r for r in rows if r["outcome"] == "skipped"]
        assert all(r["run_id"] == "" and r["executions"] == [] for r in skipped), rows
        assert any(r["reason"] == "the schedule is suspended" for r in skipped), rows

        assert runs_yaml.returncode == 0, runs_yaml.explain()
        assert runs_yaml.stdout.startswith("- run_id: "), runs_yaml.explain()

        assert runs_table.returncode == 0, runs_table.explain()
        header, *lines = runs_table.stdout.splitlines()
        assert header.split() == ["SCHEDULED", "VERSION", "OUTCOME", "EXECUTION", "NODE", "REASON"]
        line = next(x for x in lines if x.startswith(done[0]["scheduled"]))
        assert "completed" in line and done[0]["executions"][0]["execution_id"] in line
        assert node.node_id[-12:] in line and node.node_id not in line  # short ids (issue 14)

        assert cron_table.returncode == 0, cron_table.explain()
        lines = _squeezed(cron_table.stdout)
        assert f"job: {cron} (cron 'tock')" in lines, cron_table.explain()
        for text in ("version: 2", "state: scheduled", "schedule: active", "overlap: skip"):
            assert text in lines, cron_table.explain()
        assert any(x.startswith("next time: 20") and x.endswith("Z") for x in lines), lines
        assert f"runs: p2pnode job runs {cron}" in lines, cron_table.explain()

        assert daemon_table.returncode == 0, daemon_table.explain()
        lines = _squeezed(daemon_table.stdout)
        for text in (f"job: {daemon} (daemon 'agent')", "live: 1 of 1 desired", "version: 1"):
            assert text in lines, daemon_table.explain()
        assert "SLOT STATE NODE VERSION EPOCH REASON" in lines, daemon_table.explain()
        assert f"0 running {node.node_id[-12:]} 1 1" in lines, daemon_table.explain()
