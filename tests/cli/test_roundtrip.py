"""Property: any JSON payload published with the CLI comes back unchanged from `tail --json`
and from `sql --json` (as the stored compact JSON text)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopbus.agents.cli import main

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
AGENTS = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() == s and "\x00" not in s)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=JSON_VALUES, agent=AGENTS)
def test_publish_then_tail_round_trips(tmp_path: Path, payload: object, agent: str) -> None:
    bus = str(tmp_path / "roundtrip.db")
    runner = CliRunner()
    published = runner.invoke(
        main,
        ["--bus", bus, "publish", "prop.check", "-", "--agent", agent],
        input=json.dumps(payload),
        catch_exceptions=False,
    )
    assert published.exit_code == 0, published.output
    event_id = int(published.stdout)

    tailed = runner.invoke(
        main, ["--bus", bus, "tail", "--json", "-n", "1"], catch_exceptions=False
    )
    record = json.loads(tailed.stdout)
    assert (record["id"], record["agent"], record["payload"]) == (event_id, agent, payload)

    row = runner.invoke(
        main,
        [
            "--bus",
            bus,
            "sql",
            "SELECT payload FROM outbox WHERE id = ?",
            "-p",
            str(event_id),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert json.loads(json.loads(row.stdout)["payload"]) == payload
