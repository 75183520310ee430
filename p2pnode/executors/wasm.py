"""Run a task as a WebAssembly module (``engine: {type: wasm, module, entrypoint, args}``).

A portable sandbox by construction: the module sees only what WASI (preview 1)
hands it, and this executor hands it little.

How a task runs
---------------
* ``module`` is a content id (``sha256:<hex>``); the engine router fetched the
  blob from the job's owner before this runs (``p2pnode/wasm_modules.py``).
  Its bytes are read back verified, and compiled as a WebAssembly binary, or as
  WAT text when they are not one.
* One wasmtime ``Engine`` and ``Store`` per execution.  The store gets WASI
  with exactly two preopened directories: ``/inputs`` (read-only: the
  execution's inputs, laid out as for the process executor) and ``/outputs``
  (read-write; what the module leaves there becomes the result manifest, also
  when it fails).  argv is ``module.wasm`` followed by ``args``; env is the task's
  env, then ``P2PNODE_INPUTS=/inputs``, ``P2PNODE_OUTPUTS=/outputs`` and the
  other ``P2PNODE_*`` variables, which the task cannot override.  stdin is empty.
  WASI preview 1 has no sockets (none are preopened): no network at all.
* stdout and stderr go into bounded tails; stdout lines
  ``P2PNODE_CHECKPOINT <value>`` / ``P2PNODE_LAG <n>`` are progress reports,
  as for the process executor.
* ``resources.memory`` caps the module's linear memory (store limits): a
  ``memory.grow`` past it returns -1, and a module whose declared minimum is
  over it fails to instantiate.
* The exit code is the one passed to WASI ``proc_exit``; returning from the
  entry point is 0; a trap is 134 (what the wasmtime CLI reports, 128+SIGABRT)
  with the trap's reason.  A module that does not compile or instantiate, or
  lacks the entry point, fails with exit code -1 and a reason saying which.

Time bounds
-----------
The module runs in a worker thread (never on the trio loop) with epoch
interruption enabled and a deadline of one epoch.  The runtime's cancel scope
(the task's ``timeout``, ``job stop``, a lost lease) cancels a watcher task
whose cleanup increments the engine's epoch: the module traps at its next
loop back-edge or function entry, promptly, and the thread ends.  Epoch checks
do not reach into host calls: the one that can block, ``poll_oneoff`` (a WASI
sleep), is replaced by one that sleeps on an event the watcher sets
(``_InterruptibleClocks``); file reads and writes are bounded by the files.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
import wasmtime

from p2pnode.blobs import BlobError, BlobStore
from p2pnode.errors import P2PNodeError
from p2pnode.executor import current_progress
from p2pnode.executors.common import (
    DEFAULT_TAIL_BYTES,
    ExecutorError,
    ProgressParser,
    TailBuffer,
    Workdir,
    clip_error,
    finish_with_outputs,
    lay_out_inputs,
    p2pnode_env,
    task_env,
)
from p2pnode.logcapture import current_output
from p2pnode.wasm_modules import MAX_MODULE_BYTES
from protocols.events import ExecutionFinished, StartExecution
from protocols.spec import TaskSpec, WasmEngine, validate_task

__all__ = ["TRAP_EXIT_CODE", "WasmExecutor"]

GUEST_INPUTS = "/inputs"
GUEST_OUTPUTS = "/outputs"
ARGV0 = "module.wasm"
TRAP_EXIT_CODE = 134  # as the wasmtime CLI: 128 + SIGABRT
NOT_RUN_EXIT_CODE = -1  # the module did not compile, instantiate or have its entry point
WASM_MAGIC = b"\0asm"
MAX_TABLE_ELEMENTS = 1_000_000
MAX_TABLES = 16
MAX_INSTANCES = 16
INPUTS_WRITABLE = False  # the task must not alter its inputs (a test plants True)


class BadModule(P2PNodeError):
    """The module cannot run (not wasm, unknown import, no such entry point):
    the task's fault, reported as a failed execution."""


@attrs.frozen
class Outcome:
    exit_code: int
    error: str = ""


def compile_module(engine: wasmtime.Engine, data: bytes) -> wasmtime.Module:
    """A WebAssembly binary, or WAT text; ``BadModule`` when it is neither."""
    try:
        if data.startswith(WASM_MAGIC):
            return wasmtime.Module(engine, data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadModule("not a wasm module (neither WebAssembly binary nor WAT text)") from None
        return wasmtime.Module(engine, bytes(wasmtime.wat2wasm(text)))
    except wasmtime.WasmtimeError as err:
        raise BadModule(f"not a valid wasm module: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _trap_reason(err: wasmtime.Trap | wasmtime.WasmtimeError) -> str:
    """The ``wasm trap: ...`` line of a trap's message (the rest is a backtrace)."""
    for line in str(err).splitlines():
        if line.strip().startswith("wasm trap:"):
            return line.strip()
    return _first_line(err)


# WASI preview 1 layouts and errno values (witx: wasi_snapshot_preview1).
_SUBSCRIPTION = 48  # userdata u64, tag u8 @8, clock id u32 @16, timeout u64 @24, flags u16 @40
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, error, type, nbytes, flags: 32 bytes
_CLOCKS: dict[int, Callable[[], int]] = {
    0: time.time_ns,  # realtime
    1: time.monotonic_ns,
    2: time.process_time_ns,
    3: time.thread_time_ns,
}
_EFAULT, _EINVAL = 21, 28
_MAX_SUBSCRIPTIONS = 4096
_I32, _I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()


class _InterruptibleClocks:
    """``poll_oneoff`` and ``clock_time_get`` in place of wasmtime's own.

    Epoch interruption stops wasm code, not a host call: wasmtime's
    ``poll_oneoff`` would sleep out a module's hour-long sleep after the
    execution was stopped.  This one sleeps on ``stop`` (set when the
    execution is cancelled) and returns early; the epoch trap then comes at
    the module's next instruction check.  File descriptors are always ready
    (the module only has regular files and the output pipes).
    ``clock_time_get`` is shadowed too, so that an absolute monotonic
    deadline and the clock the module reads are the same clock.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def define(self, linker: wasmtime.Linker) -> None:
        linker.allow_shadowing = True
        wasi = "wasi_snapshot_preview1"
        poll = wasmtime.FuncType([_I32, _I32, _I32, _I32], [_I32])
        linker.define_func(wasi, "poll_oneoff", poll, self.poll_oneoff, access_caller=True)
        clock = wasmtime.FuncType([_I32, _I64, _I32], [_I32])
        linker.define_func(wasi, "clock_time_get", clock, self.clock_time_get, access_caller=True)

    @staticmethod
    def _memory(caller: wasmtime.Caller) -> wasmtime.Memory | None:
        memory = caller.get("memory")
        return memory if isinstance(memory, wasmtime.Memory) else None

    def clock_time_get(self, caller: wasmtime.Caller, clock: int, _precision: int, out: int) -> int:
        now, memory = _CLOCKS.get(clock), self._memory(caller)
        if now is None:
            return _EINVAL
        if memory is None or not 0 <= out <= memory.data_len(caller) - 8:
            return _EFAULT
        memory.write(caller, struct.pack("<Q", now()), out)
        return 0

    def poll_oneoff(
        self, caller: wasmtime.Caller, subs: int, events_at: int, count: int, nevents_at: int
    ) -> int:
        memory = self._memory(caller)
        if not 0 < count <= _MAX_SUBSCRIPTIONS:
            return _EINVAL
        if memory is None:
            return _EFAULT
        size = memory.data_len(caller)
        if not (0 <= subs <= size - count * _SUBSCRIPTION
                and 0 <= events_at <= size - count * _EVENT.size
                and 0 <= nevents_at <= size - 4):
            return _EFAULT
        raw = bytes(memory.read(caller, subs, subs + count * _SUBSCRIPTION))
        ready: list[tuple[int, int, int]] = []  # (userdata, errno, type)
        sleeps: list[tuple[int, int]] = []  # (ns from now, userdata)
        for base in range(0, len(raw), _SUBSCRIPTION):
            userdata, tag = struct.unpack_from("<QB", raw, base)
            if tag != 0:  # fd_read / fd_write: always ready; anything else is invalid
                ready.append((userdata, 0 if tag in (1, 2) else _EINVAL, tag))
                continue
            (clock,) = struct.unpack_from("<I", raw, base + 16)
            (timeout,) = struct.unpack_from("<Q", raw, base + 24)
            (flags,) = struct.unpack_from("<H", raw, base + 40)
            now = _CLOCKS.get(clock)
            if now is None:
                ready.append((userdata, _EINVAL, 0))
                continue
            sleeps.append((max(0, timeout - now() if flags & 1 else timeout), userdata))
        if not ready:
            wait = min(ns for ns, _ in sleeps)
            self.stop.wait(wait / 1e9)  # returns at once when the execution is stopped
            ready = [(userdata, 0, 0) for ns, userdata in sleeps if ns <= wait]
        events = b"".join(_EVENT.pack(data, errno, kind, 0, 0) for data, errno, kind in ready)
        memory.write(caller, events, events_at)
        memory.write(caller, struct.pack("<I", len(ready)), nevents_at)
        return 0


@attrs.frozen
class _Run:
    """What the worker thread needs for one execution."""

    engine: wasmtime.Engine
    module: wasmtime.Module
    entrypoint: str
    argv: list[str]
    env: dict[str, str]
    inputs: Path
    outputs: Path
    memory_bytes: int
    stop: threading.Event
    on_stdout: Callable[[bytes], None]
    on_stderr: Callable[[bytes], None]


def _execute(run: _Run) -> Outcome:
    """Instantiate and call the entry point (blocking: in a worker thread)."""
    store = wasmtime.Store(run.engine)
    store.set_epoch_deadline(1)  # the first epoch increment interrupts it
    # One linear memory (multi-memory would multiply the cap), capped at
    # resources.memory; tables bounded too (each element costs host memory).
    store.set_limits(
        memory_size=run.memory_bytes,
        table_elements=MAX_TABLE_ELEMENTS,
        instances=MAX_INSTANCES,
        tables=MAX_TABLES,
        memories=1,
    )
    wasi = wasmtime.WasiConfig()
    wasi.argv = run.argv
    wasi.env = list(run.env.items())
    wasi.stdout_custom = run.on_stdout
    wasi.stderr_custom = run.on_stderr
    wasi.preopen_dir(str(run.inputs), GUEST_INPUTS, INPUTS_WRITABLE)
    wasi.preopen_dir(str(run.outputs), GUEST_OUTPUTS, True)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(run.engine)
    linker.define_wasi()
    _InterruptibleClocks(run.stop).define(linker)
    try:
        instance = linker.instantiate(store, run.module)
    except wasmtime.ExitTrap as exited:  # proc_exit from a start function
        return Outcome(exited.code)
    except wasmtime.Trap as trap:
        return Outcome(TRAP_EXIT_CODE, clip_error(_trap_reason(trap)))
    except wasmtime.WasmtimeError as err:
        return Outcome(NOT_RUN_EXIT_CODE, clip_error(f"cannot instantiate the module: "
                                                     f"{_first_line(err)}"))
    exports = instance.exports(store)
    entry = exports.get(run.entrypoint)
    if not isinstance(entry, wasmtime.Func):
        names = sorted(name for name, item in exports.items() if isinstance(item, wasmtime.Func))
        what = "no exported function" if entry is None else "an export that is not a function"
        return Outcome(NOT_RUN_EXIT_CODE, clip_error(
            f"entrypoint {run.entrypoint!r}: the module has {what} by that name "
            f"(exported functions: {', '.join(names) or 'none'})"))
    if entry.type(store).params:
        return Outcome(NOT_RUN_EXIT_CODE, clip_error(
            f"entrypoint {run.entrypoint!r} takes parameters; it must take none"))
    try:
        entry(store)
    except wasmtime.ExitTrap as exited:
        return Outcome(exited.code, "" if exited.code == 0 else f"proc_exit({exited.code})")
    except (wasmtime.Trap, wasmtime.WasmtimeError) as trap:
        return Outcome(TRAP_EXIT_CODE, clip_error(_trap_reason(trap)))
    return Outcome(0)


class WasmExecutor:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        blobs: BlobStore,
        *,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        max_output_bytes: int | None = None,
        max_module_bytes: int = MAX_MODULE_BYTES,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blobs = blobs
        self.tail_bytes = tail_bytes
        self.max_output_bytes = max_output_bytes
        self.max_module_bytes = max_module_bytes
        self.interrupted = 0  # executions stopped by an epoch interrupt (for tests)
        (self.data_dir / "work").mkdir(parents=True, exist_ok=True)

    async def run(self, start: StartExecution) -> ExecutionFinished:
        t0 = trio.current_time()
        task = validate_task(start.task)
        wasm = task.engine
        if not isinstance(wasm, WasmEngine):
            raise ExecutorError(f"the wasm executor cannot run a {wasm.type!r} task")
        try:
            data = await trio.to_thread.run_sync(
                lambda: self.blobs.read_bytes(wasm.module, max_bytes=self.max_module_bytes)
            )
        except BlobError as problem:
            raise ExecutorError(clip_error(f"wasm module {wasm.module}: {problem}")) from problem
        work = await trio.to_thread.run_sync(Workdir.create, self.data_dir, start.execution_id)
        try:
            if start.inputs:
                await trio.to_thread.run_sync(lay_out_inputs, self.blobs, start, work.inputs)
            out, err = TailBuffer(self.tail_bytes), TailBuffer(self.tail_bytes)
            outcome = await self._run_module(start, task, wasm, data, work, out, err)
            return await finish_with_outputs(
                self.blobs,
                work,
                start,
                exit_code=outcome.exit_code,
                error=outcome.error,
                stdout=out.text(),
                stderr=err.text(),
                max_output_bytes=self.max_output_bytes,
                started_at=t0,
            )
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(work.remove)

    async def _run_module(
        self,
        start: StartExecution,
        task: TaskSpec,
        wasm: WasmEngine,
        data: bytes,
        work: Workdir,
        out: TailBuffer,
        err: TailBuffer,
    ) -> Outcome:
        config = wasmtime.Config()
        config.epoch_interruption = True
        engine = wasmtime.Engine(config)
        try:
            # Compiling cannot be interrupted, but it can be abandoned: its result
            # is dropped.  Through Any: the trio stubs py-libp2p brings in predate
            # abandon_on_cancel.
            run_sync: Any = trio.to_thread.run_sync
            module = await run_sync(lambda: compile_module(engine, data), abandon_on_cancel=True)
        except BadModule as bad:
            return Outcome(NOT_RUN_EXIT_CODE, clip_error(str(bad)))
        sink = current_progress()
        parser = ProgressParser(sink) if sink is not None else None

        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()  # wakes a module sleeping in poll_oneoff

        def on_stdout(chunk: bytes) -> None:
            # Called on a wasmtime thread, the module waiting.  The trio side
            # reads the tails only once the run ended; reports touch trio objects.
            out.feed(chunk)
            if parser is not None:
                with contextlib.suppress(trio.RunFinishedError):  # the node is shutting down
                    trio.from_thread.run_sync(parser.feed, chunk, trio_token=token)
            live("stdout", chunk)

        output = current_output()

        def live(stream: str, chunk: bytes) -> None:
            # Live logs (p2pnode/logcapture.py): handed over on the trio thread.
            if output is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(output.write, stream, chunk, trio_token=token)

        def on_stderr(chunk: bytes) -> None:
            err.feed(chunk)
            live("stderr", chunk)

        run = _Run(
            engine=engine,
            module=module,
            entrypoint=wasm.entrypoint,
            argv=[ARGV0, *wasm.args],
            env={
                **task_env(task.env, start),
                **p2pnode_env(start, inputs=GUEST_INPUTS, outputs=GUEST_OUTPUTS),
            },
            inputs=work.inputs,
            outputs=work.outputs,
            memory_bytes=task.resources.memory_bytes,
            stop=stop,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        outcome: list[Outcome] = []

        async def execute() -> None:
            # Not abandoned on cancel: the watcher interrupts the module instead,
            # so the thread (and the workdir it writes to) is done when we return.
            outcome.append(
                await trio.to_thread.run_sync(_execute, run, limiter=trio.CapacityLimiter(1))
            )
            nursery.cancel_scope.cancel()

        async def interrupt_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()
                engine.increment_epoch()  # thread-safe; after a normal end it is a no-op
                if not outcome:
                    self.interrupted += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(execute)
            nursery.start_soon(interrupt_when_cancelled)
        if parser is not None:
            parser.close()
        return outcome[0]
