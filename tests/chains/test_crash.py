"""THE crash test: a three-agent chain over 32 inputs while agent processes are SIGKILLed at
random moments and restarted by `loopbus up`. Every input reaches its terminal outcome, none is
lost, no terminal outcome (and no emitted event, no finding) is duplicated, and the final report
is complete."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from chain_helpers import CRASH_CHAIN, make_workspace, read_status, spawn, write_chain

from loopbus.agents.chains.supervisor import state_dir_for
from loopbus.bus import SyncBus

N_INPUTS = 32

CHAIN = CRASH_CHAIN


@pytest.mark.slow
def test_chain_survives_random_sigkills(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path
) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    ws = make_workspace(tmp_path / "ws", N_INPUTS)
    out = tmp_path / "out"
    cfg = write_chain(
        tmp_path / "chain.toml", CHAIN, model=tiny_model_path, workspace=ws, output=out
    )
    with SyncBus(bus_file) as bus:
        scan = bus.publish("scan.request", {})
        inputs = [
            bus.publish(
                "file.found",
                {"path": f"mod{i:02d}.py", "scan": scan, "index": i, "total": N_INPUTS},
            )
            for i in range(N_INPUTS)
        ]
    log = tmp_path / "up.log"
    up = spawn(
        "--bus",
        str(bus_file),
        "up",
        str(cfg),
        "--no-live",
        "--until-idle",
        "--timeout",
        "240",
        "--max-crashes",
        "1000",
        log=log,
    )
    status_dir = state_dir_for(bus_file)
    kills: list[tuple[str, str]] = []
    killed: set[int] = set()
    try:
        # Kill random agent processes at random moments: at least 12 kills, 3 of them in the
        # middle of a run, and on until some restarted process has resumed an interrupted run
        # (at most 40 kills), unless the chain finishes first.
        # The chain is fast (~100 runs in a few seconds): start as soon as an agent is busy.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and up.poll() is None:
            states = [read_status(f).get("state") for f in status_dir.glob("*.status.json")]
            if "running" in states:
                break
            time.sleep(0.05)
        mid_run = 0

        def resumed_so_far() -> int:
            return sum(p.read_text().count(" resuming ") for p in status_dir.glob("*.log"))

        while (
            up.poll() is None
            and len(kills) < 40
            and (len(kills) < 12 or mid_run < 3 or resumed_so_far() == 0)
        ):
            time.sleep(rng.uniform(0.05, 0.6))
            live = [s for f in status_dir.glob("*.status.json") if (s := read_status(f)).get("pid")]
            if not live:
                continue
            # mostly hit processes in the middle of a run: that is where state can be lost
            # A process killed already may still show in its status file until the supervisor
            # restarts it (and, unreaped, still accepts signals): it is not a new kill.
            live = [s for s in live if s["pid"] not in killed]
            if not live:
                continue
            running = [s for s in live if s.get("state") == "running"]
            victim = rng.choice(running if running and rng.random() < 0.75 else live)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.add(victim["pid"])
            kills.append((victim["consumer"], victim.get("state", "?")))
            mid_run += victim.get("state") == "running"
        assert up.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
    assert len(kills) >= 5, kills  # the chain must not have finished before the chaos

    with SyncBus(bus_file) as bus:
        outcomes = bus.events(types=["run.outcome"])
        per_run = Counter(e.run_id for e in outcomes)
        assert max(per_run.values()) == 1, per_run.most_common(3)  # never twice
        by_agent = Counter(e.agent for e in outcomes)
        assert by_agent == {"checker": N_INPUTS, "digester": N_INPUTS, "tally": N_INPUTS}
        # every input reached its terminal outcome, in the run caused by it
        assert {e.caused_by for e in outcomes if e.agent == "checker"} == set(inputs)
        for stage, emitted in (("checker", "review.done"), ("digester", "digest.done")):
            events = bus.events(types=[emitted])
            assert len(events) == N_INPUTS, (emitted, len(events))
            assert len({e.payload["trigger_id"] for e in events}) == N_INPUTS
            assert {e.run_id.split("-e")[0] for e in events} == {stage}
        paths = Counter(e.payload["path"] for e in bus.events(types=["file.digest"]))
        assert paths == {f"mod{i:02d}.py": 1 for i in range(N_INPUTS)}
        findings = Counter(
            (e.payload["path"], e.payload["kind"], e.payload["line"])
            for e in bus.events(types=["finding"])
        )
        assert max(findings.values()) == 1
        # mod01 has a test file; every third module has a TODO
        assert len(findings) == (N_INPUTS - 1) + len(range(0, N_INPUTS, 3))
        # every cursor of the chain is at (or, committed past while idle, beyond) the end of
        # what it subscribes to
        cursors = {c.consumer: c.last_seen_id for c in bus.cursors()}
        assert min(cursors["checker#0/2"], cursors["checker#1/2"]) >= inputs[-1]
        assert cursors["digester"] >= bus.events(types=["review.done"])[-1].id
    report = (out / "report.md").read_text()
    assert f"{N_INPUTS}/{N_INPUTS} files reviewed (complete)" in report
    for i in range(N_INPUTS):
        assert f"- [x] `mod{i:02d}.py` (" in report
    restarts = log.read_text().count("restarting in")
    assert restarts >= len(kills) - 1  # the last kill may land while the chain stops
    resumed = resumed_so_far()
    assert resumed >= 1  # some kill interrupted a run, and a restarted process resumed it
    print(f"{len(kills)} SIGKILLs ({Counter(state for _, state in kills)}), {resumed} runs resumed")
