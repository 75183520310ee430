"""The wasm engine's spec keys, and how its module file becomes a blob."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pnode.blobs import BlobError, BlobStore
from p2pnode.cli import cli
from p2pnode.wasm_modules import (
    check_module_files,
    module_problems,
    read_module_file,
    store_module_files,
)
from protocols.spec import (
    SpecError,
    SpecValidationError,
    WasmEngine,
    validate_spec,
    validate_task,
)

CONTENT_ID = "sha256:" + "ab" * 32


def wasm_job(**engine: Any) -> dict[str, Any]:
    return {"name": "w", "task": {"engine": {"type": "wasm", **engine}}}


def errors(doc: Any) -> dict[str, str]:
    with pytest.raises(SpecValidationError) as info:
        validate_spec(doc)
    return {e.path: e.message for e in info.value.errors}


def test_defaults_and_canonical_round_trip() -> None:
    spec = validate_spec(wasm_job(module=CONTENT_ID))
    assert spec.task.engine == WasmEngine(module=CONTENT_ID, entrypoint="_start", args=())
    engine = spec.canonical()["task"]["engine"]
    assert engine == {"args": [], "entrypoint": "_start", "module": CONTENT_ID, "type": "wasm"}
    assert validate_spec(spec.canonical(), canonical=True) == spec
    task = validate_task(spec.canonical()["task"])
    assert task.engine == spec.task.engine


def test_every_key() -> None:
    spec = validate_spec(wasm_job(module="m.wat", entrypoint="run", args=["a", "", "c d"]))
    assert spec.task.engine == WasmEngine(module="m.wat", entrypoint="run", args=("a", "", "c d"))


def test_every_error_is_listed() -> None:
    doc = wasm_job(entrypoint="", args="a b", command=["x"], image="i", bogus=1)
    doc["task"]["module"] = "m.wasm"
    assert errors(doc) == {
        "task.engine.module": "required",
        "task.engine.entrypoint": "must not be empty",
        "task.engine.args": "must be a list of strings like [--verbose, in.txt], got a string",
        "task.engine.command": "only allowed for the process and docker engines",
        "task.engine.image": "only allowed for the docker engine",
        "task.engine.bogus": errors(wasm_job(module="m", bogus=1))["task.engine.bogus"],
        "task.module": "belongs under engine (engine.module)",
    }


@pytest.mark.parametrize(
    ("engine", "path", "fragment"),
    [
        ({"module": 5}, "task.engine.module", "must be a string"),
        ({"module": "m\0"}, "task.engine.module", "NUL"),
        ({"module": "m" * 5000}, "task.engine.module", "at most 4096"),
        ({"module": "m", "args": [1]}, "task.engine.args[0]", "must be a string"),
        ({"module": "m", "args": ["x"] * 1000}, "task.engine.args", "at most"),
        ({"module": "m", "entrypoint": "e" * 300}, "task.engine.entrypoint", "at most 256"),
    ],
)
def test_bad_values(engine: dict[str, Any], path: str, fragment: str) -> None:
    found = errors(wasm_job(**engine))
    assert fragment in found[path], found


def test_wasm_keys_on_another_engine_are_pointed_out() -> None:
    doc = {"name": "p", "task": {"engine": {"type": "process", "command": ["x"], "module": "m"}}}
    assert errors(doc) == {"task.engine.module": "only allowed for the wasm engine"}


def test_a_missing_type_names_wasm() -> None:
    assert "wasm" in errors({"name": "x", "task": {"engine": {"module": "m"}}})["task.engine.type"]


def test_dag_tasks_may_be_wasm() -> None:
    doc = {
        "name": "d",
        "type": "dag",
        "tasks": {
            "a": {"engine": {"type": "wasm", "module": "a.wat"}},
            "b": {"engine": {"type": "wasm", "module": "b.wat"}, "depends_on": ["a"]},
        },
    }
    validate_spec(doc)


# --- the module file -> blob ---------------------------------------------------------


def test_store_module_files_swaps_paths_for_content_ids(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "m.wat").write_bytes(b"(module)")
    doc = wasm_job(module="mods/m.wat")
    stored = store_module_files(doc, tmp_path, tmp_path / "data")
    content_id = "sha256:" + hashlib.sha256(b"(module)").hexdigest()
    assert stored["task"]["engine"]["module"] == content_id
    assert doc["task"]["engine"]["module"] == "mods/m.wat"  # the input is left alone
    assert BlobStore(tmp_path / "data").read_bytes(content_id) == b"(module)"
    assert module_problems(stored, BlobStore(tmp_path / "data").has) == []


def test_store_module_files_keeps_the_nodes_temp_files(tmp_path: Path) -> None:
    """A CLI writing beside a running node must not sweep its in-flight writes."""
    BlobStore(tmp_path / "data")
    in_flight = tmp_path / "data" / "blobs" / "tmp" / "node-write.part"
    in_flight.write_bytes(b"half")
    (tmp_path / "m.wat").write_bytes(b"(module)")
    store_module_files(wasm_job(module="m.wat"), tmp_path, tmp_path / "data")
    assert in_flight.exists()


def test_a_file_that_cannot_be_read_is_one_error(tmp_path: Path) -> None:
    doc = wasm_job(module="nope.wat")
    [problem] = check_module_files(validate_spec(doc).canonical(), tmp_path)
    assert problem == SpecError(
        "task.engine.module", "cannot read module 'nope.wat': No such file or directory"
    )
    with pytest.raises(BlobError, match=r"cannot read module 'nope\.wat'"):
        store_module_files(doc, tmp_path, tmp_path / "data")


def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        read_module_file(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        read_module_file(tmp_path)


def test_an_oversized_module_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("p2pnode.wasm_modules.MAX_MODULE_BYTES", 10)
    (tmp_path / "big.wasm").write_bytes(b"x" * 11)
    with pytest.raises(ValueError, match="larger than the limit"):
        read_module_file(tmp_path / "big.wasm")


def test_the_node_refuses_paths_and_unknown_ids(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    present = store.put_bytes(b"(module)")
    doc = {
        "name": "d",
        "type": "dag",
        "tasks": {
            "a": {"engine": {"type": "wasm", "module": "a.wat"}},
            "b": {"engine": {"type": "wasm", "module": CONTENT_ID}},
            "c": {"engine": {"type": "wasm", "module": present}},
        },
    }
    problems = {p.path: p.message for p in module_problems(validate_spec(doc).canonical(),
                                                          store.has)}
    assert set(problems) == {"tasks.a.engine.module", "tasks.b.engine.module"}
    assert problems["tasks.a.engine.module"].startswith("must be a content id")
    assert "not in this node's blob store" in problems["tasks.b.engine.module"]


def test_cli_validate_resolves_the_module_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    spec = tmp_path / "sub" / "job.yaml"
    spec.write_text("name: w\ntask:\n  engine: {type: wasm, module: m.wat}\n")
    missing = CliRunner().invoke(cli, ["job", "validate", str(spec)])
    assert missing.exit_code == 1
    assert "task.engine.module: cannot read module 'm.wat'" in missing.output
    (tmp_path / "sub" / "m.wat").write_text("(module)")
    ok = CliRunner().invoke(cli, ["job", "validate", str(spec)])
    assert (ok.exit_code, ok.output.strip()) == (0, "OK")


def test_cli_run_refuses_a_missing_module_before_contacting_a_node(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: w\ntask:\n  engine: {type: wasm, module: gone.wasm}\n")
    result = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path / "no-node"), "job", "run", str(spec)]
    )
    assert result.exit_code == 1, result.output
    assert "task.engine.module: cannot read module 'gone.wasm'" in result.output
    assert not (tmp_path / "no-node").exists()  # nothing was stored anywhere
