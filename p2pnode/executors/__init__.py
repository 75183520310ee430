"""Real executors: local processes and Docker containers.

Both implement ``p2pnode.executor.Executor``: the runtime owns timeouts and
cancellation; an executor runs the task in a fresh workdir, stores what the
task leaves in ``outputs/`` as a blob manifest, and kills its process group or
container in a shielded cleanup when cancelled.

``DockerExecutor`` is imported lazily (``from p2pnode.executors.docker import
DockerExecutor``) so that process-only nodes do not pay for the docker SDK.
"""

from p2pnode.executors.common import ExecutorError, TailBuffer, Workdir
from p2pnode.executors.process import ProcessExecutor

__all__ = ["ExecutorError", "ProcessExecutor", "TailBuffer", "Workdir"]
