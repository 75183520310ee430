"""Run a task in a Docker container (``engine: {type: docker, image, ...}``).

Rules
-----
* Local images only: the image is looked up first and a missing one fails at
  once (``ImageMissing``).  p2pnode never pulls: containers are created with
  ``containers.create`` (which does not pull), never ``containers.run``.
* No network (``network_mode="none"``) unless the task asks for
  ``network: host`` (then ``host_network_mode``, default ``"host"``);
  memory = ``resources.memory`` (swap included, i.e. no extra swap),
  CPU = ``resources.cpu`` as ``nano_cpus``; ``init=True`` so signals reach
  the task even when it is a shell; ``no-new-privileges`` and a pids
  limit; json-file logs capped in size so a chatty task cannot fill the disk.
* Workdir as for processes (``common``): ``inputs/`` bind-mounted read-only at
  ``/inputs``, ``outputs/`` read-write at ``/outputs``; these two are the only
  host paths the container gets (never the data dir, its key or database).
  Bind mounts mean the engine must run on this host and see ``data_dir`` at
  the same path.
* The task runs as the node's own uid:gid by default, so its outputs are files
  the node can read and delete (pass ``user=None`` for the image's user; the
  outputs dir is then made world-writable so any image user can write it).
* Labels ``p2pnode.execution_id``, ``p2pnode.job_id`` and ``p2pnode.node`` let
  :meth:`DockerExecutor.reap_stale` find leftovers after a node restart.
* The container is always removed, whatever happens.

Blocking SDK calls run in worker threads that are never abandoned (so no
thread outlives its execution holding a container).  The wait polls
``Container.wait(timeout=poll)`` (which raises ``requests`` ConnectionError
when the slice runs out, not ReadTimeout) and asks the engine for the state in
between; on trio cancellation a sibling task stops the container in a
shielded scope (``docker stop``: SIGTERM, SIGKILL after ``kill_grace``), which
ends the wait, and the container is then removed.

Progress lines (``P2PNODE_CHECKPOINT``/``P2PNODE_LAG`` on stdout, see
``process.py``) are read while the task runs when the runtime installed a
progress sink: a daemon thread follows the container's stdout log and feeds
the lines to a ``ProgressParser`` in the trio thread.  It is the one thread
that may outlive a call (it ends with the container's log stream); once the
container has exited it is given ``drain_grace`` to deliver the last lines,
those printed after SIGTERM included.

Every other API call has a small timeout (``api_timeout``): an engine that is
stopped or wedged gives ``DockerUnavailable`` ("Docker engine unreachable:
...") within seconds, not a hang.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
import trio

from p2pnode.blobs import BlobStore
from p2pnode.errors import DockerUnavailable as DockerUnavailable  # re-exported
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
    safe_name,
    task_env,
)
from p2pnode.logcapture import OutputSink, current_output
from p2pnode.watchdog_docker import LABEL_EXECUTION as LABEL_EXECUTION
from p2pnode.watchdog_docker import LABEL_NODE as LABEL_NODE
from protocols.events import ExecutionFinished, StartExecution
from protocols.spec import DockerEngine, TaskSpec, validate_task

__all__ = ["DockerExecutor", "DockerUnavailable", "ImageMissing"]

log = logging.getLogger(__name__)

# LABEL_EXECUTION and LABEL_NODE are defined beside the lease watchdog, which
# finds a lapsed execution's container by them (p2pnode/watchdog_docker.py).
LABEL_JOB = "p2pnode.job_id"

# Docker refuses memory limits under 6 MiB; the spec allows 1 MiB.
MIN_DOCKER_MEMORY = 6 * 1024 * 1024
# Docker refuses fewer than 0.01 CPUs, and more than the host has.
MIN_NANO_CPUS = 10_000_000

ClientFactory = Callable[..., Any]
"""Called as ``factory(timeout=api_timeout)``; ``docker.from_env`` fits."""

# What the SDK raises when the engine cannot be reached or does not answer.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


class ImageMissing(ExecutorError):
    """The image is not present locally (p2pnode never pulls)."""


class DockerExecutor:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        blobs: BlobStore,
        *,
        client_factory: ClientFactory = docker.from_env,
        node_id: str = "",
        max_output_bytes: int | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        api_timeout: float = 10.0,
        poll_interval: float = 5.0,
        kill_grace: float = 2.0,
        drain_grace: float = 1.0,
        network_mode: str = "none",
        host_network_mode: str = "host",
        user: str | None = f"{os.getuid()}:{os.getgid()}",
        pids_limit: int = 1024,
        log_max_size: str = "8m",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blobs = blobs
        self.client_factory = client_factory
        self.node_id = node_id
        self.max_output_bytes = max_output_bytes
        self.tail_bytes = tail_bytes
        self.api_timeout = api_timeout
        self.poll_interval = poll_interval
        self.network_mode = network_mode
        self.host_network_mode = host_network_mode
        self.user = user
        self.pids_limit = pids_limit
        self.log_max_size = log_max_size
        self.kill_grace = kill_grace
        self.drain_grace = drain_grace
        self._client: Any = None
        # Called just before a container starts: the node's lease watchdog
        # (p2pnode/watchdog.py) hears of every task before it runs, so a node
        # frozen right after a start leaves no container it does not know of.
        self.before_spawn: Callable[[], None] | None = None
        (self.data_dir / "work").mkdir(parents=True, exist_ok=True)

    # --- engine connection ---------------------------------------------------------

    def client(self) -> Any:
        """The SDK client, created on first use (blocking: call from a thread).

        ``docker.from_env`` asks the engine for its API version right away, so
        an unreachable engine surfaces here, bounded by ``api_timeout``.
        """
        if self._client is None:
            try:
                self._client = self.client_factory(timeout=self.api_timeout)
            except (docker.errors.DockerException, *_UNREACHABLE) as err:
                raise DockerUnavailable(clip_error(f"Docker engine unreachable: {err}")) from err
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one blocking SDK call in a thread, mapping connection errors."""
        try:
            return await trio.to_thread.run_sync(fn)
        except _UNREACHABLE as err:
            raise DockerUnavailable(clip_error(f"Docker engine unreachable: {err}")) from err

    # --- running ---------------------------------------------------------------------

    async def run(self, start: StartExecution) -> ExecutionFinished:
        t0 = trio.current_time()
        task = validate_task(start.task)
        engine = task.engine
        if not isinstance(engine, DockerEngine):
            raise ExecutorError(f"the docker executor cannot run a {engine.type!r} task")
        client = await self._call(self.client)
        await self._check_image(client, engine.image)

        work = await trio.to_thread.run_sync(Workdir.create, self.data_dir, start.execution_id)
        container: Any = None
        try:
            if start.inputs:
                await trio.to_thread.run_sync(lay_out_inputs, self.blobs, start, work.inputs)
            if self.user is None:
                # The image's user may be anyone: let it write its outputs.
                work.outputs.chmod(0o777)
            kwargs = self._create_kwargs(start, task, engine, work)
            try:
                container = await self._call(lambda: client.containers.create(**kwargs))
            except docker.errors.ImageNotFound as err:  # removed since the check
                raise ImageMissing(_missing(engine.image)) from err
            except docker.errors.APIError as err:
                raise ExecutorError(clip_error(f"cannot create container: {err}")) from err
            if self.before_spawn is not None:
                self.before_spawn()  # the lease watchdog learns of it first
            try:
                await self._call(container.start)
            except docker.errors.APIError as err:
                raise ExecutorError(clip_error(f"cannot start container: {err}")) from err
            sink, output = current_progress(), current_output()
            token = trio.lowlevel.current_trio_token()
            followers = []
            if sink is not None or output is not None:
                parser = ProgressParser(sink) if sink is not None else None
                followers.append(_LogFollower(container, "stdout", parser, output, token))
            if output is not None:  # live logs (p2pnode/logcapture.py)
                followers.append(_LogFollower(container, "stderr", None, output, token))
            for follower in followers:
                follower.start()
            try:
                status_code = await self._wait(container)
            finally:
                for follower in followers:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(follower.join, self.drain_grace)

            out, err_tail = await self._call(lambda: self._logs(container))
            exit_code = status_code
            error = ""
            if exit_code != 0:
                error = await self._describe_failure(container, task, exit_code)
            return await finish_with_outputs(
                self.blobs,
                work,
                start,
                exit_code=exit_code,
                error=error,
                stdout=out,
                stderr=err_tail,
                max_output_bytes=self.max_output_bytes,
                started_at=t0,
            )
        finally:
            with trio.CancelScope(shield=True):
                if container is not None:
                    await trio.to_thread.run_sync(_remove_quietly, container)
                await trio.to_thread.run_sync(work.remove)

    async def _check_image(self, client: Any, image: str) -> None:
        try:
            await self._call(lambda: client.images.get(image))
        except docker.errors.ImageNotFound as err:
            raise ImageMissing(_missing(image)) from err
        except docker.errors.APIError as err:  # e.g. a malformed reference
            raise ExecutorError(clip_error(f"cannot inspect image {image!r}: {err}")) from err

    def _create_kwargs(
        self, start: StartExecution, task: TaskSpec, engine: DockerEngine, work: Workdir
    ) -> dict[str, Any]:
        memory = max(MIN_DOCKER_MEMORY, task.resources.memory_bytes)
        max_nano = (os.cpu_count() or 1) * 1_000_000_000
        nano_cpus = min(max_nano, max(MIN_NANO_CPUS, round(task.resources.cpu * 1e9)))
        kwargs: dict[str, Any] = {
            "image": engine.image,
            "command": list(engine.command) if engine.command is not None else None,
            "environment": {
                **task_env(task.env, start),
                **p2pnode_env(start, inputs="/inputs", outputs="/outputs"),
            },
            "labels": {
                LABEL_EXECUTION: start.execution_id,
                LABEL_JOB: start.job_id,
                LABEL_NODE: self.node_id,
            },
            "volumes": {
                str(work.inputs): {"bind": "/inputs", "mode": "ro"},
                str(work.outputs): {"bind": "/outputs", "mode": "rw"},
            },
            "network_mode": self.host_network_mode
            if task.network == "host"
            else self.network_mode,
            "mem_limit": memory,
            "memswap_limit": memory,  # equal to mem_limit: no swap on top
            "nano_cpus": nano_cpus,
            "init": True,  # a shell as PID 1 would ignore SIGTERM
            "pids_limit": self.pids_limit,
            "security_opt": ["no-new-privileges"],
            "log_config": {
                "type": "json-file",
                "config": {"max-size": self.log_max_size, "max-file": "1"},
            },
            "stdin_open": False,
            "detach": True,
        }
        if engine.workdir is not None:
            kwargs["working_dir"] = engine.workdir
        if self.user is not None:
            kwargs["user"] = self.user
        return kwargs

    async def _wait(self, container: Any) -> int:
        """The container's exit code; on cancellation, stop it (shielded).

        The wait thread is not abandoned: when trio cancels us, the sibling
        ``killer`` stops the container (SIGTERM, SIGKILL after ``kill_grace``),
        which makes the blocking wait return, and only then does Cancelled
        propagate.
        """
        outcome: list[int | BaseException] = []

        async def killer() -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    if not outcome:  # cancelled while the container runs
                        await trio.to_thread.run_sync(_stop_quietly, container, self.kill_grace)

        def wait() -> int:
            while True:
                try:
                    result = container.wait(timeout=self.poll_interval)
                    return int(result.get("StatusCode", -1))
                except docker.errors.NotFound:
                    return 137  # removed under us (killed): report as SIGKILL
                except _UNREACHABLE:
                    # Either the slice ran out (the SDK raises ConnectionError
                    # for that) or the engine went away: ask it, with the
                    # short API timeout.  This raises if it is unreachable.
                    container.reload()
                    if container.status in ("exited", "dead"):
                        return int(container.attrs["State"]["ExitCode"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            try:
                outcome.append(await trio.to_thread.run_sync(wait))
            except BaseException as err:  # reported after the nursery, unwrapped
                outcome.append(err)
            nursery.cancel_scope.cancel()
        result = outcome[0]
        if isinstance(result, _UNREACHABLE):
            raise DockerUnavailable(clip_error(f"Docker engine unreachable: {result}"))
        if isinstance(result, BaseException):
            raise result
        return result

    def _logs(self, container: Any) -> tuple[str, str]:
        """Bounded tails of stdout and stderr.

        ``tail=`` counts log entries, and the engine splits lines longer than
        16 KiB into several entries, so this fetches at most ~lines * 16 KiB.
        """
        lines = max(1, self.tail_bytes // 64)
        tails = []
        for stdout in (True, False):
            tail = TailBuffer(self.tail_bytes)
            tail.feed(container.logs(stdout=stdout, stderr=not stdout, tail=lines))
            tails.append(tail.text())
        return tails[0], tails[1]

    async def _describe_failure(self, container: Any, task: TaskSpec, exit_code: int) -> str:
        try:
            await self._call(container.reload)
            state = container.attrs.get("State", {})
        except (ExecutorError, docker.errors.APIError):
            state = {}
        if state.get("OOMKilled"):
            return f"killed: out of memory (limit {task.resources.memory_bytes} bytes)"
        if state.get("Error"):
            return clip_error(f"exited with code {exit_code}: {state['Error']}")
        return f"exited with code {exit_code}"

    # --- leftovers -------------------------------------------------------------------

    async def reap_stale(self, node_id: str | None = None) -> list[str]:
        """Remove every container labelled for this node (``node_id``, default
        the executor's) and its workdir; return their execution ids.  Call at
        node start, before running anything: any such container is a leftover
        of an earlier run of the node."""
        node = self.node_id if node_id is None else node_id
        client = await self._call(self.client)
        containers = await self._call(
            lambda: client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node}"})
        )
        reaped = []
        for container in containers:
            execution_id = container.labels.get(LABEL_EXECUTION, "")
            log.warning(
                "removing stale container %s of execution %s", container.short_id, execution_id
            )
            await trio.to_thread.run_sync(_remove_quietly, container)
            if execution_id:
                workdir = self.data_dir / "work" / safe_name(execution_id)
                await trio.to_thread.run_sync(
                    Workdir(workdir, workdir / "inputs", workdir / "outputs").remove
                )
            reaped.append(execution_id)
        return reaped


def _missing(image: str) -> str:
    return f"image {image!r} is not present locally; p2pnode never pulls"


class _LogFollower(threading.Thread):
    """Follows one of a container's log streams ("stdout"/"stderr") and feeds
    it, in the trio thread, to a progress parser and/or the execution's output
    capture (live logs).  Ends with the log stream (the container exits or is
    removed) or when the engine fails; never raises."""

    def __init__(
        self,
        container: Any,
        stream: str,
        parser: ProgressParser | None,
        output: OutputSink | None,
        token: Any,
    ) -> None:
        super().__init__(name=f"p2pnode logs {container.short_id} {stream}", daemon=True)
        self.container = container
        self.stream = stream
        self.parser = parser
        self.output = output
        self.token = token

    def _feed(self, chunk: bytes) -> None:
        if self.parser is not None:
            self.parser.feed(chunk)
        if self.output is not None:
            self.output.write(self.stream, chunk)

    def run(self) -> None:
        stdout = self.stream == "stdout"
        try:
            for chunk in self.container.logs(
                stdout=stdout, stderr=not stdout, stream=True, follow=True
            ):
                trio.from_thread.run_sync(self._feed, chunk, trio_token=self.token)
            if self.parser is not None:
                trio.from_thread.run_sync(self.parser.close, trio_token=self.token)
        except Exception as err:  # engine gone, trio run over: progress is best effort
            log.debug("following the logs of %s: %r", self.container.short_id, err)


def _stop_quietly(container: Any, grace: float) -> None:
    """``docker stop``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    try:
        container.stop(timeout=max(0, round(grace)))
    except (docker.errors.APIError, *_UNREACHABLE) as err:
        log.debug("stop %s: %s", container.short_id, err)
        _kill_quietly(container)


def _kill_quietly(container: Any) -> None:
    try:
        container.kill()
    except (docker.errors.APIError, *_UNREACHABLE) as err:
        # Already stopped (409) or gone (404); an unreachable engine is
        # reported by the wait or the removal.
        log.debug("kill %s: %s", container.short_id, err)


def _remove_quietly(container: Any) -> None:
    try:
        container.remove(force=True)  # force: kills it if it still runs
    except docker.errors.NotFound:
        pass
    except (docker.errors.APIError, *_UNREACHABLE) as err:
        # Left for reap_stale (it carries our labels); never mask the result.
        log.warning("could not remove container %s: %s", container.short_id, err)
