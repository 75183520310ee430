"""Job queries: any node answers for a job, whichever peer owns it.

The rules are stated in docs/protocol.md, section 8 ("Job queries"); this is
their sans-IO half, driven by the node core:

* **Asker.** ``ask`` sends ``job_query`` to the job's owner when a hint names
  it (owners seen in asks, grants and earlier answers), else to every peer of
  the view (at most ``MAX_FANOUT``).  Answers are accepted only from the peers
  asked, for a query still open; the query closes when every peer asked has
  answered, when the owner answered for the exact id, or at its timeout.
  ``job_query_done`` is notified then and the driver takes the answers
  (``take``).  Answers stay out of notifies: they can be 192 KiB.
* **Answerer.** ``on_query`` checks the operation (read-only ones, and
  ``cancel`` from the job's submitter only), resolves the job text among the
  jobs this node owns (ids or a unique prefix), bounds the queries it serves
  at once per peer, and notifies ``job_query``: the driver runs the operation
  as the control socket would and hands the answer back (``answer``).

Job ids resolve the same way locally (``resolve``): an exact id, else the one
id the prefix starts, top-level jobs first (a cron job before its runs).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from protocols.directory import Directory
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.events import AnswerQuery, QueryJob
from protocols.messages import (
    MAX_ANSWER_BYTES,
    MAX_QUERY_ARGS,
    QUERY_OPS,
    QUERY_STATUSES,
    JobAnswer,
    JobQuery,
)
from protocols.outbox import Outbox
from protocols.timers import QUERY, QueryTimer

MAX_HINTS = 4096  # job id -> owner hints kept (volatile, oldest dropped)
MAX_PENDING = 64  # queries this node waits on at once
MAX_FANOUT = 64  # peers asked by one query that knows no owner
MAX_SERVED = 32  # queries this node runs for peers at once ...
MAX_SERVED_PER_PEER = 4  # ... and for one peer
SERVE_TIMEOUT = 30.0  # seconds a served query may stay unanswered by the driver
MAX_CANDIDATES = 10  # ids listed for an ambiguous prefix
MAX_CLOSED = 256  # closed queries whose late answers are still ignored quietly

FOUND, AMBIGUOUS, NOT_FOUND = "found", "ambiguous", "not_found"


def resolve(
    text: str, ids: Iterable[str], top_level: Callable[[str], bool]
) -> tuple[str, list[str]]:
    """(FOUND, [id]) | (AMBIGUOUS, candidates) | (NOT_FOUND, []) for ``text``,
    an id or an id prefix.  A prefix of several ids picks the one top-level
    job among them (a cron job, not its ``<cron>@<ms>`` runs)."""
    matches = []
    for job_id in ids:
        if job_id == text:
            return FOUND, [job_id]
        if job_id.startswith(text):
            matches.append(job_id)
    pool = [m for m in matches if top_level(m)] or matches
    if len(pool) == 1:
        return FOUND, pool
    if pool:
        return AMBIGUOUS, sorted(pool)[:MAX_CANDIDATES]
    return NOT_FOUND, []


@attrs.frozen
class Answer:
    """One peer's answer to a query this node asked."""

    peer: str
    status: str
    job_id: str
    owner: str
    detail: str
    answer: bytes


@attrs.define
class _Pending:
    job: str
    asked: set[str]
    hinted_owner: str  # "" when the query went to every peer of the view
    answers: list[Answer] = attrs.field(factory=list)


class LocalJobs:
    """What the answerer needs to know about this node's jobs (the node core
    passes its owner's)."""

    def __init__(
        self,
        ids: Callable[[], Iterable[str]],
        top_level: Callable[[str], bool],
        submitter: Callable[[str], str],
    ) -> None:
        self.ids, self.top_level, self.submitter = ids, top_level, submitter


class QueryDesk:
    def __init__(self, node_id: str, out: Outbox, directory: Directory, local: LocalJobs) -> None:
        self.node_id = node_id
        self.out = out
        self.directory = directory
        self.local = local
        self.hints: OrderedDict[str, str] = OrderedDict()  # job id -> owner
        self.pending: dict[str, _Pending] = {}
        self.done: OrderedDict[str, tuple[_Pending, list[str]]] = OrderedDict()
        self.served: dict[tuple[str, str], float] = {}  # (peer, query id) -> give up at
        # Peers asked by a query that closed before they answered: an honest
        # late answer is ignored, not counted against its sender.
        self.late: OrderedDict[str, set[str]] = OrderedDict()

    # --- hints ------------------------------------------------------------------

    def learn(self, job_id: str, owner: str) -> None:
        """``owner`` owns ``job_id`` (it asked for bids or granted a lease for it)."""
        if owner == self.node_id or not job_id:
            return
        self.hints[job_id] = owner
        self.hints.move_to_end(job_id)
        while len(self.hints) > MAX_HINTS:
            self.hints.popitem(last=False)

    def owner_of(self, text: str) -> tuple[str, str]:
        """(job id, owner) of the one hinted job ``text`` names, else ("", "")."""
        status, found = resolve(text, self.hints, lambda job_id: "@" not in job_id)
        if status != FOUND:
            return "", ""
        return found[0], self.hints[found[0]]

    # --- asker ------------------------------------------------------------------

    def ask(self, event: QueryJob) -> None:
        if event.query_id in self.pending or event.query_id in self.done:
            raise LocalProtocolError(f"query {event.query_id} already asked")
        if event.op not in QUERY_OPS:
            raise LocalProtocolError(f"operation {event.op!r} is not forwarded to a job's owner")
        if len(self.pending) >= MAX_PENDING:
            raise LocalProtocolError(f"{MAX_PENDING} job queries in flight already; try again")
        if len(event.args.encode()) > MAX_QUERY_ARGS:
            raise LocalProtocolError(f"query arguments over {MAX_QUERY_ARGS} bytes")
        job_id, owner = self.owner_of(event.job)
        if owner:
            targets = [owner]
        else:
            job_id = event.job
            targets = [p for p in self.directory.peers if p != self.node_id][:MAX_FANOUT]
        pending = _Pending(job=job_id, asked=set(targets), hinted_owner=owner)
        self.pending[event.query_id] = pending
        query = JobQuery(query_id=event.query_id, op=event.op, job=job_id, args=event.args)
        for peer in targets:
            self.out.send(peer, query)
        if targets:
            self.out.timer(QueryTimer(QUERY, event.query_id), self.out.now + event.timeout)
        else:
            self._close(event.query_id)

    def on_answer(self, sender: str, msg: JobAnswer) -> None:
        pending = self.pending.get(msg.query_id)
        late = self.late.get(msg.query_id)
        if pending is None and late is not None and sender in late:
            late.discard(sender)  # answered after the query closed: harmless
            return
        if pending is None or sender not in pending.asked:
            raise RemoteProtocolError(f"job_answer {msg.query_id} was not asked of {sender}")
        if msg.status not in QUERY_STATUSES:
            raise RemoteProtocolError(f"job_answer status {msg.status!r} is not a status")
        if msg.status == "ok":
            _check_answer(msg.answer)
        pending.asked.discard(sender)
        pending.answers.append(
            Answer(sender, msg.status, msg.job_id, msg.owner, msg.detail, msg.answer)
        )
        if msg.status == "ok":
            self.learn(msg.job_id, sender)
        if not pending.asked or (msg.status == "ok" and msg.job_id == pending.job):
            self._close(msg.query_id)

    def on_timer(self, query_id: str) -> None:
        if query_id in self.pending:
            self._close(query_id)

    def _close(self, query_id: str) -> None:
        pending = self.pending.pop(query_id)
        self.out.cancel_timer(QueryTimer(QUERY, query_id))
        silent = sorted(pending.asked)
        if silent:
            self.late[query_id] = set(silent)
            while len(self.late) > MAX_CLOSED:
                self.late.popitem(last=False)
        self.done[query_id] = (pending, silent)
        while len(self.done) > MAX_PENDING:  # answers nobody took (the asker gave up)
            self.done.popitem(last=False)
        self.out.notify(
            "job_query_done",
            query_id=query_id,
            answers=len(pending.answers),
            silent=len(silent),
        )

    def take(self, query_id: str) -> tuple[list[Answer], str, list[str]]:
        """(answers, hinted owner, peers that did not answer) of a closed query."""
        pending, silent = self.done.pop(query_id)
        return pending.answers, pending.hinted_owner, silent

    # --- answerer ---------------------------------------------------------------

    def on_query(self, sender: str, msg: JobQuery) -> None:
        if msg.op not in QUERY_OPS:
            raise RemoteProtocolError(f"job_query for operation {msg.op!r}: not answered")
        try:
            args = json.loads(msg.args)
        except (ValueError, RecursionError):  # (4 KiB of "[" nests past the recursion limit)
            args = None
        if not isinstance(args, dict):
            raise RemoteProtocolError("job_query args are not a JSON object")
        status, found = resolve(msg.job, self.local.ids(), self.local.top_level)
        if status == NOT_FOUND:
            _job_id, owner = self.owner_of(msg.job)
            self._reply(sender, msg.query_id, "not_found", owner=owner)
            return
        if status == AMBIGUOUS:
            self._reply(sender, msg.query_id, "ambiguous", detail=", ".join(found))
            return
        job_id = found[0]
        if msg.op == "cancel" and sender != self.local.submitter(job_id):
            detail = f"only the node that submitted job {job_id} can stop it"
            self._reply(sender, msg.query_id, "refused", job_id=job_id, detail=detail)
            return
        key = (sender, msg.query_id)
        if key in self.served:
            return  # a copy of a query being answered: answered once
        self._expire_served()
        mine = sum(1 for peer, _ in self.served if peer == sender)
        if mine >= MAX_SERVED_PER_PEER or len(self.served) >= MAX_SERVED:
            self._reply(sender, msg.query_id, "busy", job_id=job_id, detail="too many queries")
            return
        self.served[key] = self.out.now + SERVE_TIMEOUT
        self.out.notify(
            "job_query", peer=sender, query_id=msg.query_id, op=msg.op, job_id=job_id, args=args
        )

    def answer(self, event: AnswerQuery) -> None:
        """The driver ran a query's operation: send its answer."""
        if self.served.pop((event.peer, event.query_id), None) is None:
            return  # expired meanwhile: the asker has given up
        if event.status not in QUERY_STATUSES:
            raise LocalProtocolError(f"answer status {event.status!r} is not a status")
        status, detail, answer = event.status, event.detail, event.answer
        if len(answer) > MAX_ANSWER_BYTES:
            status, answer = "too_large", b""
            detail = f"the answer is over {MAX_ANSWER_BYTES // 1024} KiB"
        self._reply(
            event.peer,
            event.query_id,
            status,
            job_id=event.job_id,
            detail=detail,
            answer=answer,
            owner=self.node_id,
        )

    def _expire_served(self) -> None:
        for key in [k for k, at in self.served.items() if at <= self.out.now]:
            del self.served[key]

    def _reply(
        self,
        peer: str,
        query_id: str,
        status: str,
        *,
        job_id: str = "",
        owner: str = "",
        detail: str = "",
        answer: bytes = b"",
    ) -> None:
        self.out.send(
            peer,
            JobAnswer(
                query_id=query_id,
                status=status,
                job_id=job_id,
                owner=owner,
                detail=detail[:4096],
                answer=answer,
            ),
        )


def _check_answer(data: bytes) -> Any:
    """An ``ok`` answer must be the JSON object {"events": [...], "result": ...}."""
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        raise RemoteProtocolError("job_answer is not valid JSON") from None
    if not (
        isinstance(answer, dict) and isinstance(answer.get("events"), list) and "result" in answer
    ):
        raise RemoteProtocolError("job_answer is not {events, result}")
    return answer
