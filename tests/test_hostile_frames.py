"""A peer's well-formed frames can never raise out of the core.

The codec rejects malformed frames (``test_codec.py``); this is about frames
that decode: any message type, any field values within their bounds, about
the jobs, executions, slots and epochs the node really has, or about none.
A handler that meets what it does not expect must refuse it with
``RemoteProtocolError`` (the frame is dropped and counted against its
sender).  Any other exception would leave the core's step half done, and in
``serve`` it would end the node: one frame from one peer, repeated, would
stop every node of a network.

Found by a sampled mutant (``_census_answer``'s unknown-job check made
``and``): a census answer about an unknown job raised ``AttributeError``
and no test noticed.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import codec
from protocols.config import Timings
from protocols.events import MessageReceived, SourceBatch, SubmitJob
from protocols.messages import ALL_MESSAGES, CENSUS_SLOT, Message
from tests.protonet import ProtoNet
from tests.test_chain_core import chain_spec
from tests.test_codec import message_strategy
from tests.test_dag_core import dag_spec
from tests.test_kinds import cron_spec, spec
from tests.test_stream_core import micro_spec, stream_spec

FAST = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2, daemon_scan=2.0)
NODES = ["a", "b", "c"]
# Who sends: a node of the network (its identity is the transport's: a
# compromised or buggy peer), or a stranger.
SENDERS = [*NODES, "x"]


@functools.cache
def _busy_network() -> ProtoNet:
    """Jobs of every kind in flight: leases held, a census, a chain, a cron
    run, DAG tasks, stream partitions, a micro batch."""
    net = ProtoNet(NODES, timings=FAST)
    net.run_for(1.0)
    docs: dict[str, dict[str, Any]] = {
        "batch": spec("batch", count=3),
        "ops": spec("ops"),
        "daemon": spec("daemon"),
        "service": spec("service", count=2),
        "cron": cron_spec("allow", every=1000),
        "dag": dag_spec({"x": {}, "y": {"depends_on": ["x"]}}),
        "chain": chain_spec(3),
        "stream": stream_spec(partitions=2),
        "micro": micro_spec(),
    }
    for job_id, doc in docs.items():
        net.feed("a" if job_id < "m" else "b", SubmitJob(job_id, doc))
    net.feed("b", SourceBatch("micro", "0", "sha256:" + "0" * 64, "1-0", "5-0", 5))
    net.run_for(2.0)
    assert net.running_anywhere(), "nothing runs: the frames would meet an idle node"
    net.actions.clear()  # (history: not needed, and slow to copy)
    net.notes.clear()
    return net


def _known_values(net: ProtoNet) -> dict[str, list[Any]]:
    """The ids and numbers the network really has, by message field name."""
    job_ids: set[str] = set()
    exec_ids: set[str] = set()
    slots, epochs, stages = {0, 1, CENSUS_SLOT}, {1, 2}, {0, 1, 2}
    for core in net.cores.values():
        if core is None:
            continue
        for job in core.owner.jobs.values():
            job_ids.add(job.job_id)
            for slot in job.slots:
                slots.add(slot.index)
                epochs.add(max(1, slot.epoch))
                exec_ids.update(e.execution_id for e in slot.executions)
        for exec_id, held in core.holder.held.items():
            exec_ids.add(exec_id)
            job_ids.add(held.job_id)
        job_ids.update(core.chain.chains)
    exec_ids.discard("")
    return {
        "job_id": sorted(job_ids),
        "execution_id": sorted(exec_ids),
        "slot": sorted(slots),
        "epoch": sorted(epochs),
        "stage": sorted(stages),
        "attempt": [1, 2, 3],
        "seq": [1, 2, 3],
    }


@st.composite
def hostile_frames(draw: st.DrawFn, known: dict[str, list[Any]]) -> tuple[str, str, Message]:
    cls = draw(st.sampled_from(ALL_MESSAGES))
    message = draw(message_strategy(cls))
    # Mostly about what the node has: the paths past "unknown job".
    names = {f.name for f in attrs.fields(cls)}
    changes: dict[str, Any] = {}
    for name, values in known.items():
        if name in names and values and draw(st.integers(0, 3)) > 0:
            changes[name] = draw(st.sampled_from(values))
    message = attrs.evolve(message, **changes)
    return draw(st.sampled_from(SENDERS)), draw(st.sampled_from(NODES)), message


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_well_formed_frame_raises_out_of_the_core(data: st.DataObject) -> None:
    net = copy.deepcopy(_busy_network())
    net.drop = lambda frame: frame.dest not in NODES  # answers to the stranger
    known = _known_values(net)
    for n in range(data.draw(st.integers(1, 8))):
        sender, dest, message = data.draw(hostile_frames(known))
        if sender == dest:
            continue
        frame = codec.encode(message, msg_id=f"{sender}:66:{n}", sender=sender)
        net.feed(dest, MessageReceived(sender, frame))  # raises on any escape
        for _ in range(data.draw(st.integers(0, 20))):  # and what it set in motion
            if not net.step():
                break
