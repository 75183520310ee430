"""Progress of a job while ``job run --wait`` waits: on stderr, never stdout.

On a terminal a live status line (rich); otherwise one line per event, so logs
and CI output stay readable.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.status import Status

from p2pnode.cli.output import escape_text
from p2pnode.timefmt import iso_utc


def describe_event(event: dict[str, Any]) -> str:
    kind = event.get("kind", "")
    slot = event.get("slot")
    where = f"slot {slot}" if slot is not None else ""
    if kind == "job_state":
        state = str(event["state"])
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"job {state}{reason}"
    if kind == "lease_granted":
        return f"{where}: leased to {str(event['holder'])[-12:]} (epoch {event['epoch']})"
    if kind == "result_accepted":
        return f"{where}: {event['status']} on {str(event['holder'])[-12:]}"
    if kind == "execution_failed":
        return f"{where}: {event['status']} on {str(event['holder'])[-12:]}, retrying if allowed"
    if kind == "job_updated":
        return f"updated to version {event['version']}"
    if kind == "cron_run_started":
        return f"run {event['run_id']} started (version {event['version']})"
    if kind == "cron_run":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"scheduled time {iso_utc(int(event['scheduled_ms']))}: {event['outcome']}{reason}"
    if kind == "lease_ended":
        return f"{where}: lease ended ({event['cause']})"
    return str(kind)


class Progress:
    def __init__(self, job_id: str, *, quiet: bool = False) -> None:
        self.job_id = job_id
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.live = sys.stderr.isatty() and not quiet
        self.started = time.monotonic()
        self._status: Status | None = None

    def __enter__(self) -> Progress:
        if self.live:
            self._status = self.console.status(f"{self.job_id}: submitted")
            self._status.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._status is not None:
            self._status.__exit__(kind, exc, tb)

    def update(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        # Events carry peers' strings (reasons, statuses): never raw controls.
        described = escape_text(describe_event(event))
        line = f"[{time.monotonic() - self.started:6.2f}s] {described}"
        if self._status is not None:
            self._status.update(f"{self.job_id}: {described}")
            self.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)
