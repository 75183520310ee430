"""``python -m simnet run ... --report FILE.html``: the page and what it plots.

The page is read back with ``html.parser`` and each plot's data (the
``data-*`` attributes of its drawn elements) is held against the run's own
summary and the harness's record of the faults it injected.  The checks are
functions, so the planted-bug tests can show they fail on a wrong page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from simnet import report as html_report
from simnet.cli import passed, reproduce_command
from simnet.recorder import RunRecorder
from simnet.runner import RunOptions, run_recorded, run_scenario
from tests.simnetcli import run_simnet

# A small run with every kind of fault and some failing jobs (mixed workload).
FAULTY = ("--nodes", "10", "--jobs", "40", "--seed", "5", "--loss", "0.05",
          "--crash-rate", "0.3", "--partition-rate", "2", "--pause-rate", "0.3",
          "--oneway-rate", "2", "--calm-after", "90s")
FAULTY_OPTS = RunOptions(nodes=10, jobs=40, seed=5, loss=0.05, crash_rate=0.3,
                         partition_rate=2.0, pause_rate=0.3, oneway_rate=2.0, calm_after=90.0)


class Page(HTMLParser):
    """Every element with its attributes, and which ``<svg>`` it is inside."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.svgs: list[dict[str, str]] = []
        self.text: list[str] = []
        self._plot: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self.svgs.append(found)
            self._plot = found.get("data-plot")
        self.elements.append((tag, found, self._plot))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._plot = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def drawn(self, plot: str, cls: str) -> list[dict[str, str]]:
        return [a for _, a, p in self.elements if p == plot and cls in a.get("class", "").split()]


def check_page(page: Page) -> None:
    """Self-contained: one svg per plot, nothing loaded from anywhere."""
    assert [s.get("data-plot") for s in page.svgs] == ["jobs", "latency", "messages", "faults"]
    for tag, attrs, _ in page.elements:
        assert tag not in ("script", "link", "img", "iframe", "object"), tag
        for name in ("src", "href"):
            assert name not in attrs or attrs[name].startswith("#"), (tag, attrs)


def check_jobs(page: Page, summary: Mapping[str, Any]) -> None:
    """The states at the end of the jobs plot are the summary's counts."""
    final = {a["data-state"]: int(a["data-values"].split()[-1])
             for a in page.drawn("jobs", "area")}
    assert sum(final.values()) == summary["jobs"]
    for state in ("completed", "failed", "stopped"):
        assert final.get(state, 0) == summary[state], (state, final)


def check_latency(page: Page, summary: Mapping[str, Any]) -> None:
    """Every batch job that ended is in the histogram, under its final state."""
    counted: dict[str, int] = {}
    for a in page.drawn("latency", "bin"):
        counted[a["data-state"]] = counted.get(a["data-state"], 0) + int(a["data-count"])
    for state in ("completed", "failed", "stopped"):
        assert counted.get(state, 0) == summary[state], (state, counted)
    pct = [(a["data-pct"], float(a["data-value"])) for a in page.drawn("latency", "pct")]
    assert [name for name, _ in pct] == ["p50", "p90", "p99"]
    assert pct[0][1] <= pct[1][1] <= pct[2][1]


def check_messages(page: Page, summary: Mapping[str, Any]) -> None:
    """One bar per message type, each with the run's delivered and sent counters."""
    bars = {a["data-type"]: a for a in page.drawn("messages", "bar")}
    types = set(summary["delivered_by_type"]) | set(summary["sent_by_type"])
    assert set(bars) == types
    for mtype, bar in bars.items():
        assert int(bar["data-count"]) == summary["delivered_by_type"].get(mtype, 0)
        assert int(bar["data-sent"]) == summary["sent_by_type"].get(mtype, 0)
        per_job = summary["delivered_by_type"].get(mtype, 0) / max(1, summary["jobs"])
        assert float(bar["data-per-job"]) == pytest.approx(per_job, abs=0.001)


def check_header(page: Page, summary: Mapping[str, Any], command: str) -> None:
    text = " ".join(page.text)
    assert f"seed {summary['seed']}" in text
    assert ("PASS" if passed(dict(summary)) else "FAIL") in text
    assert summary["trace_hash"] in text
    assert command in text
    assert "wall_seconds" not in text and "peak_memory" not in text


def _render(summary: dict[str, Any], recorder: RunRecorder, seed: int = 5) -> Page:
    opts = summary["options"]
    kw = {**opts, "output": "json"}
    return Page(html_report.render(summary, recorder, reproduce_command(seed, kw),
                                   passed(summary)))


@pytest.fixture(scope="module")
def faulty_run() -> tuple[dict[str, Any], RunRecorder]:
    return run_recorded(FAULTY_OPTS)


# --- the CLI ---------------------------------------------------------------------------


def test_report_page_plots_what_the_run_reported(tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    summary = run_simnet("run", *FAULTY, "--output", "json", "--report", str(out))
    page = Page(out.read_text(encoding="utf-8"))
    check_page(page)
    check_jobs(page, summary)
    check_latency(page, summary)
    check_messages(page, summary)
    assert summary["failed"] > 0 and summary["crashes"] > 0  # the run covers them
    kw = {**summary["options"], "output": "json"}
    check_header(page, summary, reproduce_command(5, kw))


def test_a_report_leaves_the_trace_and_the_summary_unchanged(tmp_path: Path) -> None:
    plain = run_simnet("run", *FAULTY, "--output", "json")
    reported = run_simnet("run", *FAULTY, "--output", "json",
                          "--report", str(tmp_path / "r.html"))
    assert reported["trace_hash"] == plain["trace_hash"]
    for key in ("wall_seconds", "peak_memory_mb"):
        del plain[key], reported[key]
    assert reported == plain


def test_the_same_seed_gives_a_byte_identical_report(tmp_path: Path) -> None:
    pages = []
    for i, hashseed in enumerate(("0", "12345")):
        (tmp_path / str(i)).mkdir()
        out = tmp_path / str(i) / "report.html"
        run_simnet("run", *FAULTY, "--output", "json", "--report", str(out), hashseed=hashseed)
        pages.append(out.read_bytes())
    assert pages[0] == pages[1]
    other = tmp_path / "other.html"
    run_simnet("run", *FAULTY[:-4], "--seed", "6", "--calm-after", "90s", "--output", "json",
               "--report", str(other))
    assert other.read_bytes() != pages[0]


def _simnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simnet", *args], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("case", ["missing directory", "a directory", "parent is a file"])
def test_a_report_path_that_cannot_be_written_exits_2_before_the_run(
        tmp_path: Path, case: str) -> None:
    (tmp_path / "file").write_text("x")
    path = {"missing directory": tmp_path / "nowhere" / "r.html",
            "a directory": tmp_path,
            "parent is a file": tmp_path / "file" / "r.html"}[case]
    proc = _simnet("run", "--nodes", "3", "--jobs", "2", "--output", "json",
                   "--report", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""  # nothing ran
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"simnet: cannot write --report {path}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_report_that_fails_after_the_run_keeps_the_runs_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory vanishes during the run: the run's JSON (its verdict) is
    printed, one error line follows, exit 2, no partial file."""
    from click.testing import CliRunner

    from simnet import cli

    folder = tmp_path / "gone"
    folder.mkdir()

    def run_then_remove(opts: RunOptions) -> tuple[dict[str, Any], RunRecorder]:
        result = run_recorded(opts)
        shutil.rmtree(folder)
        return result

    monkeypatch.setattr(cli, "run_recorded", run_then_remove)
    result = CliRunner().invoke(cli.main, ["run", "--nodes", "3", "--jobs", "2", "--output",
                                           "json", "--report", str(folder / "r.html")])
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert summary["completed"] == 2 and summary["invariant_violations"] == []
    assert result.stderr.strip().splitlines() == [
        f"simnet: cannot write --report {folder / 'r.html'}: No such file or directory "
        f"(run passed)"]
    assert not folder.exists()


# --- the plots against the run, in process ---------------------------------------------------


def test_the_fault_timeline_is_the_list_of_injected_faults(
        faulty_run: tuple[dict[str, Any], RunRecorder]) -> None:
    summary, recorder = faulty_run
    page = _render(summary, recorder)
    marks = page.drawn("faults", "fault")
    kinds: dict[str, list[dict[str, str]]] = {}
    for mark in marks:
        kinds.setdefault(mark["data-kind"], []).append(mark)
    assert len(kinds["crash"]) == summary["crashes"] + summary["frame_crashes"] > 0
    assert len(kinds["partition"]) == summary["partitions"] > 0
    assert len(kinds["oneway"]) == summary["oneway_failures"] > 0
    # Pauses: exactly the harness's own record (from, until, node).
    pauses = sorted((float(m["data-t"]), float(m["data-end"]), m["data-nodes"])
                    for m in kinds["pause"])
    assert pauses == [(pytest.approx(a, abs=1e-3), pytest.approx(b, abs=1e-3), n)
                      for a, b, n in sorted(recorder.cluster.pauses)]
    assert len(pauses) > 0
    # Every crashed node came back: one restart per crash, never before it.
    assert len(kinds["restart"]) == len(kinds["crash"])
    for crash in kinds["crash"]:
        node, t = crash["data-nodes"], float(crash["data-t"])
        assert any(r["data-nodes"] == node and float(r["data-t"]) > t for r in kinds["restart"])
    # Loss is a band over the fault phase (calm mode: the network calms at 90 s).
    (network,) = kinds["network"]
    assert float(network["data-end"]) == pytest.approx(90.0)
    # No fault after the calm: every one starts in the fault phase (restarts may follow).
    assert all(float(m["data-t"]) <= 90.0 for k in ("crash", "partition", "oneway", "pause")
               for m in kinds[k])


def test_a_run_without_faults_still_draws_every_plot() -> None:
    summary, recorder = run_recorded(RunOptions(nodes=4, jobs=5, seed=1, workload="plain"))
    page = _render(summary, recorder, seed=1)
    check_page(page)
    check_jobs(page, summary)
    check_messages(page, summary)
    assert page.drawn("faults", "fault") == []
    assert "no fault injected" in " ".join(page.text)


def test_a_recorder_does_not_change_the_run() -> None:
    """In process too: the same report dict with and without the recorder."""
    opts = RunOptions(nodes=6, jobs=12, seed=9, loss=0.1, crash_rate=0.2, duplicate=0.1)
    plain = run_scenario(opts)
    recorded, _ = run_recorded(opts)
    for key in ("wall_seconds", "peak_memory_mb"):
        del plain[key], recorded[key]
    assert recorded == plain


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [html_report.percentile(values, p) for p in (50, 90, 99)] == [50.0, 90.0, 99.0]
    assert html_report.percentile([3.0], 99) == 3.0


# --- the checks catch planted bugs ---------------------------------------------------------


def test_a_plot_that_drops_a_state_is_caught(
        faulty_run: tuple[dict[str, Any], RunRecorder], monkeypatch: pytest.MonkeyPatch) -> None:
    summary, recorder = faulty_run
    check_jobs(_render(summary, recorder), summary)
    real = html_report.state_counts

    def without_failed(rec: RunRecorder) -> tuple[list[float], dict[str, list[int]]]:
        times, series = real(rec)
        series.pop("failed")  # the planted bug: one state is not drawn
        return times, series

    monkeypatch.setattr(html_report, "state_counts", without_failed)
    with pytest.raises(AssertionError):
        check_jobs(_render(summary, recorder), summary)


def test_a_plot_that_drops_a_message_type_or_a_latency_state_is_caught(
        faulty_run: tuple[dict[str, Any], RunRecorder], monkeypatch: pytest.MonkeyPatch) -> None:
    summary, recorder = faulty_run
    fewer = {**summary, "delivered_by_type": dict(list(summary["delivered_by_type"].items())[1:]),
             "sent_by_type": dict(list(summary["sent_by_type"].items())[1:])}
    with pytest.raises(AssertionError):
        check_messages(_render(fewer, recorder), summary)
    real = recorder.latencies
    monkeypatch.setattr(recorder, "latencies",
                        lambda: {s: v for s, v in real().items() if s != "failed"})
    with pytest.raises(AssertionError):
        check_latency(_render(summary, recorder), summary)


# --- headless Chromium: the page renders -----------------------------------------------------


def _chromium_or_skip() -> tuple[str, str]:
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        reason = f"headless Chromium needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    binary, driver_path = _chromium_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="simreport-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--no-first-run",
                 "--window-size=1000,1400", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_report_renders_in_headless_chromium(tmp_path: Path, browser: Any) -> None:
    out = tmp_path / "run.html"
    summary = run_simnet("run", *FAULTY, "--output", "json", "--report", str(out))
    browser.get(out.as_uri())
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('svg[data-plot]')].map(s => {"
        "const r = s.getBoundingClientRect();"
        "return [s.dataset.plot, r.width, r.height, s.querySelectorAll('*').length]; })")
    assert [s[0] for s in sizes] == ["jobs", "latency", "messages", "faults"]
    assert all(w > 500 and h > 50 and n > 10 for _, w, h, n in sizes), sizes
    areas = browser.execute_script(
        "return [...document.querySelectorAll('svg[data-plot=jobs] polygon')]"
        ".map(p => [p.dataset.state, p.getBBox().width])")
    assert {state for state, _ in areas} >= {"completed", "failed"}
    assert all(width > 0 for _, width in areas)
    assert summary["seed"] == 5 and "seed 5" in browser.title


# --- sweep --report DIR: a page per failing seed ------------------------------------------


def test_a_sweep_writes_the_page_of_each_failing_seed(tmp_path: Path) -> None:
    """A tiny event budget fails every seed; each page is the failing run's
    own (byte-identical to ``run --seed N --report``) and says FAIL."""
    budget = ("--nodes", "3", "--jobs", "2", "--max-events", "50")
    folder = tmp_path / "pages"
    proc = _simnet("sweep", "--seeds", "1..2", *budget, "--output", "json",
                   "--report", str(folder))
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert [f["report"] for f in summary["failures"]] == [
        str(folder / "seed-1.html"), str(folder / "seed-2.html")]
    alone = tmp_path / "seed-1.html"
    ran = _simnet("run", "--seed", "1", *budget, "--output", "json", "--report", str(alone))
    assert ran.returncode == 1
    assert (folder / "seed-1.html").read_bytes() == alone.read_bytes()
    page = Page(alone.read_text(encoding="utf-8"))
    check_page(page)
    text = " ".join(page.text)
    assert "FAIL" in text and "event budget of 50 events exhausted" in text


def test_a_sweep_report_folder_that_cannot_be_made_exits_2_before_the_sweep(
        tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "no" / "such", tmp_path / "file"):
        proc = _simnet("sweep", "--seeds", "1..2", "--nodes", "3", "--jobs", "2",
                       "--report", str(folder))
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.strip().splitlines() == [
            f"simnet: cannot write --report {folder}: "
            + (f"directory {tmp_path / 'no'} does not exist" if folder.name == "such"
               else f"{folder} is not a directory")]


def test_long_running_kinds_and_joiners_are_recorded_without_changing_the_run() -> None:
    """The kinds workload: daemons and services end stopped (left out of the
    latency), joiners start late (one join mark each), the trace is unchanged."""
    opts = RunOptions(nodes=6, jobs=8, seed=2, workload="kinds", duration=90.0,
                      crash_rate=0.1)
    plain = run_scenario(opts)
    summary, recorder = run_recorded(opts)
    assert summary["trace_hash"] == plain["trace_hash"]
    page = _render(summary, recorder, seed=2)
    check_page(page)
    check_jobs(page, summary)
    joins = [m for m in page.drawn("faults", "fault") if m["data-kind"] == "join"]
    assert len(joins) == summary["joiners"] > 0
    long_running = {"daemon", "service", "cron", "stream"}
    ended_batch = sum(1 for job, kind in recorder.kind_of.items()
                      if kind not in long_running
                      and recorder.cluster.state_of(job) in ("completed", "failed", "stopped"))
    assert sum(int(b["data-count"]) for b in page.drawn("latency", "bin")) == ended_batch


def test_without_chromium_the_browser_test_fails_under_ci_and_skips_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if str(p).startswith("/usr/bin/chrom") else real_exists(p))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but headless Chromium needs"):
        _chromium_or_skip()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        _chromium_or_skip()
