"""Test helpers for agent runs: a committed recording becomes a one-line replay test::

    from loopbus.agents.testing import assert_replays

    def test_version_question():
        assert_replays("tests/runs/smollm2_version.xml", workspace="tests/fixtures/workspace")

:class:`CountingRuntime` wraps a real runtime to count model calls (resume tests);
:class:`~loopbus.models.scripted.ScriptedRuntime` (re-exported here) answers each model call with the
next scripted decision, to test an agent's tools and flow without a model. In pytest, the
``replay`` fixture of :mod:`loopbus.agents.pytest_plugin` wraps :func:`assert_replays` and re-records
with ``--loopbus-rerecord``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopbus.agents.run.replay import Recording, ReplayReport, replay
from loopbus.models.scripted import ScriptedRuntime

__all__ = ["CountingRuntime", "ScriptedRuntime", "assert_replays"]


def assert_replays(recording: str | Path, *, workspace: str | Path | None = None) -> ReplayReport:
    """Replay an exported recording (no model loaded); AssertionError with the diff if it diverges.

    ``workspace`` replaces the workspace recorded in the run (recordings store an absolute path).
    """
    rec = Recording.from_xml(Path(recording).read_text(encoding="utf-8"))
    report = replay(rec, workspace=Path(workspace) if workspace is not None else None)
    if not report.ok:
        raise AssertionError(f"{recording} does not replay:\n{report.diff}")
    return report


class CountingRuntime:
    """Wraps a real runtime to count generate() calls (the model still runs: this is no mock).

    ``supports_schema=False`` turns constrained decoding off (free-form output, as on a plain
    OpenAI-compatible server); ``context_window`` overrides the window the budget uses.
    """

    def __init__(
        self, inner: Any, *, supports_schema: bool | None = None, context_window: int | None = None
    ) -> None:
        self.inner = inner
        self.calls = 0
        self.spec = inner.spec
        self.context_window = context_window or inner.context_window
        self.supports_schema = inner.supports_schema if supports_schema is None else supports_schema

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        return self.inner.count_tokens(messages)

    def count_text(self, text: str) -> int:
        return self.inner.count_text(text)

    def new_cache(self) -> object:
        return self.inner.new_cache()

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner.generate(messages, **kwargs)
