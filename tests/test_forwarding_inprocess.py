"""Forwarding is generic: any read-only operation the owner's node answers
rides along (``logs`` and ``history`` once they exist), as a bounded
snapshot.  Two real ``open_node`` nodes in one trio process, real libp2p."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode import control, joblogs
from p2pnode.control_request import REQUEST_FIELDS
from p2pnode.control_request import job_id as job_id_field
from p2pnode.errors import FetchError, NotFoundError, RefusedError
from p2pnode.forwarding import Emit
from p2pnode.node import Node, NodeSettings, open_node
from protocols.messages import MAX_ANSWER_BYTES

pytestmark = pytest.mark.slow

WAIT = 60.0  # bound of every wait: a guard against hangs, not a performance claim
QUEUED = {  # matches no node (the label): stays queued, never runs
    "name": "waiting",
    "constraints": {"labels": {"zone": "nowhere"}},
    "task": {"engine": {"type": "sim", "duration": "1s"}, "timeout": "1m"},
}


@asynccontextmanager
async def two_nodes(root: Path) -> AsyncIterator[tuple[Node, Node]]:
    owner_settings = NodeSettings(data_dir=root / "owner", executors=("sim",), seed=1)
    async with open_node(owner_settings) as owner:
        settings = NodeSettings(
            data_dir=root / "asker", executors=("sim",), seed=2,
            bootstrap=(owner.listen_addrs()[0],),
        )  # fmt: skip
        async with open_node(settings) as asker:
            with trio.fail_after(WAIT):
                while owner.node_id not in {p.node_id for p in asker.peers()}:
                    await trio.sleep(0.05)
            yield owner, asker


async def test_any_read_only_operation_rides_along_as_a_bounded_snapshot(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as (owner, asker):
        job_id = await owner.submit(QUEUED)
        seen: list[dict[str, Any]] = []

        async def history(request: dict[str, Any], emit: Emit) -> Any:
            """A stand-in for an operation another engineer adds (e.g. ``logs``)."""
            seen.append(request)
            await emit({"kind": "log", "data": "one"})
            await emit({"kind": "log", "data": "two"})
            return {"job_id": request["job_id"], "follow": request.get("follow")}

        async def flood(request: dict[str, Any], emit: Emit) -> Any:
            for _ in range(MAX_ANSWER_BYTES // 1000 + 2):
                await emit({"kind": "log", "data": "x" * 1000})
            return None

        # The node's own operations before its control socket serves: describe.
        events: list[dict[str, Any]] = []

        async def collect(event: dict[str, Any]) -> None:
            events.append(event)

        view = await asker.forward("describe", {"job_id": job_id[:8]}, collect)
        assert view["job_id"] == job_id and view["owner"] == owner.node_id

        owner.answer_queries_with({"history": history, "logs": flood})
        result = await asker.forward("history", {"job_id": job_id, "follow": True}, collect)
        assert result == {"job_id": job_id, "follow": False}  # a snapshot: never held open
        assert events == [{"kind": "log", "data": "one"}, {"kind": "log", "data": "two"}]
        assert seen[0]["job_id"] == job_id

        with pytest.raises(FetchError, match=f"over {MAX_ANSWER_BYTES // 1024} KiB"):
            await asker.forward("logs", {"job_id": job_id}, collect)
        # The owner now answers only what it was given: describe is not among them.
        with pytest.raises(FetchError, match="does not answer 'describe'"):
            await asker.forward("describe", {"job_id": job_id}, collect)
        # A job nobody owns; the owner's own refusal comes back as a refusal.
        with pytest.raises(NotFoundError, match="no such job: j-nothing"):
            await asker.forward("history", {"job_id": "j-nothing"}, collect)

        async def refuse(request: dict[str, Any], emit: Emit) -> Any:
            raise RefusedError(f"job {request['job_id']} is not a cron job")

        owner.answer_queries_with({"runs": refuse})
        with pytest.raises(RefusedError, match="is not a cron job"):
            await asker.forward("runs", {"job_id": job_id}, collect)


async def test_control_ops_resolve_prefixes_and_follow_a_forwarded_job_by_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``logs`` as its engineer adds it: an operation on a job, with ``follow``
    # (a forwarded request may carry only the job: anything else is refused).
    monkeypatch.setitem(REQUEST_FIELDS, "logs", {"job_id": (True, job_id_field)})
    monkeypatch.setattr(joblogs, "FORWARD_RECHECK", 0.01)
    calls: list[dict[str, Any]] = []
    # What the owner shows at each look: its whole output so far, then the end.
    looks = [
        ("running", "a\n"),
        ("running", "a\nb"),
        ("running", "a\nb\n"),
        ("completed", "a\nb\nc\n"),
    ]

    async def logs(request: dict[str, Any], emit: Emit) -> Any:
        calls.append(request)
        state, text = looks[min(len(calls), len(looks)) - 1]
        for start in range(0, len(text), 2):  # in pieces, as job_logs emits them
            event = {"kind": "log", "slot": 0, "execution": "e1", "stream": "stdout"}
            await emit({**event, "data": text[start : start + 2]})
        return {"job_id": request["job_id"], "state": state}

    async with two_nodes(tmp_path) as (owner, asker):
        job_id = await owner.submit(QUEUED)
        owner.answer_queries_with(control._resolving(owner, {"logs": logs}, forward=False))
        local = control._resolving(owner, {"logs": logs}, forward=True)
        remote = control._resolving(asker, {"logs": logs}, forward=True)
        shown: list[str] = []

        async def collect(event: dict[str, Any]) -> None:
            shown.append(event["data"])

        # On the owner: the prefix resolves, follow goes through untouched.
        answer = await local["logs"]({"job_id": job_id[:9], "follow": True}, collect)
        assert answer["job_id"] == job_id and calls[-1]["follow"] is True
        calls.clear()
        shown.clear()
        # Elsewhere: a follow asks the owner for snapshots until the job ended,
        # and shows each character once, in order.
        answer = await remote["logs"]({"job_id": job_id[:9], "follow": True}, collect)
        assert answer == {"job_id": job_id, "state": "completed"}
        assert "".join(shown) == "a\nb\nc\n"
        assert len(calls) == len(looks) and all("follow" not in c for c in calls), calls
        # A snapshot forwards once.
        calls.clear()
        shown.clear()
        answer = await remote["logs"]({"job_id": job_id[:9]}, collect)
        assert len(calls) == 1 and "".join(shown) == looks[0][1]
