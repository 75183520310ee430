"""The state diagrams of docs/architecture.md are generated from protocols/states.py."""

from __future__ import annotations

import pytest

from protocols import docgen_states, states


def test_architecture_md_has_the_current_state_diagrams() -> None:
    assert docgen_states.render() in docgen_states.DOC_PATH.read_text(encoding="utf-8"), (
        "docs/architecture.md is stale: run `python -m protocols.docgen_states --write`"
    )
    assert docgen_states.main(["--check"]) == 0


def test_a_table_changed_without_regenerating_is_caught(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A planted drift: one more edge in the DAG task table.
    drifted = {**states.TASK_TRANSITIONS}
    drifted[states.DagTaskState.SKIPPED] = frozenset({states.DagTaskState.RUNNING})
    monkeypatch.setattr(docgen_states, "TASK_TRANSITIONS", drifted)
    assert docgen_states.render() not in docgen_states.DOC_PATH.read_text(encoding="utf-8")
    assert docgen_states.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_every_state_of_every_machine_is_drawn() -> None:
    text = docgen_states.render()
    for machine in (states.SlotState, states.ExecState, states.JobState,
                    states.ExecutionState, states.DagTaskState, states.ChainRole,
                    states.FeedState):
        for state in machine:
            assert f" {state.value} " in text or f" {state.value}\n" in text, state


def test_an_illegal_move_is_refused() -> None:
    from protocols.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError, match="job completed --> running"):
        states.check_job_transition("completed", "running")
    with pytest.raises(LocalProtocolError, match="chain role watching --> former"):
        states.check_role_transition("watching", "former")
    assert states.check_task_transition("waiting", "skipped") is states.DagTaskState.SKIPPED
    assert states.slot_accepts(states.SlotState.BIDDING, states.SlotEvent.BID)
    assert not states.slot_accepts(states.SlotState.QUEUED, states.SlotEvent.BID)
