"""A chain's record log comes from peers (offers, reports, takeovers): its
check must refuse any log it cannot vouch for with ``RemoteProtocolError``,
never fail on what it meets.

The signatures are valid here (each record signed by the nodes it names, as a
hostile submitter or stage owner can sign its own records), so the check gets
past them to the fields: a stage that is not a number, a kind it does not
know, an owner that is not a string, inputs that are not [name, manifest,
node] triples (the next stage runs with them), a broken hash chain.  Found by a sampled
mutant of the record's shape check that no test caught; this property then
found that a takeover whose stage was not a number raised ``TypeError`` out
of the core.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.chain import body_bytes, record_hash, verify_log
from protocols.errors import RemoteProtocolError
from protocols.signing import SimKeyring

NODES = ["s", "n1", "n2"]
# Whatever msgpack carries (ints within 64 bits: a peer's record was unpacked).
INTS = st.integers(-(2**63), 2**64 - 1)
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=2), st.floats(), st.binary(max_size=2),
                INTS, st.lists(INTS, max_size=1),
                st.dictionaries(st.text(max_size=1), INTS, max_size=1))
STAGES = st.one_of(st.integers(-1, 4), ODD)
NAMES = st.one_of(st.sampled_from([*NODES, ""]), ODD)
KINDS = st.one_of(st.sampled_from(["genesis", "handover", "takeover", "other"]), ODD)


def _mostly(draw: st.DrawFn, usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """Usually a value the check expects (so it gets past the fields before),
    now and then anything."""
    return draw(usual) if draw(st.integers(0, 3)) else draw(odd)


@st.composite
def logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for seq in range(draw(st.integers(1, 4))):
        before = records[-1]["body"] if records else {}
        body: dict[str, Any] = {
            "job": "j",
            "spec": "digest",
            "seq": _mostly(draw, st.just(seq), ODD),
            "kind": _mostly(draw, st.just("genesis") if seq == 0
                            else st.sampled_from(["handover", "takeover"]), KINDS),
            "from": _mostly(draw, st.just(before.get("to", "")), NAMES),
            "to": _mostly(draw, st.sampled_from(NODES), NAMES),
            "stage": _mostly(draw, st.sampled_from([seq, max(seq - 1, 0)]), STAGES),
            "prev": _mostly(draw, st.just(record_hash(records[-1]) if records else ""), ODD),
            "inputs": _mostly(draw, st.just([["st0", "sha256:" + "0" * 64, "n1"]] if seq else []),
                              st.one_of(ODD, st.lists(st.lists(NAMES, max_size=4), max_size=2))),
        }
        if not draw(st.integers(0, 7)):
            del body[draw(st.sampled_from(sorted(body)))]
        data = body_bytes(body)
        signers = {n for n in (body.get("from"), body.get("to")) if isinstance(n, str) and n}
        records.append({"body": body, "sigs": {n: SimKeyring(n).sign(data) for n in signers}})
    if not draw(st.integers(0, 7)):  # one of them not a record at all
        shapes = st.dictionaries(st.sampled_from(["body", "sigs", "x"]), ODD, max_size=3)
        records[draw(st.integers(0, len(records) - 1))] = draw(st.one_of(ODD, shapes))
    return records


@settings(max_examples=400, deadline=None)
@given(records=logs(), pending=st.booleans())
def test_a_record_log_is_refused_or_accepted_never_crashes(
    records: list[dict[str, Any]], pending: bool
) -> None:
    try:
        verify_log(records, SimKeyring("me"), job_id="j", spec_digest="digest", pending=pending)
    except RemoteProtocolError:
        return
    # Accepted: what the core reads from an accepted log afterwards has its shape
    # (a stage runs with its record's inputs; stages are compared and counted).
    for record in records:
        body = record["body"]
        assert type(body["stage"]) is int and body["stage"] >= 0, body
        assert isinstance(body["to"], str) and body["to"], body
        for item in body["inputs"]:
            name, manifest, node = item
            assert all(isinstance(x, str) for x in (name, manifest, node)), body
