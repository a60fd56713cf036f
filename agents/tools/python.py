"""The ``RunPython`` tool: agent-written code runs in the MicroPython/WASI sandbox (loopbus.agents.sandbox.core).

One sandbox session per run (variables survive between turns, like a notebook), kept in the
run's ``ToolContext.resources`` and closed with the run. A snippet that traps (fuel, memory,
wall clock) discards the session: the model gets an error event saying so and the next snippet
starts fresh. Markdown fences around the code are stripped first (small models add them).
Agents bind :func:`run_python` to ``RunPython`` (not idempotent: a snippet may publish, and the
session is stateful), as the built-in ``coder`` does.

Limits: the run's own (``run_agent(..., sandbox=...)``, recorded in its ``run.task`` settings so
resume and replay use them too; a chain agent's ``[agents.NAME.sandbox]`` table, ``loopbus run
--sandbox-*``), else the agent's default (``Agent(sandbox=...)``), else
:class:`loopbus.agents.sandbox.core.SandboxLimits` defaults. Nothing is process-wide: two runs
of one agent in a process may use different limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loopbus.agents.errors import AgentError
from loopbus.agents.tools.core import ToolContext, ToolError

if TYPE_CHECKING:
    from loopbus.agents.sandbox.types import SandboxLimits


def limits_for(ctx: ToolContext) -> SandboxLimits | None:
    """The sandbox limits of a run: its own (``ctx.sandbox``), else its agent's default."""
    if ctx.sandbox is not None:
        return ctx.sandbox
    try:
        return ctx.spec.sandbox
    except AgentError:  # a context made outside a run, for an agent no reference resolves
        return None


def run_python(call: Any, ctx: ToolContext) -> str:
    """Run ``call.code`` in the run's sandbox session; its output is the tool result."""
    from loopbus.agents.sandbox.core import Sandbox, extract_code

    sandbox = ctx.resources.get("sandbox")
    if sandbox is None:
        sandbox = Sandbox(
            limits_for(ctx),
            workspace=ctx.workspace,
            publish=ctx.publish,
            llm=ctx.llm,
        )
        ctx.resources["sandbox"] = sandbox
    result = sandbox.run(extract_code(call.code))
    if result.trapped:
        raise ToolError(
            result.to_text(max_chars=2000) + "\n[the sandbox was restarted: "
            "variables from earlier turns are gone]"
        )
    if not result.ok:
        raise ToolError(result.to_text(max_chars=2000))
    return result.to_text()
