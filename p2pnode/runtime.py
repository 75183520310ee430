"""The trio shell around a sans-IO node core.

The core decides (``core.handle(event, now) -> actions``); this module does the
I/O those actions ask for, in order, and turns the outside world (frames,
timers, finished executions, local API calls) back into events.

Shape of a running node (one nursery, fixed number of long-lived tasks)::

    receive loop ──┐
    timer loop  ───┼──> event queue ──> consumer (the ``run`` task itself):
    executions  ───┤                      core.handle(event, now)
    local API   ───┘                      then execute the actions in order
    (submit, cancel, update, suspend)

Only the consumer calls ``core.handle``, and it finishes executing one batch of
actions before taking the next event, so the core is never re-entered and a
batch's effects are never interleaved with the next event's.  Group commit:
items already waiting in the queue when the consumer takes one are handed to
the core together, in order, and their records written as one batch before the
effects of any of them run, in order (``_process_group``); a lone item goes
alone, without waiting for company.

Durability rule: all ``Persist`` actions of one batch are applied first, as one
atomic ``store.apply``, and must succeed before any other action of the batch
runs (the others then run in their order).  One core step is therefore atomic on
disk: a crash (SIGKILL between two awaits of the batch) leaves either none or
all of its records, never a prefix.  A prefix could pair, say, a micro-batch
partition still "in flight" with the run that already ended, and nothing
would ever end it again.  What a crash can still lose is the tail of the
batch's sends, which is the same as losing them in the network, and the
protocol already survives that (simnet checks exactly this model: crashes
between events, plus loss).  If persisting fails the node stops (``run`` raises
``StoreError``): continuing would mean acting on state that is not on disk,
e.g. sending an epoch a restart forgets.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import random
import shutil
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from p2pnode import tracing
from p2pnode.errors import NodeStoppedError
from p2pnode.execstats import ExecutionStats
from p2pnode.executor import (
    Cleanup,
    Executor,
    ProgressMailbox,
    install_afterwards,
    install_progress,
)
from p2pnode.executors.common import safe_name
from p2pnode.logcapture import OutputCapture, install_output
from p2pnode.store import Store, StoreError
from p2pnode.store_writer import INLINE_BELOW, StoreWriter
from p2pnode.transport import Transport
from protocols import codec
from protocols.config import ANNOUNCE_TOPIC
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.events import (
    Action,
    AnswerQuery,
    CancelJob,
    CancelTimer,
    Event,
    ExecutionFinished,
    ItemsRead,
    MessageReceived,
    Notify,
    Persist,
    Publish,
    QueryJob,
    ReadItems,
    Send,
    SetTimer,
    SourceBatch,
    Started,
    StartExecution,
    StopExecution,
    SubmitJob,
    SuspendJob,
    TimerFired,
    UpdateJob,
)

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose ``trio-stubs`` shadow trio's own inline
    # annotations for mypy; those stubs predate ``trio.TaskStatus``.
    from trio_typing import TaskStatus

log = logging.getLogger("p2pnode.runtime")
# Notify actions, one line each: what an operator tails to follow a node.
events_log = logging.getLogger("p2pnode.events")
# Frequent notifies logged at DEBUG only (-vv): one per piece of live output.
QUIET_NOTIFIES = frozenset({"log_output"})


class Core(Protocol):
    """What the runtime needs from a node core (``protocols.node.NodeCore``)."""

    def handle(self, event: Event, now: float) -> Sequence[Action]: ...


# The node is not running (not started yet, stopped, or failed): the library's
# ``NodeStoppedError``, under the name this module always gave it.
NodeStopped = NodeStoppedError


# --- queue items ---------------------------------------------------------------


# The job-watcher table is swept of closed watchers when it reaches this size
# (then twice the live size): see NodeRuntime._sweep_job_watchers.
_JOB_WATCHERS_SWEEP_MIN = 64


@attrs.define(eq=False)
class _Reply:
    done: trio.Event = attrs.field(factory=trio.Event)
    notifies: list[Notify] = attrs.field(factory=list)
    error: BaseException | None = None

    def resolve(
        self, notifies: list[Notify] | None = None, error: BaseException | None = None
    ) -> None:
        if self.done.is_set():
            return
        self.notifies = notifies or []
        self.error = error
        self.done.set()


# The local API calls that go through the event queue (and may be refused).
_LocalCall = SubmitJob | CancelJob | UpdateJob | SuspendJob | SourceBatch | QueryJob | AnswerQuery


@attrs.frozen(eq=False)
class _Request:
    """A local API call: the event plus where to put the resulting notifies."""

    event: _LocalCall
    reply: _Reply


@attrs.frozen
class _TimerDue:
    """A timer reached its deadline; ``version`` tells whether it is still the
    timer the core asked for when the consumer gets to it."""

    key: Hashable
    version: int


_Item = Event | _Request | _TimerDue


@attrs.frozen(eq=False)
class _Step:
    """One item handled by the core: its actions, and for a local API call
    the reply to resolve once they ran (or the core's refusal)."""

    actions: Sequence[Action]
    reply: _Reply | None = None
    error: LocalProtocolError | None = None


@attrs.define(eq=False)
class _Running:
    scope: trio.CancelScope
    stop_reason: str = ""


class NodeRuntime:
    """Runs one node core with real I/O.  See the module docstring.

    ``clock`` is the time base handed to the core as ``now`` and used for
    ``SetTimer.at``; it defaults to trio's clock, so ``trio.testing.MockClock``
    drives it in tests.  ``send_timeout`` bounds one ``Send``/``Publish``
    (``None``: unbounded) so a stuck peer cannot stall the node.
    ``offload_store``: run ``store.apply`` in a worker thread so an fsync does
    not block the event loop; by default only for stores that say they block
    (``SqliteStore.blocking``), keeping in-memory stores deterministic under a
    mock clock.  The thread is one long-lived ``StoreWriter`` per run, not a
    ``trio.to_thread`` call per write (``store_writer.py``); it writes inline
    instead while commits take less than ``inline_commit_below`` seconds (``0``:
    always in the thread).

    The runtime does not own the store or the transport: whoever built them
    closes them after ``run`` returns.

    ``progress_interval``: an execution's progress reports reach the core at
    most once per this many seconds (bursts coalesce, the latest wins).

    ``group_limit``: at most this many already-queued items share one store
    commit (group commit, ``_process_group``); ``1`` goes item by item.  The
    default groups (64) only for blocking stores.
    """

    progress_interval = 0.1

    def __init__(
        self,
        core: Core,
        transport: Transport,
        store: Store,
        executor: Executor,
        *,
        clock: Callable[[], float] = trio.current_time,
        queue_size: int = 1024,
        send_timeout: float | None = 5.0,
        watch_buffer: int = 1024,
        offload_store: bool | None = None,
        items_reader: Callable[[ReadItems], Awaitable[tuple[str, ...]]] | None = None,
        drop_types: frozenset[str] = frozenset(),
        drop_share: float = 0.0,
        drop_seed: int = 0,
        log_dir: Path | None = None,
        store_log: Callable[[Path], Awaitable[str]] | None = None,
        group_limit: int | None = None,
        inline_commit_below: float = INLINE_BELOW,
    ) -> None:
        self.core = core
        self.transport = transport
        self.store = store
        self.executor = executor
        # Reads the lines a DAG map fans out over (p2pnode/items.py).
        self._items_reader = items_reader
        # Fault injection for tests (`serve --fault-drop TYPE`): incoming frames
        # of these message types are dropped as if lost.
        self._drop_types = drop_types
        # ... and this share of all incoming frames, at random (`--fault-loss`,
        # seeded by `--fault-seed`): a lossy link.  ``frames_lost`` counts
        # them by message type, so a test can tell the loss really happened.
        self._drop_share = drop_share
        self._drop_rng = random.Random(drop_seed)
        self.frames_lost: dict[str, int] = {}
        # Executions' complete output: written under ``log_dir``, then stored
        # by ``store_log`` (a blob manifest id) when the execution ends.
        self._log_dir = log_dir
        self._store_log = store_log
        # The manifest of a log with no output at all: the same for every
        # execution (content-addressed), so stored once, then reused.
        self._empty_log_manifest: str | None = None
        self._clock = clock
        self._queue_size = queue_size
        self._send_timeout = math.inf if send_timeout is None else send_timeout
        self._watch_buffer = watch_buffer
        self._offload_store = (
            bool(getattr(store, "blocking", False)) if offload_store is None else offload_store
        )
        self._writer: StoreWriter | None = None
        self._inline_commit_below = inline_commit_below
        # Group commit: items already queued are handled together, up to this
        # many, with one commit for all (``_process_group``).  By default only
        # where a commit is costly (a blocking store: an fsync and a thread
        # trip); in-memory stores go item by item, so the simulator's trio
        # mode runs exactly as before.
        if group_limit is None:
            group_limit = 64 if self._offload_store else 1
        if group_limit < 1:
            raise ValueError(f"group_limit must be at least 1, got {group_limit}")
        self._group_limit = group_limit
        # Store batches written (one per step with records, or per group).
        self.commits = 0

        self._running = False
        self._stopped = False
        self._nursery: trio.Nursery | None = None
        self._queue: trio.MemorySendChannel[_Item] | None = None
        self._pending: set[_Reply] = set()
        self._watchers: list[trio.MemorySendChannel[Notify]] = []
        # job id -> watchers of that job's notifies only (``watch(job_id=...)``)
        self._job_watchers: dict[str, list[trio.MemorySendChannel[Notify]]] = {}
        self._job_watchers_sweep_at = _JOB_WATCHERS_SWEEP_MIN
        self._listeners: list[Callable[[Notify], None]] = []
        self._executions: dict[str, _Running] = {}
        # Finished executions by executor and outcome, with durations (metrics).
        self.execution_stats = ExecutionStats()

        # Timers: one heap with lazy deletion.  ``_armed`` is the truth (key ->
        # version of its live SetTimer); heap entries whose version is no longer
        # armed are skipped.  ``_due`` holds timers that fired but whose
        # TimerFired the consumer has not handed to the core yet, so that a
        # Set/CancelTimer processed in between still wins.
        self._versions = itertools.count()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._armed: dict[Hashable, tuple[float, int]] = {}
        self._due: dict[Hashable, int] = {}
        self._timer_wake = trio.Event()

    # --- public API ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def store_commits(self) -> dict[str, int]:
        """Batches committed, and how many of them inline or in the writer
        thread (``store_writer.py``)."""
        writer = self._writer
        return {
            "commits": self.commits,
            "inline": writer.inline_commits if writer is not None else 0,
            "in_thread": writer.thread_commits if writer is not None else 0,
        }

    @property
    def executions_running(self) -> int:
        """Executions started here and not yet ended."""
        return len(self._executions)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled (or ``stop()``).  Reports started once
        the core has handled ``Started`` and the local API accepts calls.

        Raises ``StoreError`` if persisting fails, and whatever the core raises
        (other than a ``RemoteProtocolError`` for a received frame): a node must
        fail loudly rather than run on with a state it cannot trust.
        """
        if self._running or self._stopped:
            raise RuntimeError("a NodeRuntime runs once")
        send, receive = trio.open_memory_channel[_Item](self._queue_size)
        self._queue = send
        if self._offload_store:
            self._writer = StoreWriter(self.store.apply, inline_below=self._inline_commit_below)
            self._writer.start()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.transport.subscribe(ANNOUNCE_TOPIC)
                await self._dispatch(Started(wall=time.time()))
                nursery.start_soon(self._timer_loop, name="p2pnode timers")
                nursery.start_soon(self._receive_loop, name="p2pnode receive")
                self._running = True
                task_status.started()
                # The receive end is deliberately never closed here: closing it
                # while failing would hand blocked senders a BrokenResourceError
                # that buries the real error; the nursery's cancellation ends them.
                while True:
                    await self._consume(receive)
        except BaseExceptionGroup as group:
            # Strict exception groups wrap the one real failure (say the
            # StoreError) with the Cancelled of the sibling tasks; surface it
            # alone so callers can catch it by type.  Pure cancellation passes
            # through untouched for the enclosing cancel scope.
            _, rest = group.split(trio.Cancelled)
            leaves = _leaves(rest) if rest is not None else []
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
        finally:
            self._shutdown(send)
            if self._writer is not None:
                self._writer.close()

    def stop(self) -> None:
        """Stop a running node (same as cancelling the scope ``run`` is in)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def submit(self, job_id: str, spec: dict[str, Any]) -> list[Notify]:
        """Make this node the owner of a new job.  Returns the ``Notify``
        actions the core produced for it; raises ``LocalProtocolError`` if the
        core refused, ``NodeStopped`` if the node is not running."""
        return await self._request(SubmitJob(job_id, spec))

    async def cancel(self, job_id: str, reason: str = "stopped by user") -> list[Notify]:
        """Stop a job this node owns.  Same returns and errors as ``submit``."""
        return await self._request(CancelJob(job_id, reason))

    async def update(self, job_id: str, spec: dict[str, Any]) -> list[Notify]:
        """A new version of a daemon, service or cron job's spec (canonical
        form); its ``job_updated`` notify carries the new version.  Same errors
        as ``submit`` (the core refuses other kinds, unknown or finished jobs,
        and a changed ``type``)."""
        return await self._request(UpdateJob(job_id, spec))

    async def source_batch(self, batch: SourceBatch) -> list[Notify]:
        """A micro-batch stream's connector stored a batch of entries: the core
        starts a batch job over it.  Raises ``LocalProtocolError`` if the core
        refuses it (job gone, a batch already in flight, not after the
        partition's position), ``NodeStopped`` if the node is not running."""
        return await self._request(batch)

    async def suspend(self, job_id: str, suspended: bool = True) -> list[Notify]:
        """Suspend (``True``) or resume (``False``) a cron job's schedule.
        Same returns and errors as ``submit``."""
        return await self._request(SuspendJob(job_id, suspended))

    async def query(self, query: QueryJob) -> list[Notify]:
        """Ask a job's owner (``job_query``); ``job_query_done`` follows.
        Same errors as ``submit``."""
        return await self._request(query)

    async def answer_query(self, answer: AnswerQuery) -> list[Notify]:
        """Send the answer to a peer's ``job_query``.  Same errors as ``submit``."""
        return await self._request(answer)

    def watch(
        self, buffer: int | None = None, *, job_id: str | None = None
    ) -> trio.MemoryReceiveChannel[Notify]:
        """Subscribe to every ``Notify`` from now on, or with ``job_id`` to those
        whose ``data["job_id"]`` is that job (a waiter on one job then costs
        nothing for the notifies of the others: with 40 jobs waited on, each
        notify used to wake 40 waiters).

        Iterate the returned channel; close it to unsubscribe.  It ends when the
        node stops.  A watcher that falls ``buffer`` notifies behind is
        disconnected (its iteration ends, with a warning logged) rather than
        slowing the node down or silently missing notifies.
        """
        send, receive = trio.open_memory_channel[Notify](buffer or self._watch_buffer)
        if self._stopped:
            send.close()
        elif job_id is None:
            self._watchers.append(send)
        else:
            self._job_watchers.setdefault(job_id, []).append(send)
            if len(self._job_watchers) >= self._job_watchers_sweep_at:
                self._sweep_job_watchers()
        return receive

    def _sweep_job_watchers(self) -> None:
        """Forget job watchers whose receiving end is closed.  A closed watcher
        is otherwise dropped only at its job's next notify, and a finished job
        has none.  Run when the table doubles: amortized O(1) per watch."""
        live = {}
        for job_id, watchers in self._job_watchers.items():
            kept = [w for w in watchers if w.statistics().open_receive_channels]
            if kept:
                live[job_id] = kept
        self._job_watchers = live
        self._job_watchers_sweep_at = max(_JOB_WATCHERS_SWEEP_MIN, 2 * len(live))

    # --- the consumer ----------------------------------------------------------

    async def _consume(self, receive: trio.MemoryReceiveChannel[_Item]) -> None:
        """Take the next item and, if more are already waiting, up to
        ``group_limit`` in all: one group, one commit (see ``_process_group``).
        Never waits for more items than are already queued."""
        group = [await receive.receive()]
        while len(group) < self._group_limit:
            try:
                group.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        if len(group) == 1:
            await self._process(group[0])
        else:
            await self._process_group(group)

    async def _process(self, item: _Item) -> None:
        step = self._handle(item)
        if step is not None:
            await self._finish([step])

    async def _process_group(self, group: list[_Item]) -> None:
        """Group commit: hand every item to the core in queue order, write all
        their records as ONE batch (one transaction, one fsync), and only then
        run each step's other actions and replies, in the same order as item by
        item.  Persist-before-send holds for the whole group: nothing of any
        item escapes before the group is durable, and a ``StoreError`` stops
        the node with none of it out.  Timer bookkeeping (the core's own
        timers, invisible outside) is applied at each item's turn, so a later
        item's ``_TimerDue`` is judged stale or live exactly as it would be."""
        steps: list[_Step] = []
        last = len(group) - 1
        for index, item in enumerate(group):
            step = self._handle(item)
            if step is None:
                continue
            if not steps and not any(isinstance(a, Persist) for a in step.actions):
                # Nothing before it waits for a commit and it writes nothing:
                # it runs at once, exactly as item by item (no added latency).
                await self._finish([step])
                continue
            if index < last and step.actions:
                step = attrs.evolve(step, actions=self._apply_timers(step.actions))
            steps.append(step)
        if steps:
            await self._finish(steps)

    def _handle(self, item: _Item) -> _Step | None:
        """Hand one item to the core (at its turn: timer staleness is judged
        now).  ``None``: nothing to do (a stale timer, a dropped bad frame)."""
        if tracing.ON:
            tracing.event("item", _traced(item))
        now = self._clock()
        if isinstance(item, _TimerDue):
            if self._due.get(item.key) != item.version:
                return None  # re-set or cancelled after it fired
            del self._due[item.key]
            return _Step(self.core.handle(TimerFired(item.key), now))
        if isinstance(item, _Request):
            try:
                return _Step(self.core.handle(item.event, now), item.reply)
            except LocalProtocolError as exc:
                return _Step((), item.reply, exc)
        if isinstance(item, MessageReceived):
            try:
                return _Step(self.core.handle(item, now))
            except RemoteProtocolError as exc:
                # The core should drop bad frames itself; this is the backstop
                # that keeps a peer from crashing us.
                log.warning("dropped frame from %s: %s", item.sender, exc)
                return None
        return _Step(self.core.handle(item, now))

    async def _finish(self, steps: Sequence[_Step]) -> None:
        """Persist the steps' records as one batch, then run their other
        actions and resolve their replies, step by step in order."""
        await self._persist_records([a for s in steps for a in s.actions if isinstance(a, Persist)])
        for step in steps:
            if step.error is not None:
                assert step.reply is not None
                step.reply.resolve(error=step.error)
                continue
            notifies = await self._run_actions(step.actions)
            if step.reply is not None:
                step.reply.resolve(notifies)

    def _apply_timers(self, actions: Sequence[Action]) -> tuple[Action, ...]:
        """Apply the timer actions now; return the others."""
        rest: list[Action] = []
        for action in actions:
            if isinstance(action, SetTimer | CancelTimer):
                self._run_timer(action)
            else:
                rest.append(action)
        return tuple(rest)

    def _run_timer(self, action: SetTimer | CancelTimer) -> None:
        if isinstance(action, SetTimer):
            self._set_timer(action.key, action.at)
        else:
            self._armed.pop(action.key, None)
            self._due.pop(action.key, None)

    async def _dispatch(self, event: Event) -> list[Notify]:
        actions = self.core.handle(event, self._clock())
        return await self._execute(actions)

    async def _execute(self, actions: Sequence[Action]) -> list[Notify]:
        await self._persist_records([a for a in actions if isinstance(a, Persist)])
        return await self._run_actions(actions)

    async def _persist_records(self, records: Sequence[Persist]) -> None:
        if records:  # the whole step (or group) on disk before any of its effects
            if tracing.ON:
                tracing.event("persist<", str(len(records)))
            await self._persist(records)
            self.commits += 1
            if tracing.ON:
                tracing.event("persist>", str(len(records)))

    async def _run_actions(self, actions: Sequence[Action]) -> list[Notify]:
        """Every action but ``Persist`` (already written), in order."""
        notifies: list[Notify] = []
        for action in actions:
            match action:
                case Persist():
                    pass  # written before
                case Send(to=peer, data=data):
                    if tracing.ON:
                        tracing.event("send", codec.message_type(data))
                    await self._transmit(f"send to {peer}", self.transport.send, peer, data)
                case Publish(topic=topic, data=data):
                    await self._transmit(f"publish on {topic}", self.transport.publish, topic, data)
                case SetTimer() | CancelTimer():
                    self._run_timer(action)
                case StartExecution():
                    self._start_execution(action)
                case StopExecution(execution_id=eid, reason=reason):
                    running = self._executions.get(eid)
                    if running is not None:  # else it already ended
                        running.stop_reason = reason
                        running.scope.cancel()
                case Notify():
                    self._notify(action)
                    notifies.append(action)
                case ReadItems():
                    assert self._nursery is not None
                    self._nursery.start_soon(self._read_items, action, name=f"items {action.task}")
                case _:
                    raise TypeError(f"core returned an unknown action: {action!r}")
        return notifies

    async def _persist(self, batch: Sequence[Persist]) -> None:
        try:
            if self._writer is not None:
                # Not abandoned on cancel: a batch is either fully written or
                # not at all, never left running behind a stopped node.
                await self._writer.apply(batch)
            else:
                self.store.apply(batch)
        except StoreError as exc:
            log.critical(
                "node %s stops: could not persist %d record(s): %s",
                self._local_id(),
                len(batch),
                exc,
            )
            raise

    async def _transmit(
        self,
        what: str,
        fn: Callable[[str, bytes], Any],
        target: str,
        data: bytes,
    ) -> None:
        # Best effort by contract: the protocol retransmits, so a failed or
        # slow send is logged and the batch goes on.
        try:
            with trio.move_on_after(self._send_timeout) as scope:
                await fn(target, data)
            if scope.cancelled_caught:
                log.warning("%s timed out after %ss", what, self._send_timeout)
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)

    def add_listener(self, listener: Callable[[Notify], None]) -> None:
        """Call ``listener`` synchronously for every ``Notify``, in action order:
        unlike ``watch()``, it sees a notify before the next action of the same
        batch runs (e.g. a peer's address before a ``Send`` to that peer)."""
        self._listeners.append(listener)

    def _notify(self, action: Notify) -> None:
        level = logging.DEBUG if action.kind in QUIET_NOTIFIES else logging.INFO
        events_log.log(level, "%s %s %s", self._local_id(), action.kind, action.data)
        for listener in self._listeners:
            listener(action)
        if self._watchers:
            self._offer(self._watchers, action)
        if self._job_watchers:
            job_id = action.data.get("job_id")
            if isinstance(job_id, str) and job_id in self._job_watchers:
                watchers = self._job_watchers[job_id]
                self._offer(watchers, action)
                if not watchers:
                    del self._job_watchers[job_id]

    def _offer(self, watchers: list[trio.MemorySendChannel[Notify]], action: Notify) -> None:
        """Hand ``action`` to each of ``watchers``; drop from the list those
        that closed their end or fell behind (closed here)."""
        for watcher in list(watchers):
            try:
                watcher.send_nowait(action)
            except trio.WouldBlock:
                log.warning(
                    "a watcher fell %d notifies behind; disconnecting it", self._watch_buffer
                )
                watcher.close()
                watchers.remove(watcher)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                watchers.remove(watcher)  # the watcher closed its end

    def _local_id(self) -> str:
        try:
            return str(self.transport.local_id)
        except Exception:
            return "?"

    # --- local API plumbing ----------------------------------------------------

    async def _request(self, event: _LocalCall) -> list[Notify]:
        queue = self._queue
        if not self._running or queue is None:
            raise NodeStopped("node is not running")
        reply = _Reply()
        self._pending.add(reply)
        try:
            try:
                await queue.send(_Request(event, reply))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise NodeStopped("node stopped") from None
            await reply.done.wait()
        finally:
            self._pending.discard(reply)
        if reply.error is not None:
            raise reply.error
        return reply.notifies

    # --- timers ----------------------------------------------------------------

    def _set_timer(self, key: Hashable, at: float) -> None:
        version = next(self._versions)
        wake = not self._heap or at < self._heap[0][0]
        self._armed[key] = (at, version)
        self._due.pop(key, None)  # a fired-but-unhandled instance is superseded
        heapq.heappush(self._heap, (at, version, key))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._armed):
            # Re-set timers (retransmission backoff) leave stale entries behind.
            self._heap = [(a, v, k) for k, (a, v) in self._armed.items()]
            heapq.heapify(self._heap)
        if wake:
            self._timer_wake.set()

    def _is_live(self, version: int, key: Hashable) -> bool:
        armed = self._armed.get(key)
        return armed is not None and armed[1] == version

    async def _timer_loop(self) -> None:
        # One task for all timers: sleep until the earliest deadline, or until
        # _set_timer signals that an earlier one was added.
        while True:
            self._timer_wake = trio.Event()
            while self._heap and not self._is_live(self._heap[0][1], self._heap[0][2]):
                heapq.heappop(self._heap)
            if not self._heap:
                await self._timer_wake.wait()
                continue
            now = self._clock()
            at = self._heap[0][0]
            if at > now:
                # With trio's own clock sleep to exactly ``at`` (no float drift
                # from converting between time bases).
                wake_at = at if self._clock is trio.current_time else trio.current_time() + at - now
                with trio.move_on_at(wake_at):
                    await self._timer_wake.wait()
                continue
            # Mark every due timer before yielding, so that a Set/CancelTimer
            # made while handling one of them applies to the others too.
            fired: list[_TimerDue] = []
            while self._heap and self._heap[0][0] <= now:
                _, version, key = heapq.heappop(self._heap)
                if self._is_live(version, key):
                    del self._armed[key]
                    self._due[key] = version
                    fired.append(_TimerDue(key, version))
            assert self._queue is not None
            for due in fired:
                await self._queue.send(due)

    # --- receiving -------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._queue is not None
        while True:
            frame = await self.transport.receive()
            if self._drop_types and codec.message_type(frame.data) in self._drop_types:
                log.warning("fault injection: dropped a %s frame", codec.message_type(frame.data))
                continue
            if self._drop_share and self._drop_rng.random() < self._drop_share:
                kind = codec.message_type(frame.data)
                self.frames_lost[kind] = self.frames_lost.get(kind, 0) + 1
                log.info("fault injection: lost a %s frame", kind)
                continue
            await self._queue.send(MessageReceived(frame.sender, frame.data, frame.topic))

    async def _read_items(self, request: ReadItems) -> None:
        """Answer a ReadItems action with ItemsRead (the items, or why not)."""
        assert self._queue is not None
        queue = self._queue
        if self._items_reader is None:
            answer = ItemsRead(request.job_id, request.task, error="this node cannot read items")
        else:
            try:
                items = await self._items_reader(request)
                answer = ItemsRead(request.job_id, request.task, items=items)
            except Exception as exc:  # any failure is the map task's failure, with its reason
                answer = ItemsRead(request.job_id, request.task, error=str(exc) or repr(exc))
        with contextlib.suppress(trio.ClosedResourceError):
            await queue.send(answer)

    # --- executions ------------------------------------------------------------

    def _start_execution(self, start: StartExecution) -> None:
        eid = start.execution_id
        if eid in self._executions:
            log.error("core started execution %s twice; ignoring the second start", eid)
            return
        assert self._nursery is not None
        # The scope is registered now, not when the task first runs, so a
        # StopExecution later in the same batch already finds it.
        running = _Running(trio.CancelScope())
        self._executions[eid] = running
        self._nursery.start_soon(self._run_execution, start, running, name=f"execution {eid}")

    async def _run_execution(self, start: StartExecution, running: _Running) -> None:
        # The execution's progress reports (a stream consumer's checkpoints)
        # reach the core through the queue, coalesced; what is pending when the
        # execution ends is delivered before its ExecutionFinished.
        assert self._queue is not None
        queue = self._queue
        mailbox = ProgressMailbox(start.execution_id, self.progress_interval)
        install_progress(mailbox)  # this task's context: the executor's tasks inherit it
        log_dir = self._log_dir / safe_name(start.execution_id) if self._log_dir else None
        try:
            capture = OutputCapture(start.execution_id, log_dir)
        except OSError as exc:  # (a full disk, say): live output only, the run goes on
            log.warning("cannot keep the output of %s: %s", start.execution_id, exc)
            capture = OutputCapture(start.execution_id, None)
        install_output(capture)
        engine = (start.task.get("engine") or {}).get("type", "?")
        log.info(
            "running job %s slot %d execution %s (engine %s, owner %s)",
            start.job_id,
            start.slot,
            start.execution_id,
            engine,
            start.owner[:12] or "?",
        )
        # What the executor (and the log below) leave to clean up once the
        # result is on its way: run at the end of this task whatever happens.
        afterwards: list[Cleanup] = []
        install_afterwards(afterwards)
        try:
            await self._report_execution(start, running, queue, mailbox, capture, afterwards)
        finally:
            with trio.CancelScope(shield=True):
                for cleanup in afterwards:
                    try:
                        await cleanup()
                    except Exception as exc:  # cleanup never changes the reported result
                        log.warning("cleanup after %s failed: %r", start.execution_id, exc)

    async def _report_execution(
        self,
        start: StartExecution,
        running: _Running,
        queue: trio.MemorySendChannel[_Item],
        mailbox: ProgressMailbox,
        capture: OutputCapture,
        afterwards: list[Cleanup],
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mailbox.pump, queue.send)
                nursery.start_soon(capture.pump, queue.send)
                result = await self._execution_result(start, running)
                mailbox.close()
                capture.close()
            result = await self._with_log(result, capture, afterwards)
        finally:
            capture.finish()
        engine = (start.task.get("engine") or {}).get("type", "?")
        self.execution_stats.record(engine, result.status, result.duration_ms / 1000)
        log.info(
            "execution %s of job %s slot %d ended: %s (exit code %d, %.1fs, %d+%d output bytes)",
            start.execution_id,
            start.job_id,
            start.slot,
            result.status,
            result.exit_code,
            result.duration_ms / 1000,
            capture.written["stdout"],
            capture.written["stderr"],
        )
        if tracing.ON:
            tracing.event("exec-end", start.execution_id)
        await queue.send(result)

    async def _with_log(
        self, result: ExecutionFinished, capture: OutputCapture, afterwards: list[Cleanup]
    ) -> ExecutionFinished:
        """The result with its complete output stored as a blob manifest (its
        directory is removed after the result has gone out)."""
        directory = capture.finish()
        if directory is None or self._store_log is None:
            return result

        async def remove() -> None:
            await trio.to_thread.run_sync(_remove_tree, directory)

        afterwards.append(remove)
        silent = not any(capture.written.values()) and not any(capture.skipped_total.values())
        if silent and self._empty_log_manifest is not None:
            return attrs.evolve(result, log_manifest=self._empty_log_manifest)
        try:
            manifest = await self._store_log(directory)
        except Exception as exc:  # the run's outcome stands; only its full log is missing
            log.warning("could not store the output of %s: %s", result.execution_id, exc)
            return result
        if silent:
            self._empty_log_manifest = manifest
        return attrs.evolve(result, log_manifest=manifest)

    async def _execution_result(
        self, start: StartExecution, running: _Running
    ) -> ExecutionFinished:
        eid = start.execution_id
        t0 = self._clock()
        if tracing.ON:
            tracing.event("exec-start", eid)
        result: ExecutionFinished | None = None
        try:
            with running.scope, trio.move_on_after(start.timeout) as deadline:
                try:
                    result = await self.executor.run(start)
                except* Exception as group:
                    # except*: an executor with its own nursery raises groups,
                    # possibly mixed with Cancelled, which must go on to the
                    # scopes above.
                    log.warning("execution %s raised: %r", eid, group)
                    result = ExecutionFinished(eid, "error", error=_describe(group))
        finally:
            if self._executions.get(eid) is running:
                del self._executions[eid]
        elapsed = int((self._clock() - t0) * 1000)
        if result is None:
            if deadline.cancelled_caught:
                result = ExecutionFinished(
                    eid,
                    "timeout",
                    error=f"hard timeout after {start.timeout}s",
                    duration_ms=elapsed,
                )
            elif running.scope.cancelled_caught:
                result = ExecutionFinished(
                    eid, "cancelled", error=running.stop_reason, duration_ms=elapsed
                )
            else:  # the executor broke its contract; report rather than hang the job
                result = ExecutionFinished(eid, "error", error="executor returned no result")
        elif not isinstance(result, ExecutionFinished):
            result = ExecutionFinished(
                eid, "error", error=f"executor returned {type(result).__name__}"
            )
        elif result.execution_id != eid:
            result = attrs.evolve(result, execution_id=eid)
        if not result.duration_ms:
            result = attrs.evolve(result, duration_ms=elapsed)
        return result

    # --- shutdown --------------------------------------------------------------

    def _shutdown(self, queue: trio.MemorySendChannel[_Item]) -> None:
        self._running = False
        self._stopped = True
        self._nursery = None
        queue.close()
        for reply in list(self._pending):
            reply.resolve(error=NodeStopped("node stopped"))
        for watcher in [*self._watchers, *(w for ws in self._job_watchers.values() for w in ws)]:
            watcher.close()
        self._watchers.clear()
        self._job_watchers.clear()
        self._executions.clear()
        self._heap.clear()
        self._armed.clear()
        self._due.clear()


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    return "; ".join(str(leaf) or type(leaf).__name__ for leaf in _leaves(exc))


def _traced(item: object) -> str:
    """What a consumed item is, for ``P2PNODE_TRACE``."""
    if isinstance(item, MessageReceived):
        return "recv:" + codec.message_type(item.data)
    return type(item).__name__
