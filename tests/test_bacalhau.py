"""Bacalhau v1 job files mapped to p2pnode specs (issue 14): what maps, and
every field that cannot map listed as an error at its Bacalhau path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from p2pnode.bacalhau import bacalhau_to_spec, is_bacalhau_job
from p2pnode.cli import cli
from p2pnode.specfile import load_spec_file, native_spec_text
from protocols.spec import SpecValidationError, validate_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bacalhau-hello.yaml"


def _errors(doc: Any) -> list[str]:
    with pytest.raises(SpecValidationError) as caught:
        bacalhau_to_spec(doc)
    return [str(e) for e in caught.value.errors]


def test_the_example_maps_field_by_field() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert is_bacalhau_job(doc)
    assert bacalhau_to_spec(doc) == {
        "name": "hello-bacalhau",
        "type": "batch",
        "count": 2,
        "constraints": {"labels": {"zone": "b"}},
        "task": {
            "engine": {
                "type": "docker",
                "image": "busybox:latest",
                "command": [
                    "/bin/sh",
                    "-c",
                    'echo "hello from $GREETING" > /outputs/hello.txt',
                ],
            },
            "env": {"GREETING": "bacalhau"},
            "resources": {"cpu": 0.25, "memory": 64_000_000},
            "network": "none",
            "timeout": 120,
        },
    }
    spec = load_spec_file(EXAMPLE)  # what validate, explain and run read
    assert spec.name == "hello-bacalhau" and spec.count == 2
    assert spec.task is not None and spec.task.timeout_ms == 120_000


def test_a_p2pnode_spec_is_not_taken_for_a_bacalhau_job() -> None:
    text = "name: hi\ntask: {engine: {type: process, command: [echo, hi]}}\n"
    assert native_spec_text(text) == text
    assert not is_bacalhau_job(yaml.safe_load(text))


def test_the_api_envelope_wasm_and_the_other_types_map() -> None:
    job = {
        "Job": {
            "Name": "Add",
            "Type": "Daemon",
            "Count": 3,  # Bacalhau ignores Count for ops and daemon jobs
            "Namespace": "default",
            "Meta": {"owner": "me"},
            "ID": "j-123",
            "Constraints": [{"Key": "arch", "Operator": "==", "Values": ["arm64"]}],
            "Tasks": [
                {
                    "Name": "main",
                    "Engine": {
                        "Type": "WASM",
                        "Params": {
                            "EntryModule": {
                                "Source": {"Type": "localDirectory", "Params": {"Path": "a.wasm"}}
                            },
                            "Entrypoint": "_start",
                            "Parameters": ["1", "2"],
                            "EnvironmentVariables": {"MODE": "sum"},
                        },
                    },
                    "Env": {"LEVEL": "3"},
                    "Resources": {"CPU": "2", "Memory": "1Gi"},
                    "Network": {"Type": "Full"},
                    "Timeouts": {"ExecutionTimeout": 0, "QueueTimeout": 60},
                }
            ],
        }
    }
    spec = bacalhau_to_spec(job)
    assert spec == {
        "name": "add",
        "type": "daemon",
        "constraints": {"labels": {"arch": "arm64"}},
        "queue_timeout": 60,
        "task": {
            "engine": {
                "type": "wasm",
                "module": "a.wasm",
                "entrypoint": "_start",
                "args": ["1", "2"],
            },
            "env": {"MODE": "sum", "LEVEL": "3"},
            "resources": {"cpu": 2.0, "memory": 2**30},
            "network": "host",
        },
    }
    assert validate_spec(spec).queue_timeout_ms == 60_000


BAD_JOB = """
Name: "!!!"
Type: batch
Namespace: team-a
Priority: 10
Count: 0
Labels: {a: b}
Surprise: 1
Constraints:
  - Key: zone
    Operator: "!="
    Values: [b]
  - Key: arch
    Operator: in
    Values: [arm64, amd64]
  - Operator: "="
    Values: [x]
Tasks:
  - Name: main
    Engine:
      Type: Docker
      Params:
        Image: "bad image"
        Entrypoint: "sh -c"
        Frobnicate: 1
        EnvironmentVariables: [NOEQUALS, P2PNODE_X=1]
    Publisher: {Type: s3}
    InputSources: [{Source: {Type: urlDownload}}]
    ResultPaths: [{Name: out, Path: /data}]
    Resources: {CPU: lots, Memory: 1zb, Disk: 10gb, GPU: "1"}
    Network: {Type: HTTP, Domains: [example.com]}
    Timeouts: {ExecutionTimeout: -5, TotalTimeout: 60}
  - Name: second
"""


def test_everything_that_cannot_map_is_listed_at_its_bacalhau_path() -> None:
    assert _errors(yaml.safe_load(BAD_JOB)) == [
        "Surprise: unknown key of a Bacalhau job",
        "Name: '!!!' has no letter or digit to make a p2pnode job name",
        "Namespace: 'team-a' not supported (p2pnode has no namespaces)",
        "Priority: not supported (p2pnode has no job priorities)",
        "Labels: not supported (p2pnode jobs carry no labels; Constraints select nodes)",
        "Constraints[0].Operator: '!=' not supported (p2pnode matches node labels by equality:"
        " = with one value)",
        "Constraints[1].Values: must hold exactly one string (p2pnode matches node labels by"
        " equality), got a list of 2",
        "Constraints[2].Key: must be a label name, got nothing",
        "Tasks: p2pnode runs one task per job, got 2",
        "Tasks[0].Engine.Params.Frobnicate: unknown key of a Bacalhau docker engine",
        "Tasks[0].Engine.Params.Entrypoint: must be a list of strings, got 'sh -c'",
        "Tasks[0].Engine.Params.EnvironmentVariables[0]: must look like KEY=value, got 'NOEQUALS'",
        "Tasks[0].Publisher.Type: 's3' not supported (outputs stay on the node that ran the"
        " task: p2pnode job get)",
        "Tasks[0].InputSources: not supported (p2pnode tasks get inputs from DAG dependencies,"
        " not from sources)",
        "Tasks[0].ResultPaths[0].Path: '/data' not supported (p2pnode collects what the task"
        " writes to /outputs)",
        "Tasks[0].Resources.CPU: must be a CPU amount like 500m or 2, got 'lots'",
        "Tasks[0].Resources.Memory: unknown size unit 'ZB' in '1ZB' (use B, KB, MB, GB, TB or"
        " KiB, MiB, GiB, TiB)",
        "Tasks[0].Resources.Disk: not supported (p2pnode has no disk limits)",
        "Tasks[0].Resources.GPU: not supported (p2pnode schedules no GPUs)",
        "Tasks[0].Network.Type: 'HTTP' not supported (None, Host or Full: p2pnode tasks have no"
        " network or the host's)",
        "Tasks[0].Network.Domains: not supported (p2pnode cannot filter domains)",
        "Tasks[0].Timeouts.ExecutionTimeout: must be whole seconds, got -5",
        "Tasks[0].Timeouts.TotalTimeout: not supported (use ExecutionTimeout and QueueTimeout)",
        # Found by p2pnode's validator in the mapped spec, reported where they came from:
        "Count: must be between 1 and 10000, got 0",
        "Tasks[0].Engine.Params.Image: must not contain spaces, got 'bad image'",
        "Tasks[0].Engine.Params.EnvironmentVariables[1]: names starting with P2PNODE_ are reserved",
    ]


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"Tasks": []}, ["Tasks: must be a list of one task, got a list of 0"]),
        (
            {"Type": "cron", "Tasks": [{"Engine": {"Type": "docker", "Params": {}}}]},
            [
                "Type: 'cron' not supported (one of: batch, ops, daemon, service)",
                "Tasks[0].Engine.Params.Image: required (the image to run, e.g. ubuntu:24.04)",
            ],
        ),
        (
            {"Tasks": [{"Engine": {"Type": "wasm", "Params": {"ImportModules": [{}]}}}]},
            [
                "Tasks[0].Engine.Params.EntryModule: required (an InputSource naming a local"
                " .wasm file)",
                "Tasks[0].Engine.Params.ImportModules: not supported (p2pnode's wasm engine links"
                " one module)",
            ],
        ),
        (
            {
                "Tasks": [
                    {
                        "Engine": {
                            "Type": "wasm",
                            "Params": {"EntryModule": {"Source": {"Type": "s3", "Params": {}}}},
                        }
                    }
                ]
            },
            [
                "Tasks[0].Engine.Params.EntryModule.Source.Type: 's3' not supported (a local file:"
                " Type local, Params.SourcePath)"
            ],
        ),
        (
            {"Tasks": [{"Engine": {"Type": "python"}}]},
            ["Tasks[0].Engine.Type: 'python' not supported (docker or wasm)"],
        ),
        (
            {"Tasks": [{"Name": "t"}]},
            ["Tasks[0].Engine: required (Type docker or wasm, with Params)"],
        ),
    ],
)
def test_more_fields_that_cannot_map(job: dict[str, Any], expected: list[str]) -> None:
    assert _errors(job) == expected


def test_validate_and_explain_read_a_bacalhau_file(tmp_path: Path) -> None:
    runner = CliRunner()
    valid = runner.invoke(cli, ["job", "validate", str(EXAMPLE)])
    assert valid.exit_code == 0 and valid.output == "OK\n", valid.output
    explained = runner.invoke(cli, ["-o", "json", "job", "explain", str(EXAMPLE)])
    assert explained.exit_code == 0, explained.output
    assert '"name": "hello-bacalhau"' in explained.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_JOB)
    invalid = runner.invoke(cli, ["job", "validate", str(bad)])
    assert invalid.exit_code == 1, invalid.output
    assert "Tasks[0].Network.Type: 'HTTP' not supported" in invalid.output
    from_stdin = runner.invoke(cli, ["job", "validate", "-"], input=EXAMPLE.read_text())
    assert from_stdin.exit_code == 0 and from_stdin.output == "OK\n", from_stdin.output
