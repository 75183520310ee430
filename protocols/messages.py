"""Every message of the p2pnode wire protocol, as frozen attrs classes.

A message is the *body* of a frame; the envelope (protocol version, type tag,
message id, sender) lives in :mod:`protocols.codec`.  Each class carries a
``TYPE`` tag (its name on the wire) and a ``SENDER_ROLE`` (who may send it),
which :mod:`protocols.codec` and ``docs/protocol.md`` rely on.

Field bounds are declared with :func:`bounded` metadata so the codec can reject
out-of-range values from a peer without any per-class code.

Times on the wire are always *durations* in milliseconds, never absolute clock
readings: every node judges expiry on its own monotonic clock.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

# Bounds shared by the codec and the spec validator.
MAX_ID_LEN = 128
MAX_TEXT_LEN = 4096
MAX_TAIL_LEN = 16 * 1024
MAX_LABELS = 64
MAX_LIST_LEN = 256
MAX_SLOT = 100_000
MAX_EPOCH = 2**53
CENSUS_SLOT = MAX_SLOT  # asks for this slot count matching nodes (ops, daemon); never granted
MAX_DURATION_MS = 30 * 24 * 3600 * 1000  # 30 days
MAX_CHECKPOINT_LEN = 4096  # a stream consumer's progress token
MAX_INPUTS = 1024
MAX_LOG_CHUNK = 8 * 1024  # bytes of task output in one log_chunk
LOG_STREAMS = ("stdout", "stderr")
MAX_PEERS_SAMPLE = 64  # entries of one Peers message
MAX_EXECUTIONS = 100_000  # node_info.max_executions, hello.running
MAX_VERSION_LEN = 64
MAX_GOODBYE_LEN = 256


def bounded(
    *,
    max_len: int | None = None,
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, Any]:
    """Field metadata read by the codec's strict decoder."""
    return {"max_len": max_len, "lo": lo, "hi": hi}


def _id() -> Any:
    return attrs.field(metadata=bounded(max_len=MAX_ID_LEN))


def _text(max_len: int = MAX_TEXT_LEN) -> Any:
    return attrs.field(default="", metadata=bounded(max_len=max_len))


def _count(hi: float, lo: float = 0) -> Any:
    return attrs.field(metadata=bounded(lo=lo, hi=hi))


def _ms() -> Any:
    return attrs.field(metadata=bounded(lo=0, hi=MAX_DURATION_MS))


class Role:
    """Who may send a message (checked on receipt, documented in protocol.md)."""

    OWNER = "owner"  # the job's current owner
    BIDDER = "bidder"  # a compute node answering an ask
    HOLDER = "holder"  # the holder of the execution's lease
    ANY = "any"  # any peer (directory traffic)


@attrs.frozen(kw_only=True)
class Message:
    """Base class; subclasses set TYPE and SENDER_ROLE."""

    TYPE: ClassVar[str] = ""
    SENDER_ROLE: ClassVar[str] = Role.ANY


# --- directory -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NodeInfo(Message):
    """What a node tells others about itself (carried in Hello and Peers)."""

    TYPE: ClassVar[str] = "node_info"
    SENDER_ROLE: ClassVar[str] = Role.ANY

    node_id: str = _id()
    labels: dict[str, str] = attrs.field(factory=dict, metadata=bounded(max_len=MAX_LABELS))
    cpu: float = attrs.field(default=0.0, metadata=bounded(lo=0, hi=4096))
    memory: int = attrs.field(default=0, metadata=bounded(lo=0, hi=2**50))
    executors: list[str] = attrs.field(factory=list, metadata=bounded(max_len=8))
    addrs: list[str] = attrs.field(factory=list, metadata=bounded(max_len=16))
    compute: bool = True
    # Executions the node runs at once, and its software version (shown by
    # `node list`; neither is used to choose candidates).
    max_executions: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_EXECUTIONS))
    version: str = attrs.field(default="", metadata=bounded(max_len=MAX_VERSION_LEN))


@attrs.frozen(kw_only=True)
class Hello(Message):
    """Introduce oneself to a peer; the peer answers with Peers.  Also the
    heartbeat that keeps the sender alive in the receiver's view."""

    TYPE: ClassVar[str] = "hello"
    info: NodeInfo = attrs.field(factory=lambda: NodeInfo(node_id=""))
    want_peers: bool = True
    # Entries wanted in the Peers answer (0: the answerer's default sample); a
    # joining node asks for a whole view at once.
    sample: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_PEERS_SAMPLE))
    # Executions running at the sender when it said hello (load, for display).
    running: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_EXECUTIONS))


@attrs.frozen(kw_only=True)
class Goodbye(Message):
    """The sender is stopping cleanly: drop it from your view now."""

    TYPE: ClassVar[str] = "goodbye"
    reason: str = attrs.field(default="", metadata=bounded(max_len=MAX_GOODBYE_LEN))


@attrs.frozen(kw_only=True)
class Peers(Message):
    """A sample of the sender's view of the network (peer exchange)."""

    TYPE: ClassVar[str] = "peers"
    peers: list[NodeInfo] = attrs.field(factory=list, metadata=bounded(max_len=MAX_PEERS_SAMPLE))


# --- auction -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AskForBid(Message):
    """Owner -> candidates: would you run slot ``slot`` of this work unit?"""

    TYPE: ClassVar[str] = "ask_for_bid"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    job_id: str = _id()
    slot: int = _count(MAX_SLOT)
    attempt: int = _count(10_000, lo=1)
    # What a bidder needs to decide; the full task travels only in the grant.
    engine: str = _text(32)
    cpu: float = attrs.field(default=0.0, metadata=bounded(lo=0, hi=4096))
    memory: int = attrs.field(default=0, metadata=bounded(lo=0, hi=2**50))
    labels: dict[str, str] = attrs.field(factory=dict, metadata=bounded(max_len=MAX_LABELS))
    bid_window_ms: int = _ms()
    # Broadcast asks (announce topic) are answered only by matching nodes.
    broadcast: bool = False
    pinned_node: str = _text(MAX_ID_LEN)  # ops/daemon: only this node may bid


@attrs.frozen(kw_only=True)
class Bid(Message):
    """Compute node -> owner: I can run it; free capacity for ranking."""

    TYPE: ClassVar[str] = "bid"
    SENDER_ROLE: ClassVar[str] = Role.BIDDER

    job_id: str = _id()
    slot: int = _count(MAX_SLOT)
    attempt: int = _count(10_000, lo=1)
    free_cpu: float = attrs.field(default=0.0, metadata=bounded(lo=0, hi=4096))
    free_memory: int = attrs.field(default=0, metadata=bounded(lo=0, hi=2**50))
    running: int = attrs.field(default=0, metadata=bounded(lo=0, hi=1_000_000))


# A matching node's decline that is about the slot, not its capacity.
DECLINED_RUNNING_SLOT = "already running this slot"


@attrs.frozen(kw_only=True)
class BidDeclined(Message):
    """Compute node -> owner: I will not bid (reason: constraints, busy, ...)."""

    TYPE: ClassVar[str] = "bid_declined"
    SENDER_ROLE: ClassVar[str] = Role.BIDDER

    job_id: str = _id()
    slot: int = _count(MAX_SLOT)
    attempt: int = _count(10_000, lo=1)
    reason: str = _text()
    matches: bool = False  # True: constraints match, only capacity is missing


@attrs.frozen(kw_only=True)
class BidRejected(Message):
    """Owner -> losing bidder: release the capacity you reserved."""

    TYPE: ClassVar[str] = "bid_rejected"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    job_id: str = _id()
    slot: int = _count(MAX_SLOT)
    attempt: int = _count(10_000, lo=1)


# --- lease -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InputRef(Message):
    """One input of a granted task: the blob manifest ``manifest_id``, to be
    fetched from ``node`` and laid out under ``inputs/<name>/``."""

    TYPE: ClassVar[str] = "input_ref"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    name: str = _text(MAX_ID_LEN)
    manifest_id: str = _text(MAX_ID_LEN)
    node: str = _text(MAX_ID_LEN)


@attrs.frozen(kw_only=True)
class LeaseGrant(Message):
    """Owner -> winning bidder: run it under this lease.

    ``epoch`` is the fencing token of (job_id, slot): strictly increasing and
    persisted by the owner before this message is sent.
    """

    TYPE: ClassVar[str] = "lease_grant"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    execution_id: str = _id()
    job_id: str = _id()
    slot: int = _count(MAX_SLOT)
    attempt: int = _count(10_000, lo=1)
    epoch: int = _count(MAX_EPOCH, lo=1)
    ttl_ms: int = _ms()
    timeout_ms: int = _ms()
    task: dict[str, Any] = attrs.field(factory=dict)
    env: dict[str, str] = attrs.field(factory=dict, metadata=bounded(max_len=MAX_LABELS))
    # Daemons: restart in place this many times (backing off) before reporting.
    restarts: int = attrs.field(default=0, metadata=bounded(lo=0, hi=100))
    restart_backoff_ms: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_DURATION_MS))
    # Streams: end the run gracefully after this long (0 = no bound but timeout).
    run_for_ms: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_DURATION_MS))
    inputs: list[InputRef] = attrs.field(factory=list, metadata=bounded(max_len=MAX_INPUTS))


@attrs.frozen(kw_only=True)
class LeaseAccept(Message):
    """Holder -> owner: the grant arrived; renewal ``seq`` 1 (the run starts on its ack)."""

    TYPE: ClassVar[str] = "lease_accept"
    SENDER_ROLE: ClassVar[str] = Role.HOLDER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    seq: int = _count(2**32)


@attrs.frozen(kw_only=True)
class LeaseRenew(Message):
    """Holder -> owner: still running, extend my lease (every ttl/3)."""

    TYPE: ClassVar[str] = "lease_renew"
    SENDER_ROLE: ClassVar[str] = Role.HOLDER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    seq: int = _count(2**32)
    progress: str = _text(MAX_CHECKPOINT_LEN)  # a stream consumer's latest checkpoint
    lag: int = attrs.field(default=-1, metadata=bounded(lo=-1, hi=2**62))  # -1: not reported
    # A consumer's run ended at run_for: commit ``progress`` and let the next
    # run start in place under this lease (stream roll-over).
    rollover: bool = False


@attrs.frozen(kw_only=True)
class RenewAck(Message):
    """Owner -> holder: renewal ``seq`` acknowledged; ``valid`` false = stop now."""

    TYPE: ClassVar[str] = "renew_ack"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    seq: int = _count(2**32)
    valid: bool = True
    reason: str = _text()
    # Answer to a roll-over renewal: start the next run from ``checkpoint``
    # (the partition's committed one).
    rollover: bool = False
    checkpoint: str = _text(MAX_CHECKPOINT_LEN)


@attrs.frozen(kw_only=True)
class LeaseRelease(Message):
    """Holder -> owner: I give the lease back without a result (cannot run it)."""

    TYPE: ClassVar[str] = "lease_release"
    SENDER_ROLE: ClassVar[str] = Role.HOLDER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    reason: str = _text()
    progress: str = _text(MAX_CHECKPOINT_LEN)  # a stopped consumer's final checkpoint


# ``ExecutionResult.status`` of an execution its holder lost without running it
# to its end (the holder restarted): the owner re-grants the slot and counts a
# lost lease, never one of the task's ``retry.attempts``.
LOST = "lost"


@attrs.frozen(kw_only=True)
class ExecutionResult(Message):
    """Holder -> owner: how the execution ended; retransmitted until acked."""

    TYPE: ClassVar[str] = "execution_result"
    SENDER_ROLE: ClassVar[str] = Role.HOLDER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    status: str = attrs.field(default="succeeded", metadata=bounded(max_len=32))
    exit_code: int = attrs.field(default=0, metadata=bounded(lo=-(2**31), hi=2**31))
    error: str = _text()
    manifest_id: str = _text(MAX_ID_LEN)
    stdout_tail: str = _text(MAX_TAIL_LEN)
    stderr_tail: str = _text(MAX_TAIL_LEN)
    duration_ms: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_DURATION_MS))
    progress: str = _text(MAX_CHECKPOINT_LEN)  # a consumer's final checkpoint
    lag: int = attrs.field(default=-1, metadata=bounded(lo=-1, hi=2**62))
    # The complete stdout/stderr as a blob manifest on the holder ("" if none).
    log_manifest: str = _text(MAX_ID_LEN)


@attrs.frozen(kw_only=True)
class LogChunk(Message):
    """Holder -> owner: a piece of a running execution's output (best effort).

    ``seq`` numbers the chunks of one (execution, stream) from 1; ``offset`` is
    the position of ``data`` in the stream (bytes), so a gap is measured in
    bytes.  ``first_seq``: the oldest chunk the holder still keeps for
    retransmission; older ones that never arrived are lost for good."""

    TYPE: ClassVar[str] = "log_chunk"
    SENDER_ROLE: ClassVar[str] = Role.HOLDER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    stream: str = attrs.field(default="stdout", metadata=bounded(max_len=8))
    seq: int = _count(2**53, lo=1)
    first_seq: int = _count(2**53, lo=1)
    offset: int = _count(2**62)
    data: bytes = attrs.field(default=b"", metadata=bounded(max_len=MAX_LOG_CHUNK))


@attrs.frozen(kw_only=True)
class LogAck(Message):
    """Owner -> holder: every chunk of ``stream`` up to ``seq`` is delivered
    (or given up as lost); ``valid`` false = stale epoch, send no more."""

    TYPE: ClassVar[str] = "log_ack"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    stream: str = attrs.field(default="stdout", metadata=bounded(max_len=8))
    seq: int = _count(2**53)
    valid: bool = True


@attrs.frozen(kw_only=True)
class ResultAck(Message):
    """Owner -> holder: result recorded; ``accepted`` false = it came too late."""

    TYPE: ClassVar[str] = "result_ack"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    accepted: bool = True


@attrs.frozen(kw_only=True)
class Cancel(Message):
    """Owner -> holder: stop this execution (best effort; the lease bounds it)."""

    TYPE: ClassVar[str] = "cancel"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    execution_id: str = _id()
    epoch: int = _count(MAX_EPOCH, lo=1)
    reason: str = _text()


# --- handover (job chaining) -------------------------------------------------
#
# Records are msgpack maps signed with the parties' node keys (see
# protocols/chain.py for their fields and the verification rules).

MAX_RECORDS_BYTES = 200 * 1024  # a chain's whole record log, with its spec (< the frame limit)


@attrs.frozen(kw_only=True)
class HandoverOffer(Message):
    """Current owner -> next owner: take ownership of stage ``stage``.
    ``record`` packs the chain's spec and its record log, the last record
    being this offer, signed by the sender."""

    TYPE: ClassVar[str] = "handover_offer"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    job_id: str = _id()
    stage: int = _count(MAX_SLOT)
    record: bytes = attrs.field(default=b"", metadata=bounded(max_len=MAX_RECORDS_BYTES))
    prev_hash: str = _text(MAX_ID_LEN)
    # How long the sender's own ownership still runs: the acceptor's window
    # (and, after the commit, its ownership) ends no later than that.
    valid_ms: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_DURATION_MS))


@attrs.frozen(kw_only=True)
class HandoverAccept(Message):
    """Next owner -> current owner: accepted; ``record`` is the offer record
    countersigned.  Valid for a bounded window on the acceptor's clock."""

    TYPE: ClassVar[str] = "handover_accept"
    SENDER_ROLE: ClassVar[str] = Role.ANY

    job_id: str = _id()
    stage: int = _count(MAX_SLOT)
    record: bytes = attrs.field(default=b"", metadata=bounded(max_len=64 * 1024))


@attrs.frozen(kw_only=True)
class HandoverCommit(Message):
    """Old owner -> new owner: ownership has moved; the old owner lets go."""

    TYPE: ClassVar[str] = "handover_commit"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    job_id: str = _id()
    stage: int = _count(MAX_SLOT)
    record_hash: str = _text(MAX_ID_LEN)


@attrs.frozen(kw_only=True)
class HandoverAck(Message):
    """New owner -> old owner: the commit arrived (stops its retransmission)."""

    TYPE: ClassVar[str] = "handover_ack"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    job_id: str = _id()
    stage: int = _count(MAX_SLOT)
    record_hash: str = _text(MAX_ID_LEN)


@attrs.frozen(kw_only=True)
class ChainReport(Message):
    """Stage owner -> the chain's submitter, every ttl/3: where the chain
    stands (``records``: packed records the submitter may not have yet), and a
    renewal of the sender's ownership, which lapses without an answer."""

    TYPE: ClassVar[str] = "chain_report"
    SENDER_ROLE: ClassVar[str] = Role.OWNER

    job_id: str = _id()
    seq: int = _count(2**32)
    state: str = _text(32)  # running | handed_over | completed | failed
    records: bytes = attrs.field(default=b"", metadata=bounded(max_len=MAX_RECORDS_BYTES))
    reason: str = _text()
    manifest_id: str = _text(MAX_ID_LEN)  # completed: the last stage's outputs ...
    node: str = _text(MAX_ID_LEN)  # ... and the node that holds them


@attrs.frozen(kw_only=True)
class ChainReportAck(Message):
    """Submitter -> stage owner: report ``seq`` received; ``valid`` false = the
    submitter took the chain over: stop now."""

    TYPE: ClassVar[str] = "chain_report_ack"
    SENDER_ROLE: ClassVar[str] = Role.ANY

    job_id: str = _id()
    seq: int = _count(2**32)
    valid: bool = True
    reason: str = _text()
    # The owner's renewed ownership, from when report ``seq`` left: the
    # submitter's takeover comes no earlier (its ttl; the owner reports every
    # third of it).
    valid_ms: int = attrs.field(default=0, metadata=bounded(lo=0, hi=MAX_DURATION_MS))


# --- job queries (any node answers) --------------------------------------------

MAX_QUERY_ARGS = 4096  # bytes of a query's JSON arguments
MAX_ANSWER_BYTES = 192 * 1024  # bytes of an answer's JSON (< the frame limit)
QUERY_STATUSES = ("ok", "not_found", "ambiguous", "refused", "busy", "error", "too_large")
# The operations a job query may ask for: all but cancel only read.
READ_ONLY_OPS = frozenset({"describe", "runs", "logs", "history"})
QUERY_OPS = READ_ONLY_OPS | {"cancel"}


@attrs.frozen(kw_only=True)
class JobQuery(Message):
    """Any node -> a job's owner (or every peer of the asker's view when it
    knows no owner): answer control operation ``op`` on job ``job`` (an id or
    a unique id prefix) as you would locally.  Read-only operations only, and
    ``cancel`` from the job's submitter."""

    TYPE: ClassVar[str] = "job_query"
    SENDER_ROLE: ClassVar[str] = Role.ANY

    query_id: str = _id()
    op: str = _text(32)
    job: str = _id()
    args: str = _text(MAX_QUERY_ARGS)  # JSON object: the operation's other arguments


@attrs.frozen(kw_only=True)
class JobAnswer(Message):
    """Asked node -> asker: the answer to ``job_query`` ``query_id``.
    ``answer`` (status ``ok``) is the JSON ``{"events": [...], "result": ...}``
    of the operation run on the owner; ``owner`` names the job's owner when the
    sender knows it (itself when it answers ``ok``)."""

    TYPE: ClassVar[str] = "job_answer"
    SENDER_ROLE: ClassVar[str] = Role.ANY

    query_id: str = _id()
    status: str = _text(16)  # one of QUERY_STATUSES
    job_id: str = _text(MAX_ID_LEN)  # the id the job text resolved to
    owner: str = _text(MAX_ID_LEN)
    detail: str = _text()  # why not ok; for ambiguous, the candidates, comma-separated
    answer: bytes = attrs.field(default=b"", metadata=bounded(max_len=MAX_ANSWER_BYTES))


ALL_MESSAGES: tuple[type[Message], ...] = (
    NodeInfo,
    Hello,
    Peers,
    Goodbye,
    AskForBid,
    Bid,
    BidDeclined,
    BidRejected,
    LeaseGrant,
    LeaseAccept,
    LeaseRenew,
    RenewAck,
    LeaseRelease,
    ExecutionResult,
    ResultAck,
    Cancel,
    LogChunk,
    LogAck,
    HandoverOffer,
    HandoverAccept,
    HandoverCommit,
    HandoverAck,
    ChainReport,
    ChainReportAck,
    InputRef,
    JobQuery,
    JobAnswer,
)

MESSAGE_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in ALL_MESSAGES}
