"""The ``RunPython`` tool: agent-written code runs in the MicroPython/WASI sandbox (loopbus.agents.sandbox.core).

One sandbox session per run (variables survive between turns, like a notebook), kept in the
run's ``ToolContext.resources`` and closed with the run. A snippet that traps (fuel, memory,
wall clock) discards the session: the model gets an error event saying so and the next snippet
starts fresh. Markdown fences around the code are stripped first (small models add them).

Limits are per agent: :func:`set_sandbox_limits` (called by the agent process with the
chain config's ``[agents.NAME.sandbox]`` table) applies to every run of that agent name in
this process; agents without an entry get :class:`loopbus.agents.sandbox.core.SandboxLimits` defaults.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from loopbus.agents.tools.core import ToolContext, ToolError, register_tool

if TYPE_CHECKING:
    from loopbus.agents.sandbox.types import SandboxLimits

_LIMITS: dict[str, SandboxLimits] = {}
_LIMITS_LOCK = threading.Lock()


def set_sandbox_limits(agent: str, limits: SandboxLimits | None) -> None:
    """Use ``limits`` for the sandbox of every later run of ``agent`` (None: the defaults).

    A run keeps the limits its sandbox session was created with.
    """
    with _LIMITS_LOCK:
        if limits is None:
            _LIMITS.pop(agent, None)
        else:
            _LIMITS[agent] = limits


def sandbox_limits(agent: str) -> SandboxLimits | None:
    """The limits registered for ``agent`` (None: the defaults)."""
    with _LIMITS_LOCK:
        return _LIMITS.get(agent)


def run_python(call: Any, ctx: ToolContext) -> str:
    """Run ``call.code`` in the run's sandbox session; its output is the tool result."""
    from loopbus.agents.sandbox.core import Sandbox, extract_code

    sandbox = ctx.resources.get("sandbox")
    if sandbox is None:
        sandbox = Sandbox(
            sandbox_limits(ctx.agent),
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


def register_run_python() -> None:
    """Register RunPython (not idempotent: a snippet may publish, and the session is stateful)."""
    from loopbus.baml_client import types

    register_tool(
        types.RunPython,
        run_python,
        idempotent=False,
        replace=True,
        description="run MicroPython code in the sandbox",
    )
