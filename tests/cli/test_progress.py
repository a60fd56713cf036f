"""Plain progress for logs and CI (agents/progress.py) and `loopbus run`'s model lines."""

from __future__ import annotations

import re
from pathlib import Path

from agents.config import load_config
from agents.progress import ChainProgress, model_call_rates, stamped, timestamp
from agents.supervisor import Supervisor
from bus import SyncBus

REPO = Path(__file__).resolve().parents[2]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_timestamps_are_utc_iso_seconds() -> None:
    assert timestamp(0) == "1970-01-01T00:00:00Z"
    assert re.fullmatch(STAMP + " hello", stamped("hello"))


def test_model_call_rates_count_only_uncached_prompt_tokens() -> None:
    payload = {
        "prompt_tokens": 120,
        "cached_tokens": 20,
        "completion_tokens": 30,
        "prefill_s": 0.5,
        "decode_s": 1.5,
    }
    assert model_call_rates(payload) == (200.0, 20.0)
    assert model_call_rates({"prompt_tokens": 5, "prefill_s": 0.0}) == (None, None)
    assert model_call_rates({}) == (None, None)


def test_chain_progress_prints_each_outcome_once_and_a_periodic_status(tmp_path: Path) -> None:
    bus_file = tmp_path / "bus.db"
    config = load_config(REPO / "agents" / "examples" / "review.toml")
    sup = Supervisor(config, bus_file)  # not started: its slots are all "pending"
    lines: list[str] = []
    now = [100.0]
    progress = ChainProgress(bus_file, lines.append, every=10, clock=lambda: now[0])

    progress(sup)  # no bus file yet: only the first status line
    assert len(lines) == 1 and re.match(STAMP + r" \[status\] 0s: scanner pending", lines[0])
    assert "reviewer#0/2 pending" in lines[0] and lines[0].endswith("| outcomes: none")

    with SyncBus(bus_file) as bus:
        for n in range(30):  # more than the supervisor's recent-events window keeps
            kind = "done" if n % 3 else "max_turns"
            bus.publish(
                "run.outcome",
                {"kind": kind, "summary": f"answer {n}\n\x1b[2J"},
                agent="reviewer",
                run_id=f"reviewer-e{n}",
            )
    now[0] += 3
    progress.log("reviewer#0/2: started pid 42")
    progress(sup)  # every outcome once; no status line: 3 s < 10 s
    runs = [line for line in lines if "[run]" in line]
    assert len(runs) == 30 and len(lines) == 32
    assert re.fullmatch(STAMP + r" \[up\] reviewer#0/2: started pid 42", lines[1])
    assert re.fullmatch(
        STAMP + r" \[run\] reviewer reviewer-e0 max_turns: answer 0 \\x1b\[2J", runs[0]
    )
    progress(sup)
    assert len(lines) == 32  # nothing new, not due
    now[0] += 10
    progress(sup)
    assert "[status] 13s:" in lines[-1] and "outcomes: done 20, max_turns 10" in lines[-1]
    progress.finish(sup)
    assert "[status]" in lines[-1] and len(lines) == 34
