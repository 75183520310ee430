"""The constants table of ``docs/protocol.md``, read from the code.

Every timing, limit and budget a peer may need to know is listed here by name
and read from where the code defines it, so the table cannot drift (``python
-m protocols.docgen --check`` and ``tests/test_protocol_doc.py`` fail when the
document lacks the current text).  The meanings live here, next to the lookup:
a new field of ``Timings``, ``AskLimits`` or ``GuardLimits`` without a meaning
makes the generator fail rather than go undocumented.

The shell's constants (``p2pnode/``: stream limits, peer guard, blob fetch) are
read from its *source* with :mod:`ast`, never imported: ``protocols`` imports
nothing from ``p2pnode`` (the layering contract), and docgen is no exception.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from protocols import codec, messages
from protocols.askguard import AskLimits
from protocols.config import ANNOUNCE_TOPIC, NodeConfig, Timings

ROOT = Path(__file__).resolve().parent.parent

BEGIN = "<!-- BEGIN GENERATED CONSTANTS by `python -m protocols.docgen`: do not edit by hand -->"
END = "<!-- END GENERATED CONSTANTS -->"

Row = tuple[str, Any, str, str]  # name, value, unit, meaning


def format_value(value: Any) -> str:
    """A constant for the table: 2**53 as such, floats without noise, tuples of
    (reason, weight) pairs as a list."""
    if isinstance(value, bool) or value is None:
        return f"`{value}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, int | float):
        return codec.format_number(value) if isinstance(value, int) else f"{value:g}"
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return ", ".join(f"`{k}` {format_value(w)}" for k, w in value)
        return ", ".join(format_value(v) for v in value)
    return f"`{value!r}`"


# --- meanings (a row without one is a generator error) -----------------------------

TIMINGS = {
    "lease_ttl": (
        "s",
        "lease time to live an owner grants (`lease_grant.ttl_ms`, `serve --lease-ttl`)",
    ),
    "lease_grace": ("s", "owner only: a lease is dead ttl + grace after the last accept/renewal"),
    "timeout_grace": ("s", "owner only: no result by timeout + this = failed attempt"),
    "bid_window": ("s", "owner: an auction's bid window, sent as `ask_for_bid.bid_window_ms`"),
    "bid_hold": ("s", "bidder: margin added to the ask's bid window for a reservation"),
    "retransmit_base": ("s", "first retransmission delay (grant, result, census answer, renewal)"),
    "retransmit_max": ("s", "retransmission delays double up to this"),
    "gossip_interval": ("s", "peer-exchange period (`peers` to a sample of the view)"),
    "peer_expiry": ("s", "a directory entry not heard from for this long is dropped"),
    "peer_heartbeat": (
        "s",
        "each view member gets a `hello` at least this often; silent 1.5x this: suspect",
    ),
    "requeue_delay": ("s", "re-auction delay while matching nodes are busy; ops census cadence"),
    "daemon_scan": ("s", "a daemon job repeats its census this often"),
}
NODE_CONFIG = {
    "cpu": ("cores", "capacity a node offers (`serve --cpu`)"),
    "memory": ("bytes", "memory a node offers (`serve --memory`)"),
    "max_executions": ("", "executions a node runs at once (`serve --max-executions`)"),
    "candidates": ("", "peers asked in an auction's first round (doubled per silent round)"),
    "view_size": ("", "directory entries kept (partial view)"),
    "peer_sample": ("", "entries in one `peers` message"),
}
ASK_LIMITS = {
    "share": ("", "fraction of cpu, memory and executions one asker's reservations may hold"),
    "threshold": ("", "asker score at which its asks are ignored"),
    "leak_per_s": ("1/s", "asker score forgiven per second"),
    "backoff": ("s", "first period an asker's asks are ignored (doubles per repeat)"),
    "max_backoff": ("s", "cap of that period"),
}
GUARD_LIMITS = {
    "threshold": ("", "peer score at which the peer is banned"),
    "leak_per_s": ("1/s", "peer score forgiven per second"),
    "ban": ("s", "first ban (doubles per repeat)"),
    "max_ban": ("s", "cap of a ban"),
    "weights": ("", "score of a reject, by reason (any other reason: 1)"),
}
# (module(s) searched, name, unit, meaning); a package is searched with its submodules.
CORE_NAMES: list[tuple[str, str, str, str]] = [
    (
        "protocols.holder",
        "MIN_LEASE_TTL",
        "s",
        "a grant with a shorter ttl is refused (`lease_release`)",
    ),
    ("protocols.holder", "MAX_BID_WINDOW", "s", "longest ask bid window a bidder honours"),
    (
        "protocols.holder",
        "REPORT_AFTER_LAPSE",
        "ttl",
        "a finished result is retransmitted this many ttls",
    ),
    (
        "protocols.holder",
        "MAX_TOMBSTONES",
        "",
        "forgotten executions remembered (late grants ignored)",
    ),
    (
        "protocols.holder",
        "RENEW_TRIES_BEFORE_LAPSE",
        "",
        "an unacknowledged renewal retries within 1/this of the lease's time left",
    ),
    (
        "protocols.holder",
        "MAX_LAPSED_BIDS",
        "",
        "bids whose reservation ran out remembered (a late grant is taken)",
    ),
    (
        "protocols.owner",
        "NO_MATCH_ROUNDS",
        "",
        "broadcast rounds with no matching node before failing",
    ),
    ("protocols.owner", "DEFAULT_QUEUE_TIMEOUT", "s", "longest wait for busy matching nodes"),
    ("protocols.owner", "MAX_LOST_LEASES", "", "lost leases of a slot before it fails"),
    (
        "protocols.owner.base",
        "MAX_FORGOTTEN_EXECUTIONS",
        "",
        "executions of forgotten jobs whose repeated results and renewals are still answered",
    ),
    (
        "protocols.owner.auction",
        "SINGLE_ASK_MIN_WINDOW",
        "s",
        "the shortest round of an ask to one node (pinned or preferred)",
    ),
    (
        "protocols.owner.census",
        "CENSUS_ECHO_AT",
        "",
        "a census round's broadcast goes again at this share of its bid window",
    ),
    (
        "protocols.owner",
        "OPS_QUIET_ROUNDS",
        "",
        "ops census rounds finding nobody new before it stops",
    ),
    (
        "protocols.owner",
        "PINNED_SILENT_ROUNDS",
        "",
        "silent census rounds before an ops node's slot fails",
    ),
    (
        "protocols.owner",
        "PINNED_RETRY_MAX",
        "s",
        "backoff cap of a daemon slot waiting for its node",
    ),
    ("protocols.chain", "MAX_OFFERS", "", "timed-out offers of one stage before the chain fails"),
    (
        "protocols.logs",
        "MAX_UNACKED",
        "bytes",
        "unacknowledged live output a holder keeps per stream",
    ),
    ("protocols.logs", "MAX_PENDING", "chunks", "out-of-order chunks an owner holds per stream"),
    ("protocols.logs", "MAX_KEPT", "bytes", "live output an owner keeps per execution"),
    ("protocols.owner", "MAX_HISTORY", "events", "history events an owner keeps per job"),
    ("protocols.node", "DEDUPE_CAPACITY", "ids", "seen-set of (sender, message id)"),
    (
        "protocols.node",
        "JOIN_RETRY",
        "s",
        "hello period to bootstrap peers while the view is empty; round delay while it fills",
    ),
    ("protocols.node", "MAX_TRACKED_OFFENDERS", "peers", "senders whose drops are counted"),
    ("protocols.queries", "MAX_HINTS", "jobs", "job owner hints kept (oldest dropped)"),
    ("protocols.queries", "MAX_PENDING", "", "job queries one node waits on at once"),
    ("protocols.queries", "MAX_FANOUT", "peers", "asked by a job query that knows no owner"),
    ("protocols.queries", "MAX_SERVED", "", "peers' job queries a node runs at once"),
    ("protocols.queries", "MAX_SERVED_PER_PEER", "", "... for one asker (beyond: `busy`)"),
    ("protocols.queries", "SERVE_TIMEOUT", "s", "a served job query is given up after this"),
    ("protocols.queries", "MAX_CANDIDATES", "ids", "listed for an ambiguous id prefix"),
    ("protocols.queries", "MAX_CLOSED", "", "closed job queries whose late answers pass quietly"),
]


# --- reading the code ---------------------------------------------------------------


def _modules(name: str) -> Iterator[Any]:
    module = importlib.import_module(name)
    yield module
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        yield importlib.import_module(f"{name}.{info.name}")


def find_constant(module_name: str, name: str) -> Any:
    """``name`` as defined in ``module_name`` or, for a package, one of its modules."""
    for module in _modules(module_name):
        if name in vars(module):
            return vars(module)[name]
    raise LookupError(f"docgen: {name} is not defined in {module_name}: update docgen_constants")


def _attrs_defaults(
    cls: type, meanings: dict[str, tuple[str, str]], *, complete: bool = True
) -> list[Row]:
    """Rows of ``cls``'s field defaults; ``complete``: every field must have a meaning."""
    rows = []
    for field in attrs.fields(cls):
        if field.name not in meanings:
            if complete:
                raise LookupError(f"docgen: {cls.__name__}.{field.name} needs a meaning")
            continue
        unit, meaning = meanings[field.name]
        rows.append((f"{cls.__name__}.{field.name}", field.default, unit, meaning))
    return rows


class _Source:
    """Literal constants of one source file, evaluated without importing it."""

    def __init__(self, relpath: str) -> None:
        self.path = ROOT / relpath
        self.tree = ast.parse(self.path.read_text(encoding="utf-8"))
        self.names: dict[str, Any] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    with contextlib.suppress(ValueError):  # only literal constants
                        self.names[target.id] = self.eval(node.value)

    def eval(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.eval(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = self.eval(node.left), self.eval(node.right)
            ops = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.Pow: "__pow__"}
            op = ops.get(type(node.op))
            if op is not None:
                return getattr(left, op)(right)
        if isinstance(node, ast.Tuple | ast.List):
            return tuple(self.eval(item) for item in node.elts)
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
            return self.eval(node.args[0])  # a NewType wrapper, e.g. TProtocol("/p2pnode/...")
        raise ValueError(f"not a literal: {ast.dump(node)[:60]}")

    def _class(self, name: str) -> ast.ClassDef:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef) and node.name == name:
                return node
        raise LookupError(f"docgen: no class {name} in {self.path}")

    def class_defaults(self, cls: str) -> dict[str, Any]:
        """Defaults of an attrs/dataclass-style class body (``name: T = value``)."""
        out = {}
        for node in self._class(cls).body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                out[node.target.id] = self.eval(node.value)
        return out

    def init_defaults(self, cls: str) -> dict[str, Any]:
        """Keyword defaults of ``cls.__init__``."""
        for node in self._class(cls).body:
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                args = node.args
                out: dict[str, Any] = {}
                pos = args.args[len(args.args) - len(args.defaults) :]
                for arg, default in [
                    *zip(pos, args.defaults, strict=True),
                    *zip(args.kwonlyargs, args.kw_defaults, strict=True),
                ]:
                    if default is not None:
                        with contextlib.suppress(ValueError):
                            out[arg.arg] = self.eval(default)
                return out
        raise LookupError(f"docgen: {cls} has no __init__ in {self.path}")

    def const(self, name: str) -> Any:
        if name not in self.names:
            raise LookupError(f"docgen: {name} is not a literal constant of {self.path}")
        return self.names[name]


def _pick(values: dict[str, Any], prefix: str, names: dict[str, tuple[str, str]]) -> list[Row]:
    return [(f"{prefix}{n}", values[n], unit, meaning) for n, (unit, meaning) in names.items()]


# --- the groups ---------------------------------------------------------------------


def groups() -> list[tuple[str, str, list[Row]]]:
    """(title, where it is defined, rows) of every constants group."""
    timings = Timings()
    wire: list[Row] = [
        ("PROTOCOL_VERSION", codec.PROTOCOL_VERSION, "", "the envelope's `v`"),
        ("MAX_FRAME", codec.MAX_FRAME, "bytes", "largest frame, envelope included"),
        ("MAX_ID_LEN", messages.MAX_ID_LEN, "chars", "`id`, `from`, ids, keys of str maps"),
        ("MAX_TEXT_LEN", messages.MAX_TEXT_LEN, "chars", "free texts, str-map values, list items"),
        ("MAX_TAIL_LEN", messages.MAX_TAIL_LEN, "chars", "`stdout_tail`, `stderr_tail`"),
        ("MAX_LABELS", messages.MAX_LABELS, "entries", "labels and env maps"),
        ("MAX_SLOT", messages.MAX_SLOT, "", "highest slot number"),
        ("CENSUS_SLOT", messages.CENSUS_SLOT, "", "the census ask's slot: never granted"),
        ("MAX_EPOCH", messages.MAX_EPOCH, "", "highest fencing epoch"),
        ("MAX_DURATION_MS", messages.MAX_DURATION_MS, "ms", "longest duration on the wire"),
        ("MAX_CHECKPOINT_LEN", messages.MAX_CHECKPOINT_LEN, "chars", "a stream checkpoint"),
        ("MAX_INPUTS", messages.MAX_INPUTS, "", "inputs of one grant"),
        ("MAX_QUERY_ARGS", messages.MAX_QUERY_ARGS, "bytes", "`job_query.args`"),
        ("MAX_ANSWER_BYTES", messages.MAX_ANSWER_BYTES, "bytes", "`job_answer.answer`"),
        ("MAX_LOG_CHUNK", messages.MAX_LOG_CHUNK, "bytes", "`data` of one `log_chunk`"),
        ("MAX_PEERS_SAMPLE", messages.MAX_PEERS_SAMPLE, "", "entries of one `peers`"),
        (
            "MAX_EXECUTIONS",
            messages.MAX_EXECUTIONS,
            "",
            "`node_info.max_executions`, `hello.running`",
        ),
        ("MAX_VERSION_LEN", messages.MAX_VERSION_LEN, "chars", "`node_info.version`"),
        ("MAX_GOODBYE_LEN", messages.MAX_GOODBYE_LEN, "chars", "`goodbye.reason`"),
        ("FREE_MAX_DEPTH", codec.FREE_MAX_DEPTH, "levels", "free-form map nesting"),
        ("FREE_MAX_ITEMS", codec.FREE_MAX_ITEMS, "", "free-form items + entries, whole tree"),
        ("FREE_MAX_STR", codec.FREE_MAX_STR, "chars/bytes", "free-form str, bin and key"),
        ("ANNOUNCE_TOPIC", ANNOUNCE_TOPIC, "", "the gossipsub topic of broadcast asks"),
    ]
    core: list[Row] = [
        *_attrs_defaults(Timings, TIMINGS),
        (
            "Timings.renew_interval",
            timings.renew_interval,
            "s",
            "lease_ttl / 3 (a holder uses the grant's ttl / 3)",
        ),
        *_attrs_defaults(NodeConfig, NODE_CONFIG, complete=False),
        *_attrs_defaults(AskLimits, ASK_LIMITS),
        *[
            (name, find_constant(mod, name), unit, meaning)
            for mod, name, unit, meaning in CORE_NAMES
        ],
    ]
    transport = _Source("p2pnode/libp2p_transport.py")
    init = transport.init_defaults("Libp2pTransport")
    framing = _Source("p2pnode/net/framing.py").init_defaults("FrameDecoder")
    guard = _Source("p2pnode/net/guard.py").class_defaults("GuardLimits")
    outputs = _Source("p2pnode/outputs.py")
    blobs = _Source("p2pnode/blobs.py")
    forwarding = _Source("p2pnode/forwarding.py")
    shell: list[Row] = [
        ("FRAME_PROTOCOL", transport.const("FRAME_PROTOCOL"), "", "point-to-point frame streams"),
        (
            "max_frame",
            init["max_frame"],
            "bytes",
            "longer frames are skipped (counted `oversized`)",
        ),
        (
            "max_skip",
            framing["max_skip"],
            "bytes",
            "a longer claimed length resets the stream (`absurd_length`)",
        ),
        (
            "frame_timeout",
            init["frame_timeout"],
            "s",
            "a frame begun must end within this (`idle_partial`)",
        ),
        (
            "stream_idle_timeout",
            init["stream_idle_timeout"],
            "s",
            "an inbound stream idle this long is closed",
        ),
        (
            "idle_sender_timeout",
            init["idle_sender_timeout"],
            "s",
            "a sender closes its own stream after this idle",
        ),
        (
            "idle_connection_timeout",
            init["idle_connection_timeout"],
            "s",
            "a connection with no frame either way this long (not a mesh peer) may be closed",
        ),
        (
            "max_dials",
            init["max_dials"],
            "",
            "outbound dials at once; more wait their turn; redials of a peer whose last"
            " dial failed have `max_dials` slots of their own, and so does a first dial still"
            " waiting after `dial_timeout` / 4 (local policy, not on the wire)",
        ),
        (
            "max_inbound_streams",
            init["max_inbound_streams"],
            "per peer",
            "more are reset (`too_many_streams`)",
        ),
        *_pick(guard, "GuardLimits.", GUARD_LIMITS),
        ("BLOB_PROTOCOL", outputs.const("BLOB_PROTOCOL"), "", "blob fetch streams"),
        ("CHUNK", outputs.const("CHUNK"), "bytes", "largest data frame of a blob answer"),
        ("MAX_FETCH", outputs.const("MAX_FETCH"), "bytes", "largest blob a node fetches"),
        (
            "REQUEST_TIMEOUT",
            outputs.const("REQUEST_TIMEOUT"),
            "s",
            "a blob request must arrive within this",
        ),
        (
            "FETCH_TIMEOUT",
            outputs.const("FETCH_TIMEOUT"),
            "s",
            "a fetcher gives one blob this long",
        ),
        (
            "DEFAULT_MAX_FILES",
            blobs.const("DEFAULT_MAX_FILES"),
            "",
            "entries of one output manifest",
        ),
        (
            "DEFAULT_MAX_BLOB_BYTES",
            blobs.const("DEFAULT_MAX_BLOB_BYTES"),
            "bytes",
            "one output file",
        ),
        (
            "DEFAULT_MAX_MANIFEST_BYTES",
            blobs.const("DEFAULT_MAX_MANIFEST_BYTES"),
            "bytes",
            "all files of one manifest",
        ),
        ("MAX_PATH_LEN", blobs.const("MAX_PATH_LEN"), "chars", "a manifest path"),
        (
            "OWNER_TIMEOUT",
            forwarding.const("OWNER_TIMEOUT"),
            "s",
            "a job query waits this long for the owner a hint names",
        ),
        (
            "VIEW_TIMEOUT",
            forwarding.const("VIEW_TIMEOUT"),
            "s",
            "a job query sent to the whole view waits this long",
        ),
        (
            "ANSWER_TIMEOUT",
            forwarding.const("ANSWER_TIMEOUT"),
            "s",
            "an operation run for a peer's job query may take this long",
        ),
    ]
    return [
        ("Wire", "`protocols/messages.py`, `protocols/codec.py`, `protocols/config.py`", wire),
        (
            "Protocol timings and budgets (defaults)",
            "`protocols/config.py`, `protocols/askguard.py`, `protocols/holder.py`, "
            "`protocols/owner`, `protocols/chain.py`, `protocols/node.py`, `protocols/queries.py`",
            core,
        ),
        (
            "Transport, peer guard and blobs (reference values)",
            "`p2pnode/libp2p_transport.py`, `p2pnode/net/`, `p2pnode/outputs.py`, "
            "`p2pnode/blobs.py`, `p2pnode/forwarding.py`",
            shell,
        ),
    ]


def render() -> str:
    """The generated constants block, markers included."""
    out = [BEGIN]
    for title, where, rows in groups():
        out += [
            "",
            f"**{title}** ({where})",
            "",
            "| Name | Value | Unit | Meaning |",
            "|---|---|---|---|",
        ]
        out += [
            f"| `{name}` | {format_value(value)} | {unit} | {meaning} |"
            for name, value, unit, meaning in rows
        ]
    out += ["", END]
    return "\n".join(out) + "\n"
