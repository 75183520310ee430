"""The lease watchdog's way to end a Docker task: the Engine API over its unix
socket, with the standard library only (the helper runs without
site-packages, so not the docker SDK).

A node's containers run in dockerd, not in the node's process: a node that is
paused leaves them running exactly as it leaves its process groups running.
The docker executor labels each container with its execution id and node id
(``p2pnode/executors/docker.py``); the helper kills the running containers
that carry both labels.  Execution ids are never reused, so nothing else can
match.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

# The labels the docker executor puts on each container (it imports them from here).
LABEL_EXECUTION = "p2pnode.execution_id"
LABEL_NODE = "p2pnode.node"
DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 5.0  # per request: the helper is single-threaded, a hung engine must not stall it


def socket_path(docker_host: str | None) -> str | None:
    """The unix socket of ``DOCKER_HOST`` (unset: Docker's default); None for
    an engine the helper cannot reach this way (tcp://, ssh://)."""
    if not docker_host:
        return DEFAULT_SOCKET
    if docker_host.startswith("unix://"):
        return docker_host[len("unix://") :]
    return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _request(path: str, method: str, url: str, timeout: float) -> tuple[int, bytes]:
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(method, url)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def kill_containers(
    path: str, node_id: str, execution_id: str, timeout: float = API_TIMEOUT
) -> list[str]:
    """SIGKILL the running containers of ``execution_id`` on ``node_id``;
    returns their ids.  Raises (OSError, http.client.HTTPException,
    ValueError, ...) when the engine cannot be asked or its answer read: the
    caller reports it and goes on."""
    filters = json.dumps(
        {"label": [f"{LABEL_EXECUTION}={execution_id}", f"{LABEL_NODE}={node_id}"]}
    )
    status, body = _request(
        path, "GET", "/containers/json?filters=" + urllib.parse.quote(filters), timeout
    )
    if status != 200:
        raise ValueError(f"listing containers: HTTP {status}")
    killed = []
    for container in json.loads(body):
        cid = str(container["Id"])
        status, _ = _request(path, "POST", f"/containers/{cid}/kill?signal=SIGKILL", timeout)
        if status == 204:  # 409: it stopped meanwhile; 404: it is gone
            killed.append(cid)
    return killed
