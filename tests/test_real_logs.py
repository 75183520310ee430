"""Live logs, times and history over real ``p2pnode serve`` processes.

The owner computes nothing, so a job's output really travels holder -> owner
as ``log_chunk`` messages while it runs, and its complete log is fetched from
the holder's blob store after the end.  A gate file holds the task back, so
"shown before the end" is a fact of the test, not a timing.
"""

from __future__ import annotations

import queue
import signal
import threading
from pathlib import Path
from typing import IO

import pytest

from tests.realnet import Cluster, ServeNode, cluster, spawn_cli

pytestmark = pytest.mark.slow

LINES = 600  # ~30 KiB of stdout: more than the 16 KiB tails of a result
FOLLOW_WAIT = 120.0


def _line(i: int) -> str:
    return f"line {i:04d} " + "." * 38 + "\n"


def _spec(tmp: Path, gate: Path) -> Path:
    script = (
        "echo first-line; echo err-line >&2; "
        f"while [ ! -f {gate} ]; do sleep 0.1; done; "
        f'i=0; while [ $i -lt {LINES} ]; do printf "line %04d %s\\n" $i '
        f'"{"." * 38}"; i=$((i+1)); done; echo last-line'
    )
    spec = tmp / "chatty.yaml"
    spec.write_text(
        "name: chatty\n"
        "task:\n"
        f"  engine: {{type: process, command: [sh, -c, '{script}']}}\n"
        "  resources: {cpu: 0.1, memory: 64MiB}\n"
        "  timeout: 2m\n"
    )
    return spec


def _two_nodes(c: Cluster) -> tuple[ServeNode, ServeNode]:
    owner = c.add("a", executors="")
    owner.wait_ready()
    holder = c.add("b", bootstrap=[owner.addrs[0]], extra=["--sandbox", "none"])
    holder.wait_ready()
    c.wait_connected([owner, holder])
    return owner, holder


def _reader(stream: IO[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_logs_follow_tail_complete_times_and_history(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    expected = "first-line\n" + "".join(_line(i) for i in range(LINES)) + "last-line\n"
    assert len(expected) > 16 * 1024
    with cluster(tmp_path) as c:
        owner, holder = _two_nodes(c)
        ran = owner.cli("job", "run", _spec(tmp_path, gate), "--id-only")
        assert ran.returncode == 0, ran.explain()
        job_id = ran.stdout.strip()

        # --follow shows the first line while the task is held at the gate.
        follow = spawn_cli("--data-dir", owner.data_dir, "job", "logs", job_id, "--follow")
        assert follow.stdout is not None
        lines = _reader(follow.stdout)
        first = lines.get(timeout=FOLLOW_WAIT)
        assert first == "first-line\n", (first, c.explain())
        assert not gate.exists() and follow.poll() is None  # the job cannot have ended
        running = owner.describe(job_id)
        assert running["state"] == "running" and running["finished_at"] is None
        assert running["started_at"] and running["submitted_at"] <= running["started_at"]
        # Without --follow, a running job's output so far (its live stream).
        now = owner.cli("job", "logs", job_id)
        assert now.returncode == 0 and now.stdout == "first-line\n", now.explain()

        gate.touch()
        rest = []
        while (line := lines.get(timeout=FOLLOW_WAIT)) is not None:
            rest.append(line)
        out = "".join(rest)
        assert follow.stderr is not None
        err = follow.stderr.read()
        assert follow.wait(timeout=FOLLOW_WAIT) == 0, (out, err, c.explain())
        assert first + out == expected  # every byte, in order, nothing twice
        assert "err-line" in err

        # After the end: the complete log (over the 16 KiB tail), from the holder's blob.
        full = owner.cli("job", "logs", job_id)
        assert full.returncode == 0, full.explain()
        assert full.stdout == expected and full.stderr == "err-line\n", full.explain()
        tail = owner.cli("job", "logs", job_id, "--tail", "3")
        assert tail.stdout == _line(LINES - 2) + _line(LINES - 1) + "last-line\n", tail.explain()
        as_json = owner.cli("-o", "json", "job", "logs", job_id).json()["items"]
        assert [(r["slot"], r["stdout"], r["stderr"]) for r in as_json] == [
            (0, expected, "err-line\n")
        ]
        bad_tail = owner.cli("job", "logs", job_id, "--tail", "-1")
        assert bad_tail.returncode == 2 and "--tail" in bad_tail.stderr, bad_tail.explain()

        # Times on the job, its slot and its execution; in list and executions views.
        view = owner.describe(job_id)
        for part in (view, view["slots"][0], view["slots"][0]["executions"][0]):
            assert part["started_at"] and part["finished_at"], part
            assert part["duration_s"] is not None and part["duration_s"] >= 0, part
        assert view["submitted_at"] <= view["started_at"] <= view["finished_at"]
        described = owner.cli("job", "describe", job_id)
        assert f"finished:  {view['finished_at']}" in described.stdout, described.explain()
        rows = owner.cli("-o", "json", "job", "executions", job_id).json()["items"]
        assert [(r["started_at"], r["finished_at"]) for r in rows] == [
            (view["slots"][0]["executions"][0]["started_at"], view["finished_at"])
        ], rows  # (the result ends the execution and the job in one step)
        listed = owner.cli("-o", "json", "job", "list").json()["items"]
        assert [j["finished_at"] for j in listed if j["job_id"] == job_id] == [view["finished_at"]]

        # History: the timeline as the owner saw it.
        history = owner.cli("-o", "json", "job", "history", job_id)
        assert history.returncode == 0, history.explain()
        events = history.json()["items"]
        names = [e["event"] for e in events]
        assert names == ["submitted", "auctioned", "leased", "started", "result", "completed"]
        leased = events[2]
        assert leased["node"] == holder.node_id and leased["slot"] == 0
        assert [e["at_ms"] for e in events] == sorted(e["at_ms"] for e in events)
        table = owner.cli("job", "history", job_id)
        assert table.stdout.split()[:5] == ["TIME", "EVENT", "NODE", "SLOT", "DETAIL"]
        assert holder.node_id[-12:] in table.stdout and holder.node_id not in table.stdout

        for command in ("history", "logs"):
            unknown = owner.cli("job", command, "j-0000000000000000")
            assert unknown.returncode == 5 and "j-0000000000000000" in unknown.stderr, command


def test_follow_exits_4_for_a_failed_job_and_history_shows_a_lost_holder(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as c:
        owner = c.add("a", executors="")
        owner.wait_ready()
        b = c.add("b", bootstrap=[owner.addrs[0]])
        d = c.add("d", bootstrap=[owner.addrs[0]])
        b.wait_ready()
        d.wait_ready()
        c.wait_connected([owner, b, d])

        failing = tmp_path / "failing.yaml"
        failing.write_text(
            "name: failing\n"
            "task:\n"
            "  engine: {type: process, command: [sh, -c, 'echo doomed; exit 3']}\n"
            "  resources: {cpu: 0.1, memory: 64MiB}\n"
            "  retry: {attempts: 1}\n"
        )
        ran = owner.cli("job", "run", failing, "--id-only")
        followed = owner.cli("job", "logs", ran.stdout.strip(), "--follow")
        assert followed.returncode == 4, followed.explain()
        assert followed.stdout == "doomed\n", followed.explain()

        slow = tmp_path / "slow.yaml"
        slow.write_text(
            "name: slow\n"
            "task:\n"
            "  engine: {type: process, command: [sh, -c, 'sleep 4; echo survived']}\n"
            "  resources: {cpu: 0.1, memory: 64MiB}\n"
            "  timeout: 2m\n"
        )
        ran = owner.cli("job", "run", slow, "--id-only")
        job_id = ran.stdout.strip()
        view = c.wait_job(
            owner,
            job_id,
            lambda v: any(e["state"] == "running" for s in v["slots"] for e in s["executions"]),
            timeout=60,
            what="running",
        )
        victim_id = view["slots"][0]["executions"][-1]["node"]
        victim = b if victim_id == b.node_id else d
        victim.signal(signal.SIGKILL)
        victim.wait_exit()
        c.wait_job(owner, job_id, lambda v: v["state"] == "completed", timeout=120, what="done")

        events = owner.cli("-o", "json", "job", "history", job_id).json()["items"]
        names = [e["event"] for e in events]
        lost = names.index("lost")
        assert events[lost]["node"] == victim_id and events[lost]["slot"] == 0, events
        assert names[lost + 1] == "retried", names
        assert names.count("leased") == 2 and names[-1] == "completed", names
        survivor = (d if victim is b else b).node_id
        assert events[names.index("leased", lost)]["node"] == survivor, events
        logs = owner.cli("job", "logs", job_id)
        assert logs.stdout == "survived\n", logs.explain()


def test_follow_from_a_node_that_does_not_own_the_job(tmp_path: Path) -> None:
    # The holder's CLI follows a job the other node owns: the owner is asked
    # for snapshots over the network, and every byte shows once, in order.
    gate = tmp_path / "gate"
    expected = "first-line\n" + "".join(_line(i) for i in range(LINES)) + "last-line\n"
    with cluster(tmp_path) as c:
        owner, other = _two_nodes(c)
        ran = owner.cli("job", "run", _spec(tmp_path, gate), "--id-only")
        assert ran.returncode == 0, ran.explain()
        job_id = ran.stdout.strip()
        follow = spawn_cli("--data-dir", other.data_dir, "job", "logs", job_id[:10], "--follow")
        assert follow.stdout is not None and follow.stderr is not None
        lines = _reader(follow.stdout)
        first = lines.get(timeout=FOLLOW_WAIT)
        assert first == "first-line\n", (first, c.explain())
        assert follow.poll() is None  # held at the gate: the job cannot have ended
        gate.touch()
        rest = []
        while (line := lines.get(timeout=FOLLOW_WAIT)) is not None:
            rest.append(line)
        err = follow.stderr.read()
        assert follow.wait(timeout=FOLLOW_WAIT) == 0, ("".join(rest), err, c.explain())
        assert first + "".join(rest) == expected
        assert "err-line" in err
