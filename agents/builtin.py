"""Agents by name: the built-ins, users' :class:`loopbus.agents.agent.Agent` objects and references.

Built-in agents (``Agent`` objects below, on loopbus's own ``baml_client``; also published as
entry points in the ``loopbus.agents`` group):

* ``assistant`` (``Assistant``: ListDir | ReadFile | Done) answers a question about a workspace;
* ``coder`` (``Coder``: RunPython | Done) solves a task with small MicroPython programs;
* ``watcher`` (``Watcher``: ListDir | ReadFile | Publish | Done) reads workspace files and
  publishes what it finds as events on the bus for other agents;
* ``answer`` (``Answer``: Done) answers the task directly, without tools (one model call).

:func:`get_agent` also takes a reference to a user's agent: ``module:attr`` (an ``Agent``; the
current directory is importable, as with ``python -m``) or the name of an entry point in the
``loopbus.agents`` group. The reference is the run's recorded agent name, so resume and replay
in a fresh process resolve it again.

:func:`register_agent` (a name bound to a function of loopbus's own client) is a compatibility
shim kept for the chain agents, chain configs' ``kind`` and the benchmarks.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from loopbus.agents.agent import Agent
from loopbus.agents.errors import AgentError
from loopbus.agents.run.policy import AGENT_POLICIES, Policy

#: The entry-point group where packages publish their agents (``name = "module:attr"``).
ENTRY_POINT_GROUP = "loopbus.agents"


class UnknownAgent(AgentError):
    """No agent is registered under this name."""


@dataclass(frozen=True)
class AgentDef:
    """A registered agent: its name, what it does, its BAML function, its tool names and its
    decoding policy (:mod:`loopbus.agents.run.policy`)."""

    name: str
    description: str
    function: str
    tools: tuple[str, ...]
    max_tokens: int = 256
    policy: Policy = Policy()
    #: Prompt variants: ``(function, min_tokens)``, the first whose ``min_tokens`` the run's
    #: budget (``context_window * budget``) holds replaces ``function`` (recorded per run).
    variants: tuple[tuple[str, int], ...] = ()
    #: Default sandbox limits (``SandboxLimits``) of its RunPython tool; None: the defaults.
    sandbox: Any = None

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
AGENT_PLUGINS: tuple[str, ...] = ("loopbus.agents.examples.chain_agents:register",)
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
    :data:`loopbus.agents.run.policy.AGENT_POLICIES`, else none). ``variants``: prompt variants for models
    with more room (see :attr:`AgentDef.variants`); each must return the same decision types.
    """
    from loopbus.agents.run.decide import get_decider

    _ensure_builtin_tools()
    decider = get_decider(function)
    from loopbus.agents.tools.core import action_name, tool_for

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
    if name in _AGENTS:
        return _AGENTS[name]
    agent = resolve_reference(name) if ":" in name else _entry_point(name)
    if agent is None:
        known = ", ".join(sorted(_AGENTS))
        raise UnknownAgent(
            f"unknown agent {name!r}; available agents: {known} (or module:attr of an Agent)"
        )
    _AGENTS[name] = agent.definition(name)
    if agent.sandbox is not None:
        from loopbus.agents.tools.python import sandbox_limits, set_sandbox_limits

        if sandbox_limits(name) is None:  # limits set explicitly (loopbus run --sandbox-*) win
            set_sandbox_limits(name, agent.sandbox)
    return _AGENTS[name]


def resolve_reference(reference: str) -> Agent:
    """The :class:`~loopbus.agents.agent.Agent` that ``module:attr`` names (UnknownAgent if none).

    The current directory is importable (as with ``python -m``), so ``loopbus run
    my_agents:summarizer`` finds ``./my_agents.py``.
    """
    module_name, _, attr = reference.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownAgent(
            f"cannot import {module_name!r} for agent {reference!r}: {exc}"
        ) from None
    agent: Any = module
    for part in attr.split("."):
        agent = getattr(agent, part, None)
    if not isinstance(agent, Agent):
        raise UnknownAgent(
            f"{reference!r} is not an agent: {module_name} has no Agent named {attr!r}"
        )
    return agent


def _entry_point(name: str) -> Agent | None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        agent = ep.load()
        if not isinstance(agent, Agent):
            raise UnknownAgent(f"entry point {name!r} ({ep.value}) is not an agent")
        return agent
    return None


def list_agents() -> list[AgentDef]:
    """Every registered agent, by name."""
    _ensure_builtin_agents()
    return [_AGENTS[name] for name in sorted(_AGENTS)]


@functools.cache
def _ensure_builtin_tools() -> None:
    from loopbus.agents.tools.core import register_builtins

    register_builtins()


assistant = Agent(
    "assistant",
    "loopbus.baml_client",
    "Assistant",
    "answers a question about the files of a workspace (lists and reads files)",
    max_tokens=160,
    policy=AGENT_POLICIES["assistant"],
    # No prompt variant: with its decoding policy the compact prompt answered 8/20 of the
    # held-out suite with SmolLM2-135M, the worked-runs `AssistantTurns` 3/20 (it lists
    # compulsively, then reads README.md); the same on a development seed (3/12 vs 1/12).
    # Add ("AssistantTurns", ASSISTANT_TURNS_MIN_TOKENS) here for a model measured better
    # with it (`make bench BENCH=agents`).
    variants=ASSISTANT_VARIANTS,
)
coder = Agent(
    "coder",
    "loopbus.baml_client",
    "Coder",
    "solves a task by running small MicroPython programs in the sandbox",
    max_tokens=384,
    policy=AGENT_POLICIES.get("coder", Policy()),
)
watcher = Agent(
    "watcher",
    "loopbus.baml_client",
    "Watcher",
    "reads workspace files and publishes what it finds as events for other agents",
    max_tokens=384,
    policy=AGENT_POLICIES.get("watcher", Policy()),
)
answer = Agent(
    "answer",
    "loopbus.baml_client",
    "Answer",
    "answers the task directly, without tools (one model call)",
    max_tokens=256,
    policy=AGENT_POLICIES.get("answer", Policy()),
)
#: The built-in agents (their tools are loopbus's built-in tools, loopbus.agents.tools.core).
BUILTINS: tuple[Agent, ...] = (assistant, coder, watcher, answer)


def _ensure_builtin_agents() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: plugins call list_agents() while registering
    _ensure_builtin_tools()
    for agent in BUILTINS:
        if agent.name not in _AGENTS:
            _AGENTS[agent.name] = agent.definition()
    for plugin in AGENT_PLUGINS:
        module_name, attr = plugin.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        getattr(module, attr)()
