"""A real node and its control socket, run by trio in a thread of the test
process: the test can monkeypatch the node's modules (plant a bug, shrink a
limit) and still talk to it over the real socket with blocking clients."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from p2pnode.control import ControlClient, serve_control, socket_path
from p2pnode.node import Node, NodeSettings, open_node

START_TIMEOUT = 60.0  # a guard against hangs on a loaded machine


@attrs.define
class ThreadNode:
    data_dir: Path
    node: Node | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.data_dir)

    def call(self, op: str, **args: Any) -> Any:
        """One request through the CLI's own client."""
        client = ControlClient(self.data_dir)
        return trio.run(functools.partial(client.call, op, **args))


@contextlib.contextmanager
def node_in_thread(data_dir: Path, executors: tuple[str, ...] = ("sim",)) -> Iterator[ThreadNode]:
    handle = ThreadNode(data_dir)
    ready = threading.Event()
    stop: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        settings = NodeSettings(data_dir=data_dir, executors=executors)
        async with open_node(settings) as node, trio.open_nursery() as nursery:
            await nursery.start(serve_control, node)
            handle.node = node
            stop["token"] = trio.lowlevel.current_trio_token()
            stop["scope"] = nursery.cancel_scope
            ready.set()
            await trio.sleep_forever()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="p2pnode test node", daemon=True)
    thread.start()
    ready.wait(START_TIMEOUT)
    if failure or "token" not in stop:
        raise AssertionError(f"the node did not start: {failure!r}")
    try:
        yield handle
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            stop["token"].run_sync_soon(stop["scope"].cancel)
        thread.join(START_TIMEOUT)
    if failure:
        raise AssertionError("the node's trio run failed") from failure[0]
