"""Take the README's dashboard screenshots (docs/screenshots/*.png).

Starts three ``p2pnode serve --http-listen`` nodes on loopback (sim executor),
submits a few jobs of each kind through the HTTP API, waits for them to
settle and photographs the main pages in headless Chromium:

    PYTHONPATH=. python docs/screenshots.py [--out docs/screenshots]

Needs Debian's ``chromium`` and ``chromium-driver`` and ``selenium`` (the dev
extra), like the dashboard tests (tests/test_dashboard.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser import (
    CHAIN_SPEC,
    DAG_SPEC,
    HttpNode,
    chromium,
    http_cluster,
    sim_job,
    sim_task,
)
from tests.realnet import wait_until

LABELS = ["region=eu,tier=edge", "region=eu,gpu=yes", "region=us"]
WAIT = 180.0  # bound of every wait: the machine may be loaded


def settled(node: HttpNode, job_id: str) -> dict[str, Any] | None:
    status, view = node.request("GET", f"/api/v1/jobs/{job_id}")
    return view if status == 200 and view["state"] in ("completed", "failed", "stopped") else None


def dag_task_state(node: HttpNode, job_id: str, task: str) -> str:
    view = node.request("GET", f"/api/v1/jobs/{job_id}")[1]
    return next((t["state"] for t in view.get("tasks") or [] if t["task"] == task), "")


def shoot(driver: Any, url: str, ready_css: str, path: Path, width: int = 1360) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_until(
        lambda: driver.find_elements(By.CSS_SELECTOR, ready_css),
        timeout=WAIT,
        what=f"{ready_css} on {url}",
    )
    time.sleep(1.0)  # let the flash highlight of fresh rows fade
    # The whole page: the window is its height plus the browser's own frame.
    page, inner = driver.execute_script(
        "return [document.querySelector('main').getBoundingClientRect().bottom + 8,"
        " window.innerHeight]"
    )
    frame = driver.get_window_size()["height"] - int(inner)
    driver.set_window_size(width, max(420, min(int(page), 2000)) + frame)
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="p2pnode-shots-") as tmp,
        http_cluster(Path(tmp), ["alpha", "beta", "gamma"], LABELS) as nodes,
    ):
        owner = nodes[0]
        # A DAG caught mid-run (its train task lasts long): every state at once.
        running = copy.deepcopy(DAG_SPEC)
        running["tasks"]["train"]["engine"]["duration"] = "30m"
        dag = owner.submit(running)
        chain = owner.submit(CHAIN_SPEC)
        cron = owner.submit(
            {
                "name": "nightly-report",
                "type": "cron",
                "schedule": {"every": "2s"},
                "task": sim_task("300ms"),
            }
        )
        batch = [owner.submit(sim_job(f"render-{n}", "800ms")) for n in range(3)]
        batch.append(owner.submit(sim_job("flaky-upload", "500ms", exit_code=3)))
        owner.submit(sim_job("train-model", "30m"))
        wait_until(
            lambda: dag_task_state(owner, dag, "train") == "running",
            timeout=WAIT,
            what="the DAG's train task running",
        )
        for job_id in (chain, *batch):
            wait_until(partial(settled, owner, job_id), timeout=WAIT, what=f"{job_id} ends")
        wait_until(
            lambda: len(owner.request("GET", f"/api/v1/jobs/{cron}/runs")[1]) >= 4,
            timeout=WAIT,
            what="cron runs",
        )
        pages = [
            ("jobs", "#/jobs", "tr.job-row"),
            ("dag", f"#/jobs/{dag}", "g.dag-task"),
            ("chain", f"#/jobs/{chain}", "tr.chain-record"),
            ("cron", f"#/jobs/{cron}", "table#cron-runs"),
            ("peers", "#/peers", "tr.peer-row"),
        ]
        with chromium() as driver:
            driver.get(owner.login_url())
            for name, route, ready in pages:
                shoot(driver, f"{owner.url}/{route}", ready, args.out / f"{name}.png")


if __name__ == "__main__":
    main()
