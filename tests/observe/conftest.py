"""Fixtures of the observability tests: a bus with real runs of the tiny MLX model.

The model is real; its constrained decoding is narrowed, call by call, to the one decision the
test scripts (a ``const`` JSON schema), so the runs take known paths: tool results, a tool
error, elision, max_turns, two agents. Every prompt the model received is kept, so tests can
compare `loopbus show --prompt` with what was really sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.testing import CountingRuntime

FIXTURE_WORKSPACE = Path(__file__).resolve().parents[1] / "fixtures" / "workspace"


def const_schema(decision: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema only ``decision`` satisfies."""
    return {
        "type": "object",
        "properties": {key: {"const": value} for key, value in decision.items()},
        "required": list(decision),
        "additionalProperties": False,
    }


class Scripted(CountingRuntime):
    """The real model, made to choose ``script[i]`` at its i-th call; keeps every prompt."""

    def __init__(self, inner: Any, script: list[dict[str, Any]], **options: Any) -> None:
        super().__init__(inner, **options)
        self.script = script
        self.prompts: list[list[dict[str, Any]]] = []

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.prompts.append([dict(m) for m in messages])
        decision = self.script[self.calls]
        return super().generate(messages, **{**kwargs, "schema": const_schema(decision)})


@dataclass
class ObservedBus:
    """The bus file and, per run id, the prompts its model calls were given."""

    path: Path
    workspace: Path
    prompts: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)

    def run_of(self, outcome: str, agent: str = "assistant") -> str:
        return next(
            r for r, kind in self.outcomes.items() if kind == outcome and r.startswith(agent)
        )


LIST = {"action": "list_dir", "path": "."}
READ = {"action": "read_file", "path": "README.md"}
MISSING = {"action": "read_file", "path": "missing.txt"}


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> ObservedBus:
    """One bus with five runs: done after a tool error (4 turns), max_turns, elided, a watcher."""
    from loopbus.agents.run.loop import run_agent
    from loopbus.bus import SyncBus
    from loopbus.models import load_runtime

    root = tmp_path_factory.mktemp("observed")
    workspace = root / "workspace"
    shutil.copytree(FIXTURE_WORKSPACE, workspace)
    inner = load_runtime(str(tiny_model_path))
    done = {"action": "done", "summary": "Pebble is at version 2.3 <b>&amp;</b>"}
    plans: list[tuple[str, list[dict[str, Any]], dict[str, Any], dict[str, Any]]] = [
        # The tiny model's tokenizer is wordy (the first prompt is ~660 tokens): wide windows.
        ("assistant", [LIST, READ, MISSING, done], {"context_window": 4096}, {"max_turns": 6}),
        ("assistant", [LIST, LIST], {"context_window": 4096}, {"max_turns": 2}),
        # A window whose budget holds two tool results: the oldest events are elided.
        ("assistant", [READ] * 5 + [done], {"context_window": 2500}, {"elide": True}),
        (
            "watcher",
            [LIST, {"action": "done", "summary": "nothing to publish"}],
            {"context_window": 4096},
            {},
        ),
    ]
    observed = ObservedBus(root / "bus.db", workspace)
    with SyncBus(observed.path) as bus:
        for agent, script, runtime_options, run_options in plans:
            runtime = Scripted(inner, script, **runtime_options)
            outcome = run_agent(
                agent,
                "Which version of Pebble is this? <script>alert(1)</script>",
                runtime=runtime,
                bus=bus,
                workspace=workspace,
                **run_options,
            )
            observed.prompts[outcome.run_id] = runtime.prompts
            observed.outcomes[outcome.run_id] = outcome.kind
    return observed


def chromium() -> str:
    """The chromium binary; the test is skipped without one, except on CI (.ci/run installs
    it), where its absence is a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def chromium_run(url: str, tmp: Path, *extra: str, timeout: float = 60) -> str:
    """Run headless chromium on ``url`` with ``extra`` arguments; its stdout."""
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1200,900",
        *extra,
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def loopbus(bus: Path, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """The real command line in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "LOOPBUS_BUS"}
    return subprocess.run(
        [sys.executable, "-m", "loopbus.agents.cli", "--bus", str(bus), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        **options,
    )
