"""``p2pnode job validate`` / ``job explain`` and the root options."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result

from p2pnode.cli import cli
from p2pnode.cli.context import CliContext, pass_cli
from p2pnode.specfile import load_spec_file
from protocols.spec import spec_digest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
HELLO = SPECS / "hello.yaml"
INVALID = SPECS / "invalid.yaml"
VALID_SAMPLES = sorted(p for p in SPECS.glob("*.yaml") if p.name != "invalid.yaml")


def run(*args: str | Path, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


# --- validate ------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID_SAMPLES, ids=lambda p: p.name)
def test_valid_samples_print_ok(path: Path) -> None:
    result = run("job", "validate", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK\n"
    assert result.stderr == ""


def test_invalid_spec_lists_every_error() -> None:
    result = run("job", "validate", INVALID)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) >= 5
    assert "constraints.labelz: unknown key (did you mean 'labels'?)" in lines
    assert "count: must be an integer, got a string ('three')" in lines
    assert any(line.startswith("task.timeout: must be a duration like 30s") for line in lines)
    assert result.stderr == f"{len(lines)} errors in {INVALID}\n"


def test_single_error_summary_is_singular(tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text("name: x\n")
    result = run("job", "validate", spec)
    assert result.exit_code == 1
    assert result.stdout.startswith("task: required")
    assert result.stderr == f"1 error in {spec}\n"


def test_validate_json_output() -> None:
    ok = run("--output", "json", "job", "validate", HELLO)
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {
        "ok": True,
        "digest": spec_digest(load_spec_file(HELLO)),
        "errors": [],
    }
    bad = run("--output", "json", "job", "validate", INVALID)
    assert bad.exit_code == 1
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["digest"] is None
    assert {"path": "constraints.labelz", "message": "unknown key (did you mean 'labels'?)"} in doc[
        "errors"
    ]
    assert all(set(error) == {"path", "message"} for error in doc["errors"])


def test_validate_yaml_output() -> None:
    ok = run("-o", "yaml", "job", "validate", HELLO)
    assert ok.exit_code == 0
    assert yaml.safe_load(ok.stdout) == json.loads(
        run("-o", "json", "job", "validate", HELLO).stdout
    )
    bad = run("-o", "yaml", "job", "validate", INVALID)
    assert bad.exit_code == 1
    doc = yaml.safe_load(bad.stdout)
    assert doc["ok"] is False and doc["digest"] is None and len(doc["errors"]) >= 5


def test_missing_file_is_exit_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run("job", "validate", missing)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"p2pnode: cannot read {missing}: No such file or directory\n"


def test_directory_is_exit_2(tmp_path: Path) -> None:
    result = run("job", "validate", tmp_path)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert "cannot read" in result.stderr


def test_parse_error_is_an_invalid_spec(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: [\n")
    result = run("job", "validate", spec)
    assert result.exit_code == 1
    assert result.stdout.startswith("<document>: invalid YAML at line")


def test_spec_from_stdin() -> None:
    result = run("job", "validate", "-", input=HELLO.read_text())
    assert (result.exit_code, result.stdout) == (0, "OK\n")
    bad = run("job", "validate", "-", input="name: x\n")
    assert bad.exit_code == 1
    assert bad.stderr == "1 error in <stdin>\n"


def test_usage_errors_are_exit_2() -> None:
    assert run("job", "validate").exit_code == 2
    assert run("--output", "xml", "job", "validate", HELLO).exit_code == 2
    assert run("job", "nope").exit_code == 2


# --- explain -------------------------------------------------------------------


def test_explain_table() -> None:
    result = run("job", "explain", HELLO)
    assert result.exit_code == 0
    spec = load_spec_file(HELLO)
    lines = result.stdout.splitlines()
    assert lines[0] == "batch job 'hello': 1 slot, process engine, timeout 30s, up to 3 attempts"
    assert lines[1] == f"digest: {spec_digest(spec)}"
    body = "\n".join(lines[3:])
    assert yaml.safe_load(body) == spec.canonical()


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_explain_machine_output(fmt: str) -> None:
    result = run("--output", fmt, "job", "explain", SPECS / "dag.yaml")
    assert result.exit_code == 0
    doc: dict[str, Any] = yaml.safe_load(result.stdout)  # JSON is YAML
    spec = load_spec_file(SPECS / "dag.yaml")
    assert doc == {
        "ok": True,
        "digest": spec_digest(spec),
        "summary": spec.describe(),
        "spec": spec.canonical(),
    }


@pytest.mark.parametrize("path", VALID_SAMPLES, ids=lambda p: p.name)
def test_explain_every_sample(path: Path) -> None:
    result = run("job", "explain", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{load_spec_file(path).type} job ")


def test_explain_invalid_spec() -> None:
    result = run("job", "explain", INVALID)
    assert result.exit_code == 1
    assert "constraints.labelz: unknown key (did you mean 'labels'?)" in result.stdout


# --- root options ------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    text = result.stdout
    for fragment in ("job", "--output", "--data-dir", "P2PNODE_DATA_DIR", "--verbose"):
        assert fragment in text
    assert "Exit codes:" in text
    assert "1  invalid job spec" in text
    job_help = run("job", "--help").stdout
    assert "validate" in job_help and "explain" in job_help


@pytest.fixture
def probe() -> Iterator[dict[str, CliContext]]:
    """A throwaway command that records the CliContext it receives."""
    seen: dict[str, CliContext] = {}

    @click.command("probe")
    @pass_cli
    def probe_command(ctx: CliContext) -> None:
        seen["ctx"] = ctx

    cli.add_command(probe_command)
    try:
        yield seen
    finally:
        cli.commands.pop("probe")


def test_root_options_reach_commands(probe: dict[str, CliContext], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["-o", "json", "--data-dir", str(tmp_path), "probe"])
    assert result.exit_code == 0, result.output
    assert probe["ctx"] == CliContext(output="json", data_dir=tmp_path, verbose=0)


def test_data_dir_from_environment(probe: dict[str, CliContext], tmp_path: Path) -> None:
    runner = CliRunner(env={"P2PNODE_DATA_DIR": str(tmp_path)})
    assert runner.invoke(cli, ["probe"]).exit_code == 0
    assert probe["ctx"].data_dir == tmp_path
    assert probe["ctx"].output == "table"


def test_default_data_dir(probe: dict[str, CliContext], tmp_path: Path) -> None:
    runner = CliRunner(env={"P2PNODE_DATA_DIR": None, "XDG_DATA_HOME": str(tmp_path)})
    assert runner.invoke(cli, ["probe"]).exit_code == 0
    assert probe["ctx"].data_dir == tmp_path / "p2pnode"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """-v configures the root logger; give the next tests their own back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_verbose_logs_to_stderr() -> None:
    result = run("-v", "job", "validate", HELLO)
    assert result.exit_code == 0
    assert result.stdout == "OK\n"
    assert "INFO p2pnode.cli.job: reading spec" in result.stderr


# --- the real thing: python -m p2pnode ---------------------------------------------


def _python_m(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pnode", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_python_m_p2pnode() -> None:
    ok = _python_m("job", "validate", "specs/hello.yaml")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "OK\n", "")

    bad = _python_m("job", "validate", "specs/invalid.yaml")
    assert bad.returncode == 1
    assert "constraints.labelz: unknown key (did you mean 'labels'?)" in bad.stdout
    assert bad.stderr.strip().endswith("errors in specs/invalid.yaml")

    missing = _python_m("job", "validate", "specs/missing.yaml")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "cannot read specs/missing.yaml" in missing.stderr

    as_json = _python_m("--output", "json", "job", "validate", "specs/invalid.yaml")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["ok"] is False

    helped = _python_m("--help")
    assert helped.returncode == 0
    assert "Usage: p2pnode" in helped.stdout and "job" in helped.stdout
