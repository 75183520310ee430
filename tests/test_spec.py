"""The job spec: validation (every error, at once), canonical form and digest."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pnode.specfile import load_spec_file
from protocols.spec import (
    DOCUMENT,
    MAX_SPEC_BYTES,
    ProcessEngine,
    SimEngine,
    SpecError,
    SpecValidationError,
    canonical_bytes,
    load_spec_text,
    parse_spec,
    spec_digest,
    validate_spec,
    validate_task,
)

SPECS = Path(__file__).resolve().parent.parent / "specs"
VALID_SAMPLES = sorted(p for p in SPECS.glob("*.yaml") if p.name != "invalid.yaml")

PROCESS = {"type": "process", "command": ["echo", "hi"]}


def batch(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "job", "task": {"engine": dict(PROCESS)}}
    doc.update(over)
    return doc


def errors_of(doc: Any, *, canonical: bool = False) -> list[SpecError]:
    with pytest.raises(SpecValidationError) as info:
        validate_spec(doc, canonical=canonical)
    return info.value.errors


def error_map(doc: Any, **kw: Any) -> dict[str, str]:
    return {e.path: e.message for e in errors_of(doc, **kw)}


def assert_error(doc: Any, path: str, fragment: str) -> None:
    errors = error_map(doc)
    assert path in errors, f"no error at {path!r}; got {errors}"
    assert fragment in errors[path], f"{path}: {errors[path]!r} lacks {fragment!r}"


# --- the happy path and the canonical form -------------------------------------


def test_minimal_batch_has_every_default() -> None:
    spec = validate_spec(batch())
    assert spec.canonical() == {
        "constraints": {"labels": {}},
        "count": 1,
        "name": "job",
        "queue_timeout": None,
        "task": {
            "engine": {"command": ["echo", "hi"], "type": "process"},
            "env": {},
            "resources": {"cpu": 0.1, "memory": 256 * 2**20},
            "retry": {"attempts": 3, "backoff": 1000},
            "timeout": 30 * 60 * 1000,
        },
        "type": "batch",
    }
    assert spec.task is not None
    assert spec.task.timeout_ms == 1_800_000
    assert spec.task.engine == ProcessEngine(command=("echo", "hi"))


def test_full_task_is_read_into_typed_views() -> None:
    spec = parse_spec(
        """
        name: hello
        count: 2
        constraints: {labels: {zone: a}}
        queue_timeout: 10m
        task:
          engine: {type: process, command: [sh, -c, "echo hi"]}
          env: {GREETING: hi}
          resources: {cpu: 0.5, memory: 1GiB}
          timeout: 1h30m
          retry: {attempts: 5, backoff: 2s}
        """
    )
    assert spec.count == 2
    assert dict(spec.constraints.labels) == {"zone": "a"}
    assert spec.queue_timeout_ms == 600_000
    task = spec.task
    assert task is not None
    assert dict(task.env) == {"GREETING": "hi"}
    assert (task.resources.cpu, task.resources.memory_bytes) == (0.5, 2**30)
    assert task.timeout_ms == 5_400_000
    assert (task.retry.attempts, task.retry.backoff_ms) == (5, 2000)


def _walk(value: Any) -> None:
    """Only msgpack primitives, and every mapping sorted by key."""
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for key, item in value.items():
            assert isinstance(key, str)
            _walk(item)
    elif isinstance(value, list):
        for item in value:
            _walk(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), repr(value)


@pytest.mark.parametrize("path", VALID_SAMPLES, ids=lambda p: p.name)
def test_samples_validate_and_round_trip(path: Path) -> None:
    spec = load_spec_file(path)
    canonical = spec.canonical()
    _walk(canonical)
    again = validate_spec(canonical, canonical=True)
    assert again == spec
    assert again.canonical() == canonical
    # The canonical form survives msgpack and JSON transport unchanged.
    assert msgpack.unpackb(canonical_bytes(spec)) == canonical
    assert validate_spec(json.loads(json.dumps(canonical)), canonical=True) == spec
    assert spec_digest(spec).startswith("sha256:")
    assert len(spec_digest(spec)) == len("sha256:") + 64
    assert spec.describe().startswith(f"{spec.type} job '{spec.name}'")


def test_invalid_sample_reports_all_its_errors() -> None:
    with pytest.raises(SpecValidationError) as info:
        load_spec_file(SPECS / "invalid.yaml")
    paths = {e.path for e in info.value.errors}
    assert {
        "name",
        "count",
        "constraints.labelz",
        "task.engine.command",
        "task.env.P2PNODE_SLOT",
        "task.resources.memory",
        "task.timeout",
        "task.retry.attempts",
        "schedule",
    } <= paths


def test_hello_summary() -> None:
    spec = load_spec_file(SPECS / "hello.yaml")
    assert spec.describe() == (
        "batch job 'hello': 1 slot, process engine, timeout 30s, up to 3 attempts"
    )


def test_json_input_is_accepted() -> None:
    text = json.dumps(batch(count=2))
    assert parse_spec(text).count == 2


# --- errors: all at once, with paths ---------------------------------------------


def test_all_errors_are_reported_at_once() -> None:
    doc = {
        "name": "Bad Name",
        "count": "three",
        "constraints": {"labelz": {}},
        "task": {
            "engine": {"type": "process", "command": []},
            "env": {"P2PNODE_X": "1"},
            "timeout": "forever",
            "retry": {"attempts": 0},
        },
        "colour": "blue",
    }
    errors = error_map(doc)
    assert errors == {
        "name": errors["name"],
        "count": "must be an integer, got a string ('three')",
        "constraints.labelz": "unknown key (did you mean 'labels'?)",
        "task.engine.command": "must not be empty",
        "task.env.P2PNODE_X": "names starting with P2PNODE_ are reserved",
        "task.timeout": errors["task.timeout"],
        "task.retry.attempts": "must be between 1 and 100, got 0",
        "colour": errors["colour"],
    }
    assert "must be 1-63 characters" in errors["name"]
    assert "must be a duration like 30s" in errors["task.timeout"]
    assert errors["colour"].startswith("unknown key")


def test_errors_follow_document_order() -> None:
    text = "task: 5\nname: X\ncount: 0\n"
    with pytest.raises(SpecValidationError) as info:
        parse_spec(text)
    assert [e.path for e in info.value.errors] == ["task", "name", "count"]


def test_error_types() -> None:
    error = SpecError("task.timeout", "must be a duration like 30s")
    assert str(error) == "task.timeout: must be a duration like 30s"
    exc = SpecValidationError([error])
    assert isinstance(exc, ValueError)
    assert exc.errors == [error]
    assert "task.timeout: must be a duration" in str(exc)


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        # wrong types are errors, never crashes
        (batch(task=5), "task", "must be a mapping, got an integer (5)"),
        (batch(count="three"), "count", "must be an integer"),
        (batch(count=True), "count", "must be an integer, got a boolean"),
        (batch(count=1.0), "count", "must be an integer"),
        (batch(name=5), "name", "must be a string"),
        (batch(type=["batch"]), "type", "must be a string"),
        (batch(constraints=[]), "constraints", "must be a mapping"),
        (batch(constraints={"labels": {"gpu": True}}), "constraints.labels.gpu", "quote it"),
        (batch(constraints={"labels": "zone=a"}), "constraints.labels", "must be a mapping"),
        ({"task": {"engine": PROCESS}}, "name", "required"),
        ({"name": "x"}, "task", "required"),
        (batch(type="batc"), "type", "did you mean 'batch'?"),
        (batch(name="-x"), "name", "starting with a letter or digit"),
        (batch(name="a" * 64), "name", "must be at most 63 characters"),
        (batch(count=0), "count", "between 1 and 10000"),
        (batch(count=10_001), "count", "between 1 and 10000"),
        (batch(queue_timeout="31d"), "queue_timeout", "at most 30d"),
        (batch(queue_timeout=True), "queue_timeout", "got a boolean"),
        ({"name": "x", "task": {}}, "task.engine", "required"),
        ({"name": "x", "task": {"engine": {}}}, "task.engine.type", "required"),
        ({"name": "x", "task": {"engine": "sh"}}, "task.engine", "must be a mapping"),
        ({"name": "x", "task": {"engine": {"type": "vm"}}}, "task.engine.type", "unknown value"),
        ({"name": "x", "task": {"engine": {"type": "process"}}}, "task.engine.command", "required"),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": "echo hi"}}},
            "task.engine.command",
            "must be a list of arguments like [sh, -c, 'echo hi']",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": ["echo", 5]}}},
            "task.engine.command[1]",
            "must be a string",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": ["", "x"]}}},
            "task.engine.command[0]",
            "program name must not be empty",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": ["x"] * 257}}},
            "task.engine.command",
            "at most 256 items",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": ["x" * 4097]}}},
            "task.engine.command[0]",
            "at most 4096 characters",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": ["a\x00b"]}}},
            "task.engine.command[0]",
            "NUL",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "process", "command": ["x"], "image": "a"}}},
            "task.engine.image",
            "only allowed for the docker engine",
        ),
        ({"name": "x", "task": {"engine": {"type": "docker"}}}, "task.engine.image", "required"),
        (
            {"name": "x", "task": {"engine": {"type": "docker", "image": "a b"}}},
            "task.engine.image",
            "must not contain spaces",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "docker", "image": "a", "workdir": "tmp"}}},
            "task.engine.workdir",
            "absolute path",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "docker", "image": "a", "command": []}}},
            "task.engine.command",
            "must not be empty",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "sim", "fail_rate": 1.5}}},
            "task.engine.fail_rate",
            "at most 1",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "sim", "hang": "yes"}}},
            "task.engine.hang",
            "must be true or false",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "sim", "exit_code": 256}}},
            "task.engine.exit_code",
            "between 0 and 255",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "sim", "output_bytes": "1x"}}},
            "task.engine.output_bytes",
            "unknown size unit",
        ),
        (
            {"name": "x", "task": {"engine": {"type": "sim", "command": ["x"]}}},
            "task.engine.command",
            "only allowed for the process and docker engines",
        ),
        ({"name": "x", "task": {"command": ["x"]}}, "task.command", "belongs under engine"),
        (batch(task={"engine": PROCESS, "env": {"1X": "a"}}), "task.env.1X", "variable name"),
        (batch(task={"engine": PROCESS, "env": {"A-B": "a"}}), "task.env.A-B", "variable name"),
        (
            batch(task={"engine": PROCESS, "env": {"p2pnode_x": "a"}}),
            "task.env.p2pnode_x",
            "reserved",
        ),
        (batch(task={"engine": PROCESS, "env": {"PORT": 8080}}), "task.env.PORT", "quote it"),
        (batch(task={"engine": PROCESS, "env": {1: "a"}}), "task.env.1", "must be a string"),
        (
            batch(task={"engine": PROCESS, "env": {f"V{i}": "x" for i in range(65)}}),
            "task.env",
            "at most 64 entries",
        ),
        (batch(task={"engine": PROCESS, "resources": {"cpu": 0}}), "task.resources.cpu", "above 0"),
        (
            batch(task={"engine": PROCESS, "resources": {"cpu": "1"}}),
            "task.resources.cpu",
            "number",
        ),
        (
            batch(task={"engine": PROCESS, "resources": {"cpu": float("nan")}}),
            "task.resources.cpu",
            "finite",
        ),
        (
            batch(task={"engine": PROCESS, "resources": {"memory": "512KiB"}}),
            "task.resources.memory",
            "at least 1MiB",
        ),
        (
            batch(task={"engine": PROCESS, "resources": {"memory": "2TiB"}}),
            "task.resources.memory",
            "at most 1TiB",
        ),
        (batch(task={"engine": PROCESS, "timeout": "8d"}), "task.timeout", "at most 7d"),
        (batch(task={"engine": PROCESS, "timeout": 0}), "task.timeout", "at least 1ms"),
        (batch(task={"engine": PROCESS, "retry": 3}), "task.retry", "must be a mapping"),
        (
            batch(task={"engine": PROCESS, "retry": {"attempts": 101}}),
            "task.retry.attempts",
            "between 1 and 100",
        ),
        (
            batch(task={"engine": PROCESS, "retry": {"backoff": "2h"}}),
            "task.retry.backoff",
            "at most 1h",
        ),
        (
            batch(constraints={"labels": {f"k{i}": "v" for i in range(65)}}),
            "constraints.labels",
            "at most 64 entries",
        ),
        (batch(constraints={"labels": {"a b": "v"}}), "constraints.labels.a b", "label name"),
    ],
)
def test_error_cases(doc: Any, path: str, fragment: str) -> None:
    assert_error(doc, path, fragment)


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        (batch(constraints={"labelz": {}}), "constraints.labelz", "did you mean 'labels'?"),
        (batch(cont=1), "cont", "did you mean 'count'?"),
        (batch(task={"engine": PROCESS, "timout": "1s"}), "task.timout", "did you mean 'timeout'?"),
        (
            batch(task={"engine": PROCESS, "resources": {"memroy": "1GiB"}}),
            "task.resources.memroy",
            "did you mean 'memory'?",
        ),
        (
            batch(task={"engine": {**PROCESS, "comand": ["x"]}}),
            "task.engine.comand",
            "did you mean 'command'?",
        ),
        (batch(zzz=1), "zzz", "unknown key (expected one of: constraints, count, name"),
        ({"name": "x", True: 1, "task": {"engine": PROCESS}}, "True", "keys must be strings"),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(doc: Any, path: str, fragment: str) -> None:
    assert_error(doc, path, fragment)


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        (
            batch(schedule={"every": "1m"}),
            "schedule",
            "not allowed for type 'batch' (only for type cron)",
        ),
        (batch(type="ops", count=2), "count", "ops jobs run once on every matching node"),
        (batch(type="daemon", count=2), "count", "daemon jobs run once on every matching node"),
        (batch(type="dag", tasks={"a": {"engine": PROCESS}}), "task", "under 'tasks'"),
        (batch(type="chain", stages=[]), "task", "one task per stage"),
        (batch(cache=True), "cache", "only for type dag"),
        (batch(partitions=2), "partitions", "only for type stream"),
        (batch(type="stream", count=2), "count", "only for type batch, service, cron"),
    ],
)
def test_keys_of_other_kinds_are_refused(doc: Any, path: str, fragment: str) -> None:
    assert_error(doc, path, fragment)


def test_unknown_type_still_checks_the_other_keys() -> None:
    errors = error_map(batch(type="nope", count=0, bogus=1))
    assert set(errors) == {"type", "count", "bogus"}


@pytest.mark.parametrize("doc", [None, 5, "name: x", [1, 2], True])
def test_document_must_be_a_mapping(doc: Any) -> None:
    errors = errors_of(doc)
    assert [e.path for e in errors] == [DOCUMENT]
    assert "must be a mapping" in errors[0].message


def test_huge_numbers_are_errors_not_crashes() -> None:
    huge = 10**5000  # str() of it raises ValueError in Python >= 3.11
    doc = {
        "name": huge,
        "count": huge,
        "task": {
            "engine": {"type": "sim", "duration": -huge, "fail_rate": huge},
            "resources": {"cpu": huge, "memory": huge},
            "timeout": huge,
        },
    }
    for canonical in (False, True):
        errors = error_map(doc, canonical=canonical)
        assert set(errors) == {
            "name",
            "count",
            "task.engine.duration",
            "task.engine.fail_rate",
            "task.resources.cpu",
            "task.resources.memory",
            "task.timeout",
        }
        assert all("over 18 digits" in message for message in errors.values())


def test_error_count_is_bounded() -> None:
    doc = batch(**{f"bad{i}": 1 for i in range(500)})
    errors = errors_of(doc)
    assert len(errors) == 101
    assert errors[-1] == SpecError(DOCUMENT, "too many errors; 400 more not shown")


@pytest.mark.parametrize("kind", ["batch", "ops", "daemon", "service"])
def test_simple_kinds(kind: str) -> None:
    spec = validate_spec(batch(type=kind))
    assert spec.type == kind
    assert spec.count == (None if kind in ("ops", "daemon") else 1)
    assert ("count" in spec.canonical()) == (kind not in ("ops", "daemon"))


# --- cron --------------------------------------------------------------------


def cron(**schedule: Any) -> dict[str, Any]:
    return batch(type="cron", schedule=schedule)


def test_cron_defaults() -> None:
    spec = validate_spec(cron(cron="*/5 * * * *"))
    assert spec.canonical()["schedule"] == {
        "catch_up": 60_000,
        "cron": "*/5 * * * *",
        "every": None,
        "history": {"failed": 5, "succeeded": 10},
        "overlap": "skip",
        "suspended": False,
        "time_zone": "UTC",
    }
    every = validate_spec(cron(every="30s", overlap="buffer_one", time_zone="Europe/Paris"))
    assert every.schedule is not None
    assert every.schedule.every_ms == 30_000
    assert every.schedule.cron is None


@pytest.mark.parametrize(
    ("schedule", "path", "fragment"),
    [
        ({}, "schedule", "set one of cron"),
        ({"cron": "* * * * *", "every": "1m"}, "schedule", "exactly one of cron or every"),
        ({"cron": "* * * * * *"}, "schedule.cron", "must have 5 fields"),
        ({"cron": "61 * * * *"}, "schedule.cron", "not a valid cron expression"),
        ({"cron": 5}, "schedule.cron", "must be a string"),
        ({"every": "500ms"}, "schedule.every", "at least 1s"),
        ({"every": "1m", "time_zone": "Mars/Olympus"}, "schedule.time_zone", "unknown time zone"),
        ({"every": "1m", "time_zone": "../../etc/passwd"}, "schedule.time_zone", "unknown time"),
        ({"every": "1m", "overlap": "queue"}, "schedule.overlap", "unknown value 'queue'"),
        ({"every": "1m", "catch_up": "8d"}, "schedule.catch_up", "at most 7d"),
        ({"every": "1m", "history": {"succeeded": -1}}, "schedule.history.succeeded", "between"),
        ({"every": "1m", "history": {"ok": 1}}, "schedule.history.ok", "unknown key"),
        ({"every": "1m", "suspended": "no"}, "schedule.suspended", "true or false"),
        ({"every": "1m", "timezone": "UTC"}, "schedule.timezone", "did you mean 'time_zone'?"),
    ],
)
def test_cron_errors(schedule: dict[str, Any], path: str, fragment: str) -> None:
    assert_error(cron(**schedule), path, fragment)


def test_cron_needs_a_schedule() -> None:
    assert_error(batch(type="cron"), "schedule", "required")


def test_cron_spacing_is_canonical() -> None:
    a = validate_spec(cron(cron="*/5 * * * *"))
    b = validate_spec(cron(cron="  */5   *  * * *"))
    assert spec_digest(a) == spec_digest(b)


# --- dag ---------------------------------------------------------------------


def dag(**tasks: Any) -> dict[str, Any]:
    return {"name": "d", "type": "dag", "tasks": tasks}


def node(*deps: str, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": {"type": "sim"}}
    if deps:
        out["depends_on"] = list(deps)
    out.update(over)
    return out


def test_dag_valid() -> None:
    spec = validate_spec(
        {
            **dag(
                fetch=node(),
                work=node("fetch", map={"over": "fetch", "as": "item"}),
                report=node("work", "fetch", when="always"),
            ),
            "cache": True,
        }
    )
    assert spec.tasks is not None and spec.cache is True
    work = spec.tasks["work"]
    assert work.map is not None and (work.map.over, work.map.as_) == ("fetch", "item")
    canonical = spec.canonical()
    assert canonical["tasks"]["report"]["depends_on"] == ["fetch", "work"]  # sorted
    assert canonical["tasks"]["work"]["map"] == {"as": "item", "over": "fetch"}
    assert canonical["tasks"]["fetch"]["map"] is None
    assert canonical["tasks"]["fetch"]["when"] == "succeeded"
    assert "timeout" in canonical["tasks"]["fetch"]  # task keys are flat
    assert validate_spec(canonical, canonical=True) == spec


def test_dag_depends_on_order_does_not_change_the_digest() -> None:
    a = validate_spec(dag(a=node(), b=node(), c=node("a", "b")))
    b = validate_spec(dag(c=node("b", "a"), b=node(), a=node()))
    assert spec_digest(a) == spec_digest(b)


def test_dag_errors() -> None:
    errors = error_map(
        dag(
            fetch=node(),
            work=node("fecth", "work", "fetch", "fetch", map={"over": "other", "as": "1x"}),
            sink=node("work", when="sometimes"),
        )
    )
    assert errors == {
        "tasks.work.depends_on[0]": "unknown task 'fecth' (did you mean 'fetch'?)",
        "tasks.work.depends_on[1]": "a task cannot depend on itself",
        "tasks.work.depends_on[3]": "duplicate 'fetch' (also at [2])",
        "tasks.work.map.over": "'other' must be one of depends_on",
        "tasks.work.map.as": errors["tasks.work.map.as"],
        "tasks.sink.when": errors["tasks.sink.when"],
    }
    assert "identifier" in errors["tasks.work.map.as"]
    assert "unknown value 'sometimes'" in errors["tasks.sink.when"]


def test_dag_cycles_are_named() -> None:
    errors = errors_of(
        dag(a=node("c"), b=node("a"), c=node("b"), x=node("y"), y=node("x"), ok=node("a"))
    )
    assert [str(e) for e in errors] == [
        "tasks: dependency cycle: a -> c -> b -> a (each depends on the next)",
        "tasks: dependency cycle: x -> y -> x (each depends on the next)",
    ]


@given(st.integers(2, 30), st.randoms(use_true_random=False))
def test_dag_cycle_detection_matches_a_reference(size: int, rnd: random.Random) -> None:
    names = [f"t{i}" for i in range(size)]
    edges = {n: sorted(rnd.sample(names, rnd.randint(0, 2))) for n in names}
    edges = {n: [d for d in deps if d != n] for n, deps in edges.items()}

    def has_cycle() -> bool:  # Kahn's algorithm
        indegree = {n: len(deps) for n, deps in edges.items()}
        ready = [n for n, k in indegree.items() if k == 0]
        done = 0
        while ready:
            done += 1
            finished = ready.pop()
            for n, deps in edges.items():
                if finished in deps:
                    indegree[n] -= 1
                    if indegree[n] == 0:
                        ready.append(n)
        return done < size

    doc = dag(**{n: node(*deps) for n, deps in edges.items()})
    if has_cycle():
        errors = errors_of(doc)
        assert errors and all("dependency cycle" in e.message for e in errors)
        for error in errors:  # each reported cycle is real
            cycle = error.message.split(": ", 1)[1].split(" (")[0].split(" -> ")
            assert cycle[0] == cycle[-1]
            for a, b in itertools.pairwise(cycle):
                assert b in edges[a]
    else:
        validate_spec(doc)


@pytest.mark.parametrize(
    ("tasks", "path", "fragment"),
    [
        ({}, "tasks", "1 to 200 tasks"),
        ({f"t{i}": node() for i in range(201)}, "tasks", "1 to 200 tasks"),
        ({"Bad Name": node()}, "tasks.Bad Name", "must be 1-63 characters"),
        ({"a": node(depends_on="b"), "b": node()}, "tasks.a.depends_on", "must be a list"),
        ({"a": node(map={"over": "b"})}, "tasks.a.map.as", "required"),
        ({"a": 5}, "tasks.a", "must be a mapping"),
    ],
)
def test_dag_shape_errors(tasks: dict[str, Any], path: str, fragment: str) -> None:
    assert_error(dag(**tasks), path, fragment)


def test_dag_tasks_must_be_a_mapping() -> None:
    assert_error({"name": "d", "type": "dag", "tasks": [node()]}, "tasks", "must be a mapping")
    assert_error({"name": "d", "type": "dag"}, "tasks", "required")


# --- chain ---------------------------------------------------------------------


def chain(*stages: Any) -> dict[str, Any]:
    return {"name": "c", "type": "chain", "stages": list(stages)}


def stage(name: str, **task: Any) -> dict[str, Any]:
    return {"name": name, "task": {"engine": {"type": "sim"}, **task}}


def test_chain_valid_and_ordered() -> None:
    spec = validate_spec(chain(stage("b"), stage("a", timeout="1m")))
    assert spec.stages is not None
    assert [s.name for s in spec.stages] == ["b", "a"]  # order kept
    assert spec.stages[1].task.timeout_ms == 60_000
    assert validate_spec(spec.canonical(), canonical=True) == spec


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        (chain(), "stages", "1 to 100 stages"),
        (chain(*[stage(f"s{i}") for i in range(101)]), "stages", "1 to 100 stages"),
        (chain(stage("a"), stage("a")), "stages[1].name", "duplicate stage name 'a'"),
        (chain({"name": "a"}), "stages[0].task", "required"),
        (chain({"task": {"engine": {"type": "sim"}}}), "stages[0].name", "required"),
        (chain(stage("a", timeout="x")), "stages[0].task.timeout", "must be a duration"),
        (chain({**stage("a"), "when": "always"}), "stages[0].when", "unknown key"),
        ({"name": "c", "type": "chain", "stages": {"a": 1}}, "stages", "must be a list"),
    ],
)
def test_chain_errors(doc: Any, path: str, fragment: str) -> None:
    assert_error(doc, path, fragment)


# --- stream --------------------------------------------------------------------


def stream(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "s",
        "type": "stream",
        "task": {"engine": {"type": "sim"}, "timeout": "6m"},
    }
    doc.update(over)
    return doc


SOURCE = {"type": "redis", "url": "redis://127.0.0.1:6379/0", "streams": ["s0", "s1"]}


def test_stream_defaults() -> None:
    spec = validate_spec(stream())
    canonical = spec.canonical()
    assert {k: canonical[k] for k in ("partitions", "run_for", "checkpoint_every", "mode")} == {
        "partitions": 1,
        "run_for": 300_000,
        "checkpoint_every": 10_000,
        "mode": "consume",
    }
    assert canonical["source"] is None and canonical["batch"] is None
    assert "count" not in canonical


def test_stream_micro_batch() -> None:
    spec = validate_spec(stream(mode="micro_batch", source=SOURCE, partitions=["p0", "p1"]))
    assert spec.stream is not None
    assert spec.stream.partition_names == ("p0", "p1")
    assert spec.canonical()["batch"] == {"max_entries": 1000, "max_wait": 5000, "max_in_flight": 1}
    assert validate_spec(spec.canonical(), canonical=True) == spec


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        (stream(partitions=0), "partitions", "between 1 and 1024"),
        (stream(partitions=1025), "partitions", "between 1 and 1024"),
        (stream(partitions=["a", "a"]), "partitions[1]", "duplicate 'a'"),
        (stream(partitions=[]), "partitions", "must not be empty"),
        (stream(partitions="4"), "partitions", "must be an integer"),
        (stream(mode="micro_batch"), "source", "required when mode is micro_batch"),
        (stream(batch={"max_entries": 10}), "batch", "only allowed when mode is micro_batch"),
        (stream(mode="batchy"), "mode", "unknown value"),
        (
            stream(mode="micro_batch", source=SOURCE, batch={"max_in_flight": 0}),
            "batch.max_in_flight",
            "between 1 and 16",
        ),
        (stream(run_for="10m"), "task.timeout", "at least run_for (10m)"),
        (
            stream(run_for="1h", task={"engine": {"type": "sim"}}),
            "task.timeout",
            "it defaults to 30m",
        ),
        (stream(checkpoint_every="6m"), "checkpoint_every", "not be longer than run_for"),
        (
            stream(mode="micro_batch", source={**SOURCE, "url": "http://x"}),
            "source.url",
            "redis://",
        ),
        (stream(mode="micro_batch", source={**SOURCE, "type": "kafka"}), "source.type", "unknown"),
        (stream(mode="micro_batch", source={**SOURCE, "streams": []}), "source.streams", "empty"),
        (
            stream(mode="micro_batch", source=SOURCE, batch={"max_entries": 0}),
            "batch.max_entries",
            "between 1 and 100000",
        ),
        (
            stream(mode="micro_batch", source=SOURCE, batch={"max_wait": "2h"}),
            "batch.max_wait",
            "at most 1h",
        ),
        (stream(task=None), "task", "required"),
    ],
)
def test_stream_errors(doc: Any, path: str, fragment: str) -> None:
    assert_error(doc, path, fragment)


# --- loading text -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: [", "invalid YAML at line 1, column"),
        ("a: 1\n  b: 2\n", "invalid YAML at line 2"),
        ("name: a\n---\nname: b\n", "found 2 YAML documents"),
        ("", "the spec is empty"),
        ("# only a comment\n", "the spec is empty"),
        ("[" * 20_000, "nested deeper than 64 levels"),
        ("a: " + "[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ("x: " + "a" * (MAX_SPEC_BYTES + 1), "the limit is 64 KiB"),
        ("!!python/object:os.system {}", "invalid YAML"),  # safe_load: no tags
        # PyYAML leaks ValueError & co. from its constructors: still one clean error
        ("a: !!int x", "invalid YAML value"),
        ("a: !!timestamp x", "invalid YAML value"),
        ("a: 2024-13-45", "invalid YAML value"),
        ("count: " + "9" * 5000, "invalid YAML value"),
    ],
)
def test_load_spec_text_errors(text: str, fragment: str) -> None:
    with pytest.raises(SpecValidationError) as info:
        load_spec_text(text)
    [error] = info.value.errors
    assert error.path == DOCUMENT
    assert fragment in error.message


def test_load_spec_text_tolerates_document_markers() -> None:
    assert load_spec_text("---\nname: a\n...\n") == {"name": "a"}


def test_load_spec_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: a\ntask: {engine: {type: sim}}\n")
    assert load_spec_file(good).name == "a"
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfname: a\ntask: {engine: {type: sim}}\n")
    assert load_spec_file(bom).name == "a"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe")
    with pytest.raises(SpecValidationError, match="not UTF-8"):
        load_spec_file(binary)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_SPEC_BYTES + 10))
    with pytest.raises(SpecValidationError, match="limit"):
        load_spec_file(big)
    with pytest.raises(OSError):
        load_spec_file(tmp_path / "missing.yaml")


def test_yaml_gotchas_are_reported_not_coerced() -> None:
    # YAML 1.1 reads `no` as false and `on` as true: a label must stay text.
    errors = error_map(load_spec_text("name: a\nconstraints: {labels: {country: no}}\ntask: 5"))
    assert "quote it" in errors["constraints.labels.country"]


# --- digest --------------------------------------------------------------------


def _shuffled(value: Any, rnd: random.Random) -> Any:
    """The same document with every mapping's keys in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {key: _shuffled(item, rnd) for key, item in items}
    if isinstance(value, list):
        return [_shuffled(item, rnd) for item in value]
    return value


SAMPLE_DOCS = [load_spec_text(p.read_text()) for p in VALID_SAMPLES]


@given(st.sampled_from(SAMPLE_DOCS), st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_digest(doc: Any, rnd: random.Random) -> None:
    assert spec_digest(validate_spec(_shuffled(doc, rnd))) == spec_digest(validate_spec(doc))


DURATION_SPELLINGS = {
    30_000: ["30s", "0.5m", "30000ms", 30, 30.0, "0.5m0s"],
    90_000: ["1.5m", "1m30s", "90s", 90],
    5_400_000: ["1h30m", "1.5h", "90m", 5400],
}


@given(st.sampled_from(sorted(DURATION_SPELLINGS)), st.data())
def test_equivalent_durations_give_the_same_digest(ms: int, data: st.DataObject) -> None:
    spellings = DURATION_SPELLINGS[ms]
    a, b = data.draw(st.sampled_from(spellings)), data.draw(st.sampled_from(spellings))
    task = {"engine": {"type": "sim", "duration": a}, "timeout": a, "retry": {"backoff": "1s"}}
    other = {"engine": {"type": "sim", "duration": b}, "timeout": b, "retry": {"backoff": 1}}
    assert spec_digest(validate_spec(batch(task=task))) == spec_digest(
        validate_spec(batch(task=other))
    )


def test_spelled_out_defaults_give_the_same_digest() -> None:
    explicit = {
        "name": "job",
        "type": "batch",
        "count": 1,
        "constraints": {"labels": {}},
        "queue_timeout": None,
        "task": {
            "engine": dict(PROCESS),
            "env": {},
            "resources": {"cpu": 0.1, "memory": "256MiB"},
            "timeout": "30m",
            "retry": {"attempts": 3, "backoff": "1s"},
        },
    }
    assert spec_digest(validate_spec(explicit)) == spec_digest(validate_spec(batch()))
    # cpu 1 and 1.0 are one value; msgpack would tell int from float.
    one = batch(task={"engine": PROCESS, "resources": {"cpu": 1}})
    one_f = batch(task={"engine": PROCESS, "resources": {"cpu": 1.0}})
    assert canonical_bytes(validate_spec(one)) == canonical_bytes(validate_spec(one_f))
    # the size spelling does not matter either
    m1 = batch(task={"engine": PROCESS, "resources": {"memory": "1GiB"}})
    m2 = batch(task={"engine": PROCESS, "resources": {"memory": 2**30}})
    assert spec_digest(validate_spec(m1)) == spec_digest(validate_spec(m2))


CHANGES = [
    ("count", 2),
    ("name", "other"),
    ("type", "service"),
    ("queue_timeout", "1m"),
    ("constraints", {"labels": {"zone": "a"}}),
    ("task", {"engine": {"type": "process", "command": ["echo", "ho"]}}),
    ("task", {"engine": PROCESS, "timeout": "29m"}),
    ("task", {"engine": PROCESS, "env": {"A": ""}}),
    ("task", {"engine": PROCESS, "retry": {"attempts": 2}}),
    ("task", {"engine": PROCESS, "resources": {"cpu": 0.2}}),
]


@given(st.lists(st.sampled_from(range(len(CHANGES))), min_size=1, unique=True))
def test_different_specs_have_different_digests(picks: list[int]) -> None:
    changed = batch()
    for i in picks:
        key, value = CHANGES[i]
        changed[key] = copy.deepcopy(value)
    assert spec_digest(validate_spec(changed)) != spec_digest(validate_spec(batch()))


def test_sample_digests_are_distinct() -> None:
    digests = {spec_digest(validate_spec(doc)) for doc in SAMPLE_DOCS}
    assert len(digests) == len(SAMPLE_DOCS)


# --- canonical form from peers ---------------------------------------------------------


def test_validate_task_reads_the_canonical_form() -> None:
    spec = load_spec_file(SPECS / "hello.yaml")
    assert spec.task is not None
    wire = spec.task.canonical()
    assert validate_task(wire) == spec.task
    assert validate_task(wire) == spec.task
    # In canonical form an int duration is milliseconds, not seconds ...
    assert validate_task({**wire, "timeout": 30}).timeout_ms == 30
    # ... and human spellings are refused.
    with pytest.raises(SpecValidationError) as info:
        validate_task({**wire, "timeout": "30s", "resources": {"cpu": 1, "memory": "1GiB"}})
    assert {str(e) for e in info.value.errors} == {
        "timeout: must be integer milliseconds, got a string ('30s')",
        "resources.memory: must be integer bytes, got a string ('1GiB')",
    }
    with pytest.raises(SpecValidationError) as info:
        validate_task("not a task")
    assert info.value.errors[0].path == DOCUMENT


def test_canonical_sim_task_from_a_peer() -> None:
    task = validate_task(
        {
            "engine": {
                "type": "sim",
                "duration": 5000,
                "exit_code": 0,
                "output_bytes": 0,
                "fail_rate": 0.0,
                "hang": False,
            },
            "env": {},
            "resources": {"cpu": 0.5, "memory": 256 * 2**20},
            "timeout": 60_000,
            "retry": {"attempts": 3, "backoff": 1000},
        }
    )
    assert task.engine == SimEngine(duration_ms=5000)
    assert task.timeout_ms == 60_000


def test_from_canonical_rejects_bad_input() -> None:
    canonical = load_spec_file(SPECS / "hello.yaml").canonical()
    canonical["task"]["timeout"] = "30s"
    canonical["extra"] = 1
    with pytest.raises(SpecValidationError) as info:
        validate_spec(canonical, canonical=True)
    assert {e.path for e in info.value.errors} == {"task.timeout", "extra"}


def test_views_are_immutable() -> None:
    spec = load_spec_file(SPECS / "hello.yaml")
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    assert spec.task is not None
    with pytest.raises(TypeError):
        spec.task.env["X"] = "y"  # type: ignore[index]


# --- robustness: arbitrary documents never crash the validator ------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.just(10**30),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["30s", "1GiB", "process", "sim", "batch", "dag", "*/5 * * * *", "a"]),
)
_keys = st.sampled_from(
    [
        "name",
        "type",
        "task",
        "engine",
        "command",
        "count",
        "tasks",
        "depends_on",
        "timeout",
        "schedule",
        "cron",
        "every",
        "stages",
        "partitions",
        "source",
        "mode",
        "env",
        "labels",
        "constraints",
        "resources",
        "cpu",
        "memory",
        "map",
        "over",
        "as",
        "x",
    ]
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_documents, st.booleans())
def test_arbitrary_documents_never_crash(doc: Any, canonical: bool) -> None:
    try:
        spec = validate_spec(doc, canonical=canonical)
    except SpecValidationError as err:
        assert err.errors
        assert all(isinstance(e.path, str) and e.message for e in err.errors)
    else:
        assert validate_spec(spec.canonical(), canonical=True) == spec


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    with contextlib.suppress(SpecValidationError):
        parse_spec(text)


def test_canonical_form_survives_yaml() -> None:
    # `job explain -o yaml` output read back as canonical form is the same spec.
    spec = load_spec_file(SPECS / "dag.yaml")
    assert validate_spec(yaml.safe_load(yaml.safe_dump(spec.canonical())), canonical=True) == spec


# --- daemon / service: rollout and the long-running timeout ----------------------


def test_long_running_kinds_default_to_the_longest_timeout() -> None:
    for kind in ("daemon", "service"):
        spec = validate_spec({**batch(), "type": kind})
        assert spec.task is not None and spec.task.timeout_ms == 7 * 24 * 3600 * 1000
        assert spec.rollout is not None and spec.rollout.max_unavailable == 1
    explicit = validate_spec(
        {**batch(), "type": "service", "task": {**batch()["task"], "timeout": "1h"}}
    )
    assert explicit.task is not None and explicit.task.timeout_ms == 3600 * 1000
    plain = validate_spec(batch())
    assert plain.task is not None and plain.task.timeout_ms == 30 * 60 * 1000
    assert plain.rollout is None and "rollout" not in plain.canonical()


def test_rollout_is_validated_and_only_for_long_running_kinds() -> None:
    assert_error(
        {**batch(), "rollout": {"max_unavailable": 2}}, "rollout", "only for type daemon, service"
    )
    doc = {**batch(), "type": "daemon", "rollout": {"max_unavailable": 0, "surge": 1}}
    errors = error_map(doc)
    assert "between 1 and" in errors["rollout.max_unavailable"]
    assert "unknown key" in errors["rollout.surge"]
    spec = validate_spec({**batch(), "type": "daemon", "rollout": {"max_unavailable": 3}})
    assert spec.canonical()["rollout"] == {"max_unavailable": 3}
    assert validate_spec(spec.canonical(), canonical=True) == spec


# --- task.network ---------------------------------------------------------------


def test_network_defaults_to_none_and_stays_out_of_the_canonical_form() -> None:
    plain = validate_task({"engine": PROCESS})
    explicit = validate_task({"engine": PROCESS, "network": "none"})
    assert plain.network == explicit.network == "none"
    assert "network" not in plain.canonical()
    # Specs written before the key existed keep their digest.
    assert spec_digest(plain) == spec_digest(explicit)
    host = validate_task({"engine": PROCESS, "network": "host"})
    assert host.canonical()["network"] == "host"
    assert validate_task(host.canonical()) == host
    assert spec_digest(host) != spec_digest(plain)


@pytest.mark.parametrize("value", ["bridge", "", 1, ["host"]])
def test_network_accepts_only_none_or_host(value: Any) -> None:
    with pytest.raises(SpecValidationError) as caught:
        validate_task({"engine": PROCESS, "network": value})
    assert [e.path for e in caught.value.errors] == ["network"], caught.value


def test_host_network_shows_in_the_summary() -> None:
    spec = validate_spec({"name": "n", "task": {"engine": PROCESS, "network": "host"}})
    assert "host network" in spec.describe()
