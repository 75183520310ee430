"""The library API: run a p2pnode peer inside your own trio program.

    from p2pnode import NodeSettings, open_node

    async with open_node(NodeSettings(data_dir=Path("n1"), executors=("process",))) as node:
        job_id = await node.submit({"name": "hi", "task": {"engine": {
            "type": "process", "command": ["echo", "hi"]}}})
        view = await node.wait(job_id)
        print(view.state)

``open_node`` wires the parts together: the node key and SQLite store in the
data directory, the libp2p transport, the executors, and the trio runtime that
drives the pure node core.  Everything runs in one nursery; leaving the block
stops the node and leaves nothing running.  The CLI is built on this API.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import multiaddr
import sniffio
import trio

from p2pnode import tracing
from p2pnode.blobs import BlobStore
from p2pnode.control_request import MAX_IDEMPOTENCY_KEY
from p2pnode.datadir import make_private
from p2pnode.engines import EngineRouter, build_executors
from p2pnode.errors import (
    AmbiguousJobError,
    EventLoopError,
    ListenError,
    NodeStoppedError,
    NotFoundError,
    P2PNodeError,
    RefusedError,
    SettingsError,
    SpecError,
    WaitTimeoutError,
)
from p2pnode.executor import Executor
from p2pnode.executors.common import store_outputs
from p2pnode.executors.sandbox import open_sandbox
from p2pnode.forwarding import Emit, Handler, JobForwarder
from p2pnode.identity import Libp2pKeyring, load_or_create_key
from p2pnode.inputs import InputFetcher
from p2pnode.items import read_items
from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.net.guard import GuardLimits
from p2pnode.outputs import BLOB_PROTOCOL, blob_server, fetch_outputs
from p2pnode.runtime import NodeRuntime
from p2pnode.store import SqliteStore
from p2pnode.stream.feeder import StreamFeeder
from p2pnode.testing import NO_FAULTS, Faults, cut_connections
from p2pnode.timefmt import iso_utc
from p2pnode.views import (
    TERMINAL_STATES,
    TIME_FIELDS,
    JobSummary,
    JobView,
    NodeStats,
    PeerView,
    RunView,
)
from p2pnode.wasm_modules import module_problems, wasm_engines
from p2pnode.watchdog import LeaseWatchdog
from p2pnode.watchdog_docker import engine_from_env
from p2pnode.watchdog_helper import Docker
from protocols.askguard import AskLimits
from protocols.config import ANNOUNCE_TOPIC, NodeConfig, Timings
from protocols.errors import LocalProtocolError
from protocols.events import Notify, ReadItems, Send, Stopping
from protocols.logs import ExecutionLog
from protocols.node import NodeCore, broadcast_refusal
from protocols.owner import job_history
from protocols.queries import AMBIGUOUS, FOUND
from protocols.spec import JobSpec, SpecValidationError, parse_spec, validate_spec
from protocols.states import ExecState
from protocols.times import time_fields

log = logging.getLogger("p2pnode.node")

KNOWN_EXECUTORS = ("process", "docker", "sim", "wasm")
GOODBYE_TIMEOUT = 2.0  # seconds a clean stop waits for its goodbyes to leave
DIAL_TIMEOUT = 20.0  # seconds a dial (connect + secure + mux) may take; see open_node


def software_version() -> str:
    """p2pnode's version as installed (told to peers in ``node_info.version``)."""
    try:
        return importlib.metadata.version("p2pnode")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 * 2**30


@attrs.frozen(kw_only=True)
class NodeSettings:
    """Everything a node needs to start; the CLI's ``serve`` flags map onto it."""

    data_dir: Path
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()  # multiaddrs ending in /p2p/<peer id>
    labels: Mapping[str, str] = attrs.field(factory=dict)
    # Off unless asked for: these run commands that arrive from the network.
    executors: tuple[str, ...] = ()
    compute: bool = True
    cpu: float = attrs.field(factory=lambda: float(os.cpu_count() or 1))
    memory: int = attrs.field(factory=_total_memory)
    max_executions: int = 4
    timings: Timings = attrs.field(factory=Timings)
    # Point-to-point frames always go over direct streams; "inbox" (per-peer
    # gossipsub topics, readable by any peer) was removed.
    p2p_mode: str = "stream"
    seed: int | None = None  # None: a random seed per start
    # Abuse bounds: asks one peer may leave unanswered (protocols/askguard.py),
    # rejected frames before a peer is banned (p2pnode/net/guard.py).
    asks: AskLimits = attrs.field(factory=AskLimits)
    guard: GuardLimits = attrs.field(factory=GuardLimits)
    # The process executor's sandbox: "bwrap" (default) or "none" (tasks run
    # as plain processes with the node's uid: only for trusted peers).
    sandbox: Literal["bwrap", "none"] = "bwrap"
    sandbox_ro_paths: tuple[str, ...] = ()  # extra host paths tasks may read

    def __attrs_post_init__(self) -> None:
        unknown = [e for e in self.executors if e not in KNOWN_EXECUTORS]
        if unknown:
            raise SettingsError(
                f"unknown executor(s) {unknown}; choose from {list(KNOWN_EXECUTORS)}"
            )
        if self.p2p_mode != "stream":
            raise SettingsError(
                f"p2p mode {self.p2p_mode!r} is not supported: point-to-point frames go over"
                " direct streams (the inbox mode was removed: any peer could read its topics)"
            )


def keyed_job_id(node_id: str, idempotency_key: str) -> str:
    """The job id of a keyed submission: the same node and key, the same id
    (and the format of a random one).  ``SettingsError`` for a bad key."""
    if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise SettingsError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            "characters"
        )
    digest = hashlib.sha256(f"{node_id}\n{idempotency_key}".encode()).hexdigest()
    return f"j-{digest[:16]}"


def _normal(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def bootstrap_peer_id(addr: str) -> str:
    """The peer id at the end of a bootstrap multiaddr (``.../p2p/<id>``)."""
    head, sep, peer = addr.rpartition("/p2p/")
    if not sep or not head or not peer or "/" in peer:
        raise SettingsError(f"bootstrap address {addr!r} must end in /p2p/<peer id>")
    try:
        multiaddr.Multiaddr(f"/p2p/{peer}")
    except Exception:  # multiaddr raises its own error types
        raise SettingsError(f"bootstrap address {addr!r}: {peer!r} is not a peer id") from None
    try:
        multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise SettingsError(f"bad bootstrap address {addr!r}: {exc}") from None
    return peer


class Node:
    """A running peer: submit, watch, update, cancel and fetch jobs; list peers.

    Built by ``open_node``.  Every error it raises is a ``p2pnode.P2PNodeError``
    (``p2pnode/errors.py``); what it reports comes as frozen views
    (``p2pnode/views.py``) whose ``to_json()`` is what the CLI prints.
    """

    def __init__(
        self,
        settings: NodeSettings,
        runtime: NodeRuntime,
        core: NodeCore,
        transport: Libp2pTransport,
        blobs: BlobStore,
        feeder: StreamFeeder | None = None,
        forwarder: JobForwarder | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.blobs = blobs
        # Internals: the trio shell and the pure core it drives.  Tests look
        # inside; a program uses the methods below.
        self._runtime = runtime
        self._core = core
        self._feeder = feeder  # micro-batch stream sources (p2pnode/stream/)
        self._forwarder = forwarder or JobForwarder(runtime, core, {})
        # The HTTP API's base address ("http://HOST:PORT") while p2pnode.web serves it.
        self.http_url: str | None = None
        if not self._forwarder.ops:  # until a control socket serves its own
            self._forwarder.ops = self._read_only_ops()

    @property
    def node_id(self) -> str:
        return self._core.node_id

    def listen_addrs(self) -> list[str]:
        return self.transport.listen_addrs()

    # --- jobs ---------------------------------------------------------------------

    async def submit(
        self,
        spec: JobSpec | Mapping[str, Any] | str,
        *,
        job_id: str = "",
        idempotency_key: str | None = None,
    ) -> str:
        """Validate ``spec`` (a JobSpec, a plain spec dict, or YAML/JSON text),
        become its owner and start it.  Returns the job id.  Raises
        ``SpecError`` with every problem of an invalid spec.

        ``idempotency_key``: a submission that may be repeated (its first try's
        outcome unknown) returns the same job id every time, and creates the job
        once.  The job id is derived from the node and the key, so the stored
        job itself records the key, atomically and across restarts.  The same
        key with a different spec raises ``RefusedError`` (unless the job was
        updated since); an empty or over-long key, or a key together with
        ``job_id``, raises ``SettingsError``.  ``NodeStoppedError`` once the
        node has stopped."""
        if tracing.ON:
            tracing.event("submit")
        spec = _validated(spec)
        await self._check_modules(spec)
        canonical = spec.canonical()
        if idempotency_key is None:
            job_id = job_id or f"j-{secrets.token_hex(8)}"
            with self._refusals():
                await self._runtime.submit(job_id, canonical)
            return job_id
        if job_id:
            raise SettingsError("give a job id or an idempotency key, not both")
        job_id = keyed_job_id(self.node_id, idempotency_key)
        if not self._same_submission(job_id, idempotency_key, canonical):
            try:
                with self._refusals():
                    await self._runtime.submit(job_id, canonical)
            except RefusedError:  # a concurrent submit with the same key won
                if not self._same_submission(job_id, idempotency_key, canonical):
                    raise
        return job_id

    def _same_submission(self, job_id: str, key: str, canonical: dict[str, Any]) -> bool:
        """True if ``job_id`` (keyed by ``key``) exists with this spec; False if
        it does not exist; ``RefusedError`` if it has another spec."""
        job = self._core.owner.jobs.get(job_id)
        if job is None:
            return False
        # As stored (the owner's canonical form; msgpack makes tuples lists).
        wanted = validate_spec(canonical, canonical=True).canonical()
        if job.version == 1 and _normal(job.spec) != _normal(wanted):
            raise RefusedError(
                f"idempotency key {key!r} was already used for job {job_id} with another spec"
            )
        return True

    async def _check_modules(self, spec: JobSpec) -> None:
        """Peers fetch a wasm module from this node (the owner) by its content
        id: refuse a spec naming one this node's blob store lacks."""
        doc = spec.canonical()
        if not any(True for _ in wasm_engines(doc)):
            return  # nothing to look up: no worker thread per submit
        problems = await trio.to_thread.run_sync(module_problems, doc, self.blobs.has)
        if problems:
            raise SpecError(problems)

    @contextmanager
    def _refusals(self, job_id: str = "") -> Iterator[None]:
        """The core's refusals (``LocalProtocolError``) as the library's errors:
        ``NotFoundError`` when ``job_id`` is unknown here, else ``RefusedError``
        (the message unchanged)."""
        try:
            yield
        except P2PNodeError:
            raise
        except LocalProtocolError as exc:
            if job_id and not self._knows(job_id):
                raise NotFoundError(str(exc)) from exc
            raise RefusedError(str(exc)) from exc

    def _knows(self, job_id: str) -> bool:
        try:
            self._core.describe(job_id)
        except LocalProtocolError:
            return False
        return True

    async def cancel(self, job_id: str, reason: str = "stopped by user") -> None:
        """Stop a job this node owns.  ``NotFoundError`` for an unknown job."""
        with self._refusals(job_id):
            await self._runtime.cancel(job_id, reason)

    async def update(self, job_id: str, spec: JobSpec | Mapping[str, Any] | str) -> int:
        """Replace the spec of a daemon, service or cron job this node owns;
        returns the new version (1 at submit, +1 per update).

        Cron: later runs use the new version, running ones finish.  Daemon and
        service: a rolling replacement, ``rollout.max_unavailable`` slots at a
        time.  Raises ``SpecError`` with every problem of an invalid spec,
        ``NotFoundError`` for an unknown job, and ``RefusedError`` for a job
        of another kind, a finished job, or a spec that changes the job's
        ``type``.
        """
        spec = _validated(spec)
        await self._check_modules(spec)
        with self._refusals(job_id):
            notes = await self._runtime.update(job_id, spec.canonical())
        for note in notes:
            if note.kind == "job_updated" and note.data.get("job_id") == job_id:
                return int(note.data["version"])
        return self.describe(job_id).version

    async def suspend(self, job_id: str) -> None:
        """Suspend a cron job's schedule: scheduled times that pass meanwhile are
        recorded as skipped; a run already going finishes.  Raises
        ``NotFoundError`` for an unknown job, ``RefusedError`` for a job that
        is not a live cron job."""
        with self._refusals(job_id):
            await self._runtime.suspend(job_id, True)

    async def resume(self, job_id: str) -> None:
        """Resume a suspended cron job from its next scheduled time (the times
        that passed while suspended are not run).  Same errors as ``suspend``."""
        with self._refusals(job_id):
            await self._runtime.suspend(job_id, False)

    def runs(self, job_id: str) -> list[RunView]:
        """A cron job's history, oldest first: one row per scheduled time it
        handled, with ``run_id`` ("" when it was skipped or missed),
        ``scheduled_ms`` (unix ms) and ``scheduled`` (the same as ISO-8601 UTC),
        ``version``, ``outcome`` (queued, running, completed, failed, stopped,
        skipped, missed or buffered), ``reason`` and ``executions``
        ([{execution_id, node, state}]).  Raises ``NotFoundError`` for an
        unknown job, ``RefusedError`` for a job that is not a cron job."""
        with self._refusals(job_id):
            rows = self._core.runs(job_id)
        return [
            RunView.from_json(
                {
                    "run_id": row["run_id"],
                    "scheduled": iso_utc(row["scheduled_ms"]),
                    **row,
                    **self._run_times(row["run_id"]),
                }
            )
            for row in rows
        ]

    def _run_times(self, run_id: str) -> dict[str, Any]:
        """A cron run's ``TIME_FIELDS`` (all None for a skipped or forgotten run)."""
        try:
            view = self._core.describe(run_id) if run_id else {}
        except LocalProtocolError:
            view = {}
        return {key: view.get(key) for key in TIME_FIELDS}

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's event timeline, oldest first: ``{"at", "at_ms", "event",
        "node", "slot", "detail"}`` (events: docs/library.md).  Bounded per job.
        ``NotFoundError`` for a job this node does not own."""
        try:
            events = job_history(self._core.owner, job_id)
        except LocalProtocolError as exc:
            raise NotFoundError(str(exc)) from exc
        return [
            {
                "at": iso_utc(e["at_ms"]),
                "at_ms": e["at_ms"],
                "event": e["event"],
                "node": e["node"],
                "slot": e["slot"],
                "detail": e["detail"],
            }
            for e in events
        ]

    def live_output(self, execution_id: str) -> ExecutionLog | None:
        """The output an execution's holder streamed to us so far, if any
        (``protocols/logs.py``; ``job logs`` reads it through ``p2pnode/joblogs.py``)."""
        return self._core.owner.execution_log(execution_id)

    def watch(self) -> trio.MemoryReceiveChannel[Notify]:
        """Every notification of the node core from now on (close it when done)."""
        return self._runtime.watch()

    def describe(self, job_id: str) -> JobView:
        """State, owner and every execution of a job this node owns.
        ``NotFoundError`` for a job this node does not own."""
        try:
            view = self._core.describe(job_id)
        except LocalProtocolError as exc:  # the only refusal: an unknown job
            raise NotFoundError(str(exc)) from exc
        if self._feeder is not None:
            view = self._feeder.annotate(view)
        return JobView.from_json(view)

    def jobs(
        self,
        *,
        state: str | list[str] | None = None,
        type: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        since_ms: int | None = None,
        runs: bool = False,
    ) -> list[JobSummary]:
        """The jobs this node owns, in submit order (kept across restarts).

        Filters: ``state`` (one or a list: any matches), ``type`` (the job
        kind), ``name`` (a substring), ``since_ms`` (submitted at or after,
        unix ms), ``limit`` (the N most recently submitted).  A cron job's runs
        (``<cron>@<ms>``) are rows of ``runs(cron)``, not listed here unless
        ``runs``."""
        states = {state} if isinstance(state, str) else set(state or ())
        owned = self._core.owner.jobs
        picked = []
        for job in owned.values():
            if not runs and job.parent and _is_cron(owned.get(job.parent)):
                continue
            if states and job.state.value not in states:
                continue
            if type is not None and job.kind != type:
                continue
            if name is not None and name not in str(job.spec.get("name", "")):
                continue
            if since_ms is not None and job.submitted_ms < since_ms:
                continue
            picked.append(job)
        picked.sort(key=lambda job: (job.seq, job.submitted_ms, job.job_id))
        if limit is not None:
            picked = picked[-limit:] if limit > 0 else []
        return [
            JobSummary.from_json(
                {
                    "job_id": job.job_id,
                    "name": job.spec.get("name", ""),
                    "type": job.kind,
                    "state": job.state.value,
                    "reason": job.reason,
                    "owner": self.node_id,  # the jobs listed are the ones this node owns
                }
                | _job_times(job)
            )
            for job in picked
        ]

    def resolve_job_id(self, text: str) -> str:
        """The id of the job this node knows that ``text`` names: the id
        itself, or a unique prefix of one (a cron job before its runs).
        ``AmbiguousJobError`` lists the candidates of a prefix of several;
        ``NotFoundError`` ("no such job: X") when this node knows none."""
        status, found = self._core.resolve_job(text)
        if status == FOUND:
            return found[0]
        if status == AMBIGUOUS:
            raise AmbiguousJobError(
                f"job id prefix {text!r} names several jobs: {', '.join(found)}",
                candidates=found,
            )
        raise NotFoundError(f"no such job: {text}")

    async def forward(self, op: str, request: dict[str, Any], emit: Emit) -> Any:
        """Run the read-only control operation ``op`` on a job another peer
        owns, at its owner (docs/protocol.md, "Job queries").  ``request``
        holds the operation's arguments, ``job_id`` an id or unique prefix.
        Raises ``NotFoundError``, ``UnreachableError`` (the owner is known but
        silent), ``AmbiguousJobError`` or the owner's own refusal."""
        args = {k: v for k, v in request.items() if k not in ("op", "job_id")}
        return await self._forwarder.ask(op, str(request["job_id"]), args, emit)

    def owner_hint(self, text: str) -> str:
        """The peer this node last saw acting as the owner of job ``text``
        (asks and grants it received), or ""."""
        return self._core.queries.owner_of(text)[1]

    def answer_queries_with(self, ops: dict[str, Handler]) -> None:
        """Answer peers' job queries with these operations (the control
        socket's handlers, so that a forwarded operation answers as a local one)."""
        self._forwarder.ops = ops

    def _read_only_ops(self) -> dict[str, Handler]:
        """What peers' queries run on a node that serves no control socket."""

        async def describe(request: dict[str, Any], emit: Emit) -> Any:
            return self.describe(str(request["job_id"])).to_json()

        async def runs(request: dict[str, Any], emit: Emit) -> Any:
            return [run.to_json() for run in self.runs(str(request["job_id"]))]

        return {"describe": describe, "runs": runs}

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[Notify], None] | None = None,
    ) -> JobView:
        """Wait until the job is terminal; returns ``describe(job_id)``.

        ``on_event`` sees every notification about the job meanwhile (for
        progress display), but the many ``log_output`` ones of live logs.
        Raises ``WaitTimeoutError`` (a ``TimeoutError``) after ``timeout``
        seconds, ``NotFoundError`` for an unknown job and ``NodeStoppedError``
        if the node stops meanwhile.
        """
        try:
            with trio.fail_after(math_inf_if_none(timeout)):
                while True:
                    # A watcher that falls far behind is disconnected by the
                    # runtime: then look again and watch anew.
                    with self._runtime.watch(job_id=job_id) as events:
                        if self.describe(job_id).terminal:
                            return self.describe(job_id)
                        if not self._runtime.running:
                            raise NodeStoppedError("the node stopped while waiting")
                        async for note in events:
                            if note.data.get("job_id") != job_id or note.kind == "log_output":
                                continue  # (live output is for ``job logs``, not progress)
                            if on_event is not None:
                                on_event(note)
                            if note.kind == "job_state" and note.data["state"] in TERMINAL_STATES:
                                return self.describe(job_id)
        except trio.TooSlowError:
            raise WaitTimeoutError(f"job {job_id} not finished after {timeout:g}s") from None

    async def fetch_outputs(self, job_id: str, dest: str | os.PathLike[str]) -> list[Path]:
        """Download a job's outputs into the directory ``dest`` (what ``job get``
        does); returns the paths written.

        From the nodes that hold them, verified by hash: every completed
        slot's outputs (under ``dest/<slot>/`` when the job has several
        slots); a chain's last stage's; a DAG's per task (``dest/<task>/``,
        ``<task>/<i>/`` for a map task's instances).  A job with no outputs
        (yet) writes nothing.  Raises ``NotFoundError`` for an unknown job and
        ``FetchError`` when a holder cannot deliver.
        """
        written = await fetch_outputs(self, job_id, Path(dest))
        return [Path(path) for path in written]

    # --- network ------------------------------------------------------------------

    def stats(self) -> NodeStats:
        """Counters: frames sent by message type, drops by offending peer, duplicates
        filtered, the transport's own counters, and what peers cost us: rejected
        frames, scores and bans by peer (``peers``), asks by asker (``asks``);
        frames received by type, rejected frames by reason, lease renewals and
        lapses (as owner), chain handovers, executions by executor and outcome
        with durations (what ``/metrics`` exposes, docs/metrics.md).
        Field names are documented in docs/architecture.md ("Abusive peers")."""
        now = trio.current_time()
        return NodeStats.from_json(
            {
                "node_id": self.node_id,
                "sent_by_type": dict(self._core.out.sent_by_type),
                "frames_sent": sum(self._core.out.sent_by_type.values()),
                "dropped_by_sender": dict(self._core.dropped),
                "duplicates": self._core.duplicates,
                "transport": {
                    **attrs.asdict(self.transport.stats),
                    **self.transport.gossip_stats(),
                },
                "peers": self.transport.guard.stats(now),
                "asks": self._core.holder.ask_scores.stats(now),
                # Since issue 15 (the counters behind /metrics):
                "jobs_by_kind": self._owned_job_counts(),
                "received_by_type": dict(self._core.received_by_type),
                "frames_received": sum(self._core.received_by_type.values()),
                "rejected_by_reason": dict(self.transport.guard.rejected_by_reason),
                "leases": {
                    "renewals": self._core.owner.lease_renewals,
                    "lapses": self._core.owner.lease_lapses,
                },
                "handovers": dict(self._core.chain.handovers),
                "executions": {
                    "running": self._runtime.executions_running,
                    **self._runtime.execution_stats.to_json(),
                },
                # Since issue 16: store batches committed (group commit).
                # Inline or in the writer thread: p2pnode/store_writer.py.
                "store": self._runtime.store_commits,
                # Only under `serve --fault-loss`: the frames it dropped, by type.
                **({"lost_by_fault": dict(lost)} if (lost := self._runtime.frames_lost) else {}),
            }
        )

    def _owned_job_counts(self) -> dict[str, dict[str, int]]:
        """The jobs this node owns: kind -> state -> count (cron runs, DAG
        tasks and chain stages count as kind "run")."""
        counts: dict[str, dict[str, int]] = {}
        for job in self._core.owner.jobs.values():
            by_state = counts.setdefault(job.kind, {})
            by_state[job.state.value] = by_state.get(job.state.value, 0) + 1
        return counts

    def peers(self) -> list[PeerView]:
        """This node and the peers in its view, with labels, capacity and
        health: ``status`` ("alive", "suspect" past 1.5 heartbeats of silence,
        "gone" for a peer that said goodbye lately: no longer in the view),
        ``last_seen_s``, ``running`` / ``max_executions`` and ``version``."""
        me = self._core.me
        rows = [
            {
                "info": me,
                "status": "alive",
                "last_seen_s": 0.0,
                "running": len(self._core.holder.held),
            },
            *self._core.peer_health(trio.current_time()),
        ]
        return [
            PeerView.from_json(
                {
                    "node_id": i.node_id,
                    "labels": dict(i.labels),
                    "cpu": i.cpu,
                    "memory": i.memory,
                    "executors": list(i.executors),
                    "compute": i.compute,
                    "addrs": list(i.addrs),
                    "self": i.node_id == self.node_id,
                    "status": row["status"],
                    "last_seen_s": round(row["last_seen_s"], 1),
                    "running": row["running"],
                    "max_executions": i.max_executions,
                    "version": i.version,
                }
            )
            for row in rows
            for i in [row["info"]]
        ]


def _is_cron(job: Any) -> bool:
    return job is not None and job.kind == "cron"


def _validated(spec: JobSpec | Mapping[str, Any] | str) -> JobSpec:
    """The spec, checked; ``SpecError`` (the library's ``SpecValidationError``)
    with every problem."""
    if isinstance(spec, JobSpec):
        return spec
    try:
        return parse_spec(spec) if isinstance(spec, str) else validate_spec(dict(spec))
    except SpecValidationError as exc:
        raise SpecError(exc.errors) from None


def math_inf_if_none(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def ensure_ports_free(listen: tuple[str, ...]) -> None:
    """Refuse a fixed port that is already taken, or an address this host lacks.

    py-libp2p binds with SO_REUSEPORT, so a second node on a busy port would
    *share* it with the first (the kernel splitting connections between them)
    instead of failing.  A plain bind, without that option, tells the truth.
    An address the host does not have makes py-libp2p log and go on with no
    listener at all; the probe (port 0 included) fails it here instead.
    """
    for addr in listen:
        parts = addr.strip("/").split("/")
        if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or parts[2] not in ("tcp", "udp"):
            continue
        host, port = parts[1], int(parts[3])
        family = socket.AF_INET if parts[0] == "ip4" else socket.AF_INET6
        kind = socket.SOCK_STREAM if parts[2] == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as probe:
            # SO_REUSEADDR (not REUSEPORT): TIME_WAIT leftovers of a killed node
            # are fine, a live listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ListenError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from None


def _require_trio() -> None:
    """One clear error instead of trio's AttributeError deep inside libp2p."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "no event loop"
    if library != "trio":
        raise EventLoopError(
            f"open_node runs a node on trio, not {library}: start it with trio.run(...), "
            "or from asyncio talk to a running node (p2pnode serve) with p2pnode.AsyncClient"
        )


@asynccontextmanager
async def open_node(settings: NodeSettings, *, _faults: Faults = NO_FAULTS) -> AsyncIterator[Node]:
    """Start a node; stop it (cleanly, nothing left running) on exit.

    Raises ``ListenError`` (an ``OSError``) if a listen address is taken,
    ``StoreError`` if another node already uses the data dir, ``DataDirError``,
    ``KeyFileError`` or ``SandboxUnavailable`` when the node cannot start safely.
    ``_faults``: fault injection for p2pnode's own tests (``p2pnode/testing.py``).
    Outside trio (under ``asyncio.run``) it raises ``EventLoopError``.
    """
    _require_trio()
    ensure_ports_free(settings.listen)
    data_dir = settings.data_dir.resolve()  # tasks run elsewhere: paths must be absolute
    make_private(data_dir)
    key = load_or_create_key(data_dir)
    # Checked before the network starts: a missing bwrap is one clear error.
    sandbox = (
        open_sandbox(settings.sandbox, data_dir, ro_paths=settings.sandbox_ro_paths)
        if "process" in settings.executors
        else None
    )
    store = SqliteStore(data_dir / "node.db")
    try:
        blobs = BlobStore(data_dir)
        records = store.load()
        transport = Libp2pTransport(
            key,
            settings.listen,
            guard_limits=settings.guard,
            # Heartbeat hellos reach each peer every peer_heartbeat: keep the
            # frame stream to it open across two of them, rather than paying
            # a new stream's negotiation for nearly every heartbeat.
            idle_sender_timeout=max(60.0, 2 * settings.timings.peer_heartbeat),
            # A dial to a live peer is a Noise handshake plus yamux and
            # multistream round trips; on a busy host (issue 16: 40-100 nodes
            # on 2 cores) it often took more than the transport's 5 s, and the
            # cancelled half-made connection was redialled later from scratch
            # while every hello to that peer was dropped meanwhile.  A dead
            # peer on a reachable host refuses at once, so this costs nothing
            # there; a silent address holds only that peer's sender task.
            dial_timeout=DIAL_TIMEOUT,
        )
        transport.set_stream_handler(BLOB_PROTOCOL, blob_server(blobs))
        transport.set_topic_validator(ANNOUNCE_TOPIC, broadcast_refusal)
        async with transport:
            bootstrap_ids = []
            for addr in settings.bootstrap:
                peer = bootstrap_peer_id(addr)
                bootstrap_ids.append(peer)
                transport.add_addresses(peer, [addr])
            config = NodeConfig(
                node_id=transport.local_id,
                labels=dict(settings.labels),
                cpu=settings.cpu,
                memory=settings.memory,
                max_executions=settings.max_executions,
                executors=tuple(settings.executors) if settings.compute else (),
                compute=settings.compute and bool(settings.executors),
                bootstrap=tuple(bootstrap_ids),
                addrs=tuple(transport.listen_addrs()[:16]),
                version=software_version(),
                timings=settings.timings,
                asks=settings.asks,
            )
            seed = settings.seed if settings.seed is not None else secrets.randbits(63)
            core = NodeCore(config, seed, records, keys=Libp2pKeyring(key))
            executors = build_executors(
                settings.executors,
                data_dir,
                blobs,
                transport.local_id,
                sandbox=sandbox,
            )
            fetcher = InputFetcher(blobs, transport)
            router = EngineRouter(executors, inputs=fetcher)
            await router.reap_stale()

            async def items_reader(request: ReadItems) -> tuple[str, ...]:
                return await read_items(fetcher, blobs, request.refs)

            runtime = NodeRuntime(
                core,
                transport,
                store,
                router,
                items_reader=items_reader,
                drop_types=_faults.drop,
                drop_share=_faults.loss,
                drop_seed=_faults.loss_seed,
                log_dir=data_dir / "logs",
                store_log=lambda directory: store_outputs(blobs, directory, None),
            )
            # Synchronous, so the transport knows a peer's address before the
            # core's next action (often a hello to that very peer) is sent.
            runtime.add_listener(lambda note: _learn_address(note, transport))
            runtime.add_listener(lambda note: _penalize_dropped(note, transport))
            forwarder = JobForwarder(runtime, core, {})
            runtime.add_listener(forwarder.on_notify)
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                nursery.start_soon(forwarder.run, name="p2pnode job queries")
                feeder = StreamFeeder(core.stream.sources, runtime.source_batch, blobs)
                runtime.add_listener(lambda note: _wake_feeder(note, feeder))
                nursery.start_soon(feeder.run, name="p2pnode stream feeder")
                watchdog = _lease_watchdog(settings, executors, core)
                if watchdog is not None:
                    nursery.start_soon(watchdog.run, name="p2pnode lease watchdog")
                if _faults.reset_every:
                    nursery.start_soon(cut_connections, transport, _faults, name="fault: resets")
                log.info("node %s listening on %s", core.node_id, transport.listen_addrs())
                try:
                    yield Node(settings, runtime, core, transport, blobs, feeder, forwarder)
                    await _say_goodbye(runtime, core, transport)
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        store.close()


# The lease watchdog acts this long after the node's own fence would have
# begun (its SIGTERM), so that a running node's task gets its kill grace.
WATCHDOG_SLACK = 1.0


def _lease_watchdog(
    settings: NodeSettings, executors: Mapping[str, Executor], core: NodeCore
) -> LeaseWatchdog | None:
    """The watchdog of a compute node whose tasks run outside its process
    (process groups, containers), told of each task just before its spawn."""
    # Both executors have data_dir, kill_grace and a before_spawn hook (the
    # docker one is imported only when a node runs it: duck-typed here).
    runners: list[Any] = [executors[n] for n in ("process", "docker") if n in executors]
    if not settings.compute or not runners:
        return None
    docker: Docker | None = None
    if "docker" in executors:
        engine = engine_from_env(os.environ)  # the engine docker.from_env reaches
        if engine is None:
            log.warning("the lease watchdog cannot reach Docker at %s: "
                        "a paused node's containers run on until it wakes",
                        os.environ.get("DOCKER_HOST"))
        else:
            docker = Docker(engine, cast(Any, executors["docker"]).node_id)
    watchdog = LeaseWatchdog(
        functools.partial(_leases_left, core),
        runners[0].data_dir / "work",
        max(float(r.kill_grace) for r in runners) + WATCHDOG_SLACK,
        docker,
    )
    for runner in runners:
        runner.before_spawn = watchdog.before_spawn
    return watchdog


def _leases_left(core: NodeCore) -> dict[str, float]:
    """Seconds each running execution's lease has left (the watchdog's feed)."""
    now = trio.current_time()
    return {
        exec_id: held.valid_until - now
        for exec_id, held in core.holder.held.items()
        if held.state is ExecState.RUNNING and held.started
    }


async def _say_goodbye(runtime: NodeRuntime, core: NodeCore, transport: Libp2pTransport) -> None:
    """A clean stop: tell the view we leave (``goodbye``), so peers drop us at
    once; waits at most ``GOODBYE_TIMEOUT`` for the frames to leave."""
    if not runtime.running:
        return
    sends = [a for a in core.handle(Stopping(), trio.current_time()) if isinstance(a, Send)]
    stats = transport.stats

    def settled() -> int:
        return stats.sent + stats.dropped_unreachable + stats.dropped_send_full

    before = settled()
    with trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_TIMEOUT):
        for send in sends:
            await transport.send(send.to, send.data)
        while settled() - before < len(sends):
            await trio.sleep(0.02)


def _wake_feeder(note: Notify, feeder: StreamFeeder) -> None:
    """A batch committed or a job changed state: the feeder looks again now."""
    if note.kind in ("checkpoint_committed", "job_state"):
        feeder.poke()


def _penalize_dropped(note: Notify, transport: Libp2pTransport) -> None:
    """A frame the core refused counts against its sender, like the transport's own."""
    if note.kind == "dropped":
        transport.penalize(str(note.data["sender"]), str(note.data.get("fault", "unauthorized")))


def _learn_address(note: Notify, transport: Libp2pTransport) -> None:
    """Tell the transport where a peer the protocol discovered listens."""
    if note.kind == "peer_discovered":
        transport.add_addresses(note.data["node_id"], note.data["addrs"])


__all__ = ["TERMINAL_STATES", "LocalProtocolError", "Node", "NodeSettings", "open_node"]


def _job_times(job: Any) -> dict[str, object]:
    """A listed job's ``TIME_FIELDS``, as its ``describe`` shows them."""
    times = time_fields(job.submitted_ms, job.started_ms, job.finished_ms)
    return {key: times[key] for key in TIME_FIELDS}
