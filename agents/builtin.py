"""The agent registry: an agent is a BAML decision function plus the tools of its return union.

Built-in agents:

* ``assistant`` (``Assistant``: ListDir | ReadFile | Done) answers a question about a workspace;
* ``coder`` (``Coder``: RunPython | Done) solves a task with small MicroPython programs;
* ``watcher`` (``Watcher``: ListDir | ReadFile | Publish | Done) reads workspace files and
  publishes what it finds as events on the bus for other agents;
* ``answer`` (``Answer``: Done) answers the task directly, without tools (one model call).

Other modules add agents the same way (their ``baml_src/<agent>.baml`` defines the function)::

    from agents.builtin import register_agent
    register_agent("reviewer", "Reviewer", "reads a file and publishes findings")

The tool names are derived from the function's return type in ``baml_client`` so the registry
cannot disagree with the prompt; every member except Done must have a registered tool.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from agents.errors import AgentError
from agents.policy import AGENT_POLICIES, Policy


class UnknownAgent(AgentError):
    """No agent is registered under this name."""


@dataclass(frozen=True)
class AgentDef:
    """A registered agent: its name, what it does, its BAML function, its tool names and its
    decoding policy (:mod:`agents.policy`)."""

    name: str
    description: str
    function: str
    tools: tuple[str, ...]
    max_tokens: int = 256
    policy: Policy = Policy()
    #: Prompt variants: ``(function, min_tokens)``, the first whose ``min_tokens`` the run's
    #: budget (``context_window * budget``) holds replaces ``function`` (recorded per run).
    variants: tuple[tuple[str, int], ...] = ()

    def function_for(self, context_window: int, budget: float) -> str:
        """The BAML function a run with this much room uses (see ``variants``)."""
        for function, min_tokens in self.variants:
            if context_window * budget >= min_tokens:
                return function
        return self.function


#: The budget (in tokens) the worked-examples prompt `AssistantTurns` needs (with a few turns).
ASSISTANT_TURNS_MIN_TOKENS = 2048
#: The `assistant`'s prompt variants (see AgentDef.variants and the note where it registers).
ASSISTANT_VARIANTS: tuple[tuple[str, int], ...] = ()
_AGENTS: dict[str, AgentDef] = {}
#: ``module:function`` hooks that register more agents, loaded with the built-ins when present
#: (so `loopbus agents`, `loopbus run NAME` and resume in a fresh process know them).
AGENT_PLUGINS: tuple[str, ...] = ("agents.chain_agents:register",)
_loaded = False


def register_agent(
    name: str,
    function: str,
    description: str,
    *,
    max_tokens: int = 256,
    replace: bool = True,
    policy: Policy | None = None,
    variants: tuple[tuple[str, int], ...] = (),
) -> AgentDef:
    """Register agent ``name`` driven by BAML function ``function``; returns its AgentDef.

    ``policy``: how its decisions are constrained each turn (default: its entry in
    :data:`agents.policy.AGENT_POLICIES`, else none). ``variants``: prompt variants for models
    with more room (see :attr:`AgentDef.variants`); each must return the same decision types.
    """
    from agents.decide import get_decider

    _ensure_builtin_tools()
    decider = get_decider(function)
    from agents.tools import action_name, tool_for

    for cls in decider.classes:
        tool_for(cls)  # raises UnknownTool with a clear message
    for variant, _ in variants:
        if set(get_decider(variant).classes) != set(decider.classes):
            raise AgentError(f"prompt variant {variant} of {function} returns other types")
    agent = AgentDef(
        name,
        description,
        function,
        tuple(action_name(c) for c in decider.classes),
        max_tokens,
        policy if policy is not None else AGENT_POLICIES.get(name, Policy()),
        variants,
    )
    if name in _AGENTS and not replace:
        raise AgentError(f"agent {name!r} is already registered")
    _AGENTS[name] = agent
    return agent


def get_agent(name: str) -> AgentDef:
    """The agent registered under ``name`` (built-ins are registered on first use)."""
    _ensure_builtin_agents()
    try:
        return _AGENTS[name]
    except KeyError:
        known = ", ".join(sorted(_AGENTS))
        raise UnknownAgent(f"unknown agent {name!r}; available agents: {known}") from None


def list_agents() -> list[AgentDef]:
    """Every registered agent, by name."""
    _ensure_builtin_agents()
    return [_AGENTS[name] for name in sorted(_AGENTS)]


@functools.cache
def _ensure_builtin_tools() -> None:
    from agents.tools import register_builtins

    register_builtins()


def _ensure_builtin_agents() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: plugins call list_agents() while registering
    register_agent(
        "assistant",
        "Assistant",
        "answers a question about the files of a workspace (lists and reads files)",
        max_tokens=160,
        replace=False,
        # No prompt variant: with its decoding policy the compact prompt answered 8/20 of the
        # held-out suite with SmolLM2-135M, the worked-runs `AssistantTurns` 3/20 (it lists
        # compulsively, then reads README.md); the same on a development seed (3/12 vs 1/12).
        # Add ("AssistantTurns", ASSISTANT_TURNS_MIN_TOKENS) here for a model measured better
        # with it (`make bench BENCH=agents`).
        variants=ASSISTANT_VARIANTS,
    )
    register_agent(
        "coder",
        "Coder",
        "solves a task by running small MicroPython programs in the sandbox",
        max_tokens=384,
        replace=False,
    )
    register_agent(
        "watcher",
        "Watcher",
        "reads workspace files and publishes what it finds as events for other agents",
        max_tokens=384,
        replace=False,
    )
    register_agent(
        "answer",
        "Answer",
        "answers the task directly, without tools (one model call)",
        max_tokens=256,
        replace=False,
    )
    for plugin in AGENT_PLUGINS:
        module_name, attr = plugin.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        getattr(module, attr)()
