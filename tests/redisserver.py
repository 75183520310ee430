"""A private ``redis-server`` on a free loopback port, for tests and benchmarks.

Debian's ``redis-server`` (``apt-get install redis-server``; ``.ci/run``
installs it) runs in the foreground as our child, with no persistence
(``--save '' --appendonly no``) and its working dir and log in a directory of
the caller's (a test's ``tmp_path``).  ``stop`` ends it (SIGTERM, then SIGKILL)
and is always called by the context manager, so a failing test leaves no
server behind.  Ports are picked by binding port 0 and retried if another
process grabs one in between.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REDIS_SERVER_PATHS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
START_TIMEOUT = 15.0


class RedisUnavailable(Exception):
    """No redis-server binary, or it would not start."""


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return next((p for p in REDIS_SERVER_PATHS if Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.proc = proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, decode_responses=True)

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "redis.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_redis(directory: Path, *, port: int = 0, attempts: int = 3) -> RedisServer:
    """Start a private redis-server (on ``port``, else a free one); raises
    ``RedisUnavailable``.  A fixed port (a restart) is tried for ~5 s: the old
    server's socket may linger briefly."""
    binary = find_redis_server()
    if binary is None:
        raise RedisUnavailable("redis-server is not installed (apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    problem = ""
    fixed = port
    for _ in range(attempts if not fixed else 25):
        port = fixed or _free_port()
        argv = [
            binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(directory), "--daemonize", "no"),
            *("--logfile", str(directory / "redis.log"), "--protected-mode", "yes"),
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        server = RedisServer(directory, port, proc)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return server
            except OSError:
                pass
            time.sleep(0.05)
        problem = f"redis-server on port {port} did not answer: {server.log}"
        server.stop()
        if fixed:
            time.sleep(0.2)
    raise RedisUnavailable(problem)


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = start_redis(directory)
    try:
        yield server
    finally:
        server.stop()
