"""The agent loop: ``decision = decide(context)``; Done ends the run, any other decision is a typed
tool call whose result joins the context; repeat. :func:`step` is exactly one turn, :func:`run`
the bare while-loop around it.

Public API (used by the CLI and by chains of agent processes)::

    run_agent(agent: str, task: str, *, runtime, bus: SyncBus, workspace: Path | None = None,
              max_turns: int = 12, budget: float = 0.4, elide: bool = False,
              run_id: str | None = None, caused_by: int | None = None,
              on_event: Callable[[Event], None] | None = None,
              output: Path | None = None, refuse: str | None = None,
              name: str | None = None, sandbox: SandboxLimits | None = None) -> Outcome
    resume_run(run_id, *, runtime, bus, workspace=None, on_event=None, output=None) -> Outcome
    unfinished_runs(bus, agent) -> list[str]
    Outcome(kind: "done" | "budget_exceeded" | "max_turns" | "failed", run_id, summary, reason)

* Every event of a run goes to the bus as it happens (``run.*`` types, ``run_id`` and the agent
  name on each; see :mod:`loopbus.agents.run.state`); ``on_event`` sees each one after it is committed.
* ``caused_by`` is the event that triggered the run: ``run.task``, ``run.outcome`` and every
  event the Publish tool emits carry it (or the ``run.task`` id when there is no trigger).
  Tools read it (``ctx.trigger()``) and the bus (``ctx.bus``); ``output`` is the folder
  writing tools write to (a chain's ``output``).
* ``run_agent`` with the ``run_id`` of a run already on the bus resumes it instead of starting
  a second one, so a deterministic run id per trigger makes redelivery safe.
* A run event the bus refuses to store (over its payload limit, not valid UTF-8) ends the run
  ``failed`` with the reason; a run read back with a malformed event (forged, corrupt) ends
  ``failed`` saying what is malformed; ``refuse`` records a run that fails at once.
* ``sandbox``: the run's RunPython sandbox limits (None: the agent's default). Limits other
  than that default are recorded in the run's settings, so resume and replay use them too.
* ``resume_run`` continues from the first step without a recorded result: recorded decisions are
  not asked of the model again; a ``run.tool_call`` without a result is re-run when the tool is
  idempotent, else reported to the model as "outcome unknown after crash"; a run that already
  has an outcome returns it without publishing anything.
* Lower level (stable, used by chains of agent processes): ``step(state, runtime, decider)``,
  ``run(state, runtime, decider)``, :func:`loopbus.agents.run.turn.new_run` / :func:`loopbus.agents.run.turn.rebuild`
  (a :class:`~loopbus.agents.run.state.RunState` from scratch or from the bus),
  :func:`loopbus.agents.run.turn.call_tool` and :class:`~loopbus.agents.run.state.RunSettings`.
* ``budget``: before each model call the rendered prompt is counted with
  ``runtime.count_tokens``; over ``budget * runtime.context_window`` the run ends with
  ``budget_exceeded`` unless ``elide`` drops the oldest unpinned events first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loopbus.agents.errors import AgentError
from loopbus.agents.run import turn
from loopbus.agents.run.decide import Decider, get_decider
from loopbus.agents.run.events import RunEventType
from loopbus.agents.run.state import Outcome, RunSettings, RunState, RunUnrecordable
from loopbus.agents.sandbox.types import SandboxLimits

__all__ = ["Outcome", "resume_run", "run", "run_agent", "step", "unfinished_runs"]


def step(state: RunState, runtime: Any, decider: Decider) -> Outcome | None:
    """Exactly one turn; returns the outcome once the run has ended, else None."""
    from loopbus.baml_client.types import Done

    if state.outcome is not None:
        return state.outcome
    if state.pending_call is not None:  # resumed: a tool call without a recorded result
        turn.recover_call(state, decider)
        return None
    if state.pending is None:
        if state.turn >= state.settings.max_turns:
            return turn.finish(state, "max_turns", reason=f"no answer after {state.turn} turns")
        if (ended := turn.ask_model(state, runtime, decider)) is not None:
            return ended
        if state.pending is None:  # unparseable answer, error fed back; retry next turn
            return None
    match state.pending:
        case Done(summary=summary):
            return turn.finish(state, "done", summary=summary)
        case decision if getattr(decision, "action", None) == "done":  # a user client's Done
            return turn.finish(state, "done", summary=str(getattr(decision, "summary", "")))
        case decision:
            turn.call_tool(state, decision)
            return None


def run(state: RunState, runtime: Any, decider: Decider) -> Outcome:
    """Step until the run has its outcome; per-run resources are closed at the end.

    A run event the bus refused to store has already ended the run ``failed``
    (:class:`~loopbus.agents.run.state.RunUnrecordable`): that outcome is returned.
    """
    try:
        while (outcome := step(state, runtime, decider)) is None:
            pass
        return outcome
    except RunUnrecordable:
        if state.outcome is None:
            raise
        return state.outcome
    finally:
        state.ctx.close()


def run_agent(
    agent: str,
    task: str,
    *,
    runtime: Any,
    bus: Any,
    workspace: Path | None = None,
    max_turns: int = 12,
    budget: float = 0.4,
    elide: bool = False,
    run_id: str | None = None,
    caused_by: int | None = None,
    on_event: Callable[[Any], None] | None = None,
    output: Path | None = None,
    refuse: str | None = None,
    name: str | None = None,
    sandbox: SandboxLimits | None = None,
) -> Outcome:
    """Run ``agent`` on ``task`` to its outcome (or resume ``run_id`` if it is already on the bus).

    ``agent`` is a reference (:func:`loopbus.agents.builtin.get_agent`); ``name`` the name the
    run is recorded under when it is not the reference (a chain agent configured under another
    name than its ``kind``): the reference is then recorded too (settings ``agent_ref``).

    ``refuse``: record the run with its task and end it ``failed`` with this reason, without
    asking the model (a chain agent's trigger that it cannot handle).

    ``sandbox``: this run's RunPython sandbox limits, None = the agent's default
    (``Agent(sandbox=...)``). Recorded in the run's settings when they differ from that
    default; a resumed run keeps the limits it recorded (``sandbox`` is then ignored).
    """
    from loopbus.agents.builtin import get_agent

    if run_id is not None and bus.events(run_id=run_id, types=[RunEventType.TASK], limit=1):
        return resume_run(
            run_id, runtime=runtime, bus=bus, workspace=workspace, on_event=on_event, output=output
        )
    spec = get_agent(agent)
    if sandbox == (spec.sandbox or SandboxLimits()):
        sandbox = None  # the default: not recorded (the run's settings stay as they were)
    try:
        settings = RunSettings(
            agent=name or spec.name,
            agent_ref=spec.name if name and name != spec.name else None,
            function=spec.function_for(runtime.context_window, budget),
            max_turns=max_turns,
            budget=budget,
            elide=elide,
            workspace=str(Path(workspace).resolve()) if workspace else None,
            model=runtime.spec,
            context_window=runtime.context_window,
            supports_schema=runtime.supports_schema,
            max_tokens=spec.max_tokens,
            policy=spec.policy,
            sandbox=sandbox,
        )
    except ValidationError as exc:
        raise AgentError(
            f"invalid run settings: {exc.errors()[0]['loc'][0]}: "
            f"{exc.errors()[0]['msg']} (budget is in (0, 1], max_turns >= 0)"
        ) from None
    decider = get_decider(settings.function)
    state = turn.new_run(
        settings,
        task,
        runtime=runtime,
        bus=bus,
        run_id=run_id,
        caused_by=caused_by,
        on_event=on_event,
        output=output,
        refuse=refuse,
    )
    return run(state, runtime, decider)


def resume_run(
    run_id: str,
    *,
    runtime: Any,
    bus: Any,
    workspace: Path | None = None,
    on_event: Callable[[Any], None] | None = None,
    output: Path | None = None,
) -> Outcome:
    """Continue a run from the bus (see the module docstring); never re-asks recorded decisions.

    A run with a malformed event (forged or corrupt) ends ``failed`` with a reason that says
    what is malformed, instead of raising.
    """
    state, decider = turn.rebuild(
        bus, run_id, runtime=runtime, workspace=workspace, on_event=on_event, output=output
    )
    if state.outcome is not None:
        state.ctx.close()
        return state.outcome
    if state.malformed is not None or decider is None:
        try:
            return turn.finish(state, "failed", reason=state.malformed)
        except RunUnrecordable:
            return state.outcome  # type: ignore[return-value]
        finally:
            state.ctx.close()
    _ = state.ctx.spec  # resolves the run's agent: UnknownAgent before any turn
    return run(state, runtime, decider)


def unfinished_runs(bus: Any, agent: str) -> list[str]:
    """Run ids of ``agent`` that have a ``run.task`` on the bus but no ``run.outcome``."""
    return bus.unfinished_runs(agent)
