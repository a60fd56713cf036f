"""prompt_record stores a run's prompt template once per run state: a new state of the same run
(a resume, a replay, the next example of a property test) stores it again, even when it reuses
the address of a dead one (keying on id() skipped it, and its prompts could not be rebuilt)."""

from __future__ import annotations

from agents.decide import get_decider
from agents.eventlog import EventLog, LogEvent
from agents.runs import prompt_record


class _State:
    """What prompt_record reads of a RunState: its run id and its event log. (A RunState's
    address is seldom reused at once; this small object's is, which is the case to test.)"""

    def __init__(self) -> None:
        self.run_id = "assistant-same"
        self.log = EventLog()
        self.log.append(LogEvent("run.task", "2026-01-01T00:00:00Z", {"task": "t"}), pinned=True)


def test_a_new_state_at_a_dead_states_address_records_the_template() -> None:
    decider = get_decider("Assistant")
    state = _State()
    messages = decider.messages(state.log.render())
    # Plain statements, not asserts: pytest's rewritten asserts keep their operands alive.
    first, again = prompt_record(state, messages), prompt_record(state, messages)
    dead = id(state)
    del state
    assert "prompt_template" in first and "prompt_template" not in again  # once per state
    found = None
    # Freed at once (no cycle): the next object of its size usually gets its address. No
    # gc.collect() in between: it allocates, and the address goes elsewhere.
    for _ in range(500):  # new states of the same run, until one gets the dead one's address
        candidate = _State()
        if id(candidate) == dead:
            found = candidate
            break
        del candidate
    assert found is not None, "no state reused the address: this test proved nothing"
    record = prompt_record(found, messages)
    assert "prompt_template" in record
