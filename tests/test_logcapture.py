"""The runtime side of live logs: capture bounds and rate, the complete log,
what the holder logs about its executions, and timestamps on ``-v`` lines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import trio

from p2pnode import NodeSettings, NotFoundError, open_node
from p2pnode.cli import log_formatter
from p2pnode.control_request import BadRequest, checked_request
from p2pnode.joblogs import job_logs
from p2pnode.logcapture import MAX_PENDING, OutputCapture
from protocols.events import ExecutionOutput


def test_pending_output_is_bounded_and_the_dropped_bytes_counted(tmp_path: Path) -> None:
    capture = OutputCapture("j/0/1", tmp_path / "log", rate=1024 * 1024)
    capture.write("stdout", b"a" * MAX_PENDING)
    capture.write("stdout", b"b" * 1000)  # 1000 of the oldest pending bytes make room
    capture.write("stderr", b"e" * (MAX_PENDING + 5))  # more than fits at once
    events = capture.take()
    by_stream = {e.stream: e for e in events}
    assert by_stream["stdout"].skipped == 1000
    assert by_stream["stdout"].data.endswith(b"b" * 1000)
    assert by_stream["stderr"].skipped == 5 and len(by_stream["stderr"].data) == MAX_PENDING
    # The complete log has every byte.
    capture.finish()
    assert (tmp_path / "log" / "stdout").read_bytes() == b"a" * MAX_PENDING + b"b" * 1000
    assert len((tmp_path / "log" / "stderr").read_bytes()) == MAX_PENDING + 5


def test_one_round_hands_over_at_most_its_budget(tmp_path: Path) -> None:
    capture = OutputCapture("j/0/1", None, interval=0.25, rate=4096)  # 1024 bytes a round
    capture.write("stdout", b"x" * 3000)
    assert [len(e.data) for e in capture.take()] == [1024]
    assert [len(e.data) for e in capture.take()] == [1024]
    assert [len(e.data) for e in capture.take()] == [952]
    assert capture.take() == []


async def test_pump_delivers_what_is_pending_after_close(autojump_clock: trio.abc.Clock) -> None:
    capture = OutputCapture("j/0/1", None, interval=1.0, rate=100)  # 100 bytes a round
    got: list[ExecutionOutput] = []

    async def deliver(event: ExecutionOutput) -> None:
        got.append(event)

    capture.write("stdout", b"y" * 250)
    capture.close()
    await capture.pump(deliver)
    assert b"".join(e.data for e in got) == b"y" * 250


def test_verbose_log_lines_start_with_their_utc_time() -> None:
    record = logging.LogRecord("p2pnode.x", logging.INFO, __file__, 1, "hello", None, None)
    line = log_formatter().format(record)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO p2pnode\.x: hello", line)


SIM_JOB = {
    "name": "quiet",
    "task": {"engine": {"type": "sim", "duration": "100ms"}, "timeout": "10s"},
}


async def test_the_holder_logs_what_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2pnode.runtime")
    async with open_node(NodeSettings(data_dir=tmp_path / "n", executors=("sim",))) as node:
        job_id = await node.submit(SIM_JOB)
        view = await node.wait(job_id, timeout=30)
        execution = view.slots[0].executions[0]
        # No live output (the sim engine writes none): the result's tails, and a history.
        pieces: list[dict[str, object]] = []

        async def emit(piece: dict[str, object]) -> None:
            pieces.append(piece)

        final = await job_logs(node, job_id, follow=True, tail=None, emit=emit)
        assert final == {"job_id": job_id, "state": "completed"} and pieces == []
        assert [e["event"] for e in node.history(job_id)][-1] == "completed"
        with pytest.raises(NotFoundError):
            node.history("j-0000000000000000")
    started = f"running job {job_id} slot 0 execution {execution.execution_id} (engine sim"
    assert started in caplog.text
    assert f"execution {execution.execution_id} of job {job_id} slot 0 ended: succeeded" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"tail": -1}, "tail must be a number of lines"),
        ({"tail": "10"}, "tail must be a number of lines"),
        ({"tail": True}, "tail must be a number of lines"),
        ({"follow": "yes"}, "follow must be true or false"),
    ],
)
def test_logs_requests_are_checked(args: dict[str, object], message: str) -> None:
    ops = frozenset({"logs", "history"})
    with pytest.raises(BadRequest, match=message):
        checked_request({"op": "logs", "job_id": "j-1", **args}, ops)
    op, request = checked_request({"op": "logs", "job_id": "j-1", "tail": 5}, ops)
    assert (op, request["tail"], request.get("follow")) == ("logs", 5, None)
