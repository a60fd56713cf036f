"""Agents by reference: the built-ins, the example chain agents and users' Agent objects.

Built-in agents (:class:`~loopbus.agents.agent.Agent` objects below, on loopbus's own
``baml_client``, their tools bound like a user's ``@agent.tool``; also published as entry
points in the ``loopbus.agents`` group):

* ``assistant`` (``Assistant``: ListDir | ReadFile | Done) answers a question about a workspace;
* ``coder`` (``Coder``: RunPython | Done) solves a task with small MicroPython programs;
* ``watcher`` (``Watcher``: ListDir | ReadFile | Publish | Done) reads workspace files and
  publishes what it finds as events for other agents;
* ``answer`` (``Answer``: Done) answers the task directly, without tools (one model call).

:func:`get_agent` resolves a reference to an :class:`~loopbus.agents.agent.AgentSpec`: a
built-in's name, an example chain agent's name (:data:`loopbus.agents.examples.chain_agents.AGENTS`),
``module:attr`` of an ``Agent`` (the current directory is importable, as with ``python -m``) or
the name of an entry point in the ``loopbus.agents`` group. Runs record the reference, so resume
and replay in a fresh process resolve it again. Nothing registers into this module: the tables
are immutable, built from the Agent objects.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from types import MappingProxyType
from typing import Any

from loopbus.agents.agent import Agent, AgentSpec
from loopbus.agents.errors import AgentError
from loopbus.agents.run.policy import EXPLORE, WATCH
from loopbus.agents.tools.core import list_dir, publish, read_file
from loopbus.agents.tools.python import run_python

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "UnknownAgent",
    "answer",
    "assistant",
    "coder",
    "get_agent",
    "list_agents",
    "resolve_reference",
    "watcher",
]

#: The entry-point group where packages publish their agents (``name = "module:attr"``).
ENTRY_POINT_GROUP = "loopbus.agents"


class UnknownAgent(AgentError):
    """No agent answers to this reference."""


#: The budget (in tokens) the worked-examples prompt `AssistantTurns` needs (with a few turns).
ASSISTANT_TURNS_MIN_TOKENS = 2048
#: The `assistant`'s prompt variants (see AgentSpec.variants and the note where it is defined).
ASSISTANT_VARIANTS: tuple[tuple[str, int], ...] = ()

assistant = Agent(
    "assistant",
    "loopbus.baml_client",
    "Assistant",
    "answers a question about the files of a workspace (lists and reads files)",
    max_tokens=160,
    policy=EXPLORE,
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
)
watcher = Agent(
    "watcher",
    "loopbus.baml_client",
    "Watcher",
    "reads workspace files and publishes what it finds as events for other agents",
    max_tokens=384,
    policy=WATCH,
)
answer = Agent(
    "answer",
    "loopbus.baml_client",
    "Answer",
    "answers the task directly, without tools (one model call)",
    max_tokens=256,
)

# The built-in tools, bound by class name (binding does not import the BAML client).
for _agent in (assistant, watcher):
    _agent.bind("ListDir", list_dir, description="list a workspace directory")
    _agent.bind("ReadFile", read_file, description="read a workspace file")
watcher.bind("Publish", publish, idempotent=False, description="publish an event for other agents")
# Not idempotent: a snippet may publish, and the sandbox session is stateful.
coder.bind("RunPython", run_python, idempotent=False, description="run MicroPython code")

#: The built-in agents by name.
BUILTINS: Mapping[str, Agent] = MappingProxyType(
    {a.name: a for a in (assistant, coder, watcher, answer)}
)


def _examples() -> Mapping[str, Agent]:
    """The example chain agents by name (none when the examples are not installed)."""
    try:
        from loopbus.agents.examples.chain_agents import AGENTS
    except ModuleNotFoundError as exc:
        if exc.name not in ("loopbus.agents.examples", "loopbus.agents.examples.chain_agents"):
            raise
        return MappingProxyType({})
    return AGENTS


def get_agent(reference: str) -> AgentSpec:
    """The agent ``reference`` names, resolved (see the module docstring); UnknownAgent if none.

    The spec's name is ``reference``, so a run records what finds its agent again.
    """
    agent = BUILTINS.get(reference) or _examples().get(reference)
    if agent is None:
        agent = resolve_reference(reference) if ":" in reference else _entry_point(reference)
    if agent is None:
        known = ", ".join(sorted({*BUILTINS, *_examples()}))
        raise UnknownAgent(
            f"unknown agent {reference!r}; available agents: {known} (or module:attr of an Agent)"
        )
    return agent.definition(reference)


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


def list_agents(references: Iterable[str] = ()) -> list[AgentSpec]:
    """The built-in and example agents, plus the agents ``references`` name, by name."""
    names = {*BUILTINS, *_examples(), *references}
    return [get_agent(name) for name in sorted(names)]
