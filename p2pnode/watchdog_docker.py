"""The lease watchdog's way to end a Docker task: the Engine API, with the
standard library only (the helper runs without site-packages, so not the
docker SDK).

A node's containers run in dockerd, not in the node's process: a node that is
paused leaves them running exactly as it leaves its process groups running.
The docker executor labels each container with its execution id and node id
(``p2pnode/executors/docker.py``); the helper kills the running containers
that carry both labels.  Execution ids are never reused, so nothing else can
match.

The engine is the one the docker executor reaches (``docker.from_env``):
``DOCKER_HOST`` as a unix socket or tcp:// address, over TLS when
``DOCKER_TLS_VERIFY`` or ``DOCKER_CERT_PATH`` says so, as the docker SDK and
CLI read them.  Only an ssh:// engine is out of the helper's reach.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import NamedTuple

# The labels the docker executor puts on each container (it imports them from here).
LABEL_EXECUTION = "p2pnode.execution_id"
LABEL_NODE = "p2pnode.node"
DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 5.0  # per request: the helper is single-threaded, a hung engine must not stall it


class Engine(NamedTuple):
    """Where the helper asks Docker: ``url`` is unix:///path, http://host:port
    or https://host:port; for https, ``cert_dir`` holds ca.pem, cert.pem and
    key.pem (Docker's layout), and ``verify`` checks the engine's
    certificate against ca.pem."""

    url: str
    cert_dir: str = ""
    verify: bool = False

    def argv(self) -> list[str]:
        """The helper's command-line words for this engine (``from_argv``)."""
        return [self.url, self.cert_dir, "1" if self.verify else "0"]

    @classmethod
    def from_argv(cls, words: list[str]) -> Engine:
        url, cert_dir, verify = [*words, "", "0"][:3]
        return cls(url, cert_dir, verify == "1")


def engine_from_env(environ: Mapping[str, str]) -> Engine | None:
    """The engine ``environ`` names, read as the docker SDK reads it
    (``docker.utils.kwargs_from_env``); None for one the helper cannot reach
    (ssh://)."""
    host = environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    scheme, _, rest = host.partition("://")
    if scheme == "unix":
        return Engine(host)
    if scheme not in ("tcp", "http", "https") or not rest:
        return None
    verify = environ.get("DOCKER_TLS_VERIFY", None) not in (None, "")
    cert_dir = environ.get("DOCKER_CERT_PATH", "")
    if scheme == "https" or verify or cert_dir:  # the SDK turns tcp:// into https:// then
        cert_dir = cert_dir or os.path.join(os.path.expanduser("~"), ".docker")
        return Engine(f"https://{rest}", cert_dir, verify)
    return Engine(f"http://{rest}")


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


def _tls_context(engine: Engine) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if engine.verify:
        context.load_verify_locations(os.path.join(engine.cert_dir, "ca.pem"))
    else:  # DOCKER_CERT_PATH without DOCKER_TLS_VERIFY: TLS, engine unchecked (as the SDK)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert = os.path.join(engine.cert_dir, "cert.pem")
    if os.path.exists(cert):
        context.load_cert_chain(cert, os.path.join(engine.cert_dir, "key.pem"))
    return context


def _connection(engine: Engine, timeout: float) -> http.client.HTTPConnection:
    scheme, _, rest = engine.url.partition("://")
    if scheme == "unix":
        return _UnixConnection(rest, timeout)
    if scheme == "https":
        return http.client.HTTPSConnection(rest, timeout=timeout, context=_tls_context(engine))
    return http.client.HTTPConnection(rest, timeout=timeout)


def _request(engine: Engine, method: str, url: str, timeout: float) -> tuple[int, bytes]:
    conn = _connection(engine, timeout)
    try:
        conn.request(method, url)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def kill_containers(
    engine: Engine, node_id: str, execution_id: str, timeout: float = API_TIMEOUT
) -> list[str]:
    """SIGKILL the running containers of ``execution_id`` on ``node_id``;
    returns their ids.  Raises (OSError, http.client.HTTPException,
    ValueError, ...) when the engine cannot be asked or its answer read: the
    caller reports it and goes on."""
    filters = json.dumps(
        {"label": [f"{LABEL_EXECUTION}={execution_id}", f"{LABEL_NODE}={node_id}"]}
    )
    status, body = _request(
        engine, "GET", "/containers/json?filters=" + urllib.parse.quote(filters), timeout
    )
    if status != 200:
        raise ValueError(f"listing containers: HTTP {status}")
    killed = []
    for container in json.loads(body):
        cid = str(container["Id"])
        status, _ = _request(engine, "POST", f"/containers/{cid}/kill?signal=SIGKILL", timeout)
        if status == 204:  # 409: it stopped meanwhile; 404: it is gone
            killed.append(cid)
    return killed
