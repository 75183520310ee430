"""Chain jobs: stages handed from peer to peer, with an accountable owner at
every step and a signed, hash-linked log of owners.

Roles.  The *submitter* S owns stage 0 and stays the chain's root of
accountability.  The owner of stage k runs it as a run job
(``<job>~s<k>~<n>``); when it completes on holder X, the owner offers X
ownership of stage k+1 (X holds the outputs stage k+1 needs):

    owner --HandoverOffer(chain log + offer record signed by owner)--> X
    X verifies the log, countersigns, keeps it for ``accept_window`` only
    X --HandoverAccept(countersigned record)--> owner
    owner persists the record (it is no longer the owner), then
    owner --HandoverCommit(record hash)--> X    (retransmitted until HandoverAck)
    X, inside its window: becomes the owner, persists, auctions stage k+1

Until the commit the old owner stays accountable: no accept within
``offer_timeout`` (X died or is unreachable) and it re-runs stage k elsewhere
(X had the only copy of its outputs) and offers again to the new holder.  X
refuses a commit that comes after its window, so a late commit can never
make a second owner.

Records.  ``{job, seq, stage, kind, from, to, prev, inputs, spec}`` packed
with msgpack, signed by ``from`` and ``to`` (genesis and takeover: by the
submitter alone).  ``prev`` is the hash of the previous record (body and
signatures), so the log is a hash chain that ``verify_log`` checks from the
genesis: every record's ``from`` is the previous record's ``to``, its
signatures verify against the nodes' keys, stages advance by one.  A
handover not signed by the current owner, a forged or re-ordered record, a
record breaking the hash chain, or a commit for no pending handover is
refused and counted.

Liveness.  The current owner (when not S) reports to S with the records S
may lack, every third of the validity S last granted; S's answer renews its
ownership until the report's send time + the answer's ``valid_ms`` (S's ttl);
without one it lapses (the owner then stops its stage run: self-fencing).
Every window two peers rely on comes from a message, never from the other
node's own settings: the offer's ``valid_ms`` (the offering owner's remaining
validity) bounds the acceptor's window and its ownership until S first
answers it; the answers' ``valid_ms`` the renewals and the report cadence.
S takes the chain over after ttl + grace without a report from the owner its log names:
it appends a *takeover* record signed by itself and re-runs the latest stage
before the dead owner's whose inputs live elsewhere (the dead owner held its
own stage's inputs; stage 0 needs none).
The submitter therefore always knows where the chain stands (its log) and
learns of a dead owner within ttl + grace.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import msgpack

from protocols.codec import unique_map
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.kinds import Handler, KindController, OwnerContext, Records, TimerHandler
from protocols.messages import (
    ChainReport,
    ChainReportAck,
    HandoverAccept,
    HandoverAck,
    HandoverCommit,
    HandoverOffer,
    Message,
)
from protocols.owned import OwnedJob
from protocols.signing import Keyring, VerifiedCache
from protocols.spec.task import TASK_KEYS
from protocols.states import ChainRole, check_role_transition
from protocols.timers import JobTimer

CHAINS_TABLE = "chains"
MAX_OFFERS = 3  # offers of one stage that time out before the chain fails
FINAL_REPORTS = ("completed", "failed", "handed_over")  # sent reliably, with the whole log


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(data),
            object_pairs_hook=unique_map,  # duplicate keys: rejected (docs/protocol.md)
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RemoteProtocolError(f"undecodable chain record: {exc}") from None


def record_hash(record: dict[str, Any]) -> str:
    sigs = sorted(record["sigs"].items())
    return "sha256:" + hashlib.sha256(pack([record["body"], sigs])).hexdigest()


def body_bytes(body: dict[str, Any]) -> bytes:
    return pack(body)


def verify_log(
    records: list[dict[str, Any]], keys: Keyring, *, job_id: str, spec_digest: str, pending: bool
) -> None:
    """Raise RemoteProtocolError unless ``records`` is a valid chain log.
    ``pending``: the last record is an offer (signed by ``from`` only)."""
    if not records:
        raise RemoteProtocolError("empty chain log")
    submitter = ""
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or set(rec) != {"body", "sigs"}:
            raise RemoteProtocolError(f"record {i}: malformed")
        body, sigs = rec["body"], rec["sigs"]
        if not isinstance(body, dict) or not isinstance(sigs, dict):
            raise RemoteProtocolError(f"record {i}: malformed")
        if body.get("job") != job_id or body.get("spec") != spec_digest or body.get("seq") != i:
            raise RemoteProtocolError(f"record {i}: not record {i} of this chain")
        data = body_bytes(body)

        def signed_by(node: str, rec_sigs: dict[str, Any] = sigs, data: bytes = data) -> bool:
            sig = rec_sigs.get(node)
            return isinstance(sig, bytes) and keys.verify(node, data, sig)

        kind, frm, to = body.get("kind"), body.get("from"), body.get("to")
        if not isinstance(to, str) or not to:
            raise RemoteProtocolError(f"record {i}: no new owner")
        stage = body.get("stage")
        # (A signed record is still a peer's: compared below, a stage that is
        # not a number would raise TypeError out of the core.)
        if type(stage) is not int or stage < 0:
            raise RemoteProtocolError(f"record {i}: stage {stage!r} is not a stage number")
        if not _input_list(body.get("inputs")):  # the next stage runs with these
            raise RemoteProtocolError(f"record {i}: inputs are not [name, manifest, node] lists")
        if i == 0:
            if kind != "genesis" or frm != "" or body.get("prev") != "" or body.get("stage") != 0:
                raise RemoteProtocolError("record 0: not a genesis record")
            if not signed_by(to):
                raise RemoteProtocolError("record 0: not signed by the submitter")
            submitter = to
            continue
        before = records[i - 1]["body"]
        if body.get("prev") != record_hash(records[i - 1]):
            raise RemoteProtocolError(f"record {i}: breaks the hash chain")
        last = i == len(records) - 1
        if kind == "handover":
            if frm != before["to"]:
                raise RemoteProtocolError(f"record {i}: handed over by {frm}, not the owner")
            if body.get("stage") != before["stage"] + 1:
                raise RemoteProtocolError(f"record {i}: skips stages")
            if not signed_by(frm):
                raise RemoteProtocolError(f"record {i}: not signed by the current owner {frm}")
            if not (pending and last) and not signed_by(to):
                raise RemoteProtocolError(f"record {i}: not countersigned by {to}")
        elif kind == "takeover":
            if to != submitter or not signed_by(submitter):
                raise RemoteProtocolError(f"record {i}: a takeover only the submitter signs")
            if not stage <= before["stage"]:
                raise RemoteProtocolError(f"record {i}: takeover of a stage not reached")
        else:
            raise RemoteProtocolError(f"record {i}: unknown kind {kind!r}")


def _input_list(inputs: Any) -> bool:
    """Whether ``inputs`` is a record's inputs: [name, manifest id, node] string triples."""
    return isinstance(inputs, list) and all(
        isinstance(i, list) and len(i) == 3 and all(isinstance(x, str) for x in i) for i in inputs
    )


def record_verdicts(
    records: list[dict[str, Any]], keys: Keyring, *, job_id: str, spec_digest: str
) -> list[str]:
    """Per record, whether the log up to it verifies: "ok", or "INVALID: why"
    (the first bad record's reason, for it and every record after it).

    Validity of a prefix is monotonic (a bad record spoils every longer
    prefix), so the first bad record is found by bisection: a valid log costs
    one verification, a bad one O(log n) more."""

    def problem(count: int) -> str:
        try:
            verify_log(records[:count], keys, job_id=job_id, spec_digest=spec_digest, pending=False)
        except RemoteProtocolError as exc:
            return f"INVALID: {exc}"
        return ""

    whole = problem(len(records)) if records else ""
    if not whole:
        return ["ok"] * len(records)
    good, bad = 0, len(records)  # the longest valid prefix is in [good, bad)
    while bad - good > 1:
        middle = (good + bad) // 2
        if problem(middle):
            bad = middle
        else:
            good = middle
    return ["ok"] * good + [problem(bad)] * (len(records) - good)


@attrs.define
class ChainState:
    job_id: str
    submitter: str
    records: list[dict[str, Any]]
    role: ChainRole = attrs.field(converter=ChainRole)
    run_id: str = ""
    runs: int = 0  # stage runs created (run ids)
    offers: int = 0  # offers of the current stage that timed out
    offer: dict[str, Any] | None = None  # our pending offer record
    commit_hash: str = ""  # a commit we retransmit until acked
    outcome: str = ""  # completed | failed (the submitter's view)
    reason: str = ""
    final: list[str] = attrs.field(factory=list)  # [manifest, node] of the last stage
    # The offered record whose accept window lapsed (or was cut by a restart)
    # before its commit came: kept so that a late copy of that offer cannot
    # open a second window, nor a late commit make us its owner (non-submitter).
    lapsed: str = ""
    # Volatile.
    report_seq: int = 0
    acked_seq: int = 0
    valid_until: float = 0.0  # our ownership (when not the submitter)
    report_every: float = 0.0  # a third of the validity the submitter last granted
    heard_at: float = 0.0  # the submitter's last report from the current owner
    sent: int = 0  # records the submitter acknowledged having (owner side)
    # report seq -> (sent at, records it carried): an ack renews from when
    # *that* report left, and acknowledges what it carried, not what we hold
    # when the ack arrives (owner side).
    carried: dict[int, tuple[float, int]] = attrs.field(factory=dict)

    def move(self, new: str) -> None:
        """The one way the role changes (checked against the table)."""
        self.role = check_role_transition(self.role, new)

    @property
    def head(self) -> dict[str, Any]:
        body: dict[str, Any] = self.records[-1]["body"]
        return body

    def record(self) -> dict[str, Any]:
        return {
            "submitter": self.submitter,
            "records": self.records,
            "role": self.role.value,
            "run_id": self.run_id,
            "runs": self.runs,
            "offers": self.offers,
            "offer": self.offer,
            "commit_hash": self.commit_hash,
            "outcome": self.outcome,
            "reason": self.reason,
            "final": self.final,
            "lapsed": self.lapsed,
        }


class ChainController(KindController):
    describe_key = "chain"

    def __init__(self, ctx: OwnerContext, keys: Keyring) -> None:
        super().__init__(ctx)
        self.t = ctx.t
        self.me = ctx.config.node_id
        self.keys = VerifiedCache(keys)  # logs are re-verified whole: each signature once
        self.chains: dict[str, ChainState] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.refused = 0
        # Handovers this node took part in (metrics): offers it made to
        # another node as the stage's owner, offers it accepted as the next one.
        self.handovers: dict[str, int] = {"offered": 0, "accepted": 0}
        self._next_lapse = float("inf")  # earliest validity end of a stage we own

    # --- helpers -----------------------------------------------------------------

    def _digest(self, spec: dict[str, Any]) -> str:
        return "sha256:" + hashlib.sha256(pack(spec)).hexdigest()

    def _sign(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"body": body, "sigs": {self.me: self.keys.sign(body_bytes(body))}}

    def _save(self, chain: ChainState) -> None:
        self.out.persist(
            CHAINS_TABLE, chain.job_id, {**chain.record(), "spec": self.specs[chain.job_id]}
        )

    def _refuse(self, sender: str, job_id: str, reason: str) -> None:
        self.refused += 1
        self.out.notify("handover_refused", job_id=job_id, sender=sender, reason=reason)
        raise RemoteProtocolError(f"chain {job_id}: {reason}")

    def _stage_inputs(self, chain: ChainState, stage: int) -> list[list[str]]:
        for rec in reversed(chain.records):
            if rec["body"]["stage"] == stage:
                inputs: list[list[str]] = rec["body"]["inputs"]
                return inputs
        return []

    # --- submit / restore ----------------------------------------------------------

    def start(self, job: OwnedJob) -> None:
        """The submitter: genesis record, then run stage 0."""
        body = {
            "job": job.job_id,
            "seq": 0,
            "stage": 0,
            "kind": "genesis",
            "from": "",
            "to": self.me,
            "prev": "",
            "inputs": [],
            "spec": self._digest(job.spec),
        }
        chain = ChainState(job.job_id, self.me, [self._sign(body)], "owner")
        self.chains[job.job_id] = chain
        self.specs[job.job_id] = job.spec
        self.ctx.set_job_state(job, "running", persist=False, notify=True)
        self._run_stage(chain, 0)

    def routes(self) -> dict[type[Message], Handler]:
        return {
            HandoverOffer: self.on_offer,
            HandoverAccept: self.on_accept,
            HandoverCommit: self.on_commit,
            HandoverAck: self.on_ack,
            ChainReport: self.on_report,
            ChainReportAck: self.on_report_ack,
        }

    def timers(self) -> dict[str, TimerHandler]:
        return {
            "chainoffer": self.on_offer_timeout,
            "chainpending": self.on_pending_timeout,
            "chainreport": self.on_report_timer,
            "chainlapse": self.on_lapse_timer,
            "chainwatch": self.on_watch_timer,
        }

    def restore(self, records: Records) -> None:
        for job_id, rec in records.get(CHAINS_TABLE, {}).items():
            spec = rec.pop("spec")
            self.specs[job_id] = spec
            self.chains[job_id] = ChainState(job_id=job_id, **rec)

    def resume(self) -> None:
        """After a restart.  Ownership of a stage does not survive one (its
        validity could not be tracked across the downtime): a restarted stage
        owner lets go and the submitter takes over; a pending acceptance is
        dropped.  The submitter keeps its chains and watches them again."""
        now = self.out.now
        for job_id, chain in list(self.chains.items()):
            chain.heard_at = now
            mine = chain.submitter == self.me
            if chain.role == "pending" and not mine:
                # Forgotten, not remembered as lapsed: the offering owner's
                # resend must find us (a refusal would cost it the whole offer).
                del self.chains[job_id]
                self.out.persist(CHAINS_TABLE, job_id, None)
                continue
            if chain.role == "pending":
                self._drop_pending(chain)
                self._save(chain)
            if chain.role == "owner" and not mine:
                chain.offer = None
                self._fence(chain, "the node restarted")
            elif chain.role == "owner" and not chain.outcome and chain.offer is None:
                self._continue_stage(chain)
            if chain.offer is not None:
                self._send_offer(chain)
                self.out.timer(
                    JobTimer("chainoffer", job_id), now + self.t.lease_ttl + self.t.lease_grace
                )
            if chain.commit_hash:
                self._send_commit(chain)
            if mine and not chain.outcome:
                self.out.timer(JobTimer("chainwatch", job_id), now + self.t.renew_interval)

    def _drop_pending(self, chain: ChainState) -> None:
        """The submitter's acceptance lapsed (window over, or a restart): the
        offered record was never committed to us, so it leaves our log (it
        holds committed records only); we watch the offering owner again."""
        chain.records = chain.records[:-1]
        chain.move("watching")  # (heard_at stays: the offering owner's last report)

    def _continue_stage(self, chain: ChainState) -> None:
        """The submitter owns the head stage after a restart: the event that
        made it the owner (a commit, a takeover, a handover to itself) may have
        been cut short before the stage run existed, or a finished run's
        handover may be lost.  Pick up where that left off."""
        head = chain.head
        run = self.ctx.jobs.get(chain.run_id)
        ours = f"{chain.job_id}~s{head['stage']}~r{len(chain.records) - 1}~"
        if run is None or not chain.run_id.startswith(ours):
            self._run_stage(chain, head["stage"])
        elif run.terminal:
            self.on_run_finished(run)

    # --- running a stage -------------------------------------------------------------

    def _run_stage(self, chain: ChainState, stage: int) -> None:
        spec = self.specs[chain.job_id]
        task = spec["stages"][stage]["task"]
        chain.runs += 1
        # Unique across owners: each ownership change appends a record.
        run_id = f"{chain.job_id}~s{stage}~r{len(chain.records) - 1}~{chain.runs}"
        chain.run_id = run_id
        self._save(chain)
        inputs = [(n, m, node) for n, m, node in self._stage_inputs(chain, stage)]
        run_spec = {
            "name": spec.get("name", "chain"),
            "type": "batch",
            "count": 1,
            "constraints": spec.get("constraints") or {"labels": {}},
            "queue_timeout": spec.get("queue_timeout"),
            "task": {k: task[k] for k in TASK_KEYS if k in task},
        }
        self.ctx.create_job(
            run_id,
            run_spec,
            kind="run",
            parent=chain.job_id,
            inputs=inputs,
            env={"P2PNODE_STAGE": spec["stages"][stage]["name"], "P2PNODE_STAGE_INDEX": str(stage)},
        )
        if chain.submitter == self.me:
            watch = JobTimer("chainwatch", chain.job_id)
            self.out.timer(watch, self.out.now + self.t.renew_interval)
        else:
            self._report(chain, "running")

    def on_run_finished(self, run: OwnedJob) -> None:
        chain = self.chains.get(run.parent)
        if chain is None or chain.role != "owner" or chain.run_id != run.job_id:
            return
        if chain.outcome:  # the chain ended first (a stop, which cancelled this run)
            return
        stage = chain.head["stage"]
        stages = self.specs[chain.job_id]["stages"]
        if run.state != "completed":
            self._end(chain, "failed", f"stage {stages[stage]['name']}: {run.reason}")
            return
        done = [e for s in run.slots for e in s.executions if e.state == "succeeded"]
        holder, manifest = done[-1].node, done[-1].manifest_id
        if stage == len(stages) - 1:
            chain.final = [manifest, holder]
            self._end(chain, "completed", "")
            return
        inputs = [[stages[stage]["name"], manifest, holder]] if manifest else []
        self._offer(chain, holder, inputs)

    # --- handover: the offering owner ------------------------------------------------

    def _offer(self, chain: ChainState, to: str, inputs: list[list[str]]) -> None:
        head = chain.records[-1]
        body = {
            "job": chain.job_id,
            "seq": len(chain.records),
            "stage": head["body"]["stage"] + 1,
            "kind": "handover",
            "from": self.me,
            "to": to,
            "prev": record_hash(head),
            "inputs": inputs,
            "spec": head["body"]["spec"],
            # Which run of the stage this offer hands on: a re-run's offer is a
            # new record, which an acceptor that let an earlier one lapse takes
            # (a lapsed record itself is refused for good: a late copy of it
            # must not open a second accept window).
            "attempt": chain.runs,
        }
        chain.offer = self._sign(body)
        self._save(chain)
        if to == self.me:  # we ran the stage ourselves: sign both parts at once
            self._committed(chain, chain.offer)
            return
        self.handovers["offered"] += 1
        self._send_offer(chain)
        self.out.timer(
            JobTimer("chainoffer", chain.job_id),
            self.out.now + self.t.lease_ttl + self.t.lease_grace,
        )

    def _send_offer(self, chain: ChainState) -> None:
        assert chain.offer is not None
        payload = pack({"spec": self.specs[chain.job_id], "records": [*chain.records, chain.offer]})
        if chain.submitter == self.me:
            valid = self.t.lease_ttl  # the submitter's own ownership needs no renewal
        else:
            valid = max(0.0, chain.valid_until - self.out.now)  # what the submitter granted
        msg = HandoverOffer(
            job_id=chain.job_id,
            stage=chain.offer["body"]["stage"],
            record=payload,
            prev_hash=chain.offer["body"]["prev"],
            valid_ms=int(valid * 1000),
        )
        self.out.send_reliably(
            ("offer", chain.job_id), chain.offer["body"]["to"], msg, give_up_after=self.t.lease_ttl
        )

    def on_offer_timeout(self, job_id: str) -> None:
        chain = self.chains.get(job_id)
        if chain is None or chain.offer is None or chain.role != "owner":
            return
        to = chain.offer["body"]["to"]
        chain.offer = None
        chain.offers += 1
        self.out.settle(("offer", job_id))
        self.out.notify("handover_failed", job_id=job_id, to=to, reason="no accept in time")
        if chain.offers >= MAX_OFFERS:
            # Named like every stage failure (CH5 reads the stage's name): the
            # stage that found no owner is the one the offer hands over.
            stages = self.specs[job_id]["stages"]
            name = stages[min(chain.head["stage"] + 1, len(stages) - 1)]["name"]
            self._end(chain, "failed", f"stage {name}: no next owner accepted")
            return
        # The next owner held the only copy of our stage's outputs: run it again.
        self._run_stage(chain, chain.head["stage"])

    def on_accept(self, sender: str, msg: HandoverAccept) -> None:
        chain = self.chains.get(msg.job_id)
        if chain is None or chain.offer is None or chain.role != "owner":
            self._refuse(sender, msg.job_id, "accept for no pending offer")
            return
        rec = unpack(msg.record)
        offer = chain.offer
        if not isinstance(rec, dict) or rec.get("body") != offer["body"]:
            self._refuse(sender, msg.job_id, "accepted record differs from the offer")
            return
        to = offer["body"]["to"]
        sigs = rec.get("sigs") or {}
        sig = sigs.get(to) if isinstance(sigs, dict) else None
        if (
            sender != to
            or not isinstance(sig, bytes)
            or not self.keys.verify(to, body_bytes(offer["body"]), sig)
        ):
            self._refuse(sender, msg.job_id, "accept not signed by the offered node")
            return
        full = {"body": offer["body"], "sigs": {**offer["sigs"], to: sig}}
        self._committed(chain, full)

    def _committed(self, chain: ChainState, full: dict[str, Any]) -> None:
        """The countersigned record is ours: persist it (we let go), then commit."""
        chain.records.append(full)
        chain.offer, chain.offers = None, 0
        self.out.settle(("offer", chain.job_id))
        self.out.cancel_timer(JobTimer("chainoffer", chain.job_id))
        to = full["body"]["to"]
        self.out.notify(
            "handover_committed", job_id=chain.job_id, stage=full["body"]["stage"], to=to
        )
        stage = full["body"]["stage"]
        self.ctx.note(chain.job_id, "handed_over", node=to, detail=f"stage {stage} to {to}")
        if to == self.me:
            self._save(chain)
            self._run_stage(chain, full["body"]["stage"])
            return
        # We let go.  The submitter keeps watching the chain's new owner.
        chain.move("watching" if chain.submitter == self.me else "former")
        chain.heard_at = self.out.now
        chain.commit_hash = record_hash(full)
        self._save(chain)
        self._send_commit(chain)
        if chain.submitter != self.me:
            self._report(chain, "handed_over")

    def _send_commit(self, chain: ChainState) -> None:
        head = chain.records[-1]["body"]
        msg = HandoverCommit(
            job_id=chain.job_id, stage=head["stage"], record_hash=chain.commit_hash
        )
        self.out.send_reliably(
            ("commit", chain.job_id), head["to"], msg, give_up_after=self.t.lease_ttl
        )

    def on_ack(self, sender: str, msg: HandoverAck) -> None:
        chain = self.chains.get(msg.job_id)
        if chain is not None and chain.commit_hash == msg.record_hash:
            chain.commit_hash = ""
            self.out.settle(("commit", msg.job_id))
            self._save(chain)

    # --- handover: the next owner ------------------------------------------------------

    def on_offer(self, sender: str, msg: HandoverOffer) -> None:
        payload = unpack(msg.record)
        if not isinstance(payload, dict) or set(payload) != {"spec", "records"}:
            self._refuse(sender, msg.job_id, "malformed offer")
            return
        spec, records = payload["spec"], payload["records"]
        if not isinstance(records, list) or not isinstance(spec, dict):
            self._refuse(sender, msg.job_id, "malformed offer")
            return
        try:
            verify_log(
                records, self.keys, job_id=msg.job_id, spec_digest=self._digest(spec), pending=True
            )
        except RemoteProtocolError as exc:
            self._refuse(sender, msg.job_id, f"invalid record log: {exc}")
            return
        offer = records[-1]["body"]
        if offer["kind"] != "handover" or offer["from"] != sender or offer["to"] != self.me:
            self._refuse(sender, msg.job_id, "offer not from the current owner to us")
            return
        known = self.chains.get(msg.job_id)
        if known is not None and known.role == "pending" and known.records[-1]["body"] == offer:
            self._accept(known)  # our accept was lost: the same answer again
            return
        if known is not None and known.submitter == self.me:
            # Our log is the chain's authority: a valid offer extends it (one
            # that does not comes from an owner our takeover superseded).
            ours = known.records[:-1] if known.role == "pending" else known.records
            if len(ours) > offer["seq"] or records[: len(ours)] != ours:
                self._refuse(
                    sender,
                    msg.job_id,
                    f"offer of record {offer['seq']} does not "
                    f"extend our log of {len(ours)} records",
                )
                return
        elif known is not None and any(r["body"] == offer for r in known.records):
            self._refuse(sender, msg.job_id, f"replayed offer of record {offer['seq']}")
            return
        signed = {
            "body": offer,
            "sigs": {**records[-1]["sigs"], self.me: self.keys.sign(body_bytes(offer))},
        }
        if known is not None and known.lapsed == record_hash(signed):
            self._refuse(
                sender,
                msg.job_id,
                f"offer of record {offer['seq']} after our accept window for it lapsed",
            )
            return
        if known is not None:  # e.g. the submitter, offered a stage: keep what it knows
            if known.role == "owner" and not known.outcome:
                # A later stage offered to a stale owner: the submitter took
                # the chain over from us; stop our stage run now.
                self._fence(known, "offered a later stage")
            chain = known
            chain.records = [*records[:-1], signed]
            chain.move("pending")
            chain.offer, chain.commit_hash = None, ""
        else:
            chain = ChainState(
                msg.job_id, records[0]["body"]["to"], [*records[:-1], signed], "pending"
            )
            self.chains[msg.job_id] = chain
        self.specs[msg.job_id] = spec
        # The accept window ends with the offering owner's own ownership: a
        # commit after it could race the submitter's takeover.
        # (The offering owner's validity, granted by the submitter: no local
        # setting of ours lengthens or shortens it.)
        window = msg.valid_ms / 1000
        chain.valid_until = self.out.now + window
        chain.report_every = window / 3
        # Not persisted before the accept: a pending acceptance never survives
        # a restart (``resume`` forgets it, or drops it back to watching at the
        # submitter), so what is on disk (the state before this offer, or
        # nothing) restores to the same thing, and a store commit here would
        # only sit on every handover's critical path.  The commit persists the
        # ownership before its ack; a lapse persists what it remembers.
        self.out.timer(JobTimer("chainpending", msg.job_id), chain.valid_until)
        self.handovers["accepted"] += 1
        self._accept(chain)

    def _accept(self, chain: ChainState) -> None:
        head = chain.records[-1]
        self.out.send(
            head["body"]["from"],
            HandoverAccept(job_id=chain.job_id, stage=head["body"]["stage"], record=pack(head)),
        )

    def on_pending_timeout(self, job_id: str) -> None:
        chain = self.chains.get(job_id)
        if chain is not None and chain.role == "pending" and self.out.now >= chain.valid_until:
            # No commit in our window: we never became the owner.
            self.out.notify("handover_expired", job_id=job_id)
            if chain.submitter == self.me:  # the submitter keeps watching its chain
                self._drop_pending(chain)
                self._save(chain)
                return
            self._lapse_pending(chain)

    def _lapse_pending(self, chain: ChainState) -> None:
        """Our acceptance lapsed (window over, or a restart) and we are not the
        submitter: we never became the owner, and must never become it by this
        offer.  A late copy of the offer (delayed, duplicated) would otherwise
        open a fresh window after the offering owner's commit, which the
        submitter's takeover does not wait for; so we remember the record (a
        replayed offer is refused, its commit too) instead of forgetting it.
        The record itself leaves our log, which holds committed records only."""
        chain.lapsed = record_hash(chain.records[-1])
        chain.records = chain.records[:-1]
        chain.move("former")
        self._save(chain)

    def on_commit(self, sender: str, msg: HandoverCommit) -> None:
        chain = self.chains.get(msg.job_id)
        if chain is None:
            self._refuse(sender, msg.job_id, "commit for no pending handover")
            return
        head = chain.records[-1]
        if chain.lapsed and chain.lapsed == msg.record_hash:
            self._refuse(sender, msg.job_id, "commit after the accept window")
            return
        if chain.role != "pending" and any(
            r["body"]["from"] == sender and record_hash(r) == msg.record_hash for r in chain.records
        ):  # a retransmission of a commit we took (our ack was lost): ack again
            self.out.send(
                sender, HandoverAck(job_id=msg.job_id, stage=msg.stage, record_hash=msg.record_hash)
            )
            return
        if head["body"]["from"] != sender or record_hash(head) != msg.record_hash:
            self._refuse(sender, msg.job_id, "commit does not match the accepted record")
            return
        if chain.role != "pending":  # a retransmission: we are the owner already
            self.out.send(
                sender, HandoverAck(job_id=msg.job_id, stage=msg.stage, record_hash=msg.record_hash)
            )
            return
        if self.out.now >= chain.valid_until:
            self._refuse(sender, msg.job_id, "commit after the accept window")
            return
        chain.move("owner")  # until the end of the window, then as the submitter renews
        self._next_lapse = min(self._next_lapse, chain.valid_until)
        self._save(chain)  # durable before the ack tells the old owner it may stop resending
        self.out.cancel_timer(JobTimer("chainpending", msg.job_id))
        self.out.send(
            sender, HandoverAck(job_id=msg.job_id, stage=msg.stage, record_hash=msg.record_hash)
        )
        self.out.notify(
            "handover_received", job_id=msg.job_id, stage=head["body"]["stage"], by=sender
        )
        stage = head["body"]["stage"]
        self.ctx.note(msg.job_id, "handed_over", node=sender, detail=f"stage {stage} from {sender}")
        # The runtime writes this step's records together, before the ack
        # leaves: the owner role and the stage run are on disk together.  (A
        # restarted submitter still picks the stage up if it is missing:
        # ``_continue_stage``.)
        self._run_stage(chain, head["body"]["stage"])

    # --- liveness: owner <-> submitter ------------------------------------------------

    def _report(self, chain: ChainState, state: str) -> None:
        chain.report_seq += 1
        news = self._carries_log(chain, state)
        chain.carried[chain.report_seq] = (self.out.now, len(chain.records) if news else 0)
        msg = ChainReport(
            job_id=chain.job_id,
            seq=chain.report_seq,
            state=state,
            records=pack(chain.records) if news else b"",
            reason=chain.reason,
            manifest_id=chain.final[0] if chain.final else "",
            node=chain.final[1] if chain.final else "",
        )
        if state in FINAL_REPORTS:
            self.out.send_reliably(
                ("report", chain.job_id, state),
                chain.submitter,
                msg,
                give_up_after=self.t.lease_ttl * 3,
            )
        else:
            self.out.send(chain.submitter, msg)
            # At a third of the validity the submitter grants (its ttl, not ours).
            every = chain.report_every or self.t.renew_interval
            self.out.timer(JobTimer("chainreport", chain.job_id), self.out.now + every)
            self.out.timer(JobTimer("chainlapse", chain.job_id), chain.valid_until)

    def _carries_log(self, chain: ChainState, state: str) -> bool:
        """A final report always carries the whole log (the submitter decides
        the chain's outcome from its own log, which must reach our head);
        others when the submitter has not acknowledged all our records."""
        return state in FINAL_REPORTS or chain.sent < len(chain.records)

    def on_report_timer(self, job_id: str) -> None:
        chain = self.chains.get(job_id)
        if chain is not None and chain.role == "owner" and chain.submitter != self.me:
            self._report(chain, "running")

    def check_lapses(self) -> None:
        """Before every event: let go of every stage whose ownership ran out.
        The lapse timer alone is not enough: a paused process (SIGSTOP, a GC
        pause) resumes with its frames queued ahead of its stale timers, and
        must not act as the owner on any of them."""
        now = self.out.now
        if now < self._next_lapse:
            return
        earliest = float("inf")
        for chain in list(self.chains.values()):
            if chain.role != "owner" or chain.outcome or chain.submitter == self.me:
                continue
            if now >= chain.valid_until:
                self._fence(chain, "no answer from the submitter within its ttl")
            else:
                earliest = min(earliest, chain.valid_until)
        self._next_lapse = earliest

    def on_lapse_timer(self, job_id: str) -> None:
        chain = self.chains.get(job_id)
        if chain is None or chain.role != "owner" or chain.submitter == self.me:
            return
        if self.out.now < chain.valid_until:
            self.out.timer(JobTimer("chainlapse", job_id), chain.valid_until)
            return
        self._fence(chain, "no answer from the submitter within ttl")

    def _fence(self, chain: ChainState, reason: str) -> None:
        chain.move("former")
        self._save(chain)
        run = self.ctx.jobs.get(chain.run_id)
        if run is not None and not run.terminal:
            self.ctx.cancel(chain.run_id, f"chain ownership lost: {reason}")
        self.out.notify("chain_fenced", job_id=chain.job_id, reason=reason)

    def on_report_ack(self, sender: str, msg: ChainReportAck) -> None:
        chain = self.chains.get(msg.job_id)
        if chain is None or sender != chain.submitter:
            raise RemoteProtocolError(f"chain report ack for {msg.job_id} from a non-submitter")
        if not msg.valid:
            if chain.role == "owner":
                self._fence(chain, f"the submitter took over: {msg.reason}")
            return
        if msg.seq > chain.acked_seq and msg.seq in chain.carried:
            chain.acked_seq = msg.seq
            # Records appended since that report was sent are still news.
            sent_at, carried = chain.carried[msg.seq]
            chain.sent = max(chain.sent, carried)
            for seq in [s for s in chain.carried if s <= msg.seq]:
                del chain.carried[seq]
            # The submitter takes over ``valid_ms`` + its grace after it heard
            # this report, which left at ``sent_at``: renew from then.
            granted = msg.valid_ms / 1000
            chain.valid_until = max(chain.valid_until, sent_at + granted)
            chain.report_every = granted / 3

    def on_report(self, sender: str, msg: ChainReport) -> None:
        """The submitter: learn where the chain stands; renew its owner."""
        chain = self.chains.get(msg.job_id)
        if chain is None or chain.submitter != self.me:
            raise RemoteProtocolError(f"chain report for {msg.job_id}, which we did not submit")
        if msg.records:
            records = unpack(msg.records)
            spec = self.specs[msg.job_id]
            try:
                verify_log(
                    records,
                    self.keys,
                    job_id=msg.job_id,
                    spec_digest=self._digest(spec),
                    pending=False,
                )
            except RemoteProtocolError as exc:
                self._refuse(sender, msg.job_id, f"invalid record log: {exc}")
                return
            if records[: len(chain.records)] != chain.records and len(records) > len(chain.records):
                self._refuse(sender, msg.job_id, "record log diverges from ours")
                return
            if len(records) > len(chain.records):
                chain.records = list(records)
                self._save(chain)
        owner = chain.head["to"]
        refusal = self._completion_refusal(chain, sender, msg)
        if refusal:
            self._refuse(sender, msg.job_id, refusal)
            return
        # A running report from anyone but the owner our log names, or for a
        # chain that has ended (stopped by the user): stop it.
        valid = msg.state != "running" or (sender == owner and not chain.outcome)
        reason = f"the chain is {chain.outcome}" if chain.outcome else f"its owner is {owner}"
        if sender == owner:
            chain.heard_at = self.out.now
        if msg.state in ("completed", "failed") and sender == owner and not chain.outcome:
            chain.final = [msg.manifest_id, msg.node] if msg.manifest_id else []
            self._end(chain, msg.state, msg.reason)  # durable before the ack
        self.out.send(
            sender,
            ChainReportAck(
                job_id=msg.job_id,
                seq=msg.seq,
                valid=valid,
                reason="" if valid else reason,
                # We take over lease_ttl + lease_grace after hearing from the
                # owner: it fences itself lease_ttl after its report left.
                valid_ms=int(self.t.lease_ttl * 1000) if valid else 0,
            ),
        )

    def _completion_refusal(self, chain: ChainState, sender: str, msg: ChainReport) -> str:
        """Why a completion report cannot end the chain ("" if it can): the
        outcome is decided from our log, which must show the last stage
        reached by its owner (a final report carries the log)."""
        stages = self.specs[chain.job_id]["stages"]
        if msg.state != "completed" or sender != chain.head["to"]:
            return ""
        if chain.head["stage"] != len(stages) - 1:
            return f"completed, but our log stands at stage {stages[chain.head['stage']]['name']}"
        return ""

    def on_watch_timer(self, job_id: str) -> None:
        """The submitter: take the chain over when its owner went silent."""
        chain = self.chains.get(job_id)
        if chain is None or chain.outcome or chain.submitter != self.me:
            return
        self.out.timer(JobTimer("chainwatch", job_id), self.out.now + self.t.renew_interval)
        owner = chain.head["to"]
        if owner == self.me and chain.role == "owner":
            return
        if self.out.now < chain.heard_at + self.t.lease_ttl + self.t.lease_grace:
            return
        # Re-run the latest stage whose inputs do not live on the silent owner
        # (it held its own stage's inputs, maybe earlier stages' too).
        stage = max(chain.head["stage"] - 1, 0)
        while stage > 0 and any(i[2] == owner for i in self._stage_inputs(chain, stage)):
            stage -= 1
        head = chain.records[-1]
        body = {
            "job": job_id,
            "seq": len(chain.records),
            "stage": stage,
            "kind": "takeover",
            "from": owner,
            "to": self.me,
            "prev": record_hash(head),
            "inputs": self._stage_inputs(chain, stage),
            "spec": head["body"]["spec"],
        }
        chain.records.append(self._sign(body))
        chain.move("owner")
        chain.offer, chain.commit_hash = None, ""
        self.out.notify("chain_takeover", job_id=job_id, silent=owner, stage=stage)
        self._run_stage(chain, stage)

    # --- the end -------------------------------------------------------------------

    def _end(self, chain: ChainState, outcome: str, reason: str) -> None:
        chain.outcome, chain.reason = outcome, reason
        self._save(chain)
        if chain.submitter == self.me:
            job = self.ctx.jobs.get(chain.job_id)
            if job is not None and not job.terminal:
                self.ctx.set_terminal(job, outcome, reason)
        else:
            chain.move("former")
            self._report(chain, outcome)

    def on_stop(self, job: OwnedJob, reason: str) -> None:
        chain = self.chains.get(job.job_id)
        if chain is None:
            return
        chain.outcome, chain.reason = "stopped", reason
        self._save(chain)
        run = self.ctx.jobs.get(chain.run_id)
        if run is not None and not run.terminal:
            self.ctx.cancel(chain.run_id, reason)

    def describe(self, job: OwnedJob) -> dict[str, Any]:
        return self.describe_chain(job.job_id)

    def describe_unowned(self, job_id: str) -> dict[str, Any] | None:
        """A chain stage we own(ed) but whose chain job is owned elsewhere."""
        if job_id not in self.chains:
            return None
        return {"job_id": job_id, "type": "chain", "chain": self.describe_chain(job_id)}

    def describe_chain(self, job_id: str) -> dict[str, Any]:
        chain = self.chains.get(job_id)
        if chain is None:
            raise LocalProtocolError(f"no chain {job_id} here")
        spec = self.specs[job_id]
        verdicts = record_verdicts(
            chain.records, self.keys, job_id=job_id, spec_digest=self._digest(spec)
        )
        verified = verdicts[-1] if verdicts else "INVALID: empty chain log"
        stages = spec["stages"]
        return {
            "role": chain.role.value,
            "stage": stages[chain.head["stage"]]["name"],
            "owner": chain.head["to"],
            "log_verified": verified,
            "records": [
                {
                    "seq": r["body"]["seq"],
                    "kind": r["body"]["kind"],
                    "stage": stages[r["body"]["stage"]]["name"],
                    "from": r["body"]["from"],
                    "to": r["body"]["to"],
                    "hash": record_hash(r),
                    "signed_by": sorted(r["sigs"]),
                    "verified": verdict,
                }
                for r, verdict in zip(chain.records, verdicts, strict=True)
            ],
            "final": chain.final,
        }
