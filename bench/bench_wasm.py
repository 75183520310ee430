"""Cost of a trivial WASM job in the executor, against a trivial process run.

Runs N times, alternating so drift on the machine hits every variant alike:
(a) ``ProcessExecutor.run`` of ``sh -c 'echo ...; echo ... > $P2PNODE_OUTPUTS/x'``;
(b) ``WasmExecutor.run`` of ``specs/wasm/hello.wat`` (WAT text: parsed, compiled);
(c) the same module as a WebAssembly binary (compiled only).
Both write one line to stdout and one output file; each run includes the
workdir, the output manifest and the cleanup.  Prints medians and the ratios
(b)/(a) and (c)/(a).  Usage: ``python bench/bench_wasm.py [-n 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import wasmtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the repo's packages importable

from p2pnode.blobs import BlobStore  # noqa: E402
from p2pnode.executors.process import ProcessExecutor  # noqa: E402
from p2pnode.executors.wasm import WasmExecutor  # noqa: E402
from protocols.events import StartExecution  # noqa: E402

HELLO = REPO / "specs" / "wasm" / "hello.wat"
SCRIPT = 'echo hello from wasm; echo hello from wasm > "$P2PNODE_OUTPUTS/hello.txt"'


async def _timed(executor: Any, task: dict[str, Any], i: int) -> float:
    start = StartExecution(f"bench-{i}", "bench", 0, task, {}, 60.0)
    t0 = time.perf_counter()
    result = await executor.run(start)
    elapsed = time.perf_counter() - t0
    assert result.status == "succeeded", result
    assert result.stdout_tail == "hello from wasm\n", result
    return elapsed


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[max(0, round(0.9 * len(ordered)) - 1)]
    return (f"{name:<34} median {statistics.median(samples) * 1000:7.1f} ms   "
            f"min {ordered[0] * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms")


async def _main(n: int, warmup: int) -> int:
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        blobs = BlobStore(data_dir)
        process = ProcessExecutor(data_dir, blobs, max_output_bytes=2**30)
        wasm = WasmExecutor(data_dir, blobs, max_output_bytes=2**30)
        text_id = blobs.put_bytes(HELLO.read_bytes())
        binary_id = blobs.put_bytes(bytes(wasmtime.wat2wasm(HELLO.read_text())))
        variants = {
            "(a) process: sh -c echo": {"engine": {"type": "process", "command": ["sh", "-c",
                                                                                  SCRIPT]}},
            "(b) wasm: hello.wat (WAT text)": {"engine": {"type": "wasm", "module": text_id}},
            "(c) wasm: hello.wasm (binary)": {"engine": {"type": "wasm", "module": binary_id}},
        }
        executors = [process, wasm, wasm]
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(warmup + n):
            for (name, task), executor in zip(variants.items(), executors, strict=True):
                elapsed = await _timed(executor, task, i)
                if i >= warmup:
                    samples[name].append(elapsed)
    print(f"a trivial job in its executor, N={n} each (after {warmup} warm-up runs), alternating")
    for name, values in samples.items():
        print(_summary(name, values))
    base = statistics.median(samples["(a) process: sh -c echo"])
    b = statistics.median(samples["(b) wasm: hello.wat (WAT text)"]) / base
    c = statistics.median(samples["(c) wasm: hello.wasm (binary)"]) / base
    print(f"ratio (b)/(a) of medians: {b:.2f}")
    print(f"ratio (c)/(a) of medians: {c:.2f}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="runs of each variant")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    sys.exit(trio.run(_main, args.n, args.warmup))


if __name__ == "__main__":
    main()
