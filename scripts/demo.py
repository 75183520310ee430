"""A guided tour of p2pnode: three real peers on this machine, a few jobs.

Starts three ``python -m p2pnode serve`` processes on 127.0.0.1 (one of them
labelled ``gpu=true``), runs sample jobs from ``scripts/demo-specs/`` through
the ordinary CLI (``job run --wait`` shows progress), prints what the CLI
reports about them, and stops the peers with SIGTERM whatever happens.

* a 3-slot batch job whose slots write output files, fetched with ``job get``;
* a job constrained to the label only one peer carries;
* a job that fails on purpose: retried, then failed with its reason;
* a Docker job, only when a Docker engine answers and the local image
  ``p2pnode-busybox:latest`` exists or can be built (it is never pulled).

Exit status 0 when every job behaved as expected.  ``make demo`` runs this.
Usage: ``python scripts/demo.py [--data-dir DIR] [--keep] [--no-docker]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "demo-specs"
sys.path.insert(0, str(REPO / "bench"))  # the shared loopback-cluster helpers
sys.path.insert(0, str(REPO))

from common import ClusterError, LoopbackCluster, child_env, exit_on_sigterm  # noqa: E402

BUSYBOX_IMAGE = "p2pnode-busybox:latest"
EXIT_NOT_COMPLETED = 4  # `job run --wait` when the job failed (p2pnode/cli/common.py)
PEER_LABELS = ["zone=a", "zone=b", "zone=c,gpu=true"]  # only peer 2 has gpu=true


def say(text: str = "") -> None:
    print(text, flush=True)  # flush: the CLI children write to the same terminal


def step(title: str) -> None:
    say()
    say(f"=== {title}")


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


class Demo:
    def __init__(self, cluster: LoopbackCluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work
        self.problems: list[str] = []

    def cli(self, node: int, *args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
        """``python -m p2pnode --data-dir <peer> ...``.  Progress (stderr) goes
        straight to the terminal; stdout is captured so the demo can indent it
        and pick the job id out of it."""
        cmd = [sys.executable, "-m", "p2pnode", "--data-dir", str(self.data_dir(node)), *args]
        say(f"$ p2pnode --data-dir {self.data_dir(node).name} {' '.join(args)}")
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE if capture else None,
            text=True,
            env=child_env(),
            cwd=str(REPO),
            timeout=180,
        )
        if capture and proc.stdout:
            say(indent(proc.stdout))
        return proc

    def data_dir(self, node: int) -> Path:
        return self.cluster.nodes[node].data_dir

    def expect(self, ok: bool, what: str) -> None:
        say(f"  [{'ok' if ok else 'UNEXPECTED'}] {what}")
        if not ok:
            self.problems.append(what)

    def describe(self, node: int, job_id: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "p2pnode", "--data-dir", str(self.data_dir(node)), "-o",
             "json", "job", "describe", job_id],
            capture_output=True, text=True, env=child_env(), cwd=str(REPO), timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"job describe {job_id} failed: {proc.stderr.strip()}")
        return dict(json.loads(proc.stdout))

    def run_job(self, node: int, spec: str) -> tuple[str, int]:
        """Submit ``spec`` to peer ``node`` and wait; returns (job id, exit code)."""
        # Relative to the repo (the CLI's cwd): shorter to read in the narration.
        proc = self.cli(node, "job", "run", str((SPECS / spec).relative_to(REPO)), "--wait")
        first = (proc.stdout or "").split("\n", 1)[0].strip()
        if not first.startswith("j-"):
            raise RuntimeError(f"`job run {spec}` printed no job id (exit {proc.returncode})")
        return first, proc.returncode

    def show_outputs(self, node: int, job_id: str, name: str) -> list[Path]:
        out = self.work / "outputs" / name
        self.cli(node, "job", "get", job_id, "--output-dir", str(out))
        files = sorted(p for p in out.rglob("*") if p.is_file())
        for path in files:
            say(f"  {path.relative_to(out)}: {path.read_text(errors='replace').strip()}")
        return files

    # --- the scenes -------------------------------------------------------------------

    def network(self) -> None:
        step("The network, as peer 0 sees it")
        self.cli(0, "node", "list")
        peers = {n.index: n.addrs for n in self.cluster.nodes}
        say(f"  three peers, each its own process; peer 0 listens on {peers[0][0]}")

    def batch(self) -> None:
        step("1. A batch job with 3 slots, submitted to peer 0 (its owner)")
        say("   The owner auctions each slot, leases it to a bidder, and collects results.")
        job_id, code = self.run_job(0, "batch3.yaml")
        self.expect(code == 0, "the 3-slot batch job completed")
        self.cli(0, "job", "describe", job_id)
        say("  outputs, fetched from whichever peers ran the slots (hash-verified):")
        files = self.show_outputs(0, job_id, "batch")
        self.expect(len(files) == 3, f"3 output files fetched (got {len(files)})")
        say("  captured stdout of each slot:")
        self.cli(0, "job", "logs", job_id)

    def constrained(self) -> None:
        step("2. A job only the peer labelled gpu=true may run")
        gpu_id = self.peer_id(2)
        say(f"   Submitted to peer 0; only peer 2 ({gpu_id[-12:]}) carries gpu=true.")
        job_id, code = self.run_job(0, "gpu-only.yaml")
        self.expect(code == 0, "the constrained job completed")
        view = self.describe(0, job_id)
        ran_on = {e["node"] for s in view["slots"] for e in s["executions"]}
        self.expect(ran_on == {gpu_id}, "it ran on peer 2 and nowhere else")
        self.show_outputs(0, job_id, "gpu-only")

    def failing(self) -> None:
        step("3. A job that fails on purpose (EXPECTED FAILURE)")
        say("   It exits 3 on every try: the owner retries once, then fails the job.")
        say("   `job run --wait` therefore exits 4 and explains why; that is the point.")
        job_id, code = self.run_job(1, "always-fails.yaml")
        self.expect(code == EXIT_NOT_COMPLETED, f"`job run` exited {code} (4 = not completed)")
        view = self.describe(1, job_id)
        tries = [e for s in view["slots"] for e in s["executions"]]
        say(f"  reason: {view.get('reason')}")
        self.expect(view["state"] == "failed", "the job is failed")
        self.expect(len(tries) == 2, f"it was tried twice (retry.attempts: 2), got {len(tries)}")
        self.expect("exit" in str(view.get("reason", "")), "the reason names the exit code")
        self.cli(1, "job", "describe", job_id)
        say("  the task's stderr, as the owner recorded it:")
        self.cli(1, "job", "logs", job_id)

    def docker(self) -> None:
        step("4. A Docker job (local busybox image)")
        job_id, code = self.run_job(2, "docker-busybox.yaml")
        self.expect(code == 0, "the Docker job completed")
        self.cli(2, "job", "describe", job_id)
        files = self.show_outputs(2, job_id, "docker")
        self.expect(len(files) == 1, "its output file was fetched")
        self.cli(2, "job", "logs", job_id)

    def chain(self) -> None:
        step("5. A chain: each stage handed over to the peer that ran the previous one")
        say("   No orchestrator: ownership moves with the data, by signed handover records.")
        job_id, code = self.run_job(0, "chain3.yaml")
        self.expect(code == 0, "the 3-stage chain completed")
        self.cli(0, "job", "describe", job_id)
        view = self.describe(0, job_id)
        self.expect(view["chain"]["log_verified"] == "ok", "its record log verifies")
        files = self.show_outputs(0, job_id, "chain")
        text = files[0].read_text() if files else ""
        self.expect(text == "RAW\nloaded\n", "the last stage's output is the transformed data")

    def daemon(self) -> None:
        step("6. A daemon: one execution on every peer, until stopped")
        proc = self.cli(0, "job", "run", str((SPECS / "daemon.yaml").relative_to(REPO)))
        job_id = (proc.stdout or "").split("\n", 1)[0].strip()
        deadline = time.monotonic() + 60
        live = 0
        while time.monotonic() < deadline and live < 3:
            live = int(self.describe(0, job_id).get("live", 0))
            time.sleep(0.5)
        self.expect(live == 3, f"it runs on all 3 peers (live {live})")
        self.cli(0, "job", "describe", job_id)
        self.cli(0, "job", "stop", job_id)

    def peer_id(self, node: int) -> str:
        return self.cluster.nodes[node].addrs[0].rsplit("/p2p/", 1)[1]


# --- Docker availability --------------------------------------------------------------


def docker_ready(work: Path) -> tuple[bool, str]:
    """Whether the docker executor can be offered: an engine answers and the
    busybox image is present or can be built locally.  Never pulls."""
    if shutil.which("docker") is None:
        return False, "no docker command"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`docker info` failed: {exc}"
    if info.returncode != 0:
        return False, "no Docker engine answers (`docker info` failed)"
    inspect = subprocess.run(
        ["docker", "image", "inspect", BUSYBOX_IMAGE], capture_output=True, timeout=20
    )
    if inspect.returncode == 0:
        return True, f"engine up, image {BUSYBOX_IMAGE} present"
    say(f"building {BUSYBOX_IMAGE} locally from Debian's busybox-static (no pull)...")
    try:
        import docker

        # The same builder the tests and bench_docker.py use (tests/ needs pytest,
        # a dev dependency `make venv` installs).
        from tests.conftest import ImageBuildError, ensure_busybox_image

        client = docker.from_env(timeout=30)
        try:
            build_dir = work / "busybox-build"
            build_dir.mkdir(parents=True, exist_ok=True)
            ensure_busybox_image(client, build_dir)
        finally:
            client.close()
    except (ImportError, ImageBuildError, subprocess.SubprocessError, OSError) as exc:
        return False, f"cannot build {BUSYBOX_IMAGE}: {exc}"
    except Exception as exc:  # the docker SDK raises its own types
        return False, f"cannot build {BUSYBOX_IMAGE}: {exc}"
    return True, f"engine up, image {BUSYBOX_IMAGE} built"


# --- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="where the peers keep their state")
    parser.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker job")
    args = parser.parse_args()
    exit_on_sigterm()

    if args.data_dir:
        if args.data_dir.exists():  # a fresh network each time: old state would confuse it
            shutil.rmtree(args.data_dir)
        work = args.data_dir.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="p2pnode-demo-"))
    work.mkdir(parents=True, exist_ok=True)

    say("p2pnode demo: a peer-to-peer compute network with no orchestrator")
    if args.no_docker:
        use_docker, why = False, "--no-docker"
    else:
        use_docker, why = docker_ready(work)
    executors = "process,docker" if use_docker else "process"
    say(f"Docker: {'yes' if use_docker else 'skipped'} ({why})")

    step("Starting 3 peers on 127.0.0.1, each its own `p2pnode serve` process")
    for i, labels in enumerate(PEER_LABELS):
        say(f"  peer {i}: labels {labels}, executors {executors}")
    try:
        with LoopbackCluster(
            len(PEER_LABELS), executors=executors, labels=PEER_LABELS, root=work / "peers"
        ) as cluster:
            say("  all three peers are up and know each other")
            say(f"  (data dirs and logs under {cluster.root})")
            demo = Demo(cluster, work)
            demo.network()
            demo.batch()
            demo.constrained()
            demo.failing()
            if use_docker:
                demo.docker()
            demo.chain()
            demo.daemon()
            step("Stopping the peers (SIGTERM)")
        say("  all peers stopped")
    except ClusterError as exc:
        say(f"\nthe peers could not start: {exc}")
        return 1
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        say(f"\ndemo aborted: {exc} (the peers were stopped)")
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted; the peers were stopped")
        return 130
    except SystemExit:  # SIGTERM (exit_on_sigterm): the with block stopped the peers
        say("\nterminated; the peers were stopped")
        raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"state kept in {work}")

    say()
    if demo.problems:
        say(f"demo finished with {len(demo.problems)} unexpected result(s):")
        for problem in demo.problems:
            say(f"  - {problem}")
        return 1
    say("demo finished: every job behaved as expected (the failure in 3. was intended)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
