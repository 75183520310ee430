"""Overhead of DockerExecutor over a bare SDK ``containers.run``.

Runs busybox ``echo hi`` N times (a) through ``client.containers.run(...,
remove=True)`` and (b) through ``DockerExecutor.run`` inside trio (image check,
workdir, limits, labels, logs tails, output manifest, removal), alternating a
and b so drift on the machine hits both alike.  Prints medians and the ratio
(b)/(a); the target is <= 1.5.

Needs a running Docker engine; builds the local ``p2pnode-busybox`` image if it
is missing (as the tests do).  Usage: ``python bench/bench_docker.py [-n 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the repo's packages importable

from p2pnode.blobs import BlobStore  # noqa: E402
from p2pnode.executors.docker import DockerExecutor  # noqa: E402
from protocols.events import StartExecution  # noqa: E402
from tests.conftest import ImageBuildError, ensure_busybox_image  # noqa: E402

TARGET_RATIO = 1.5


def _bare(client: Any, image: str) -> float:
    t0 = time.perf_counter()
    out = client.containers.run(image, ["echo", "hi"], remove=True)
    elapsed = time.perf_counter() - t0
    assert out == b"hi\n", out
    return elapsed


async def _executor(executor: DockerExecutor, image: str, i: int) -> float:
    task = {"engine": {"type": "docker", "image": image, "command": ["echo", "hi"],
                       "workdir": None}}
    start = StartExecution(f"bench-{i}", "bench", 0, task, {}, 60.0)
    t0 = time.perf_counter()
    result = await executor.run(start)
    elapsed = time.perf_counter() - t0
    assert result.status == "succeeded" and result.stdout_tail == "hi\n", result
    return elapsed


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[max(0, round(0.9 * len(ordered)) - 1)]
    return (f"{name:<28} median {statistics.median(samples) * 1000:7.1f} ms   "
            f"min {ordered[0] * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms")


async def _main(n: int, warmup: int) -> int:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as err:
        print(f"Docker engine unreachable: {err}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        try:
            image = ensure_busybox_image(client, Path(tmp) / "image")
        except ImageBuildError as err:
            print(f"cannot build the busybox image: {err}", file=sys.stderr)
            return 1
        data_dir = Path(tmp) / "data"
        executor = DockerExecutor(data_dir, BlobStore(data_dir), node_id="bench")
        bare: list[float] = []
        ours: list[float] = []
        for i in range(warmup + n):
            a = _bare(client, image)
            b = await _executor(executor, image, i)
            if i >= warmup:
                bare.append(a)
                ours.append(b)
        executor.close()
    client.close()
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"busybox `echo hi`, N={n} each (after {warmup} warm-up runs), alternating")
    print(_summary("(a) SDK containers.run", bare))
    print(_summary("(b) DockerExecutor.run", ours))
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"ratio (b)/(a) of medians: {ratio:.2f}  (target <= {TARGET_RATIO}: {verdict})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs of each variant")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    sys.exit(trio.run(_main, args.n, args.warmup))


if __name__ == "__main__":
    main()
