"""Where a simulated message's cost goes, and the floor under it.

Issue 16's simnet goal is a per-message cost of at most 6x the null-core
engine (``bench_simnet.py``: a do-nothing core relaying frames through the
same engine and network model).  This bench splits one ``simnet run`` (plain
workload, 10 % loss) into:

* **inside the core**: time in ``core.handle`` (every event: frames, timers,
  executions), per delivered message;
* **the simulator around it**: everything else the run does (heap, network
  model, performing actions, the store, the invariant checkers), per
  delivered message;
* **the codec alone**: decoding every frame the run delivered and encoding
  every message it sent, timed apart on the captured frames (the part of the
  core's work that no protocol rule can skip: every frame is bytes on the
  wire, checked field by field, as over libp2p);

each as microseconds per delivered message and as a multiple of the null
core, and prints the floor: null engine + the run's extra engine events
(timers, executions) + the codec.  What is above the floor is the protocol's
own rules.

Usage: ``python bench/simnet_floor.py [--nodes 100] [--jobs-per-node 10]``
(CPU time, so a shared machine skews it less than wall time).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the repo's packages importable

from bench.bench_simnet import raw_engine_baseline_cpu  # noqa: E402
from protocols import codec  # noqa: E402
from protocols.events import MessageReceived  # noqa: E402
from simnet import engine as engine_mod  # noqa: E402
from simnet.runner import RunOptions, run_scenario  # noqa: E402


def captured_run(
    opts: RunOptions,
) -> tuple[dict[str, Any], list[bytes], tuple[list[Any], int], float, float]:
    """Run ``opts`` with ``Engine._handle`` wrapped: returns (report, every
    delivered frame, a sample of the actions the cores returned (those of
    every ``ACTION_SAMPLE``-th event, with how many there were in all), CPU
    seconds of the run, CPU seconds inside core.handle)."""
    frames: list[bytes] = []
    actions: list[Any] = []
    counts = [0, 0]  # events handled, actions returned
    inside = [0.0]
    original = engine_mod.Engine._handle
    clock = time.process_time

    class Timed:
        """Stands in for a node's core: times its handle calls."""

        def __init__(self, core: Any) -> None:
            self.core = core

        def handle(self, event: Any, now: float) -> Any:
            if type(event) is MessageReceived:
                frames.append(event.data)
            t0 = clock()
            try:
                result = self.core.handle(event, now)
            finally:
                inside[0] += clock() - t0
            counts[0] += 1
            counts[1] += len(result)
            if counts[0] % ACTION_SAMPLE == 0:
                actions.extend(result)
            return result

    def handle(self: Any, node: Any, event: Any) -> None:
        core = node.core
        node.core = Timed(core)
        try:
            original(self, node, event)
        finally:
            if node.core is not None and type(node.core) is Timed:
                node.core = core  # (a crash mid-event clears it; none in plain runs)

    engine_mod.Engine._handle = handle  # type: ignore[method-assign]
    try:
        c0 = clock()
        report = run_scenario(opts)
        cpu = clock() - c0
    finally:
        engine_mod.Engine._handle = original  # type: ignore[method-assign]
    return report, frames, (actions, counts[1]), cpu, inside[0]


# Only the actions of one event in this many are kept (to time building them
# again): keeping them all would make the run's own garbage collections slower.
ACTION_SAMPLE = 16


def building_cost(actions: list[Any], total: int) -> float:
    """CPU seconds to build the cores' ``total`` actions again from their
    fields, timed on the sample ``actions`` (best of 3) and scaled: what any
    rule costs that answers with those actions."""
    recipes = [(type(a), [getattr(a, f.name) for f in attrs.fields(type(a))]) for a in actions]
    best = float("inf")
    for _ in range(3):
        gc.collect()
        t0 = time.process_time()
        for cls, values in recipes:
            cls(*values)
        best = min(best, time.process_time() - t0)
    return best * total / max(1, len(actions))


def codec_cost(frames: list[bytes]) -> tuple[float, float]:
    """(decode, encode) CPU seconds over the captured frames, best of 3."""
    envelopes = [codec.decode(f) for f in frames]  # warm every class's codec
    best_dec = best_enc = float("inf")
    for _ in range(3):
        gc.collect()
        t0 = time.process_time()
        for f in frames:
            codec.decode(f)
        best_dec = min(best_dec, time.process_time() - t0)
        t0 = time.process_time()
        for e in envelopes:
            codec.encode(e.message, msg_id=e.msg_id, sender=e.sender)
        best_enc = min(best_enc, time.process_time() - t0)
    return best_dec, best_enc


def count_calls(opts: RunOptions) -> dict[str, float]:
    """Function calls per delivered message, by where the function lives (a
    second run of ``opts``, under cProfile: its times are not used)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    report = run_scenario(opts)
    profile.disable()
    stats: Any = pstats.Stats(profile)
    delivered = max(1, int(report["messages_delivered"]))
    counts = {"protocols": 0, "simnet": 0, "attrs": 0, "builtins": 0, "other": 0}
    for (filename, _line, _name), row in stats.stats.items():
        where = (
            "protocols" if "/protocols/" in filename
            else "simnet" if "/simnet/" in filename
            else "attrs" if "attrs generated" in filename or "/attr/" in filename
            else "builtins" if filename == "~"
            else "other"
        )
        counts[where] += row[1]  # all calls, recursive ones too
    return {where: n / delivered for where, n in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--jobs-per-node", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss", type=float, default=0.1)
    ap.add_argument("--output", choices=["table", "json"], default="table")
    ap.add_argument("--count-calls", action="store_true",
                    help="run again under cProfile and print function calls per message")
    args = ap.parse_args()

    _null_wall, null_cpu = raw_engine_baseline_cpu()
    opts = RunOptions(nodes=args.nodes, jobs=args.nodes * args.jobs_per_node, seed=args.seed,
                      loss=args.loss, workload="plain")
    report, frames, (sample, actions), run_cpu, inside_cpu = captured_run(opts)
    dec, enc = codec_cost(frames)
    build = building_cost(sample, actions)
    delivered = max(1, int(report["messages_delivered"]))
    sent = int(report["messages_sent"])

    def us(seconds: float) -> float:
        return seconds / delivered * 1e6

    events_per_msg = int(report["events"]) / delivered
    # Encoding happens once per sent copy (lost ones too): scale the measured
    # encode of the delivered frames by sent / delivered.
    codec_us = us(dec) + us(enc) * sent / delivered
    floor_us = null_cpu * events_per_msg + codec_us + us(build)
    out = {
        "nodes": args.nodes, "jobs": opts.jobs, "messages_delivered": delivered,
        "messages_sent": sent, "events_per_message": round(events_per_msg, 3),
        "null_core_us": round(null_cpu, 2),
        "run_us": round(us(run_cpu), 2),
        "inside_core_us": round(us(inside_cpu), 2),
        "around_core_us": round(us(run_cpu - inside_cpu), 2),
        "decode_us": round(us(dec), 2),
        "encode_us": round(us(enc) * sent / delivered, 2),
        "actions_per_message": round(actions / delivered, 3),
        "build_actions_us": round(us(build), 2),
        "floor_us": round(floor_us, 2),
        "rules_us": round(us(inside_cpu) - codec_us - us(build), 2),
        "trace_hash": report["trace_hash"],
    }
    if args.count_calls:
        out["calls_per_message"] = {k: round(v, 1) for k, v in count_calls(opts).items()}
    if args.output == "json":
        print(json.dumps(out, indent=2))
        return
    x = null_cpu
    print(f"simnet run: {args.nodes} nodes x {opts.jobs} plain jobs, {args.loss:.0%} loss, "
          f"{delivered} messages delivered, {events_per_msg:.2f} engine events and "
          f"{actions / delivered:.2f} actions per message")
    print(f"{'CPU per delivered message':<44} {'us':>7} {'x null':>7}")
    for label, value in [
        ("null-core engine (bench_simnet baseline)", null_cpu),
        ("the whole run", us(run_cpu)),
        ("  inside core.handle", us(inside_cpu)),
        ("    of it: decode every delivered frame", us(dec)),
        ("    of it: encode every sent frame", us(enc) * sent / delivered),
        ("    of it: build the actions it returned", us(build)),
        ("    of it: the protocol's rules (the rest)", us(inside_cpu) - codec_us - us(build)),
        ("  around it (engine, network, store, checks)", us(run_cpu - inside_cpu)),
        ("floor: engine events + codec + actions", floor_us),
    ]:
        print(f"{label:<44} {value:>7.1f} {value / x:>7.1f}")
    print(f"goal: the whole run <= 6x the null core; the floor alone is {floor_us / x:.1f}x")
    if "calls_per_message" in out:
        calls = out["calls_per_message"]
        print("function calls per delivered message: "
              + ", ".join(f"{where} {n}" for where, n in calls.items()))


if __name__ == "__main__":
    main()
