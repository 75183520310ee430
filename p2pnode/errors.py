"""Every error the p2pnode library raises, under one base: ``P2PNodeError``.

    try:
        job_id = await node.submit(spec)
    except p2pnode.SpecError as exc:      # every problem of the spec at once
        for problem in exc.errors:
            print(problem.path, problem.message)
    except p2pnode.RefusedError as exc:   # the node said no (key reused, ...)
        print(exc)

The tree (docs/architecture.md, "Errors", shows it with who raises what)::

    P2PNodeError
    ├── SpecError            invalid job spec; ``errors`` lists every problem
    ├── RefusedError         the node refused a request (protocols' LocalProtocolError)
    │   ├── NotFoundError    no such job on this node (nor, asked, on its peers)
    │   └── AmbiguousJobError  a job id prefix names several jobs
    ├── UnreachableError     the job's owner is known but does not answer
    ├── NodeStoppedError     the node is not running (any more)
    ├── WaitTimeoutError     ``Node.wait`` timed out; the job goes on
    ├── SettingsError        bad ``NodeSettings``, bootstrap address or call arguments
    ├── ListenError          a listen address is taken or missing
    ├── DataDirError         the data dir cannot be made private
    ├── KeyFileError         the node key must not be used
    ├── StoreError           the SQLite store cannot load or persist
    ├── BlobError            a blob cannot be stored or read back intact
    ├── FetchError           outputs cannot be fetched from their holder
    ├── InputError           a task's input cannot be made local
    ├── ConnectorError       a stream source cannot be read now
    ├── ExecutorError        an executor cannot run tasks here
    │   ├── SandboxUnavailable
    │   └── DockerUnavailable
    ├── EventLoopError       ``open_node`` outside trio (asyncio: use ``AsyncClient``)
    └── ControlError         the control socket answered with an error (``code``)
        ├── NodeNotRunning
        ├── ConnectionLost
        ├── ControlRefused   code refused/ambiguous/permission_denied; a RefusedError
        │   └── ControlNotFound  code not_found; also a NotFoundError
        └── ControlTimeout   code timeout (a wait ran out); also a WaitTimeoutError

Where an error always had a built-in base, it keeps it (``SpecError`` is a
``ValueError``, ``DataDirError`` and ``ListenError`` are ``OSError``s,
``WaitTimeoutError`` is a ``TimeoutError``), and the two that come from the
sans-IO core subclass the core's classes (``SpecError`` is a
``protocols.spec.SpecValidationError``, ``RefusedError`` a
``protocols.errors.LocalProtocolError``): code that caught the old classes
still catches the new ones.  ``protocols/`` never imports ``p2pnode``, so the
library translates at its edge (``p2pnode.node``).

The classes are defined here and imported by the modules that raise them,
where they stay importable under their old paths (``p2pnode.store.StoreError``,
``p2pnode.outputs.FetchError``, ``p2pnode.runtime.NodeStopped``, ...).
This module imports nothing heavy: ``import p2pnode`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocols.errors import LocalProtocolError
from protocols.spec_errors import SpecValidationError  # not protocols.spec: no validator

__all__ = [
    "AmbiguousJobError",
    "BlobError",
    "ConnectionLost",
    "ConnectorError",
    "ControlError",
    "ControlNotFound",
    "ControlRefused",
    "ControlTimeout",
    "DataDirError",
    "DockerUnavailable",
    "EventLoopError",
    "ExecutorError",
    "FetchError",
    "InputError",
    "KeyFileError",
    "ListenError",
    "NodeNotRunning",
    "NodeStoppedError",
    "NotFoundError",
    "P2PNodeError",
    "RefusedError",
    "SandboxUnavailable",
    "SettingsError",
    "SpecError",
    "StoreError",
    "UnreachableError",
    "WaitTimeoutError",
]


class P2PNodeError(Exception):
    """The base of every error the p2pnode library raises on purpose."""


# --- using a node -------------------------------------------------------------------


class SpecError(P2PNodeError, SpecValidationError):
    """A job spec is invalid; ``errors`` lists every problem found, each a
    ``protocols.spec.SpecError`` record with the field's ``path`` and a ``message``."""


class RefusedError(P2PNodeError, LocalProtocolError):
    """The node refused the request: an idempotency key reused with another
    spec, a job of the wrong kind, a finished job, ..."""


class NotFoundError(RefusedError):
    """The job (or execution) is unknown to this node."""


class AmbiguousJobError(RefusedError):
    """A job id prefix names several jobs (the message lists them, and
    ``candidates`` holds their ids when known)."""

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


class UnreachableError(P2PNodeError):
    """A job another peer owns: its owner did not answer the query."""


class NodeStoppedError(P2PNodeError):
    """The node is not running (not started yet, stopped, or failed)."""


class WaitTimeoutError(P2PNodeError, TimeoutError):
    """A wait ran out of time; the job itself goes on."""


class SettingsError(P2PNodeError, ValueError):
    """Bad settings or arguments: an unknown executor, a bootstrap address
    without a peer id, an empty idempotency key, ..."""


class EventLoopError(P2PNodeError, RuntimeError):
    """``open_node`` was called outside trio (under ``asyncio.run``, say): the
    node runs on trio; from asyncio, talk to a running node with ``AsyncClient``."""


class ListenError(P2PNodeError, OSError):
    """A listen address is taken or not on this host: the node does not start."""


# --- the node's own storage -----------------------------------------------------------


class DataDirError(P2PNodeError, OSError):
    """The data dir cannot be made private: the node does not start."""


class KeyFileError(P2PNodeError):
    """The key file exists but must not be used (permissions, corrupt, wrong type)."""


class StoreError(P2PNodeError):
    """The store could not load or persist records (disk full, read-only file,
    corrupt database, unencodable value, store closed, file in use).  A failed
    ``apply`` wrote nothing."""


class BlobError(P2PNodeError):
    """A blob could not be stored or read back intact (disk full, missing,
    corrupt, over a size limit, bad manifest)."""


# --- moving data ------------------------------------------------------------------------


class FetchError(P2PNodeError):
    """Outputs (blobs) could not be fetched from the node holding them."""


class InputError(P2PNodeError):
    """An input could not be made available locally."""


class ConnectorError(P2PNodeError):
    """The source cannot be read now (down, unreachable, refused, bad URL).
    The feeder logs it, shows it in ``job describe``, backs off and retries."""


# --- executors ---------------------------------------------------------------------------


class ExecutorError(P2PNodeError):
    """The node could not run the task (engine down, image missing, bad task
    for this executor).  The runtime reports it as ``status="error"``."""


class SandboxUnavailable(ExecutorError):
    """The sandbox was asked for but cannot work here (no bwrap, no setpriv,
    or bwrap refuses to start).  The node refuses to start: never a silent
    downgrade to unsandboxed tasks."""


class DockerUnavailable(ExecutorError):
    """The Docker engine cannot be reached (stopped, wrong DOCKER_HOST, wedged)."""


# --- the control socket's client ---------------------------------------------------------


class ControlError(P2PNodeError):
    """The node answered with an error (``errors`` lists spec problems, if any;
    ``code`` is one of ``control_request.ERROR_CODES``, "" if not from the node)."""

    def __init__(
        self, message: str, errors: list[dict[str, str]] | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        self.errors = errors or []
        self.code = code


class NodeNotRunning(ControlError):
    """No node serves the data dir's control socket."""


class ConnectionLost(ControlError):
    """The connection ended before the node's answer: the request may or may
    not have taken effect (the node died or restarted meanwhile)."""


# Error replies, raised by p2pnode.client: ControlErrors (``code``, ``errors``) that
# are also the library's error for what happened, so ``except NotFoundError``
# reads the same for an in-process ``Node`` and a ``Client``.


class ControlRefused(ControlError, RefusedError):
    """The node refused the request (code ``refused``, ``ambiguous``: an id
    prefix names several jobs, or ``permission_denied``)."""


class ControlNotFound(ControlRefused, NotFoundError):
    """No such job on the node (code ``not_found``)."""


class ControlTimeout(ControlError, WaitTimeoutError):
    """A wait ran out of time (code ``timeout``); the job itself goes on."""
