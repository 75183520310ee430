"""Inline jobs (issue 14): `job run [--image IMAGE] [flags] -- CMD ARGS` makes a
batch spec, validated like a spec file (errors named by flag), run on a real
node with the process or docker engine; and a Bacalhau job file run for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from p2pnode.cli import cli
from p2pnode.cli.inline import InlineJob, inline_spec
from protocols.spec import SpecValidationError
from tests.realnet import cluster

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bacalhau-hello.yaml"


# --- the spec an inline job makes ------------------------------------------------------


def test_a_process_job_from_flags() -> None:
    job = InlineJob(
        command=("/usr/bin/python3", "-c", "print(1)"),
        count=2,
        labels=("zone=b", "disk=ssd"),
        env=("A=1", "B=x=y"),
        timeout="90",
        cpu=0.5,
        memory="64MiB",
        network="host",
    )
    assert inline_spec(job) == {
        "name": "python3",
        "type": "batch",
        "count": 2,
        "task": {
            "engine": {"type": "process", "command": ["/usr/bin/python3", "-c", "print(1)"]},
            "resources": {"cpu": 0.5, "memory": "64MiB"},
            "env": {"A": "1", "B": "x=y"},
            "timeout": 90.0,  # a bare number: seconds
            "network": "host",
        },
        "constraints": {"labels": {"zone": "b", "disk": "ssd"}},
    }


def test_a_docker_job_from_flags_keeps_the_image_command_when_none_is_given() -> None:
    spec = inline_spec(InlineJob(command=(), image="ghcr.io/org/tool:1.2", timeout="5m"))
    assert spec["name"] == "tool"
    assert spec["task"]["engine"] == {"type": "docker", "image": "ghcr.io/org/tool:1.2"}
    assert spec["task"]["timeout"] == "5m"
    with_command = inline_spec(InlineJob(command=("echo", "hi"), image="busybox", name="greet"))
    assert with_command["name"] == "greet"
    assert with_command["task"]["engine"]["command"] == ["echo", "hi"]


def test_every_error_of_an_inline_job_is_named_by_its_flag() -> None:
    job = InlineJob(
        command=(),
        count=0,
        labels=("zone",),
        env=("NOEQUALS", "P2PNODE_X=1"),
        timeout="soon",
        cpu=-1,
        memory="1",
        name="Bad Name",
    )
    with pytest.raises(SpecValidationError) as caught:
        inline_spec(job)
    assert [str(e) for e in caught.value.errors] == [
        "CMD: required: the command to run, after -- (or --image)",
        "--env: must look like KEY=value, got 'NOEQUALS'",
        "--label: must look like KEY=value, got 'zone'",
        "--name: must be 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or "
        "digit, got 'Bad Name'",
        "--count: must be between 1 and 10000, got 0",
        "--env P2PNODE_X: names starting with P2PNODE_ are reserved",
        "--cpu: must be above 0 and at most 1024, got -1",
        "--memory: must be at least 1MiB, got 1B",
        "--timeout: must be a duration like 30s, 1.5m, 1h30m or 500ms (units d, h, m, s, ms), "
        "got 'soon'",
    ]


# --- the command line, before any node is reached ----------------------------------------


def _run(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "no-node"), "job", "run", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing SPEC (a spec file, - for stdin) or an inline command (-- CMD ARGS)"),
        (["spec.yaml", "--", "echo"], "give SPEC or an inline command (-- CMD ARGS), not both"),
        (["spec.yaml", "--image", "busybox"], "give SPEC or an inline command"),
        (["spec.yaml", "--count", "2", "--env", "A=1"], "--count, --env: only for inline jobs"),
        (["spec.yaml", "--timeout", "2"], "--timeout needs --wait"),
    ],
)
def test_run_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def test_an_invalid_inline_job_lists_its_errors_and_reaches_no_node(tmp_path: Path) -> None:
    result = _run(tmp_path, "--count", "0", "--timeout", "soon", "--", "echo", "hi")
    assert result.exit_code == 1, result.output
    assert "--count: must be between 1 and 10000, got 0" in result.output
    assert "--timeout: must be a duration" in result.output
    assert "2 errors in <inline job>" in result.output


def test_the_help_shows_the_inline_form() -> None:
    result = CliRunner().invoke(cli, ["job", "run", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: cli job run [OPTIONS] [SPEC] [-- CMD [ARGS]...]" in result.output


# --- real nodes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_an_inline_process_job_runs_on_a_labelled_node_and_its_outputs_are_fetched(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as c:
        node = c.add("a", executors="process", extra=["--labels", "zone=b"])
        node.wait_ready()
        out = tmp_path / "out"
        script = 'echo "$GREETING $P2PNODE_SLOT" > "$P2PNODE_OUTPUTS/g.txt"'
        ran = node.cli(
            *("-o", "json", "job", "run", "--count", "2", "--label", "zone=b"),
            *("--env", "GREETING=hello", "--output-dir", out, "--", "sh", "-c", script),
        )
        assert ran.returncode == 0, ran.explain()
        view = ran.json()
        assert view["state"] == "completed" and view["name"] == "sh", ran.explain()
        assert sorted(view["outputs"]["files"]) == [str(out / s / "g.txt") for s in ("0", "1")]
        assert (out / "0" / "g.txt").read_text() == "hello 0\n"
        assert (out / "1" / "g.txt").read_text() == "hello 1\n"

        # --timeout is the task's: a command that outlives it fails (exit 4).
        slow = node.cli("job", "run", "--wait", "--timeout", "1", "--", "sleep", "60")
        assert slow.returncode == 4, slow.explain()
        job_id = slow.stdout.split()[0]
        assert node.describe(job_id)["state"] == "failed"
        # A label no node has: the job waits, with a reason, and is not run anywhere.
        queued = node.cli("-o", "json", "job", "run", "--label", "zone=nowhere", "--", "true")
        assert queued.returncode == 0, queued.explain()
        waiting = node.describe(queued.json()["job_id"])
        assert waiting["state"] == "queued", waiting
        assert all(not s["executions"] for s in waiting["slots"]), waiting


@pytest.mark.slow
@pytest.mark.docker
def test_inline_docker_and_bacalhau_jobs_run_on_a_real_engine(
    tmp_path: Path, busybox_image: str
) -> None:
    bacalhau = yaml.safe_load(EXAMPLE.read_text())
    bacalhau["Tasks"][0]["Engine"]["Params"]["Image"] = busybox_image  # no registry here
    bacalhau["Count"] = 1
    job_file = tmp_path / "bacalhau.yaml"
    job_file.write_text(yaml.safe_dump(bacalhau))
    with cluster(tmp_path) as c:
        node = c.add("a", executors="docker", extra=["--labels", "zone=b"])
        node.wait_ready()
        out = tmp_path / "out"
        ran = node.cli(
            *("job", "run", "--image", busybox_image, "--env", "WHO=docker"),
            *("--output-dir", out, "--", "sh", "-c", 'echo "hi $WHO" > /outputs/d.txt'),
            timeout=120,
        )
        assert ran.returncode == 0, ran.explain()
        assert (out / "d.txt").read_text() == "hi docker\n"
        assert f"outputs in {out}:" in ran.stdout, ran.explain()

        from_bacalhau = node.cli(
            "job", "run", job_file, "--output-dir", tmp_path / "b-out", timeout=120
        )
        assert from_bacalhau.returncode == 0, from_bacalhau.explain()
        assert (tmp_path / "b-out" / "hello.txt").read_text() == "hello from bacalhau\n"
        job_id = from_bacalhau.stdout.split()[0]
        assert node.describe(job_id)["name"] == "hello-bacalhau"
