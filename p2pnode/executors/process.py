"""Run a task as a local process (``engine: {type: process, command: [...]}``).

How a task runs
---------------
* ``command`` is an argv list, executed directly: no shell, unless the argv
  itself says ``sh -c ...``.
* By default inside a bubblewrap sandbox (``sandbox.py``: namespaces, no
  network unless ``network: host``, the data dir out of sight, its own uid on
  a root node); there its workdir is ``/task`` (cwd, ``HOME``, and the
  ``P2PNODE_INPUTS/OUTPUTS`` paths).  ``sandbox="none"`` runs it plainly.
* cwd is a fresh workdir ``<data_dir>/work/<safe id>/`` with ``inputs/`` and
  ``outputs/`` (see ``common``); files left in ``outputs/`` become the result
  manifest, also when the task fails (partial outputs help debugging).
* env is clean: ``PATH``, ``HOME`` (= the workdir), ``LANG``, then the task's
  env, then ``P2PNODE_INPUTS/OUTPUTS/SLOT/EXECUTION_ID/JOB_ID`` (absolute paths),
  which the task cannot override.  Nothing leaks from the node's own env.
* stdin is /dev/null; stdout/stderr are read continuously into bounded tails
  (memory is bounded whatever the task prints).
* inputs (``StartExecution.inputs``, e.g. a micro-batch's blob) are laid out
  under ``inputs/<name>/`` before the task starts; one that cannot be is an
  ``error`` naming it.

Progress channel (stream consumers)
-----------------------------------
A task reports progress by printing, at the start of a stdout line::

    P2PNODE_CHECKPOINT <value>   # its position: the next consumer starts from it
    P2PNODE_LAG <n>              # optional: how many entries it is behind

``<value>`` is the rest of the line (whitespace-trimmed, at most 4096
characters: a longer one is refused with a ``progress_refused`` notify).  Lines
are parsed while the task runs and handed to the runtime, which coalesces them
(latest wins) into ``ExecutionProgress`` events; the holder relays the latest
checkpoint to the owner with its lease renewals and its result.  When the node
stops the task (``run_for`` reached, job stopped, timeout) it sends SIGTERM and
keeps reading stdout until the task exits or ``kill_grace`` runs out, so a
checkpoint printed in a SIGTERM handler is delivered before the execution's end.
Print with a flush (``print(..., flush=True)``, ``PYTHONUNBUFFERED=1``): a
checkpoint left in the task's stdio buffer is never seen.

Limits
------
Applied by a tiny ``/bin/sh`` wrapper that runs ``ulimit`` and then ``exec``s the
argv (passed as ``"$@"``, never parsed by the shell).  A wrapper rather than
``preexec_fn`` because the node runs worker threads, and Python code between
fork and exec can deadlock in their presence.

Sandboxed, it is the one shell of the chain ``sh -> bwrap -> [setpriv ->]
task``: it first moves itself into the execution's cgroup (``cgroups.py``; a
failed move runs nothing), sets the limits, and execs bwrap.  rlimits are
inherited through every exec, so the task has exactly these limits, and it
cannot raise them (no capabilities).  bwrap and setpriv run under them too:

* ``RLIMIT_NPROC`` is not checked for forks by uid 0 (bwrap, as root), and
  ``setpriv``'s switch to the task's uid is where the count starts to apply:
  an ``execve`` by a uid already over it fails, as any later fork does.
* ``RLIMIT_AS`` also bounds bwrap and setpriv, which need about 4 MiB of
  address space (a dynamically linked task needs about 3): a sandboxed task
  with ``memory`` below that fails to start (exit 127, "error while loading
  shared libraries" in its stderr), as any task below its own needs does.
* ``RLIMIT_CPU`` counts per process: bwrap's two processes only wait.

(It used to be a second shell inside the sandbox, after setpriv: one more
``exec`` of ``/bin/sh`` per task, about 0.6-1 ms of CPU.)

* ``RLIMIT_AS`` = ``resources.memory``.  It bounds virtual address space, which
  is stricter than resident memory: runtimes that reserve big arenas up front
  (Go, the JVM) need a larger ``memory`` than they actually touch.
* ``RLIMIT_CPU`` (soft) = ``ceil(timeout * cpu)`` seconds, but at least
  ``min_cpu_seconds`` (default 10): the CPU time a task granted ``cpu`` cores could use in
  its wall-clock timeout; processes have no CPU shares, so this is what
  enforces ``cpu`` on average.  Past it the kernel sends SIGXCPU; the hard limit
  (``+ CPU_HARD_EXTRA_SECONDS``) SIGKILLs.  The floor keeps a short task's
  start-up burst from tripping it; the wall-clock timeout (the runtime's cancel
  scope) remains the real bound.  Both limits are per process (each child gets
  its own), as rlimits are.
* ``RLIMIT_CORE`` = 0: no core files in the workdir.

Process groups
--------------
The task runs in its own session (``start_new_session``), so its process group
id is its pid.  On cancellation or timeout the whole group gets SIGTERM, then
SIGKILL after ``kill_grace`` seconds (in a shielded cleanup).  When the main
process exits by itself, whatever it left running in its group is SIGKILLed
at once: the task is over.  A descendant that calls ``setsid`` itself escapes
the group; we do not chase it, but we stop reading its pipes after
``drain_grace`` so it cannot hold the execution open.

Sandboxed, the group is bwrap's alone: SIGTERM goes to every process of the
task's pid namespace instead and SIGKILL to the namespace's init, so
``setsid`` does not escape; and bwrap's ``--die-with-parent`` ends the task
with the node.  Unsandboxed, a session of its own means the task does *not*
die with the node.  So
each running execution has a pidfile ``<data_dir>/work/<safe id>.pid``;
:meth:`ProcessExecutor.reap_stale`, called when a node starts, SIGKILLs the
groups whose pidfiles remain.  It only kills a group that still has a member
carrying ``P2PNODE_EXECUTION_ID=<that id>`` in its environment, so a recycled
pid (e.g. after a reboot) is never hit.

Workdirs are removed when the execution ends, failed or not: its outputs are
already stored as a manifest and the stderr tail is reported, while keeping
them would fill the disk under a retry loop.  ``keep_failed_workdirs=True``
keeps failed/cancelled ones for debugging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from p2pnode import tracing
from p2pnode.blobs import BlobStore
from p2pnode.executor import current_progress, defer_cleanup
from p2pnode.executors import cgroups
from p2pnode.executors.cgroups import TaskCgroup
from p2pnode.executors.common import (
    DEFAULT_TAIL_BYTES,
    ExecutorError,
    ProgressParser,
    TailBuffer,
    Workdir,
    drain,
    finish_with_outputs,
    lay_out_inputs,
    p2pnode_env,
    safe_name,
    task_env,
)
from p2pnode.executors.sandbox import TASK_WORKDIR, BwrapSandbox, open_sandbox, task_uid
from p2pnode.executors.spawn import Child, spawn
from p2pnode.procfs import group_members, pid_state, proc_stat, read_pidfile, runs_execution
from protocols.events import ExecutionFinished, StartExecution
from protocols.spec import ProcessEngine, Resources, TaskSpec, validate_task

__all__ = ["ProcessExecutor"]

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_CPU_SECONDS = 10
CPU_HARD_EXTRA_SECONDS = 5
DEFAULT_PIDS_LIMIT = 1024  # processes (and threads) of one sandboxed task
_WRAPPER_NAME = "p2pnode-limits"  # $0 of the wrapper shell, shown in its own errors


class ProcessExecutor:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        blobs: BlobStore,
        *,
        max_output_bytes: int,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        kill_grace: float = 2.0,
        drain_grace: float = 1.0,
        cpu_limit: bool = True,
        min_cpu_seconds: int = MIN_CPU_SECONDS,
        keep_failed_workdirs: bool = False,
        path: str = DEFAULT_PATH,
        sandbox: str | BwrapSandbox | None = "bwrap",
        sandbox_ro_paths: tuple[str, ...] = (),
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        use_cgroups: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blobs = blobs
        self.max_output_bytes = max_output_bytes
        self.tail_bytes = tail_bytes
        self.kill_grace = kill_grace
        self.drain_grace = drain_grace
        self.cpu_limit = cpu_limit
        self.min_cpu_seconds = min_cpu_seconds
        self.keep_failed_workdirs = keep_failed_workdirs
        self.path = path
        self.pids_limit = pids_limit
        # Called (synchronously) just before a task's process is spawned: the
        # node's lease watchdog (p2pnode/watchdog.py) hears of every task
        # before its pidfile exists, so a node frozen right after a spawn
        # leaves no task it does not know of.
        self.before_spawn: Callable[[], None] | None = None
        (self.data_dir / "work").mkdir(parents=True, exist_ok=True)
        # Raises SandboxUnavailable (one line) when bwrap is asked for and missing.
        # A mode name ("bwrap", "none") or a sandbox the node already opened.
        self.sandbox: BwrapSandbox | None = (
            open_sandbox(sandbox, self.data_dir, ro_paths=sandbox_ro_paths)
            if isinstance(sandbox, str)
            else sandbox
        )
        # Sandboxed tasks also get a cgroup each where the node may create them.
        node_key = safe_name(str(self.data_dir.resolve()))[-12:]  # its hash part
        self.cgroups = (
            cgroups.detect(node_key) if self.sandbox is not None and use_cgroups else None
        )

    # --- running -----------------------------------------------------------------

    async def run(self, start: StartExecution) -> ExecutionFinished:
        t0 = trio.current_time()
        task = validate_task(start.task)
        engine = task.engine
        if not isinstance(engine, ProcessEngine):
            raise ExecutorError(f"the process executor cannot run a {engine.type!r} task")
        # One worker-thread round trip for everything that blocks before the
        # spawn: workdir, inputs, handing it to the task's uid, the cgroup.
        if tracing.ON:
            tracing.event("x-prep<")
        work, cgroup = await trio.to_thread.run_sync(self._prepare, start, task.resources)
        if tracing.ON:
            tracing.event("x-prep>")
        succeeded = False
        try:
            # Sandboxed, the task sees its workdir at TASK_WORKDIR, not in the data dir.
            seen = Path(TASK_WORKDIR) if self.sandbox is not None else work.root
            env = {
                "PATH": self.path,
                "HOME": str(seen),
                "LANG": "C.UTF-8",
                **task_env(task.env, start),
                **p2pnode_env(start, inputs=str(seen / "inputs"), outputs=str(seen / "outputs")),
            }
            argv = list(engine.command)
            if self.sandbox is not None:
                argv = self.sandbox.argv(
                    workdir=work.root,
                    inputs=work.inputs,
                    network=task.network,
                    uid=task_uid(start.execution_id),
                    command=argv,
                    tmp_bytes=task.resources.memory_bytes,
                )
            # One shell in front of it all: joins the cgroup, sets the rlimits,
            # then execs bwrap (or, unsandboxed, the task itself).
            argv = self._wrapper(task, start, cgroup) + argv
            out, err = TailBuffer(self.tail_bytes), TailBuffer(self.tail_bytes)
            sink = current_progress()
            parser = ProgressParser(sink) if sink is not None else None
            returncode = await self._run_process(
                start.execution_id, argv, env, work, out, err, parser
            )
            if tracing.ON:
                tracing.event("x-exit")
            oom = cgroup is not None and cgroup.out_of_memory()

            exit_code, error = _describe_exit(returncode, sandboxed=self.sandbox is not None)
            if oom and exit_code != 0:
                error = f"killed: out of memory (limit {task.resources.memory_bytes} bytes)"
            finished = await finish_with_outputs(
                self.blobs,
                work,
                start,
                exit_code=exit_code,
                error=error,
                stdout=out.text(),
                stderr=err.text(),
                max_output_bytes=self.max_output_bytes,
                started_at=t0,
            )
            succeeded = finished.status == "succeeded"
            if tracing.ON:
                tracing.event("x-outputs")
            return finished
        finally:
            # The task's processes are dead (``_run_process`` waited for
            # them); what is left changes nothing in the result, so under a
            # runtime it runs after the result has gone out (``defer_cleanup``).
            pidfile = self._pidfile(start.execution_id)
            remove = succeeded or not self.keep_failed_workdirs

            async def cleanup() -> None:
                if cgroup is not None:
                    await _remove_cgroup(cgroup)
                await trio.to_thread.run_sync(_remove_leftovers, work if remove else None, pidfile)

            if not defer_cleanup(cleanup):
                with trio.CancelScope(shield=True):
                    await cleanup()

    def _prepare(
        self, start: StartExecution, resources: Resources
    ) -> tuple[Workdir, TaskCgroup | None]:
        """The execution's workdir (inputs laid out, owned by the task's uid)
        and its cgroup, if any; blocking.  Nothing is left on failure."""
        work = Workdir.create(self.data_dir, start.execution_id)
        try:
            if start.inputs:
                lay_out_inputs(self.blobs, start, work.inputs)
            if self.sandbox is not None:
                self.sandbox.prepare(work.root, task_uid(start.execution_id))
        except BaseException:
            if not self.keep_failed_workdirs:
                work.remove()
            raise
        cgroup = None
        if self.cgroups is not None:
            try:
                cgroup = self.cgroups.create(
                    safe_name(start.execution_id),
                    pids=self.pids_limit,
                    memory=resources.memory_bytes,
                )
            except OSError as cgroup_error:  # the rlimits still hold
                log.warning("no cgroup for %s (%s): rlimits only", start.execution_id, cgroup_error)
        return work, cgroup

    def _wrapper(
        self, task: TaskSpec, start: StartExecution, cgroup: TaskCgroup | None
    ) -> list[str]:
        """``sh -c '[join ... || exit;] ulimit ...; exec "$@"' NAME argv...``
        (see the module doc): a failed join runs nothing."""
        memory_kib = _clamp_kib(resource.RLIMIT_AS, task.resources.memory_bytes)
        limits = [f"ulimit -c 0; ulimit -v {memory_kib}"]
        if self.cpu_limit:
            timeout = start.timeout if start.timeout > 0 else task.timeout_ms / 1000
            soft = max(self.min_cpu_seconds, math.ceil(timeout * task.resources.cpu))
            hard = soft + CPU_HARD_EXTRA_SECONDS
            _soft_cap, hard_cap = resource.getrlimit(resource.RLIMIT_CPU)
            if hard_cap != resource.RLIM_INFINITY:  # never ask above the node's own
                hard = min(hard, hard_cap)
                soft = min(soft, hard)
            # Soft first: dash refuses a hard limit below the current soft one.
            limits.append(f"ulimit -S -t {soft}; ulimit -H -t {hard}")
        if self.sandbox is not None and self.sandbox.own_uid:
            # Counted per uid: a limit of this task only when the uid is its own.
            limits.append(f"ulimit -p {self.pids_limit}")  # dash: -p is RLIMIT_NPROC
        join = cgroup.join_commands() if cgroup is not None and cgroup.dirs else None
        return ["/bin/sh", "-c", _wrapper_script(limits, join), _WRAPPER_NAME]

    async def _run_process(
        self,
        execution_id: str,
        argv: list[str],
        env: dict[str, str],
        work: Workdir,
        out: TailBuffer,
        err: TailBuffer,
        parser: ProgressParser | None = None,
    ) -> int:
        if self.before_spawn is not None:
            self.before_spawn()  # the lease watchdog learns of it first
        # From the trio thread (see spawn.py); own session and group: pgid == pid.
        if tracing.ON:
            tracing.event("x-spawn<")
        proc = spawn(argv, cwd=work.root, env=env)
        if tracing.ON:
            tracing.event("x-spawned", str(proc.pid))
        pgid = proc.pid
        pidfile = self._pidfile(execution_id)
        try:
            # Written after the spawn: a node crash in between leaves one
            # unrecorded group, which reap_stale cannot find (documented).
            _write_pidfile(pidfile, pgid, execution_id)
            assert proc.stdout is not None and proc.stderr is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, proc.stdout, out, parser, "stdout")
                nursery.start_soon(drain, proc.stderr, err, None, "stderr")
                await proc.wait()
                if tracing.ON:  # children's CPU so far: the step's delta is this task's
                    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                    tracing.event("x-waited", f"{(ru.ru_utime + ru.ru_stime) * 1000:.2f}")
                # The task is over: stragglers in its group would keep the
                # pipes open, and must not outlive it anyway.
                _killpg(pgid, signal.SIGKILL)
                # Something that escaped the group may still hold the pipes.
                nursery.cancel_scope.deadline = trio.current_time() + self.drain_grace
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None and proc.stdout is not None and proc.stderr is not None:
                    # Stopped from outside (run_for, stop, timeout): keep reading
                    # while it gets SIGTERM and its grace, so what it prints
                    # then (a last checkpoint) still counts.
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(drain, proc.stdout, out, parser, "stdout")
                        nursery.start_soon(drain, proc.stderr, err, None, "stderr")
                        await self._stop_group(proc, pgid)
                        nursery.cancel_scope.deadline = trio.current_time() + self.drain_grace
                else:
                    await self._stop_group(proc, pgid)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        await stream.aclose()
                proc.close_pidfd()
                # The pidfile goes with the workdir, in the cleanup after the
                # result (a crash before then: ``reap_stale`` removes both).
        assert proc.returncode is not None
        return proc.returncode

    async def _stop_group(self, proc: Child, pgid: int) -> None:
        """SIGTERM the group, give it ``kill_grace`` to exit, then SIGKILL it.

        Sandboxed, the group is bwrap's alone (the task has a session of its
        own inside): SIGTERM goes to every process of the sandbox's pid
        namespace instead, and SIGKILL to its init, which ends them all."""
        running = proc.returncode is None  # else bwrap is gone and its namespace with it
        sandbox_init = _sandbox_init(pgid) if self.sandbox is not None and running else None
        if proc.returncode is None:
            if sandbox_init is not None:
                _signal_namespace(sandbox_init, signal.SIGTERM)
            else:
                _killpg(pgid, signal.SIGTERM)
            with trio.move_on_after(self.kill_grace):
                await proc.wait()
                # The leader is gone; give the rest of the group the same grace.
                while _group_alive(pgid):
                    await trio.sleep(0.02)
        if sandbox_init is not None:
            _kill_pid(sandbox_init, signal.SIGKILL)  # pid 1 gone: the namespace is emptied
        _killpg(pgid, signal.SIGKILL)
        with trio.move_on_after(5.0):  # SIGKILL is prompt; bounded all the same
            await proc.wait()

    # --- stale groups after a node restart ------------------------------------------

    def _pidfile(self, execution_id: str) -> Path:
        return self.data_dir / "work" / f"{safe_name(execution_id)}.pid"

    def reap_stale(self) -> list[str]:
        """Kill the process groups of executions a previous node run left
        behind (their pidfiles remain), remove their pidfiles and workdirs, and
        return their execution ids.  Call once at node start, before running
        anything.  Blocking (it reads /proc); cheap."""
        reaped: list[str] = []
        for partial in (self.data_dir / "work").glob("*.pid.tmp"):  # crashed mid-write
            partial.unlink(missing_ok=True)
        for pidfile in sorted((self.data_dir / "work").glob("*.pid")):
            try:
                pgid, execution_id = read_pidfile(pidfile)
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable pidfile %s", pidfile)
                pidfile.unlink(missing_ok=True)
                continue
            if runs_execution(pgid, execution_id):
                log.warning("killing stale process group %d of execution %s", pgid, execution_id)
                _killpg(pgid, signal.SIGKILL)
                reaped.append(execution_id)
            pidfile.unlink(missing_ok=True)
            workdir = pidfile.with_suffix("")
            if workdir.is_dir():
                Workdir(workdir, workdir / "inputs", workdir / "outputs").remove()
        if self.cgroups is not None:  # cgroups of executions a crash left behind
            for _controller, base in self.cgroups.bases:
                with contextlib.suppress(OSError):
                    for leftover in base.iterdir():
                        if leftover.is_dir():
                            cgroups.TaskCgroup((leftover,)).remove()
        return reaped


def _describe_exit(returncode: int, *, sandboxed: bool = False) -> tuple[int, str]:
    """A returncode -> (exit code as a shell reports it, error text).

    bwrap reports a task killed by signal N as exit code 128 + N (as a shell
    does): sandboxed, such a code is read as that signal."""
    if sandboxed and 128 < returncode < 128 + signal.NSIG:
        returncode = 128 - returncode
    if returncode >= 0:
        return returncode, "" if returncode == 0 else f"exited with code {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = " (CPU time limit exceeded)" if signum == signal.SIGXCPU else ""
    return 128 + signum, f"killed by {name}{hint}"


def _clamp_kib(which: int, limit_bytes: int) -> int:
    """A limit in KiB for ulimit, never above the node's own hard limit."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    return max(1, limit_bytes // 1024)


def _wrapper_script(limits: list[str], join: str | None) -> str:
    """The wrapper's script: the cgroup join (if any; when it fails the shell
    exits with its status and nothing runs), the ``ulimit`` commands, then
    ``exec "$@"``."""
    script = "; ".join(limits) + '; exec "$@"'
    return script if join is None else f"{join} || exit; {script}"


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is already gone
    except PermissionError:  # a recycled id now owned by someone else: not ours
        log.warning("not allowed to signal process group %d", pgid)


async def _remove_cgroup(cgroup: cgroups.TaskCgroup) -> None:
    """rmdir once the kernel has finished killing the namespace's processes
    (within 2 s; polled, first briefly: it is usually a matter of a few ms)."""
    delay, deadline = 0.002, trio.current_time() + 2.0
    while trio.current_time() < deadline:
        if all(not (d / "cgroup.procs").exists() or not (d / "cgroup.procs").read_text().strip()
               for d in cgroup.dirs):
            break
        await trio.sleep(delay)
        delay = min(0.02, delay * 2)
    cgroup.remove()


def _remove_leftovers(work: Workdir | None, pidfile: Path) -> None:
    """The workdir (unless kept), then the pidfile: a crash in between leaves
    the pidfile, from which ``reap_stale`` finds the workdir."""
    if work is not None:
        work.remove()
    pidfile.unlink(missing_ok=True)


def _kill_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _sandbox_init(bwrap_pid: int) -> int | None:
    """The host pid of the init (pid 1) of the sandbox bwrap ``bwrap_pid`` runs:
    its child in another pid namespace."""
    try:
        own_ns = os.readlink(f"/proc/{bwrap_pid}/ns/pid")
    except OSError:
        return None
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(name)
            if fields and len(fields) > 1 and fields[1] == str(bwrap_pid):
                try:
                    if os.readlink(f"/proc/{name}/ns/pid") != own_ns:
                        return int(name)
                except OSError:
                    continue
    return None


def _signal_namespace(init_pid: int, sig: int) -> None:
    """Send ``sig`` to every process in the pid namespace of ``init_pid``
    (its init excepted: it only exits with the task)."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != init_pid:
            try:
                if os.readlink(f"/proc/{name}/ns/pid") != ns:
                    continue
            except OSError:
                continue
            _kill_pid(int(name), sig)


def _group_alive(pgid: int) -> bool:
    return any(pid_state(pid) not in ("Z", "X", None) for pid in group_members(pgid))


def _write_pidfile(path: Path, pgid: int, execution_id: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pgid": pgid, "execution_id": execution_id}))
    os.replace(tmp, path)
