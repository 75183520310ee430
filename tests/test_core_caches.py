"""The protocol core's per-message caches give the answers of the code they
stand in for (issue 16, simnet core).

* ``Directory.candidates`` keeps each requirement signature's matching peers
  up to date entry by entry instead of rebuilding them at every view change:
  after any sequence of joins, hearsay, changed infos, evictions, goodbyes
  and expiries it picks exactly what a from-scratch scan picks.
* Eviction drops the least recently heard entry (ties by id), never the
  newcomer, also when every entry was heard at the same instant.
* ``protocols.spec.memo.check_task`` validates a task once per value: an
  equal task is not validated again, an invalid one always is, and a task
  that cannot be keyed exactly (a tuple inside) is validated every time.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from typing import Any

import pytest

from protocols import codec
from protocols.directory import Directory, can_run
from protocols.errors import LocalProtocolError
from protocols.messages import Hello, NodeInfo
from protocols.spec import SpecValidationError
from protocols.spec import memo as spec_memo
from simnet.workload import sim_task

SIGNATURES: list[tuple[dict[str, str], str, float, int]] = [
    ({}, "sim", 1.0, 2**20),
    ({"zone": "a"}, "sim", 1.0, 2**20),
    ({"zone": "b"}, "sim", 2.0, 2**20),
    ({}, "docker", 1.0, 2**20),
    ({}, "sim", 4.0, 2**30),
]


def _info(rng: random.Random, node_id: str) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        labels={"zone": rng.choice("abc")},
        cpu=rng.choice([1.0, 2.0, 4.0]),
        memory=rng.choice([2**20, 2**30]),
        executors=rng.choice([["sim"], ["sim", "docker"], ["docker"]]),
        compute=rng.random() < 0.9,
    )


def _reference(d: Directory, key: str, labels: dict[str, str], engine: str, cpu: float,
               memory: int, count: int, avoid: set[str]) -> tuple[list[str], int]:
    """The candidates a from-scratch scan of the view picks (the old code)."""
    infos = [d.me, *(e.info for e in d.peers.values())]
    matching = [i.node_id for i in infos if can_run(i, labels, engine, cpu, memory)]
    prefix = key.encode() + b"|"
    ranked = sorted(matching, key=lambda n: (n in avoid, zlib.crc32(prefix + n.encode()), n))
    return ranked[:count], len(matching)


@pytest.mark.parametrize("seed", range(6))
def test_candidates_match_a_from_scratch_scan_through_any_view_churn(seed: int) -> None:
    rng = random.Random(seed)
    me = _info(rng, "me")
    d = Directory(me, view_size=8, rng=random.Random(seed))
    ids = [f"p{i:02d}" for i in range(30)]
    now = 0.0
    for step in range(400):
        now += rng.choice([0.0, 0.0, 0.5, 3.0])
        op = rng.random()
        peer = rng.choice(ids)
        if op < 0.45:
            d.upsert(_info(rng, peer), now, direct=True)  # hello (maybe new labels)
        elif op < 0.65:
            d.upsert(_info(rng, peer), now, direct=False)  # hearsay
        elif op < 0.75:
            d.remove(peer, now, "said goodbye")
        elif op < 0.8:
            d.expire(now, max_age=10.0)
        else:
            d.touch(peer, now)
        labels, engine, cpu, memory = rng.choice(SIGNATURES)
        count = rng.choice([0, 1, 2, 4, 16])
        avoid = set(rng.sample(ids, rng.choice([0, 0, 2])))
        key = f"j{step}/0/{rng.randint(1, 5)}"
        got = d.candidates(key=key, labels=labels, engine=engine, cpu=cpu, memory=memory,
                           count=count, avoid=avoid)
        want = _reference(d, key, labels, engine, cpu, memory, count, avoid)
        if count <= 0:
            want = ([], want[1])
        assert got == want, f"step {step}"


def test_eviction_drops_the_oldest_entry_and_never_the_newcomer() -> None:
    rng = random.Random(1)
    d = Directory(_info(rng, "me"), view_size=3, rng=rng)
    for i, node in enumerate(["c", "a", "b"]):
        d.upsert(NodeInfo(node_id=node), float(i), direct=True)
    d.upsert(NodeInfo(node_id="d"), 5.0, direct=True)
    assert set(d.peers) == {"a", "b", "d"}  # c, heard at 0.0, was the oldest

    # Everyone heard at this very instant: ties go by id, the newcomer stays
    # even with the smallest id.
    same = Directory(_info(rng, "me"), view_size=3, rng=rng)
    for node in ["y", "x", "z"]:
        same.upsert(NodeInfo(node_id=node), 7.0, direct=True)
    same.upsert(NodeInfo(node_id="a"), 7.0, direct=True)
    assert set(same.peers) == {"a", "y", "z"}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    spec_memo.forget()
    calls: list[Any] = []
    real = spec_memo.validate_task

    def counting(task: Any, *, canonical: bool = True) -> Any:
        calls.append(task)
        return real(task, canonical=canonical)

    monkeypatch.setattr(spec_memo, "validate_task", counting)
    yield calls
    spec_memo.forget()


def test_an_equal_task_is_validated_once(counted: list[Any]) -> None:
    spec_memo.check_task(sim_task(1000))
    spec_memo.check_task(sim_task(1000))  # equal value, another object
    assert len(counted) == 1
    spec_memo.check_task(sim_task(2000))  # another value
    assert len(counted) == 2


def test_an_invalid_task_is_validated_and_refused_every_time(counted: list[Any]) -> None:
    task = sim_task(1000)
    task["engine"]["type"] = "no-such-engine"
    for expected_calls in (1, 2):
        with pytest.raises(SpecValidationError):
            spec_memo.check_task(task)
        assert len(counted) == expected_calls


def test_a_task_that_cannot_be_keyed_exactly_is_validated_each_time(counted: list[Any]) -> None:
    task = sim_task(1000)
    task["engine"]["args"] = ("a", "b")  # a tuple: not packed with strict types
    for _ in range(2):
        with contextlib.suppress(SpecValidationError):
            spec_memo.check_task(task)
    assert len(counted) == 2


@pytest.mark.parametrize(("seed", "backwards"), [(s, b) for s in range(4) for b in (False, True)])
def test_a_full_view_evicts_what_a_from_scratch_scan_evicts(seed: int, backwards: bool) -> None:
    """Oldest last_seen first, ties by id, never the newcomer; also if the
    clock ever went back (the recency order is then abandoned for a scan)."""
    rng = random.Random(seed)
    d = Directory(_info(rng, "me"), view_size=6, rng=random.Random(seed))
    ids = [f"p{i:02d}" for i in range(20)]
    now = 0.0
    for step in range(500):
        step_back = backwards and rng.random() < 0.05
        now = max(0.0, now - 2.0) if step_back else now + rng.choice([0.0, 0.0, 0.5, 2.0])
        peer = rng.choice(ids)
        op = rng.random()
        if op < 0.5:
            full_newcomer = peer not in d.peers and len(d.peers) >= d.view_size \
                and peer not in d.departed
            before = {n: e.last_seen for n, e in d.peers.items()}
            d.upsert(NodeInfo(node_id=peer), now, direct=True)
            if full_newcomer:
                victim = min(before, key=lambda n: (before[n], n))
                assert victim not in d.peers and peer in d.peers, f"step {step}"
                assert set(d.peers) == (set(before) - {victim}) | {peer}
        elif op < 0.8:
            d.touch(peer, now)
        elif op < 0.9:
            d.upsert(NodeInfo(node_id=peer), now, direct=False)
        else:
            d.remove(peer, now, "said goodbye")


def _expire_by_scan(d: Directory, now: float, max_age: float, keep: set[str]) -> list[str]:
    """The peers ``expire`` must drop, in its order: a scan of the view."""
    return [n for n, e in d.peers.items() if now - e.last_seen > max_age and n not in keep]


@pytest.mark.parametrize(("seed", "backwards"), [(s, b) for s in range(4) for b in (False, True)])
def test_expiry_drops_what_a_scan_of_the_view_drops(seed: int, backwards: bool) -> None:
    """``expire`` skips its scan when the oldest entry is fresh: it still
    drops exactly the silent entries (in view order), also when the clock
    went back once and when the oldest is kept."""
    rng = random.Random(seed)
    d = Directory(_info(rng, "me"), view_size=6, rng=random.Random(seed))
    ids = [f"p{i:02d}" for i in range(12)]
    now = 0.0
    expired_some = skipped = 0
    for step in range(600):
        step_back = backwards and rng.random() < 0.03
        now = max(0.0, now - 2.0) if step_back else now + rng.choice([0.0, 0.5, 1.0, 3.0])
        peer = rng.choice(ids)
        op = rng.random()
        if op < 0.3:
            d.upsert(NodeInfo(node_id=peer), now, direct=True)
        elif op < 0.55:
            d.touch(peer, now)
        elif op < 0.65:
            d.upsert(NodeInfo(node_id=peer), now, direct=rng.random() < 0.5)
        elif op < 0.7:
            d.remove(peer, now, "said goodbye")
        else:
            keep = set(rng.sample(ids, rng.choice([0, 0, 1, 3])))
            max_age = rng.choice([2.0, 5.0, 10.0])
            want = _expire_by_scan(d, now, max_age, keep)
            before = set(d.peers)
            got = d.expire(now, max_age, keep=keep)
            assert got == want, f"step {step}"
            assert set(d.peers) == before - set(want)
            expired_some += bool(want)
            skipped += not want
    assert expired_some > 10 and skipped > 10  # both branches were exercised


def test_a_planted_expiry_shortcut_that_looks_at_the_newest_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Directory.expire

    def planted(self: Directory, now: float, max_age: float, keep: Any = ()) -> list[str]:
        # Planted bug: trusts the *newest* entry to say that nothing is stale.
        if self._recent and now - self.peers[next(reversed(self._recent))].last_seen <= max_age:
            return []
        return real(self, now, max_age, keep)

    monkeypatch.setattr(Directory, "expire", planted)
    with pytest.raises(AssertionError):
        test_expiry_drops_what_a_scan_of_the_view_drops(0, False)


def test_the_is_shortcut_before_comparing_node_infos_changes_no_answer() -> None:
    """``a is b or a == b`` equals ``a == b`` for every NodeInfo the codec
    lets in: only a NaN field makes an info unequal to itself, and the codec
    refuses NaN (a view's infos all come from decoded frames or records of them)."""
    rng = random.Random(5)
    for i in range(50):
        info = _info(rng, f"p{i}")
        frame = codec.encode(Hello(info=info), msg_id="m:0:1", sender=info.node_id)
        decoded = codec.decode(frame).message.info
        assert decoded == decoded
    nan = NodeInfo(node_id="x", cpu=float("nan"))
    assert nan != nan  # why the shortcut needs the codec's guarantee
    with pytest.raises(LocalProtocolError):
        codec.encode(Hello(info=nan), msg_id="m:0:1", sender="x")
