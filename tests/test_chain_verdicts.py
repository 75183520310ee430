"""Each record of a chain's handover log says whether the log up to it
verifies (``describe``'s ``chain.records[].verified``, shown by the dashboard)."""

from __future__ import annotations

from protocols.chain import record_verdicts
from protocols.events import SubmitJob
from tests.protonet import ProtoNet
from tests.test_chain_core import FAST, NODES, chain_spec, drive


def test_every_record_of_an_intact_log_verifies_and_a_forged_one_spoils_the_rest() -> None:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c1", chain_spec(4)))
    drive(net, "c1", lambda: net.job_state("a", "c1") == "completed", limit=120)
    log = net.core("a").describe("c1")["chain"]
    assert log["log_verified"] == "ok"
    assert [r["verified"] for r in log["records"]] == ["ok"] * len(log["records"]) == ["ok"] * 4
    assert {"seq", "kind", "stage", "from", "to", "hash", "signed_by"} <= set(log["records"][0])

    # Forge record 2 (its new owner changed after signing): it and every later
    # record fail, with record 2's reason; the records before still verify.
    records = net.core("a").chain.chains["c1"].records
    records[2] = {"body": {**records[2]["body"], "to": "f"}, "sigs": records[2]["sigs"]}
    log = net.core("a").describe("c1")["chain"]
    verdicts = [r["verified"] for r in log["records"]]
    assert verdicts[:2] == ["ok", "ok"]
    assert all(v.startswith("INVALID: record 2:") for v in verdicts[2:]), verdicts
    assert log["log_verified"] == verdicts[-1]


def test_verdicts_of_each_prefix_match_verifying_that_prefix_alone() -> None:
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c2", chain_spec(5)))
    drive(net, "c2", lambda: net.job_state("a", "c2") == "completed", limit=120)
    chain = net.core("a").chain
    records = list(chain.chains["c2"].records)
    digest = chain._digest(chain.specs["c2"])
    for bad in range(len(records)):
        forged = list(records)
        forged[bad] = {"body": {**records[bad]["body"], "seq": 99}, "sigs": records[bad]["sigs"]}
        verdicts = record_verdicts(forged, chain.keys, job_id="c2", spec_digest=digest)
        # Bisection agrees with the definition: prefix k verifies iff k <= bad.
        for count in range(1, len(forged) + 1):
            alone = record_verdicts(forged[:count], chain.keys, job_id="c2", spec_digest=digest)
            assert verdicts[count - 1] == alone[-1]
        assert verdicts.index(next(v for v in verdicts if v != "ok")) == bad
