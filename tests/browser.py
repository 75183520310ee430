"""Headless Chromium (selenium) on a cluster of ``serve --http-listen`` nodes:
what the dashboard suite and ``docs/screenshots.py`` share.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).  The
network here is closed: without the flags below Chromium tries its update,
sync and QUIC connections and hangs on them.  Each browser gets a fresh
profile directory, so no cookie or cache survives from one run to another.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from tests.realnet import Cluster, ServeNode, cluster

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
READY = 120.0  # a start bound: CI machines and this one may be loaded
HTTP_LINE = re.compile(r"^http: (http://\S+?)/?$", re.MULTILINE)


class BrowserUnavailable(Exception):
    """Chromium, its driver or selenium is missing (a skip, or a CI failure)."""


def _existing(path: str) -> str | None:
    return path if os.path.exists(path) else None


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or ``BrowserUnavailable`` saying what is missing."""
    chromium = shutil.which("chromium") or _existing(CHROMIUM)
    driver = shutil.which("chromedriver") or _existing(CHROMEDRIVER)
    if chromium is None:
        raise BrowserUnavailable("chromium is not installed (apt-get install chromium)")
    if driver is None:
        raise BrowserUnavailable("chromedriver is not installed (apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError as err:
        raise BrowserUnavailable(f"selenium is not importable: {err}") from err
    return chromium, driver


@contextlib.contextmanager
def chromium(width: int = 1360, height: int = 900) -> Iterator[Any]:
    """A headless Chromium driven by selenium, with a fresh profile; quit at the end."""
    binary, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="p2pnode-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as err:
        shutil.rmtree(profile, ignore_errors=True)
        raise BrowserUnavailable(f"chromium did not start under chromedriver: {err}") from err
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --- nodes with HTTP ------------------------------------------------------------------


@attrs.frozen
class HttpNode:
    """A serve node's HTTP side: where it listens and its token."""

    node: ServeNode
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    token: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one request; ``token=None`` sends none,
        the default ``""`` sends this node's."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw, ctype = response.status, response.read(), response.headers
        except urllib.error.HTTPError as err:
            status, raw, ctype = err.code, err.read(), err.headers
        text = raw.decode("utf-8", "replace")
        if "json" in (ctype.get("Content-Type") or ""):
            return status, json.loads(text)
        return status, text

    def submit(self, spec: dict[str, Any]) -> str:
        status, answer = self.request("POST", "/api/v1/jobs", spec)
        assert status == 201, (status, answer)
        return str(answer["job_id"])

    def login_url(self, route: str = "") -> str:
        return f"{self.url}/?token={self.token}{route}"


def http_node(node: ServeNode) -> HttpNode:
    """Once ``node`` is ready: its URL (from serve's ``http:`` line) and token."""
    match = HTTP_LINE.search(node.stderr_path.read_text())
    assert match is not None, f"{node.name} printed no http: line\n{node.explain()}"
    token = (node.data_dir / "http-token").read_text().strip()
    return HttpNode(node, match.group(1), token)


def start_http_cluster(
    c: Cluster, names: Sequence[str], executors: str = "sim", labels: Sequence[str] = ()
) -> list[HttpNode]:
    """Nodes ``names`` (the first bootstraps the others; ``labels[i]`` the
    ``--labels`` of node i), each with HTTP on a free loopback port; waits
    until every node knows every other."""

    def extra(i: int) -> list[str]:
        label = ["--labels", labels[i]] if i < len(labels) and labels[i] else []
        return ["--http-listen", "127.0.0.1:0", *label]

    first = c.add(names[0], executors=executors, extra=extra(0))
    first.wait_ready(READY)
    rest = [
        c.add(name, executors=executors, bootstrap=[first.addrs[0]], extra=extra(i))
        for i, name in enumerate(names[1:], 1)
    ]
    for node in rest:
        node.wait_ready(READY)
    c.wait_connected([first, *rest], timeout=READY)
    return [http_node(node) for node in (first, *rest)]


# --- specs the suite and the screenshots submit -----------------------------------


def sim_task(duration: str = "1s", exit_code: int = 0) -> dict[str, Any]:
    engine = {"type": "sim", "duration": duration, "exit_code": exit_code}
    return {"engine": engine, "timeout": "5m", "retry": {"attempts": 1}}


def sim_job(name: str, duration: str = "1s", exit_code: int = 0) -> dict[str, Any]:
    return {"name": name, "task": sim_task(duration, exit_code)}


DAG_SPEC: dict[str, Any] = {
    "name": "pipeline",
    "type": "dag",
    "tasks": {
        "fetch": sim_task("500ms"),
        "clean": {**sim_task("500ms"), "depends_on": ["fetch"]},
        "features": {**sim_task("700ms"), "depends_on": ["fetch"]},
        "train": {**sim_task("800ms"), "depends_on": ["clean", "features"]},
        "evaluate": {**sim_task("400ms"), "depends_on": ["train"]},
        "report": {**sim_task("300ms"), "depends_on": ["evaluate", "clean"], "when": "always"},
    },
}

CHAIN_SPEC: dict[str, Any] = {
    "name": "etl",
    "type": "chain",
    "stages": [
        {"name": "extract", "task": sim_task("500ms")},
        {"name": "transform", "task": sim_task("500ms")},
        {"name": "load", "task": sim_task("500ms")},
    ],
}


@contextlib.contextmanager
def http_cluster(
    root: Path, names: Sequence[str], labels: Sequence[str] = ()
) -> Iterator[list[HttpNode]]:
    with cluster(root) as c:
        yield start_http_cluster(c, names, labels=labels)


__all__ = [
    "CHAIN_SPEC",
    "CHROMIUM_FLAGS",
    "DAG_SPEC",
    "BrowserUnavailable",
    "HttpNode",
    "chromium",
    "find_browser",
    "http_cluster",
    "http_node",
    "sim_job",
    "sim_task",
    "start_http_cluster",
]
