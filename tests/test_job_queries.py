"""Job queries (any node answers), id prefixes and submit order, on the pure
node cores (tests/protonet.py): docs/protocol.md section 8, "Job queries"."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from protocols import codec
from protocols.errors import LocalProtocolError
from protocols.events import AnswerQuery, MessageReceived, QueryJob, SubmitJob
from protocols.messages import MAX_ANSWER_BYTES, JobAnswer, JobQuery
from protocols.queries import (
    AMBIGUOUS,
    FOUND,
    MAX_SERVED_PER_PEER,
    NOT_FOUND,
    QueryDesk,
    resolve,
)
from tests.protonet import ProtoNet, batch_spec

OK_ANSWER = json.dumps({"events": [], "result": {"state": "running"}}).encode()


def _net() -> ProtoNet:
    net = ProtoNet(["a", "b", "c"])
    net.run_for(1.0)  # hellos: every view holds the others
    return net


def _ask(net: ProtoNet, node: str, query_id: str, job: str, op: str = "describe") -> None:
    net.feed(node, QueryJob(query_id=query_id, op=op, job=job, args="{}", timeout=3.0))


def _answer_queries(net: ProtoNet, node: str, body: bytes = OK_ANSWER) -> list[dict[str, Any]]:
    """Play the driver of ``node``: answer every job_query it was handed."""
    asked = [n.data for who, n in net.notes if who == node and n.kind == "job_query"]
    for q in asked:
        net.feed(node, AnswerQuery(q["peer"], q["query_id"], "ok", q["job_id"], answer=body))
    net.notes = [(w, n) for w, n in net.notes if not (w == node and n.kind == "job_query")]
    return asked


def _raw_frame(sender: str, tag: str, body: dict[str, Any], msg_id: str = "x:1:1") -> bytes:
    """A frame packed by hand: what a hostile peer may send, past our encoder's checks."""
    envelope = {"v": 1, "t": tag, "id": msg_id, "from": sender, "body": body}
    return bytes(msgpack.packb(envelope, use_bin_type=True))


# --- resolving ids and prefixes -------------------------------------------------------


def test_resolve_exact_unique_prefix_ambiguous_and_cron_runs() -> None:
    ids = ["j-aa11", "j-aa22", "j-b0", "j-c9", "j-c9@1800000060000", "j-c9@1800000120000"]

    def top(job_id: str) -> bool:
        return "@" not in job_id

    assert resolve("j-b0", ids, top) == (FOUND, ["j-b0"])
    assert resolve("j-b", ids, top) == (FOUND, ["j-b0"])
    assert resolve("j-aa", ids, top) == (AMBIGUOUS, ["j-aa11", "j-aa22"])
    assert resolve("j-zz", ids, top) == (NOT_FOUND, [])
    # A cron job's prefix names the cron job, not its runs; a run's own prefix names it.
    assert resolve("j-c", ids, top) == (FOUND, ["j-c9"])
    assert resolve("j-c9@18000000", ids, top) == (FOUND, ["j-c9@1800000060000"])
    assert resolve("j-c9@1800000", ids, top) == (
        AMBIGUOUS,
        ["j-c9@1800000060000", "j-c9@1800000120000"],
    )


# --- submit order -----------------------------------------------------------------------


def test_submit_order_is_persisted_and_survives_a_restart() -> None:
    net = ProtoNet(["a"], owners_only=frozenset({"a"}))
    for job_id in ("j-c", "j-a", "j-b"):  # alphabetical order is not submit order
        net.feed("a", SubmitJob(job_id, batch_spec()))
        net.run_for(1.0)
    records = net.stores["a"]["jobs"]
    assert [records[j]["seq"] for j in ("j-c", "j-a", "j-b")] == [1, 2, 3]
    assert records["j-c"]["submitted_ms"] < records["j-b"]["submitted_ms"]
    net.crash("a")
    # The store hands records back in key order, as SQLite does.
    net.stores["a"]["jobs"] = dict(sorted(records.items()))
    net.start("a")
    jobs = net.core("a").owner.jobs
    assert sorted(jobs, key=lambda j: jobs[j].seq) == ["j-c", "j-a", "j-b"]
    net.feed("a", SubmitJob("j-0", batch_spec()))
    assert jobs["j-0"].seq == 4


# --- the query round trip ---------------------------------------------------------------


def test_a_query_without_a_hint_asks_the_view_and_the_owner_answers() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-0123abcd", batch_spec(labels={"zone": "nowhere"})))
    _ask(net, "c", "q1", "j-0123")  # a prefix; c saw no ask (the labels match nobody)
    net.run_for(0.05)
    served = _answer_queries(net, "a")
    assert served == [
        {"peer": "c", "query_id": "q1", "op": "describe", "job_id": "j-0123abcd", "args": {}}
    ]
    net.run_until(lambda: any(n["query_id"] == "q1" for n in net.notes_of("job_query_done")))
    answers, hinted, silent = net.core("c").queries.take("q1")
    assert hinted == "" and silent == []  # b answered too: not found there
    by_peer = {a.peer: a for a in answers}
    assert by_peer["a"].status == "ok" and by_peer["a"].job_id == "j-0123abcd"
    assert json.loads(by_peer["a"].answer)["result"] == {"state": "running"}
    assert by_peer["b"].status == "not_found"
    # The answer taught c the owner: the next query goes to a alone.
    assert net.core("c").queries.owner_of("j-0123") == ("j-0123abcd", "a")


def test_an_answer_after_the_query_closed_is_ignored_not_counted() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-late", batch_spec(labels={"zone": "nowhere"})))
    net.partition("b", "c")  # c never hears the query
    _ask(net, "b", "q-late", "j-late")
    net.run_for(0.05)
    _answer_queries(net, "a")
    net.run_until(lambda: any(n["query_id"] == "q-late" for n in net.notes_of("job_query_done")))
    assert net.core("b").queries.take("q-late")[2] == ["c"]  # closed on the owner's answer
    late = JobAnswer(query_id="q-late", status="not_found")
    net.heal()
    net.feed("b", MessageReceived("c", codec.encode(late, msg_id="c:97:1", sender="c")))
    assert _dropped(net, "b", "c") == 0
    net.feed("b", MessageReceived("c", codec.encode(late, msg_id="c:97:2", sender="c")))
    assert _dropped(net, "b", "c") == 1  # but only once per peer asked


def test_asks_and_grants_teach_the_owner_and_a_silent_owner_is_unreachable() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-1", batch_spec(count=2, duration_ms=60_000)))
    net.run_until(lambda: len(net.running_anywhere()) == 2)
    holders = {node for node, _ in net.running_anywhere()}
    learnt = [n for n in ("b", "c") if net.core(n).queries.owner_of("j-1")[1] == "a"]
    assert learnt and set(learnt) >= holders - {"a"}
    asker = learnt[0]
    net.crash("a")
    _ask(net, asker, "q2", "j-1")
    sent = [f for f in net.frames(JobQuery) if f.sender == asker]
    assert [f.dest for f in sent] == ["a"]  # the owner only, not the whole view
    net.run_until(lambda: any(n["query_id"] == "q2" for n in net.notes_of("job_query_done")))
    assert net.core(asker).queries.take("q2") == ([], "a", ["a"])


def test_stop_is_answered_only_for_the_submitter() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-2", batch_spec(labels={"zone": "nowhere"})))
    query = JobQuery(query_id="q3", op="cancel", job="j-2", args="{}")
    net.feed("a", MessageReceived("b", codec.encode(query, msg_id="b:99:1", sender="b")))
    assert net.notes_of("job_query") == []  # never handed to the driver
    refusal = [f.message for f in net.frames(JobAnswer) if f.dest == "b"]
    assert len(refusal) == 1 and isinstance(refusal[0], JobAnswer)
    assert refusal[0].status == "refused" and "only the node that submitted" in refusal[0].detail
    assert net.job_state("a", "j-2") == "queued"


def test_the_submitter_check_fires_on_a_planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    net.feed("a", SubmitJob("j-3", batch_spec(labels={"zone": "nowhere"})))
    monkeypatch.setattr(net.core("a").queries.local, "submitter", lambda _job_id: "b")
    query = JobQuery(query_id="q4", op="cancel", job="j-3", args="{}")
    net.feed("a", MessageReceived("b", codec.encode(query, msg_id="b:99:2", sender="b")))
    assert [q["op"] for q in net.notes_of("job_query")] == ["cancel"]  # the planted bug shows


def test_a_peer_gets_at_most_a_few_queries_served_at_once() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-4", batch_spec(labels={"zone": "nowhere"})))
    for i in range(MAX_SERVED_PER_PEER + 2):
        query = JobQuery(query_id=f"q{i}", op="describe", job="j-4", args="{}")
        net.feed("a", MessageReceived("b", codec.encode(query, msg_id=f"b:99:{i}", sender="b")))
    assert len(net.notes_of("job_query")) == MAX_SERVED_PER_PEER
    busy = [f.message for f in net.frames(JobAnswer) if f.dest == "b"]
    assert [m.status for m in busy if isinstance(m, JobAnswer)] == ["busy", "busy"]


def test_an_answer_over_the_bound_is_sent_as_too_large() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-5", batch_spec(labels={"zone": "nowhere"})))
    _ask(net, "b", "q5", "j-5")
    net.run_for(0.05)
    _answer_queries(net, "a", body=b"x" * (MAX_ANSWER_BYTES + 1))
    net.run_until(lambda: any(n["query_id"] == "q5" for n in net.notes_of("job_query_done")))
    answers, _, _ = net.core("b").queries.take("q5")
    assert [(a.peer, a.status, a.answer) for a in answers if a.peer == "a"] == [
        ("a", "too_large", b"")
    ]


# --- hostile frames: rejected and counted ---------------------------------------------------


def _dropped(net: ProtoNet, node: str, sender: str) -> int:
    return net.core(node).dropped.get(sender, 0)


def test_unsolicited_forged_malformed_and_oversized_query_frames_are_counted() -> None:
    net = _net()
    net.feed("a", SubmitJob("j-6", batch_spec(labels={"zone": "nowhere"})))
    _ask(net, "b", "q6", "j-6")  # b asks a, c (its view)
    faults = []

    def deliver(data: bytes, sender: str = "c", dest: str = "b") -> None:
        before = _dropped(net, dest, sender)
        net.feed(dest, MessageReceived(sender, data))
        assert _dropped(net, dest, sender) == before + 1, data[:60]
        faults.append(net.notes_of("dropped")[-1]["fault"])

    def answer(**over: Any) -> JobAnswer:
        return JobAnswer(**{"query_id": "q6", "status": "ok", "answer": OK_ANSWER, **over})

    enc = codec.encode
    deliver(enc(answer(query_id="q-never"), msg_id="c:99:1", sender="c"))  # unsolicited
    deliver(enc(answer(), msg_id="z:99:1", sender="z"), sender="z")  # z was not asked
    deliver(enc(answer(status="maybe"), msg_id="c:99:2", sender="c"))  # no such status
    deliver(enc(answer(answer=b"{not json"), msg_id="c:99:3", sender="c"))  # malformed
    deliver(enc(answer(answer=b"[1, 2]"), msg_id="c:99:4", sender="c"))  # not {events, result}
    deliver(enc(answer(), msg_id="a:99:1", sender="a"), sender="c")  # forged: claims a
    oversized = {
        "query_id": "q6", "status": "ok", "job_id": "j-6", "owner": "c", "detail": "",
        "answer": b"x" * (MAX_ANSWER_BYTES + 1),
    }  # fmt: skip
    deliver(_raw_frame("c", "job_answer", oversized, "c:99:5"))
    for bad_query in (
        JobQuery(query_id="q7", op="submit", job="j-6", args="{}"),  # not a query operation
        JobQuery(query_id="q8", op="describe", job="j-6", args="[1]"),  # args not an object
        JobQuery(query_id="q9", op="describe", job="j-6", args="{oops"),
        JobQuery(query_id="q10", op="describe", job="j-6", args="[" * 4000),  # too deep
    ):
        deliver(enc(bad_query, msg_id=f"c:98:{bad_query.query_id}", sender="c"), dest="a")
    assert faults == ["unauthorized"] * 5 + ["forged", "undecodable"] + ["unauthorized"] * 4
    # None of it disturbed the query: c's and a's real answers still close it.
    net.run_for(0.05)
    _answer_queries(net, "a")
    net.run_until(lambda: any(n["query_id"] == "q6" for n in net.notes_of("job_query_done")))
    answers, _, _ = net.core("b").queries.take("q6")
    assert {(x.peer, x.status) for x in answers} == {("a", "ok"), ("c", "not_found")}


def test_the_asker_bounds_its_open_queries() -> None:
    core = _net().core("b")
    desk: QueryDesk = core.queries
    for i in range(64):
        core.handle(QueryJob(query_id=f"q{i}", op="describe", job="j-x"), 2.0)
    with pytest.raises(LocalProtocolError, match="in flight already"):
        core.handle(QueryJob(query_id="q-last", op="describe", job="j-x"), 2.0)
    with pytest.raises(LocalProtocolError, match="not forwarded"):
        core.handle(QueryJob(query_id="q-op", op="submit", job="j-x"), 2.0)
    assert len(desk.pending) == 64


# --- the asker's verdict (p2pnode/forwarding.py) ----------------------------------------


def test_the_verdict_over_the_answers() -> None:
    from p2pnode.errors import AmbiguousJobError, NotFoundError, UnreachableError
    from p2pnode.forwarding import QueryFailed, _decide
    from protocols.queries import Answer

    def ok(peer: str, job_id: str) -> Answer:
        return Answer(peer, "ok", job_id, peer, "", OK_ANSWER)

    def missing(peer: str, owner: str = "") -> Answer:
        return Answer(peer, "not_found", "", owner, "", b"")

    assert _decide("j-1", [missing("b"), ok("a", "j-1")], "", [])["result"] == {"state": "running"}
    with pytest.raises(QueryFailed, match="conflicting answers from a and z"):
        _decide("j-1", [ok("a", "j-1"), ok("z", "j-1")], "", [])
    with pytest.raises(AmbiguousJobError, match="j-10, j-11"):
        _decide("j-1", [ok("a", "j-10"), ok("b", "j-11")], "", [])
    with pytest.raises(UnreachableError, match="job j-1 is owned by a, not reachable"):
        _decide("j-1", [], "a", ["a"])
    with pytest.raises(UnreachableError, match="owned by d, not reachable"):
        _decide("j-1", [missing("b", owner="d"), missing("c")], "", [])
    with pytest.raises(NotFoundError, match="no such job: j-1"):
        _decide("j-1", [missing("a")], "a", [])  # the owner we knew of no longer has it
    with pytest.raises(NotFoundError, match="no such job: j-1"):
        _decide("j-1", [missing("b")], "", ["c"])
