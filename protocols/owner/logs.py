"""Live output: the owner's side of ``log_chunk`` (the rules: protocols/logs.py).

Chunks are taken only from the holder of the execution (``_lookup``) and only
for the slot's current epoch, like every holder -> owner message; a chunk of a
superseded execution is answered ``valid=False`` so its holder stops sending.
What is delivered is kept in a bounded ``LogBook`` for ``job logs --follow``;
a ``log_output`` notify says there is more to read.
"""

from __future__ import annotations

from protocols.errors import RemoteProtocolError
from protocols.logs import ExecutionLog
from protocols.messages import LOG_STREAMS, LogAck, LogChunk
from protocols.owned import parse_execution_id
from protocols.owner.base import OwnerBase


class LogMixin(OwnerBase):
    def on_log_chunk(self, sender: str, msg: LogChunk) -> None:
        if msg.stream not in LOG_STREAMS:
            raise RemoteProtocolError(f"log chunk of unknown stream {msg.stream!r}")
        if not self._known_execution(msg.execution_id):
            # Output may trail its result: a job forgotten since (a finished
            # micro-batch or cron run) is no fault of the holder's.
            self._refuse_chunk(sender, msg)
            return
        job, slot, execution = self._lookup(sender, msg.execution_id)
        if msg.epoch != execution.epoch or execution.epoch != slot.epoch:
            self._refuse_chunk(sender, msg)
            return
        added, acked = self.logbook.receive(msg)
        self.out.send(
            sender,
            LogAck(execution_id=msg.execution_id, epoch=msg.epoch, stream=msg.stream, seq=acked),
        )
        if added:
            self.out.notify(
                "log_output", job_id=job.job_id, slot=slot.index, execution_id=msg.execution_id
            )

    def _known_execution(self, execution_id: str) -> bool:
        try:
            job_id, index, _ = parse_execution_id(execution_id)
        except ValueError:
            return False
        job = self.jobs.get(job_id)
        return job is not None and 0 <= index < len(job.slots)

    def _refuse_chunk(self, sender: str, msg: LogChunk) -> None:
        """Not (or no longer) an execution we take output of: send no more."""
        self.out.send(
            sender,
            LogAck(
                execution_id=msg.execution_id,
                epoch=msg.epoch,
                stream=msg.stream,
                seq=msg.seq,
                valid=False,
            ),
        )

    def execution_log(self, execution_id: str) -> ExecutionLog | None:
        """The live output received for an execution, if any."""
        return self.logbook.get(execution_id)
