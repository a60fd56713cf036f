"""A scripted model runtime for users' tests: each model call answers the next scripted decision.

::

    from loopbus.models.scripted import ScriptedRuntime

    runtime = ScriptedRuntime([
        {"action": "count_lines", "path": "notes.txt"},
        {"action": "done", "summary": "3 lines"},
    ])
    outcome = run_agent("my_agents:counter", "How many lines?", runtime=runtime, bus=bus, ...)

Nothing is generated and no model is loaded: the agent's loop, prompt rendering, parsing,
tools and bus recording all run for real. Decisions are dicts, pydantic objects or raw text
(text that does not parse becomes a parse-error turn, as a model's would). A decision outside
the turn's schema (the agent's decoding policy would never let a model emit it), or a call
after the script is used up, raises :class:`loopbus.models.errors.ModelError`: the run ends ``failed``
and says why. Tokens are counted by ``counter`` (a real runtime: the real budget) or as
characters / 4.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

from loopbus.models.errors import ModelError
from loopbus.models.runtime import Generation
from loopbus.models.schema import violation


def _text(decision: Any) -> str:
    if isinstance(decision, str):
        return decision
    if hasattr(decision, "model_dump"):
        decision = decision.model_dump(mode="json")
    return json.dumps(decision, ensure_ascii=False)


class ScriptedRuntime:
    """A model runtime (``loopbus.models.runtime.Runtime``) that answers from a script.

    ``calls`` counts model calls; ``prompts`` keeps each call's chat messages (for assertions
    on what the model was shown).
    """

    supports_schema = True

    def __init__(
        self,
        decisions: Iterable[Any],
        *,
        counter: Any = None,
        context_window: int | None = None,
        spec: str = "scripted",
    ) -> None:
        self.answers = [_text(d) for d in decisions]
        self.counter = counter
        self.spec = spec
        self.context_window = context_window or (counter.context_window if counter else 8192)
        self.calls = 0
        self.prompts: list[list[dict[str, Any]]] = []

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens: the counter's, else characters / 4."""
        if self.counter is not None:
            return self.counter.count_tokens(messages)
        return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 4 * len(messages)

    def count_text(self, text: str) -> int:
        """Tokens of ``text``: the counter's, else characters / 4."""
        if self.counter is not None:
            return self.counter.count_text(text)
        return max(1, len(text) // 4)

    def new_cache(self) -> None:
        """No prefix cache: nothing is prefilled."""
        return None

    def generate(
        self, messages: list[dict[str, Any]], *, schema: dict[str, Any] | None = None, **_: Any
    ) -> Generation:
        """The next scripted decision (checked against ``schema`` when it is JSON)."""
        self.calls += 1
        self.prompts.append(messages)
        if not self.answers:
            raise ModelError(f"the script has no decision left for model call {self.calls}")
        text = self.answers.pop(0)
        try:
            decision = json.loads(text)
        except json.JSONDecodeError:
            decision = None  # left to the loop's parser (a parse-error turn)
        if schema is not None and isinstance(decision, dict):
            if problem := violation(cast("dict[str, Any]", decision), schema):
                raise ModelError(f"scripted decision {self.calls} is outside the schema: {problem}")
        return Generation(
            text=text,
            prompt_tokens=self.count_tokens(messages),
            cached_tokens=0,
            completion_tokens=self.count_text(text),
            prefill_s=0.0,
            decode_s=0.0,
            finish_reason="stop",
        )
