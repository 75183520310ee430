"""Process groups as /proc shows them (Linux).  Standard library only: the
lease watchdog helper (``p2pnode/watchdog_helper.py``) imports it in an
interpreter started without site-packages."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

EXECUTION_ENV = "P2PNODE_EXECUTION_ID"  # every process of an execution has it


def proc_stat(pid: str | int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain anything: split at
    # the last ')'.
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def pid_state(pid: int) -> str | None:
    fields = proc_stat(pid)
    return fields[0] if fields else None


def group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(name)
            if fields and len(fields) > 2 and fields[2] == str(pgid):
                members.append(int(name))
    return members


def has_env(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return marker in file.read().split(b"\0")
    except OSError:
        return False


def runs_execution(pgid: int, execution_id: str) -> bool:
    """Whether group ``pgid`` still holds a process of ``execution_id`` (a
    recycled group id holds none: it must not be signalled)."""
    marker = f"{EXECUTION_ENV}={execution_id}".encode()
    return any(has_env(pid, marker) for pid in group_members(pgid))


def read_pidfile(pidfile: Path) -> tuple[int, str]:
    """(process group, execution id) of a process executor's pidfile.
    Raises OSError, ValueError, KeyError or TypeError if it is unreadable."""
    record = json.loads(pidfile.read_text())
    return int(record["pgid"]), str(record["execution_id"])


def execution_groups(work_dir: Path) -> dict[str, int]:
    """Execution id -> process group, from the pidfiles in ``work_dir``."""
    groups = {}
    for pidfile in work_dir.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pgid, execution_id = read_pidfile(pidfile)
            groups[execution_id] = pgid
    return groups
