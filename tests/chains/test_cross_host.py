"""Chains across hosts: two `loopbus up` supervisors on one PostgreSQL bus, each running half
of a chain's instances (`--share 0/2`, `--share 1/2`), while agent processes of both are
SIGKILLed at random and one supervisor is SIGKILLed and started again (a host failure). Every input reaches its terminal outcome once: no event is lost, no
outcome, emitted event or finding is duplicated, and the final report is complete."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from chain_helpers import CRASH_CHAIN, REPO, make_workspace, read_status, write_chain

import loopbus.bus as loopbus
from loopbus.agents.chains.supervisor import state_dir_for
from loopbus.bus.postgres.testing import fresh_schema

N_INPUTS = 24

# checker (2 processes) -> digester -> tally; in config order the instances are checker#0/2,
# checker#1/2, digester, tally, so share 0/2 runs checker#0/2 + digester and share 1/2 runs
# checker#1/2 + tally: every stage after the first crosses from one supervisor to the other.
CHAIN = CRASH_CHAIN


def _up(url: str, cfg: Path, share: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "loopbus.agents.cli", "--bus", url, "up", str(cfg), "--no-live"]
    argv += ["--share", share, "--max-crashes", "1000"]
    with log.open("ab") as fh:
        return subprocess.Popen(
            argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def _done(bus: object, inputs: list[int]) -> bool:
    outcomes = bus.events(types=["run.outcome"])  # type: ignore[attr-defined]
    tally = [e for e in outcomes if e.agent == "tally"]
    return len(outcomes) >= 3 * len(inputs) and len(tally) >= len(inputs)


@pytest.mark.slow
def test_two_supervisors_split_a_chain_and_survive_sigkills(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "11")))
    ws = make_workspace(tmp_path / "ws", N_INPUTS)
    out = tmp_path / "out"
    cfg = write_chain(
        tmp_path / "chain.toml", CHAIN, model=tiny_model_path, workspace=ws, output=out
    )
    with fresh_schema("chain") as url, loopbus.open(url) as bus:
        scan = bus.publish("scan.request", {})
        inputs = [
            bus.publish(
                "file.found",
                {"path": f"mod{i:02d}.py", "scan": scan, "index": i, "total": N_INPUTS},
            )
            for i in range(N_INPUTS)
        ]
        hosts = [tmp_path / "host0", tmp_path / "host1"]
        for host in hosts:
            host.mkdir()
        ups = [_up(url, cfg, f"{k}/2", hosts[k], tmp_path / f"up{k}.log") for k in range(2)]
        status_dirs = []
        for host in hosts:
            os.chdir(host)
            try:
                status_dirs.append(state_dir_for(url))  # relative to each supervisor's cwd
            finally:
                os.chdir(REPO)
        kills: list[tuple[str, str]] = []
        killed: set[int] = set()

        def resumed_so_far() -> int:
            return sum(
                p.read_text().count(" resuming ") for d in status_dirs for p in d.glob("*.log")
            )

        try:
            deadline = time.monotonic() + 240
            mid_run = 0
            while time.monotonic() < deadline and not _done(bus, inputs):
                assert all(up.poll() is None for up in ups), "a supervisor exited"
                time.sleep(rng.uniform(0.05, 0.5))
                # At least 12 kills, 4 of them in the middle of a run, and on until a restarted
                # process resumed an interrupted run (at most 40 kills).
                if len(kills) >= 40 or (len(kills) >= 12 and mid_run >= 4 and resumed_so_far() > 0):
                    continue  # enough chaos: let the chain finish
                live = [
                    s
                    for d in status_dirs
                    for f in d.glob("*.status.json")
                    if (s := read_status(f)).get("pid") and s["pid"] not in killed
                ]
                # Hit processes mid-run (where state can be lost) or waiting for events; one
                # still loading its model has nothing to lose.
                running = [s for s in live if s.get("state") == "running"]
                idle = [s for s in live if s.get("state") == "idle"]
                pool = running if running and (rng.random() < 0.75 or not idle) else idle
                if not pool:
                    continue
                victim = rng.choice(pool)
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.add(victim["pid"])
                kills.append((victim["consumer"], victim.get("state", "?")))
                mid_run += victim.get("state") == "running"
                if len(kills) == 6:
                    # A host fails: its supervisor dies by SIGKILL too (its workers follow
                    # within half a second, freeing their leases) and is started again at once.
                    ups[1].kill()
                    ups[1].wait()
                    ups[1] = _up(url, cfg, "1/2", hosts[1], tmp_path / "up1-restarted.log")
            assert _done(bus, inputs), [p.read_text()[-2000:] for p in tmp_path.glob("up*.log")]
            # Idle a moment: a duplicate would show up now if anything were redone.
            time.sleep(2)
        finally:
            for up in ups:
                if up.poll() is None:
                    up.send_signal(signal.SIGTERM)
            for up in ups:
                try:
                    up.wait(30)
                except subprocess.TimeoutExpired:
                    up.kill()
        assert len(kills) >= 8 and mid_run >= 2, kills  # the chain must not finish first
        # The restarted supervisor got its instances back (the leases of the dead one's
        # workers were free) rather than refusing to start.
        host1 = (tmp_path / "up1-restarted.log").read_text()
        assert "checker#1/2: started pid" in host1 and "tally: started pid" in host1, host1
        assert "already running" not in host1
        assert resumed_so_far() >= 1  # a killed run was resumed by a restarted process
        consumers_by_host = [
            {s["consumer"] for f in d.glob("*.status.json") if (s := read_status(f))}
            for d in status_dirs
        ]
        assert consumers_by_host == [{"checker#0/2", "digester"}, {"checker#1/2", "tally"}]

        outcomes = bus.events(types=["run.outcome"])
        per_run = Counter(e.run_id for e in outcomes)
        assert max(per_run.values()) == 1, per_run.most_common(3)  # never twice
        by_agent = Counter(e.agent for e in outcomes)
        assert by_agent == {"checker": N_INPUTS, "digester": N_INPUTS, "tally": N_INPUTS}
        assert {e.caused_by for e in outcomes if e.agent == "checker"} == set(inputs)
        for stage, emitted in (("checker", "review.done"), ("digester", "digest.done")):
            events = bus.events(types=[emitted])
            assert len(events) == N_INPUTS, (emitted, len(events))
            assert len({e.payload["trigger_id"] for e in events}) == N_INPUTS
            assert {e.run_id.split("-e")[0] for e in events} == {stage}
        findings = Counter(
            (e.payload["path"], e.payload["kind"], e.payload["line"])
            for e in bus.events(types=["finding"])
        )
        assert max(findings.values()) == 1
        assert len(findings) == (N_INPUTS - 1) + len(range(0, N_INPUTS, 3))
    report = (out / "report.md").read_text()
    assert f"{N_INPUTS}/{N_INPUTS} files reviewed (complete)" in report
    print(f"{len(kills)} SIGKILLs ({Counter(state for _, state in kills)}), {mid_run} mid-run")
