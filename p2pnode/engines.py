"""Routes each execution to the executor of its engine type.

A node enables executors explicitly (``serve --executors process,docker``):
they run commands that arrive from the network.  The core only bids for work
whose engine is enabled, so an unknown engine here is a bug in a peer or a race
with a configuration change, reported as an ``error`` result, never a crash.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import trio

from p2pnode.blobs import BlobStore, ManifestEntry
from p2pnode.executor import Executor
from p2pnode.executors.common import clip_error
from p2pnode.executors.sandbox import BwrapSandbox
from p2pnode.inputs import InputError, InputFetcher
from protocols.events import ExecutionFinished, StartExecution
from protocols.spec import validate_task
from protocols.spec.model import SimEngine

MAX_OUTPUT_BYTES = 1024**3  # per execution; larger outputs fail the execution clearly


class SimExecutor:
    """Runs ``engine: {type: sim}`` tasks for real, without a process: sleeps
    the task's duration, writes ``output_bytes`` of output, exits with its code
    (or fails at ``fail_rate``; ``hang`` sleeps until the timeout kills it).
    Used by benchmarks and demos to measure the protocol, not the workload."""

    def __init__(self, blobs: BlobStore, rng: random.Random | None = None) -> None:
        self.blobs = blobs
        self._rng = rng or random.Random()

    async def run(self, start: StartExecution) -> ExecutionFinished:
        engine = validate_task(start.task).engine
        assert isinstance(engine, SimEngine)
        t0 = trio.current_time()
        if engine.hang:
            await trio.sleep_forever()
        await trio.sleep(engine.duration_ms / 1000)
        failed = engine.fail_rate > 0 and self._rng.random() < engine.fail_rate
        exit_code = engine.exit_code or (1 if failed else 0)
        manifest = ""
        if engine.output_bytes:
            data = b"\0" * engine.output_bytes
            digest = self.blobs.put_bytes(data)
            entry = ManifestEntry(path="output.bin", size=len(data), sha256=digest.split(":", 1)[1])
            manifest = self.blobs.put_manifest([entry])
        return ExecutionFinished(
            execution_id=start.execution_id,
            status="succeeded" if exit_code == 0 else "failed",
            exit_code=exit_code,
            manifest_id=manifest,
            duration_ms=int((trio.current_time() - t0) * 1000),
        )


class EngineRouter:
    """``inputs``: fetches a task's inputs (``StartExecution.inputs``) into
    the local blob store before its executor runs (see ``p2pnode/inputs.py``);
    without one, inputs must already be local."""

    def __init__(
        self, executors: Mapping[str, Executor], *, inputs: InputFetcher | None = None
    ) -> None:
        self.executors = dict(executors)
        self.inputs = inputs

    async def run(self, start: StartExecution) -> ExecutionFinished:
        engine = str(start.task.get("engine", {}).get("type", ""))
        executor = self.executors.get(engine)
        if executor is None:
            return ExecutionFinished(
                execution_id=start.execution_id,
                status="error",
                exit_code=-1,
                error=f"executor {engine!r} is not enabled on this node",
            )
        module = start.task.get("engine", {}).get("module") if engine == "wasm" else None
        if isinstance(module, str) and self.inputs is not None:
            # The module travels like an input: by content id, from the owner.
            try:
                await self.inputs.fetch_blob(module, start.owner)
            except InputError as err:
                return ExecutionFinished(
                    execution_id=start.execution_id,
                    status="error",
                    exit_code=-1,
                    error=clip_error(f"cannot fetch the wasm module: {err}"),
                )
        if start.inputs and self.inputs is not None:
            try:
                await self.inputs.fetch(start.inputs)
            except InputError as err:
                return ExecutionFinished(
                    execution_id=start.execution_id,
                    status="error",
                    exit_code=-1,
                    error=clip_error(f"cannot fetch inputs: {err}"),
                )
        return await executor.run(start)

    async def reap_stale(self) -> None:
        """Kill what a previous run of this node left behind (processes, containers)."""
        for executor in self.executors.values():
            reap = getattr(executor, "reap_stale", None)
            if reap is not None:
                result = reap()
                if hasattr(result, "__await__"):
                    await result


def build_executors(
    names: Iterable[str],
    data_dir: Path,
    blobs: BlobStore,
    node_id: str,
    *,
    sandbox: str | BwrapSandbox | None = "bwrap",
    sandbox_ro_paths: tuple[str, ...] = (),
) -> dict[str, Executor]:
    """``sandbox``: the process executor's (a mode, bwrap or none, or one
    already opened).  Raises ``SandboxUnavailable`` when it cannot work here."""
    executors: dict[str, Executor] = {}
    for name in names:
        if name == "process":
            from p2pnode.executors.process import ProcessExecutor

            executors[name] = ProcessExecutor(
                data_dir,
                blobs,
                max_output_bytes=MAX_OUTPUT_BYTES,
                sandbox=sandbox,
                sandbox_ro_paths=sandbox_ro_paths,
            )
        elif name == "docker":
            from p2pnode.executors.docker import DockerExecutor

            executors[name] = DockerExecutor(
                data_dir, blobs, node_id=node_id, max_output_bytes=MAX_OUTPUT_BYTES
            )
        elif name == "wasm":
            from p2pnode.executors.wasm import WasmExecutor

            executors[name] = WasmExecutor(data_dir, blobs, max_output_bytes=MAX_OUTPUT_BYTES)
        elif name == "sim":
            executors[name] = SimExecutor(blobs)
        else:
            raise ValueError(f"unknown executor {name!r}")
    return executors
