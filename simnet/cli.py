"""``python -m simnet run|sweep``: the simulator's command line (a contract:
other tools parse ``run --output json`` and the sweep's reproduce lines)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from simnet import report as html_report
from simnet.recorder import RunRecorder
from simnet.runner import RunOptions, run_recorded, run_scenario
from simnet.timings import TIMINGS_MODES
from simnet.workload import WORKLOADS

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """``"1h"``, ``"30m"``, ``"1h30m"``, ``"90s"``, ``"500ms"``, ``"120"`` (s)."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"bad duration {text!r} (e.g. 1h, 30m, 90s, 500ms)")
    return total


class _Duration(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Seeds(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "A..B"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[int]:
        text = str(value).strip()
        try:
            if ".." in text:
                a, b = text.split("..", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                return list(range(lo, hi + 1))
            return [int(s) for s in text.split(",")]
        except ValueError:
            self.fail(f"bad seed range {text!r} (A..B inclusive, or a,b,c)", param, ctx)


DURATION = _Duration()
_PROB = click.FloatRange(0.0, 1.0)


def _run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``run`` and ``sweep`` (kept in one place so the
    reproduce line of a sweep is always a valid ``run`` command)."""
    opts = [
        click.option("--nodes", type=click.IntRange(1), default=20, show_default=True,
                     help="Number of simulated nodes."),
        click.option("--jobs", type=click.IntRange(0), default=100, show_default=True,
                     help="Number of batch jobs in the workload."),
        click.option("--loss", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a frame copy is dropped."),
        click.option("--duplicate", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a frame is delivered twice."),
        click.option("--reorder", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a frame gets an extra delay (up to 250 ms)."),
        click.option("--crash-rate", type=click.FloatRange(0.0), default=0.0,
                     show_default=True,
                     help="Expected crashes PER NODE PER VIRTUAL MINUTE during the fault "
                          "phase; a crashed node restarts after 5-60 s (seeded)."),
        click.option("--partition-rate", type=click.FloatRange(0.0), default=0.0,
                     show_default=True,
                     help="Expected partitions PER CLUSTER PER VIRTUAL MINUTE; each isolates "
                          "1..N/2 random nodes for 5-60 s (one at a time)."),
        click.option("--duration", type=DURATION, default="1h", show_default=True,
                     help="Fault phase length in virtual time (ends early when all jobs "
                          "are terminal); then a fault-free drain."),
        click.option("--submit-window", type=DURATION, default="60s", show_default=True,
                     help="Jobs are submitted at seeded times over this virtual window."),
        click.option("--drain", type=DURATION, default="30m", show_default=True,
                     help="Longest fault-free drain after the fault phase."),
        click.option("--max-events", type=click.IntRange(1), default=None,
                     help="Livelock backstop: fail the run after this many events "
                          "[default: 20,000 + 2,000 x (units of work + nodes), a chain "
                          "stage or DAG task each a unit; more for long-running kinds]."),
        click.option("--workload", type=click.Choice(sorted(WORKLOADS)), default="mixed",
                     show_default=True,
                     help="mixed: healthy, flaky, failing, hanging and long jobs; "
                          "plain: healthy 1-10 s jobs only; kinds: daemons, services, cron "
                          "jobs (every overlap policy) and ops jobs among mixed batch jobs "
                          "(runs the whole --duration, then checks the steady state); "
                          "stream: consume and micro-batch streams over finite simulated "
                          "sources (long-running, like kinds); chain: chains of 5-20 stages; "
                          "dag: fan-out/fan-in DAGs with when: failed/always tasks."),
        click.option("--frame-crash", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a node sending a handover frame (offer, accept, "
                          "commit, ack) crashes right before or after it leaves (fault phase; "
                          "it restarts after 2-30 s): crashes at every step of a handover."),
        click.option("--joiners", type=click.IntRange(0), default=None,
                     help="Nodes that start only after the submit window (they join running "
                          "daemons) [default: 0; max(1, nodes // 10) for the kinds workload]."),
        click.option("--timings", type=click.Choice(TIMINGS_MODES), default="uniform",
                     show_default=True,
                     help="uniform: every node runs the default Timings; mixed: each node "
                          "draws its own lease ttl (1-20 s), grace, bid window, retransmission "
                          "pacing, ... from seeded ranges (heterogeneous peers)."),
        click.option("--latency-tail", type=_PROB, default=0.0, show_default=True,
                     help="Probability that a frame copy is held back 1-8 s (a latency tail "
                          "past the lease grace and a renewal period)."),
        click.option("--reorder-delay", type=DURATION, default="250ms", show_default=True,
                     help="Largest extra delay of a reordered copy (e.g. 5s: reordering on "
                          "the scale of lease renewals)."),
        click.option("--pause-rate", type=click.FloatRange(0.0), default=0.0,
                     show_default=True,
                     help="Expected pauses PER NODE PER VIRTUAL MINUTE (SIGSTOP / GC): a "
                          "node freezes 0.5-25 s, then resumes with stale timers and queued "
                          "frames."),
        click.option("--oneway-rate", type=click.FloatRange(0.0), default=0.0,
                     show_default=True,
                     help="Expected one-way link failures PER CLUSTER PER VIRTUAL MINUTE: "
                          "frames from one node to another are lost for 5-60 s while the "
                          "reverse direction works."),
        click.option("--clock-skew", type=click.FloatRange(0.0, 0.5), default=0.0,
                     show_default=True,
                     help="Each node's clock runs at its own seeded rate in 1 +- SKEW "
                          "(0.01: +-1 %)."),
        click.option("--byzantine", type=click.FloatRange(0.0, 1.0), default=0.0,
                     show_default=True,
                     help="Share of nodes that lie: forged grants, cancels and results, "
                          "replayed frames, stolen sender names, invented asks."),
        click.option("--calm-after", type=DURATION, default=None,
                     help="Calm mode: every fault (and loss, reordering, tails, pauses, "
                          "lies) stops at this virtual time; then every healthy job must "
                          "complete within --liveness-bound."),
        click.option("--liveness-bound", type=DURATION, default="300s", show_default=True,
                     help="Calm mode: how long healthy jobs get to complete once faults stop."),
        click.option("--output", type=click.Choice(["json", "table"]), default="table",
                     show_default=True),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _options(seed: int, kw: dict[str, Any]) -> RunOptions:
    return RunOptions(
        nodes=kw["nodes"], jobs=kw["jobs"], seed=seed, loss=kw["loss"],
        duplicate=kw["duplicate"], reorder=kw["reorder"], crash_rate=kw["crash_rate"],
        partition_rate=kw["partition_rate"], duration=kw["duration"],
        submit_window=kw["submit_window"], drain=kw["drain"], max_events=kw["max_events"],
        workload=kw["workload"], joiners=kw.get("joiners"),
        frame_crash=kw.get("frame_crash") or 0.0,
        timings=kw.get("timings") or "uniform",
        latency_tail=kw.get("latency_tail") or 0.0,
        reorder_delay=kw.get("reorder_delay", 0.25),
        pause_rate=kw.get("pause_rate") or 0.0,
        oneway_rate=kw.get("oneway_rate") or 0.0,
        clock_skew=kw.get("clock_skew") or 0.0,
        byzantine=kw.get("byzantine") or 0.0,
        calm_after=kw.get("calm_after"),
        liveness_bound=kw.get("liveness_bound", 300.0),
    )


def _fmt_seconds(s: float) -> str:
    return f"{s:g}s"


def reproduce_command(seed: int, kw: dict[str, Any]) -> str:
    args = ["python", "-m", "simnet", "run", "--nodes", str(kw["nodes"]),
            "--jobs", str(kw["jobs"]), "--seed", str(seed)]
    for name in ("loss", "duplicate", "reorder", "crash_rate", "partition_rate", "frame_crash",
                 "latency_tail", "pause_rate", "oneway_rate", "clock_skew", "byzantine"):
        if kw.get(name):
            args += [f"--{name.replace('_', '-')}", f"{kw[name]:g}"]
    if kw.get("reorder_delay", 0.25) != 0.25:
        args += ["--reorder-delay", _fmt_seconds(kw["reorder_delay"])]
    if kw.get("calm_after") is not None:
        args += ["--calm-after", _fmt_seconds(kw["calm_after"]),
                 "--liveness-bound", _fmt_seconds(kw.get("liveness_bound", 300.0))]
    for name in ("duration", "submit_window", "drain"):
        args += [f"--{name.replace('_', '-')}", _fmt_seconds(kw[name])]
    if kw.get("max_events"):
        args += ["--max-events", str(kw["max_events"])]
    if kw.get("workload", "mixed") != "mixed":
        args += ["--workload", kw["workload"]]
    if kw.get("joiners") is not None:
        args += ["--joiners", str(kw["joiners"])]
    if kw.get("timings", "uniform") != "uniform":
        args += ["--timings", kw["timings"]]
    args += ["--output", "json"]
    return shlex.join(args)


def passed(report: dict[str, Any]) -> bool:
    return not report["invariant_violations"] and report["lost"] == 0


def _print_table(report: dict[str, Any]) -> None:
    keys = ["seed", "nodes", "jobs", "completed", "failed", "stopped", "lost",
            "messages_sent", "messages_delivered", "messages_per_job", "job_messages_per_job",
            "directory_messages", "crashes", "partitions", "pauses", "byzantine_frames",
            "executions", "events", "event_budget",
            "virtual_seconds", "wall_seconds", "peak_memory_mb", "trace_hash"]
    for key in keys:
        click.echo(f"{key:22} {report[key]}")
    for group in ("kinds", "stream", "chain", "dag"):
        for key, value in (report.get(group) or {}).items():
            click.echo(f"{group + '.' + key:26} {value}")
    violations = report["invariant_violations"]
    click.echo(f"{'invariant_violations':22} {len(violations)}")
    for v in violations:
        click.echo(f"  - {v}")


@click.group()
def main() -> None:
    """Deterministic discrete-event simulator of a p2pnode network."""


@main.command()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything.")
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Also write a self-contained HTML page with plots of the run (jobs by "
                   "state over time, latency, messages per job by type, faults). A path "
                   "that cannot be written exits 2 before the run.")
@_run_options
def run(seed: int, output: str, report_path: str | None, **kw: Any) -> None:
    """Run a batch workload once; exit 1 on a violation or a lost job (2: bad usage,
    or the --report page could not be written)."""
    if report_path is not None:
        why = html_report.check_writable(report_path)
        if why is not None:
            click.echo(f"simnet: cannot write --report {report_path}: {why}", err=True)
            sys.exit(2)
        report, recorder = run_recorded(_options(seed, kw))
    else:
        report = run_scenario(_options(seed, kw))
    if output == "json":
        click.echo(json.dumps(report, sort_keys=False))
    else:
        _print_table(report)
    if report_path is not None:
        # The run's output above stands even when its page cannot be written.
        failed_write = _write_report(report_path, report, recorder, seed, kw)
        if failed_write is not None:
            click.echo(f"simnet: cannot write --report {report_path}: {failed_write} "
                       f"(run {'passed' if passed(report) else 'failed'})", err=True)
            sys.exit(2)
    sys.exit(0 if passed(report) else 1)


def _write_report(path: str, report: dict[str, Any], recorder: RunRecorder, seed: int,
                  kw: dict[str, Any]) -> str | None:
    """Write the run's page; the reason it could not be written, or None."""
    page = html_report.render(report, recorder, reproduce_command(seed, kw), passed(report))
    try:
        html_report.write(path, page)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def _sweep_report(folder: str, seed: int, kw: dict[str, Any]) -> str:
    """Run a failing seed again, recorded (the same run: it is a function of
    its seed), and write its page into ``folder``: the page's path, or why not."""
    path = os.path.join(folder, f"seed-{seed}.html")
    try:
        report, recorder = run_recorded(_options(seed, kw))
    except Exception as exc:
        return f"no report: simnet raised {exc!r}"
    failed_write = _write_report(path, report, recorder, seed, kw)
    return path if failed_write is None else f"no report: {failed_write}"


def _sweep_one(args: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    seed, kw = args
    try:
        report = run_scenario(_options(seed, kw))
    except Exception as exc:  # a harness bug must not kill the whole sweep
        return {"seed": seed, "ok": False, "violations": [f"simnet raised {exc!r}"],
                "lost": 0, "wall": 0.0}
    measured = {**(report.get("kinds") or {}), **(report.get("stream") or {}),
                **(report.get("chain") or {})}
    return {"seed": seed, "ok": passed(report), "violations": report["invariant_violations"],
            "lost": report["lost"], "wall": report["wall_seconds"],
            "trace_hash": report["trace_hash"], "kinds": measured}


_WORST_KEYS = ("join_latency_max", "join_latency_max_any", "service_recovery_max",
               "daemon_recovery_max", "deficit_max", "fencing_max", "takeover_latency_max",
               "consume_duplicates", "micro_duplicate_entries")


def _keep_worst(worst: dict[str, list[Any]], res: dict[str, Any]) -> None:
    """Keep the largest measured latency (virtual s) or count of each kind over the sweep."""
    measured = res.get("kinds") or {}
    for key in _WORST_KEYS:
        value = measured.get(key)
        if isinstance(value, list | tuple):  # (seconds, job, time)
            value = value[0]
        if isinstance(value, int | float) and value > worst.get(key, [-1.0])[0]:
            worst[key] = [value, res["seed"]]


@main.command()
@click.option("--seeds", "seeds", type=_Seeds(), required=True,
              help="Seed range A..B (inclusive) or a comma list.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Worker processes (each seed runs alone in one worker).")
@click.option("--report", "report_dir", type=click.Path(), default=None,
              help="Write the HTML page of every failing seed into this directory "
                   "(seed-N.html; created if its parent exists).")
@_run_options
def sweep(seeds: list[int], workers: int, output: str, report_dir: str | None,
          **kw: Any) -> None:
    """Run many seeds; print each failing seed with the command reproducing it."""
    if report_dir is not None:
        why = html_report.check_folder(report_dir)
        if why is not None:
            click.echo(f"simnet: cannot write --report {report_dir}: {why}", err=True)
            sys.exit(2)
        os.makedirs(report_dir, exist_ok=True)
    t0 = time.perf_counter()
    failures: list[dict[str, Any]] = []
    done = 0
    last = 0.0
    tasks = [(s, kw) for s in seeds]
    worst: dict[str, list[Any]] = {}  # measured kinds latencies: name -> [value, seed]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        for res in pool.imap(_sweep_one, tasks, chunksize=1):
            done += 1
            _keep_worst(worst, res)
            if not res["ok"]:
                failures.append(res)
                if output == "table":
                    first = res["violations"][0] if res["violations"] else f"lost {res['lost']}"
                    click.echo(f"FAIL seed {res['seed']}: {first.splitlines()[0]}")
                    click.echo(f"  reproduce: {reproduce_command(res['seed'], kw)}")
            now = time.perf_counter()
            if now - last > 1.0 or done == len(tasks):
                last = now
                click.echo(f"[{done}/{len(tasks)}] failed={len(failures)} "
                           f"elapsed={now - t0:.1f}s", err=True)
    pages: dict[int, str] = {}  # failing seed -> its page (or why there is none)
    for res in failures if report_dir is not None else []:
        assert report_dir is not None
        pages[res["seed"]] = _sweep_report(report_dir, res["seed"], kw)
        if output == "table":
            click.echo(f"report seed {res['seed']}: {pages[res['seed']]}")
    wall = time.perf_counter() - t0
    if output == "json":
        summary: dict[str, Any] = {
            "seeds": len(seeds), "failed": len(failures), "wall_seconds": round(wall, 2),
            "failures": [{"seed": f["seed"], "violations": f["violations"][:3],
                          "lost": f["lost"], "reproduce": reproduce_command(f["seed"], kw),
                          **({"report": pages[f["seed"]]} if f["seed"] in pages else {})}
                         for f in failures],
        }
        if worst:
            summary["kinds_worst"] = {k: {"value": v, "seed": s} for k, (v, s) in worst.items()}
        click.echo(json.dumps(summary))
    else:
        for name, (value, seed) in sorted(worst.items()):
            unit = "" if "duplicate" in name else "s"
            click.echo(f"worst {name}: {value}{unit} (seed {seed})")
        click.echo(f"{len(seeds)} seeds, {len(failures)} failed, {wall:.1f}s wall")
    sys.exit(1 if failures else 0)
