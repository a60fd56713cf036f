"""Plain progress for logs and CI (agents/observe/progress.py) and `loopbus run`'s model lines."""

from __future__ import annotations

import re
from pathlib import Path

from loopbus.agents.chains.config import load_config
from loopbus.agents.chains.supervisor import Supervisor
from loopbus.agents.observe.progress import ChainProgress, model_call_rates, stamped, timestamp
from loopbus.bus import SyncBus

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


def test_run_says_it_loads_the_model_and_prints_timestamped_lines_with_rates(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    from click.testing import CliRunner

    from loopbus.agents.cli import main

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("alpha\n", encoding="utf-8")
    args = ["--bus", str(tmp_path / "bus.db"), "run", "assistant", "What is in notes.txt?"]
    args += ["--model", str(tiny_model_path), "--workspace", str(workspace), "--max-turns", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output  # the tiny model's answer is random
    err = result.stderr.splitlines()
    assert re.fullmatch(STAMP + rf" loading model {re.escape(str(tiny_model_path))} \.\.\.", err[0])
    assert re.fullmatch(STAMP + r" loaded in \d+\.\ds \(\d+ tokens of context\)", err[1])
    events = result.stdout.splitlines()[:-1]  # the last line is the outcome
    assert events and all(re.match(STAMP + r" #\d+ ", line) for line in events), events
    model_lines = [line for line in events if " model: " in line]
    assert model_lines and all(
        re.search(r"\(prefill \d+ tok/s, decode \d+ tok/s\)$", line) for line in model_lines
    ), model_lines
    # --json is for machines: JSON lines only, no progress chatter on either stream
    quiet = CliRunner().invoke(main, [*args, "--json"])
    assert "loading model" not in quiet.output
