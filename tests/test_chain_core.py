"""Chain jobs on the hand-cranked network: handovers with a signed record log,
one owner at a time, recovery from a dead next owner and a dead owner, and
refusal of forged or replayed records."""

from __future__ import annotations

from typing import Any

import pytest

from protocols import codec
from protocols.chain import ChainController, pack, record_hash
from protocols.config import Timings
from protocols.events import ExecutionFinished, MessageReceived, Persist, Send, SubmitJob
from protocols.messages import HandoverAccept, HandoverCommit, HandoverOffer
from protocols.signing import SimKeyring, VerifiedCache
from tests.protonet import ProtoNet, sim_task

FAST = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2)
NODES = ["a", "b", "c", "d", "e", "f"]


def chain_spec(stages: int) -> dict[str, Any]:
    return {
        "name": "ch",
        "type": "chain",
        "constraints": {"labels": {}},
        "queue_timeout": None,
        "stages": [{"name": f"st{i}", "task": sim_task()} for i in range(stages)],
    }


def owners(net: ProtoNet, job: str) -> list[str]:
    """Nodes that consider themselves the owner of the chain's running stage."""
    out = []
    for node in net.ids:
        core = net.cores[node]
        if core is None:
            continue
        chain = core.chain.chains.get(job)
        if chain is not None and chain.role == "owner" and not chain.outcome:
            out.append(node)
    return out


def stage_runs(net: ProtoNet, job: str) -> dict[str, tuple[str, Any]]:
    out = {}
    for node, execs in net.running.items():
        for start in execs.values():
            if start.job_id.startswith(job + "~s"):
                out[start.execution_id] = (node, start)
    return out


def drive(net: ProtoNet, job: str, until: Any, limit: float, kill: Any = None) -> None:
    """Step the net, finishing every stage run at once (with a manifest), and
    check at every step that at most one node owns the running stage."""
    while not until():
        assert len(owners(net, job)) <= 1, owners(net, job)
        for exec_id, (node, start) in stage_runs(net, job).items():
            if kill is not None and kill(node, start):
                continue
            net.running[node].pop(exec_id)
            manifest = "sha256:" + format(abs(hash(exec_id)), "x").rjust(64, "0")[:64]
            net.feed(node, ExecutionFinished(exec_id, "succeeded", manifest_id=manifest))
        if net.now > limit or not net.step():
            raise AssertionError(f"not reached by t={net.now:.1f}")


def test_a_chain_moves_its_owner_with_its_data_and_completes() -> None:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c1", chain_spec(5)))
    drive(net, "c1", lambda: net.job_state("a", "c1") == "completed", limit=120)
    log = net.core("a").describe("c1")["chain"]
    assert log["log_verified"] == "ok"
    kinds = [r["kind"] for r in log["records"]]
    assert kinds[0] == "genesis" and kinds.count("handover") == 4
    for rec in log["records"][1:]:
        assert set(rec["signed_by"]) == {rec["from"], rec["to"]}
    # Each stage after the first ran with the previous stage's outputs, held by its new owner.
    moved = [r for r in log["records"][1:] if r["from"] != r["to"]]
    assert len(net.notes_of("handover_received")) == len(moved) >= 2
    assert log["final"] and log["final"][1] in NODES


def test_next_owner_dying_before_accept_makes_the_owner_rerun_and_offer_again() -> None:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c2", chain_spec(3)))
    killed: list[str] = []

    def kill_next_owner(node: str, start: Any) -> bool:
        # Stage 1's holder finishes, then dies before it can accept the offer.
        if start.env.get("P2PNODE_STAGE_INDEX") == "1" and not killed:
            net.running[node].pop(start.execution_id)
            net.feed(
                node,
                ExecutionFinished(
                    start.execution_id, "succeeded", manifest_id="sha256:" + "9" * 64
                ),
            )
            net.drop = lambda f: isinstance(f.message, HandoverOffer) and f.dest == node
            killed.append(node)
            return True
        return False

    drive(net, "c2", lambda: bool(killed), limit=60, kill=kill_next_owner)
    net.run_for(0.05)
    net.crash(killed[0])
    net.drop = lambda f: False
    drive(net, "c2", lambda: net.job_state("a", "c2") == "completed", limit=200)
    assert any(n["to"] == killed[0] for n in net.notes_of("handover_failed"))
    log = net.core("a").describe("c2")["chain"]
    assert log["log_verified"] == "ok"
    assert killed[0] not in [r["to"] for r in log["records"]]


def test_owner_dying_after_commit_is_taken_over_by_the_submitter() -> None:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c3", chain_spec(4)))
    victim: list[str] = []

    def hold_stage_2(node: str, start: Any) -> bool:
        if start.env.get("P2PNODE_STAGE_INDEX") == "2" and not victim:
            owner = owners(net, "c3")
            if owner and owner[0] != "a":
                victim.append(owner[0])
            return True
        return False

    drive(net, "c3", lambda: bool(victim), limit=60, kill=hold_stage_2)
    died_at = net.now
    net.crash(victim[0])
    drive(net, "c3", lambda: bool(net.notes_of("chain_takeover")), limit=died_at + 30)
    took = net.notes_of("chain_takeover")[0]
    assert took["silent"] == victim[0]
    assert net.now - died_at <= FAST.lease_ttl + FAST.lease_grace + FAST.renew_interval + 0.5
    drive(net, "c3", lambda: net.job_state("a", "c3") == "completed", limit=net.now + 200)
    log = net.core("a").describe("c3")["chain"]
    assert log["log_verified"] == "ok"
    assert "takeover" in [r["kind"] for r in log["records"]]


def test_forged_and_replayed_handovers_are_refused_and_counted() -> None:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = chain_spec(2)
    net.feed("a", SubmitJob("c4", spec))
    drive(net, "c4", lambda: net.job_state("a", "c4") == "completed", limit=60)
    chain = net.core("a").chain.chains["c4"]
    records = chain.records
    # A rogue node "f" forges an offer of stage 1 to "e", signed by itself.
    rogue = SimKeyring("f")
    body = dict(records[1]["body"]) if len(records) > 1 else dict(records[0]["body"])
    body.update(seq=1, stage=1, kind="handover", to="e", prev=record_hash(records[0]))
    body["from"] = "a"  # claims to be the owner "a", signs with its own key
    forged = {"body": body, "sigs": {"a": rogue.sign(pack(body))}}
    offer = HandoverOffer(
        job_id="c4",
        stage=1,
        record=pack(
            {"spec": net.core("a").chain.specs["c4"], "records": [records[0], forged]}
        ),
    )
    before = net.core("e").chain.refused
    data = codec.encode(offer, msg_id="f:1:1", sender="f")
    net.feed("e", MessageReceived("f", data))
    assert net.core("e").chain.refused == before + 1
    assert "not signed by the current owner" in net.notes_of("handover_refused")[-1]["reason"]
    # A commit nobody offered, replayed to "e": refused too.
    commit = HandoverCommit(job_id="c4", stage=1, record_hash=record_hash(records[-1]))
    net.feed("e", MessageReceived("b", codec.encode(commit, msg_id="b:9:9", sender="b")))
    assert net.core("e").chain.refused == before + 2
    # A record that breaks the hash chain.
    broken = dict(body, prev="sha256:" + "0" * 64)
    bad = {"body": broken, "sigs": {"b": SimKeyring("b").sign(pack(broken))}}
    offer = HandoverOffer(
        job_id="c4",
        stage=1,
        record=pack({"spec": net.core("a").chain.specs["c4"], "records": [records[0], bad]}),
    )
    net.feed("e", MessageReceived("b", codec.encode(offer, msg_id="b:9:10", sender="b")))
    assert "hash chain" in net.notes_of("handover_refused")[-1]["reason"]
    assert owners(net, "c4") == []


@pytest.mark.parametrize("seed", range(5))
def test_single_owner_under_message_loss(seed: int) -> None:
    import random

    rng = random.Random(seed)
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"), seed=seed)
    net.run_for(1.0)
    net.drop = lambda f: rng.random() < 0.1
    net.feed("a", SubmitJob("c5", chain_spec(6)))
    drive(net, "c5", lambda: net.job_state("a", "c5") in ("completed", "failed"), limit=600)
    assert net.job_state("a", "c5") == "completed"
    assert net.core("a").describe("c5")["chain"]["log_verified"] == "ok"


def test_stopping_the_chain_at_the_submitter_stops_the_remote_owner() -> None:
    from protocols.events import CancelJob

    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c6", chain_spec(4)))
    seen: list[str] = []

    def hold_stage_1(node: str, start: Any) -> bool:
        if start.env.get("P2PNODE_STAGE_INDEX") == "1":
            seen.append(node)
            return True
        return False

    drive(
        net,
        "c6",
        lambda: bool(seen) and owners(net, "c6") not in ([], ["a"]),
        limit=60,
        kill=hold_stage_1,
    )
    remote = owners(net, "c6")[0]
    net.feed("a", CancelJob("c6"))
    net.run_for(FAST.lease_ttl)
    assert net.job_state("a", "c6") == "stopped"
    assert owners(net, "c6") == []
    assert any(n["job_id"] == "c6" for n in net.notes_of("chain_fenced"))
    assert stage_runs(net, "c6") == {}, remote


def test_a_late_offer_copy_after_the_accept_window_lapsed_makes_no_second_owner() -> None:
    """simnet seed 123 of the harsh chain sweep: the next owner's accept
    window lapses (the commit is late); a delayed copy of the offer then
    arrives.  Accepting it again would open a fresh window after the commit
    left, and a late commit copy would make it the owner beside the
    submitter, which takes over on silence: two owners (CH1)."""
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c6", chain_spec(3)))
    offers: list[Any] = []
    commits: list[Any] = []

    def delay(frame: Any) -> bool:
        if frame.sender != "a" or getattr(frame.message, "job_id", "") != "c6":
            return False
        if isinstance(frame.message, HandoverOffer) and frame.message.stage == 1:
            offers.append(frame)
        if isinstance(frame.message, HandoverCommit) and frame.message.stage == 1:
            commits.append(frame)
            return True  # every copy of the commit comes too late
        return False

    net.drop = delay
    drive(net, "c6", lambda: bool(net.notes_of("handover_expired")), limit=60)
    nxt = offers[0].dest
    assert net.notes_of("handover_expired") and commits
    # A late retransmission of the offer (a fresh frame id: not a duplicate).
    late_offer = codec.encode(offers[-1].message, msg_id="a:99:1", sender="a")
    refused = net.core(nxt).chain.refused
    net.feed(nxt, MessageReceived("a", late_offer))
    assert net.core(nxt).chain.refused == refused + 1  # a replayed offer
    late_commit = codec.encode(commits[-1].message, msg_id="a:99:2", sender="a")
    net.feed(nxt, MessageReceived("a", late_commit))  # and of the commit
    assert "accept window" in net.notes_of("handover_refused")[-1]["reason"]
    assert net.core(nxt).chain.chains["c6"].role not in ("owner", "pending")
    net.drop = lambda f: False
    drive(net, "c6", lambda: net.job_state("a", "c6") == "completed", limit=net.now + 200)
    assert net.notes_of("chain_takeover")
    assert net.core("a").describe("c6")["chain"]["log_verified"] == "ok"


# --- issue 16: what a handover costs ---------------------------------------------------


def accepts_behind_a_write(net: ProtoNet) -> tuple[int, int]:
    """(accepts sent, those whose step also wrote to the store): a store write
    in the step holds the accept back until it is on disk (runtime.py)."""
    sent = behind = 0
    for _node, actions in net.actions:
        accepts = [
            a
            for a in actions
            if isinstance(a, Send) and isinstance(codec.decode(a.data).message, HandoverAccept)
        ]
        sent += len(accepts)
        if accepts and any(isinstance(a, Persist) for a in actions):
            behind += 1
    return sent, behind


def run_five_stages(job: str) -> ProtoNet:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob(job, chain_spec(5)))
    drive(net, job, lambda: net.job_state("a", job) == "completed", limit=120)
    return net


def test_an_accept_leaves_without_waiting_for_a_store_write() -> None:
    """A pending acceptance is forgotten by a restart anyway (``resume``), so
    the acceptor's step writes nothing: the accept is not held behind a commit."""
    net = run_five_stages("c7")
    sent, behind = accepts_behind_a_write(net)
    assert sent >= 2 and behind == 0


def test_an_acceptor_writing_before_its_accept_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above fires on the old acceptor, which wrote its pending state first."""
    original = ChainController.on_offer

    def on_offer(self: ChainController, sender: str, msg: Any) -> None:
        original(self, sender, msg)
        chain = self.chains.get(msg.job_id)
        if chain is not None and chain.role == "pending":
            self._save(chain)

    monkeypatch.setattr(ChainController, "on_offer", on_offer)
    sent, behind = accepts_behind_a_write(run_five_stages("c8"))
    assert sent >= 2 and behind == sent


class CountingKeyring(SimKeyring):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.verified = 0

    def verify(self, node_id: str, data: bytes, signature: bytes) -> bool:
        self.verified += 1
        return super().verify(node_id, data, signature)


def test_a_signature_is_verified_once_and_a_bad_one_never_passes() -> None:
    inner = CountingKeyring("b")
    keys = VerifiedCache(inner, limit=2)
    data, sig = b"record", SimKeyring("a").sign(b"record")
    assert keys.verify("a", data, sig) and keys.verify("a", data, sig)
    assert inner.verified == 1
    # Tampered data, a wrong signer, a forged signature: each still refused.
    assert not keys.verify("a", b"recorD", sig)
    assert not keys.verify("c", data, sig)
    assert not keys.verify("a", data, SimKeyring("c").sign(data))
    assert not keys.verify("a", data, b"\0" * 64)
    # Bounded: the oldest entry goes and is checked again when it comes back.
    for other in (b"x", b"y"):
        assert keys.verify("a", other, SimKeyring("a").sign(other))
    before = inner.verified
    assert keys.verify("a", data, sig) and inner.verified == before + 1


def test_a_chain_log_is_not_reverified_on_every_describe() -> None:
    net = run_five_stages("c9")
    core = net.core("a")
    counting = CountingKeyring("a")
    core.chain.keys = VerifiedCache(counting)
    for _ in range(3):
        assert core.describe("c9")["chain"]["log_verified"] == "ok"
    records = len(core.describe("c9")["chain"]["records"])
    assert 0 < counting.verified <= 2 * records  # once per signature, not once per call


@pytest.mark.parametrize("stage", [0, 1])
def test_stopping_a_chain_ends_its_running_stage_at_once(stage: int) -> None:
    """Stage 0's run is owned by the submitter, stage 1's by the node the
    chain was handed to.  Either way a stop ends the running task within a
    few round trips: well inside a lease, so it is the stop that ends it,
    not the lease running out."""
    from protocols.events import CancelJob

    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c7", chain_spec(3)))

    def hold(node: str, start: Any) -> bool:
        return bool(start.env.get("P2PNODE_STAGE_INDEX") == str(stage))

    def running_stage() -> bool:
        indexes = {s.env.get("P2PNODE_STAGE_INDEX") for _, s in stage_runs(net, "c7").values()}
        return indexes == {str(stage)} and bool(owners(net, "c7"))

    drive(net, "c7", running_stage, limit=60, kill=hold)
    assert (owners(net, "c7") == ["a"]) == (stage == 0)
    net.feed("a", CancelJob("c7"))
    net.run_for(FAST.lease_ttl / 3)
    assert stage_runs(net, "c7") == {}
    assert net.job_state("a", "c7") == "stopped"
