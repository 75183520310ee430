"""WasmExecutor against real wasmtime modules (tests/wasm/tool.wat, compiled
from WAT at run time): WASI preopens, output, progress, limits, traps and
interruption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.blobs import BlobStore, ManifestEntry
from p2pnode.engines import EngineRouter
from p2pnode.executor import install_progress
from p2pnode.executors.common import ExecutorError, safe_name
from p2pnode.executors.wasm import TRAP_EXIT_CODE, WasmExecutor
from p2pnode.inputs import InputFetcher
from protocols.events import ExecutionFinished, StartExecution

MIB = 1024 * 1024
TOOL = Path(__file__).parent / "wasm" / "tool.wat"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data")


@pytest.fixture
def executor(tmp_path: Path, blobs: BlobStore) -> WasmExecutor:
    return WasmExecutor(tmp_path / "data", blobs, max_output_bytes=64 * MIB)


@pytest.fixture
def tool(blobs: BlobStore) -> str:
    return blobs.put_bytes(TOOL.read_bytes())


def _task(module: str, *args: str, entrypoint: str = "_start", **extra: Any) -> dict[str, Any]:
    engine = {"type": "wasm", "module": module, "entrypoint": entrypoint, "args": list(args)}
    return {"engine": engine, **extra}


def _start(
    task: dict[str, Any], inputs: tuple[tuple[str, str, str], ...] = (), eid: str = "exec-1"
) -> StartExecution:
    return StartExecution(eid, "job-1", 3, task, dict(task.get("env", {})), 30.0, inputs)


def _outputs(blobs: BlobStore, result: ExecutionFinished, dest: Path) -> dict[str, bytes]:
    names = blobs.materialize(result.manifest_id, dest)
    return {name: (dest / name).read_bytes() for name in names}


async def test_hello_writes_stdout_stderr_and_outputs(
    executor: WasmExecutor, blobs: BlobStore, tool: str, tmp_path: Path
) -> None:
    result = await executor.run(_start(_task(tool, "hello")))
    assert result.status == "succeeded", result
    assert (result.exit_code, result.error) == (0, "")
    assert result.stdout_tail == "hello from wasm\nP2PNODE_CHECKPOINT 7\n"
    assert result.stderr_tail == "to stderr\n"
    assert _outputs(blobs, result, tmp_path / "out") == {"x": b"written by wasm\n"}
    assert not (executor.data_dir / "work" / safe_name("exec-1")).exists()


async def test_a_wat_module_and_its_binary_run_alike(
    executor: WasmExecutor, blobs: BlobStore
) -> None:
    import wasmtime

    binary = blobs.put_bytes(bytes(wasmtime.wat2wasm(TOOL.read_text())))
    result = await executor.run(_start(_task(binary, "hello")))
    assert result.status == "succeeded", result
    assert result.stdout_tail.startswith("hello from wasm\n")


async def test_reads_an_input_and_writes_an_output(
    executor: WasmExecutor, blobs: BlobStore, tool: str, tmp_path: Path
) -> None:
    data = b"some input bytes\n" * 100
    digest = blobs.put_bytes(data)
    manifest = blobs.put_manifest([ManifestEntry("a.txt", len(data), digest.split(":")[1])])
    start = _start(_task(tool, "copy", "up/a.txt", "copied"), inputs=(("up", manifest, ""),))
    result = await executor.run(start)
    assert result.status == "succeeded", result
    assert _outputs(blobs, result, tmp_path / "out") == {"copied": data}


async def test_inputs_are_read_only(
    executor: WasmExecutor, tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await executor.run(_start(_task(tool, "rw")))
    assert result.status == "succeeded", result
    assert result.stdout_tail == "inputs read-only\n"
    # Planted bug: a writable /inputs preopen; the module's probe notices.
    monkeypatch.setattr("p2pnode.executors.wasm.INPUTS_WRITABLE", True)
    result = await executor.run(_start(_task(tool, "rw"), eid="planted"))
    assert (result.status, result.stdout_tail) == ("failed", "")


async def test_env_has_task_env_and_p2pnode_vars(executor: WasmExecutor, tool: str) -> None:
    result = await executor.run(_start(_task(tool, "env", env={"GREETING": "hi there"})))
    lines = set(result.stdout_tail.splitlines())
    assert {
        "GREETING=hi there",
        "P2PNODE_INPUTS=/inputs",
        "P2PNODE_OUTPUTS=/outputs",
        "P2PNODE_SLOT=3",
        "P2PNODE_EXECUTION_ID=exec-1",
        "P2PNODE_JOB_ID=job-1",
    } <= lines
    assert not any(line.startswith(("PATH=", "HOME=")) for line in lines)  # nothing of the node's


async def test_proc_exit_code_is_the_exit_code(executor: WasmExecutor, tool: str) -> None:
    result = await executor.run(_start(_task(tool, "exit")))
    assert (result.status, result.exit_code) == ("failed", 3)
    assert result.error == "proc_exit(3)"


async def test_a_trap_fails_with_its_reason(executor: WasmExecutor, tool: str) -> None:
    result = await executor.run(_start(_task(tool, "trap")))
    assert (result.status, result.exit_code) == ("failed", TRAP_EXIT_CODE)
    assert "unreachable" in result.error and "\n" not in result.error


async def test_another_entrypoint(executor: WasmExecutor, tool: str) -> None:
    result = await executor.run(_start(_task(tool, entrypoint="alt")))
    assert result.status == "succeeded", result
    assert result.stdout_tail == "alt entry\n"


async def test_a_missing_entrypoint_is_named(executor: WasmExecutor, tool: str) -> None:
    result = await executor.run(_start(_task(tool, entrypoint="main")))
    assert (result.status, result.exit_code) == ("failed", -1)
    assert "entrypoint 'main'" in result.error and "_start" in result.error
    result = await executor.run(_start(_task(tool, entrypoint="memory")))  # not a function
    assert "not a function" in result.error


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00\x01\xff\xfe garbage", "neither WebAssembly binary nor WAT text"),
        (b"(module (func $f (export \"_start\") (call $nope)))", "not a valid wasm module"),
        (b"\0asm\x01\0\0\0\xff", "not a valid wasm module"),
        (b'(module (import "env" "nope" (func)))', "cannot instantiate the module"),
    ],
)
async def test_bad_modules_fail_clearly(
    executor: WasmExecutor, blobs: BlobStore, content: bytes, reason: str
) -> None:
    result = await executor.run(_start(_task(blobs.put_bytes(content))))
    assert (result.status, result.exit_code) == ("failed", -1), result
    assert reason in result.error


async def test_memory_cap_refuses_growth_past_resources_memory(
    executor: WasmExecutor, tool: str
) -> None:
    # The module starts with 2 pages of 64 KiB; 1 MiB is 16 pages.
    small = {"resources": {"cpu": 0.1, "memory": 1 * MIB}}
    result = await executor.run(_start(_task(tool, "grow", "20", **small)))
    assert (result.exit_code, result.stdout_tail) == (2, "grow refused\n")
    result = await executor.run(_start(_task(tool, "grow", "10", **small)))
    assert (result.exit_code, result.stdout_tail) == (0, "grew\n")
    big = {"resources": {"cpu": 0.1, "memory": 4 * MIB}}
    result = await executor.run(_start(_task(tool, "grow", "20", **big)))
    assert (result.exit_code, result.stdout_tail) == (0, "grew\n")


async def test_a_module_declaring_more_memory_than_the_cap_does_not_start(
    executor: WasmExecutor, blobs: BlobStore
) -> None:
    module = blobs.put_bytes(b'(module (memory 100) (func (export "_start")))')  # 6.25 MiB
    task = _task(module, resources={"cpu": 0.1, "memory": 1 * MIB})
    result = await executor.run(_start(task))
    assert result.status == "failed"
    assert "cannot instantiate" in result.error and "memory" in result.error


async def test_cancel_interrupts_an_endless_loop(executor: WasmExecutor, tool: str) -> None:
    """What the runtime does on a timeout, job stop or lease loss: cancel."""
    with trio.move_on_after(0.5) as scope:
        await executor.run(_start(_task(tool, "loop")))
    assert scope.cancelled_caught
    assert executor.interrupted == 1
    assert not (executor.data_dir / "work" / safe_name("exec-1")).exists()
    # The executor is still usable: the next run is not affected.
    assert (await executor.run(_start(_task(tool, "hello"), eid="e2"))).status == "succeeded"


async def test_a_module_sleeps_through_wasi(executor: WasmExecutor, tool: str) -> None:
    result = await executor.run(_start(_task(tool, "sleep", "50")))
    assert (result.status, result.stdout_tail) == ("succeeded", "slept\n"), result


async def test_cancel_wakes_a_module_sleeping_in_a_host_call(
    executor: WasmExecutor, tool: str
) -> None:
    """Epoch interruption cannot stop a host call: wasmtime's own poll_oneoff
    would sleep out the module's 10 minutes (past this suite's timeout)."""
    with trio.move_on_after(0.5) as scope:
        await executor.run(_start(_task(tool, "sleep", "600000")))
    assert scope.cancelled_caught
    assert executor.interrupted == 1


async def test_the_loop_keeps_running_on_a_worker_thread(executor: WasmExecutor, tool: str) -> None:
    """The trio loop stays free while the module spins: a ticker keeps ticking."""
    ticks = 0
    with trio.move_on_after(0.6):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _start(_task(tool, "loop")))
            while True:
                await trio.sleep(0.05)
                ticks += 1
    assert ticks >= 3


async def test_checkpoint_lines_are_progress_reports(executor: WasmExecutor, tool: str) -> None:
    class Sink:
        def __init__(self) -> None:
            self.reports: list[tuple[str, int]] = []

        def report(self, checkpoint: str = "", lag: int = -1) -> None:
            self.reports.append((checkpoint, lag))

    sink = Sink()
    install_progress(sink)
    try:
        result = await executor.run(_start(_task(tool, "hello")))
    finally:
        install_progress(None)
    assert result.status == "succeeded"
    assert sink.reports == [("7", -1)]


async def test_a_module_missing_from_the_store_is_an_executor_error(
    executor: WasmExecutor,
) -> None:
    with pytest.raises(ExecutorError, match="not in the store"):
        await executor.run(_start(_task("sha256:" + "0" * 64)))


async def test_router_reports_a_module_it_cannot_fetch(
    executor: WasmExecutor, blobs: BlobStore
) -> None:
    router = EngineRouter({"wasm": executor}, inputs=InputFetcher(blobs))
    result = await router.run(_start(_task("sha256:" + "1" * 64)))
    assert result.status == "error"
    assert result.error.startswith("cannot fetch the wasm module:")


@pytest.mark.parametrize(
    "module",
    [
        b'(module (memory 1) (memory 1) (func (export "_start")))',
        b'(module (table 2000000 funcref) (func (export "_start")))',
    ],
    ids=["two-memories", "huge-table"],
)
async def test_store_limits_beyond_memory(
    executor: WasmExecutor, blobs: BlobStore, module: bytes
) -> None:
    """A second linear memory would double the cap; tables cost host memory too."""
    result = await executor.run(_start(_task(blobs.put_bytes(module))))
    assert (result.status, result.exit_code) == ("failed", -1), result
    assert "cannot instantiate" in result.error
