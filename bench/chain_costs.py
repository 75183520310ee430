"""What one chain handover costs the protocol cores, counted (no timing noise).

Runs one chain of ``--stages`` stages on the hand-cranked network
(tests/protonet.py, six nodes, the submitter computing nothing), finishing
every stage run at once; with ``--poll`` the submitter is also asked to
``describe`` the chain after every step, as a client polling it does
(bench_chain.py polls every 10 ms).  Prints the ed25519 verifications per
remote handover, how many accepts had to wait behind a store write of their
step, and the cores' CPU time.  Run it on two checkouts to compare them.

Usage: ``python bench/chain_costs.py [--stages 10] [--poll]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.events import ExecutionFinished, SubmitJob
from protocols.signing import SimKeyring
from tests.protonet import ProtoNet
from tests.test_chain_core import FAST, NODES, accepts_behind_a_write, chain_spec, stage_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--poll", action="store_true")
    args = parser.parse_args()
    verified = [0]
    original = SimKeyring.verify

    def counting(self: SimKeyring, node_id: str, data: bytes, signature: bytes) -> bool:
        verified[0] += 1
        return original(self, node_id, data, signature)

    SimKeyring.verify = counting  # type: ignore[method-assign]
    net = ProtoNet(NODES, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("cz", chain_spec(args.stages)))
    cpu0 = time.process_time()
    while net.job_state("a", "cz") != "completed":
        for exec_id, (node, _start) in stage_runs(net, "cz").items():
            net.running[node].pop(exec_id)
            manifest = "sha256:" + "ab" * 32
            net.feed(node, ExecutionFinished(exec_id, "succeeded", manifest_id=manifest))
        if args.poll:
            net.core("a").describe("cz")
        if not net.step():
            raise SystemExit("the chain stalled")
    cpu = time.process_time() - cpu0
    log = net.core("a").describe("cz")["chain"]
    handovers = sum(1 for r in log["records"][1:] if r["from"] != r["to"])
    accepts, behind = accepts_behind_a_write(net)
    print(
        f"{args.stages} stages, {handovers} remote handovers{' (polled)' if args.poll else ''}: "
        f"{verified[0] / max(handovers, 1):.1f} verifications per handover; "
        f"{behind} of {accepts} accepts behind a store write; core CPU {cpu * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
