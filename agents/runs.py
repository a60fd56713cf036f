"""What agents did: the runs on a bus, each run's turn-by-turn timeline, and its exact prompts.

Everything here is read from the bus alone (read-only, :mod:`bus.runs_queries`):

* :func:`list_runs` lists runs (agent, task, outcome, turns, start and end);
* :func:`load_timeline` rebuilds one run turn by turn: the model call (prompt tokens, context
  fill against the budget, completion tokens, time), the decision, the tool call and its result
  or error, and the outcome;
* :func:`rebuild_prompt` rebuilds the exact chat messages of turn N and checks them against the
  recorded ``prompt_sha256``.

The prompt is the decision function's BAML template around the event log. The log is rebuilt
from the run's own events (as a resume does); the template is recorded by
:func:`prompt_record` in ``run.model_call`` (``prompt_template``, with the events replaced by a
placeholder), only when it differs from the one the run recorded last, so a run stores it once.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.errors import AgentError

# Stands for the event log inside a recorded prompt template.
EVENTS_PLACEHOLDER = "\u27e6loopbus:events\u27e7"
# The last template each run recorded, keyed by run id and the RunState's id(): a new state (a
# resumed run, a replay) records it again. Bounded: a long-lived agent process runs many runs.
_recorded: OrderedDict[str, tuple[int, str]] = OrderedDict()
_RECORDED_MAX = 256


class RunNotFound(AgentError):
    """The bus has no run with this id."""


class PromptUnavailable(AgentError):
    """A turn's prompt cannot be rebuilt (not recorded, or it does not match its hash)."""


# --------------------------------------------------------------------------- recording


def _template_sha(template: list[dict[str, Any]]) -> str:
    text = json.dumps(template, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def prompt_record(state: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Fields for a ``run.model_call`` that let :func:`rebuild_prompt` rebuild ``messages``.

    ``messages`` must be the prompt rendered from ``state.log`` as it is now. The template
    (``messages`` with the log replaced by :data:`EVENTS_PLACEHOLDER`) is included only when it
    changed since the run's last call; its sha256 always is. A prompt the log does not appear
    in exactly once is recorded whole (``prompt_messages``).
    """
    events = state.log.render()
    contents = [str(m["content"]) for m in messages]
    if not events or sum(c.count(events) for c in contents) != 1:
        return {
            "prompt_messages": [
                {"role": m["role"], "content": c} for m, c in zip(messages, contents, strict=True)
            ]
        }
    template = [
        {"role": m["role"], "content": c.replace(events, EVENTS_PLACEHOLDER)}
        for m, c in zip(messages, contents, strict=True)
    ]
    sha = _template_sha(template)
    key, mark = state.run_id, (id(state), sha)
    if _recorded.get(key) == mark:
        return {"prompt_template_sha256": sha}
    _recorded[key] = mark
    _recorded.move_to_end(key)
    while len(_recorded) > _RECORDED_MAX:
        _recorded.popitem(last=False)
    return {"prompt_template_sha256": sha, "prompt_template": template}


def _message_sha(messages: list[dict[str, Any]]) -> str:
    # agents.decide.prompt_hash, without importing it (it would pull pydantic into `runs`).
    digest = hashlib.sha256()
    for message in messages:
        content = str(message["content"]).encode("utf-8")
        digest.update(f"{message['role']}\n{len(content)}\n".encode())
        digest.update(content)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading runs


@dataclass
class RunSummary:
    """One run as ``loopbus runs`` lists it (``outcome`` None: no outcome yet)."""

    run_id: str
    agent: str
    task: str
    started_at: str
    ended_at: str | None
    outcome: str | None
    turns: int | None
    detail: str | None
    caused_by: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_runs(
    bus_path: Any,
    *,
    agent: str | None = None,
    outcome: str | None = None,
    limit: int | None = None,
) -> list[RunSummary]:
    """The runs on the bus, newest first; ``outcome`` filters by kind (``running``: none yet)."""
    from bus.runs_queries import runs

    rows = runs(bus_path, agent=agent, outcome=outcome, limit=limit)
    return [
        RunSummary(
            run_id=r["run_id"],
            agent=r["agent"],
            task=r["task"] if isinstance(r["task"], str) else json.dumps(r["task"]),
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            outcome=r["outcome"],
            turns=r["turns"],
            detail=r["detail"],
            caused_by=r["caused_by"],
        )
        for r in rows
    ]


@dataclass
class Turn:
    """One turn of a run: a model call and what it led to."""

    number: int
    started_at: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    model_s: float | None = None  # prefill + decode
    fill: float | None = None  # prompt tokens / context window
    elided: int = 0
    decision: Any = None
    parse_error: str | None = None
    raw: str | None = None  # the model's text, kept for an answer that did not parse
    tool: str | None = None
    args: Any = None
    result: Any = None
    error: str | None = None
    tool_s: float | None = None  # from the tool call's record to its result's
    llm_calls: int = 0
    model_call_id: int | None = None

    @property
    def action(self) -> str | None:
        return self.decision.get("action") if isinstance(self.decision, dict) else None


@dataclass
class Timeline:
    """A run rebuilt from the bus, turn by turn."""

    run_id: str
    agent: str
    task: str
    settings: dict[str, Any]
    started_at: str
    ended_at: str | None = None
    outcome: dict[str, Any] | None = None
    turns: list[Turn] = field(default_factory=list)
    # A run that ended budget_exceeded: the size of the prompt that did not fit.
    over_budget_tokens: int | None = None
    events: list[Any] = field(default_factory=list, repr=False)  # bus.Event, id order

    @property
    def context_window(self) -> int:
        return int(self.settings.get("context_window") or 0)

    @property
    def budget(self) -> float:
        return float(self.settings.get("budget") or 0.4)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("events")
        data["context_window"], data["budget"] = self.context_window, self.budget
        return data


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one ISO-8601 UTC timestamp (the bus's format) to another."""
    from datetime import datetime

    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (b - a).total_seconds()


def _ts(event: Any) -> str:
    payload = event.payload if isinstance(event.payload, dict) else {}
    ts = payload.get("ts")
    return ts if isinstance(ts, str) else event.created_at


def build_timeline(run_id: str, events: list[Any]) -> Timeline:
    """The :class:`Timeline` of a run from its events (id order); RunNotFound without a task."""
    if not events or events[0].event_type != "run.task" or not isinstance(events[0].payload, dict):
        raise RunNotFound(f"no run {run_id!r} on this bus; `loopbus runs` lists the run ids")
    first = events[0]
    settings = first.payload.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    timeline = Timeline(
        run_id=run_id,
        agent=first.agent,
        task=str(first.payload.get("task")),
        settings=settings,
        started_at=_ts(first),
        events=events,
    )
    window = timeline.context_window
    turn: Turn | None = None
    calls: dict[int, Turn] = {}  # tool_call id -> its turn
    call_ts: dict[int, str] = {}
    for event in events[1:]:
        p = event.payload if isinstance(event.payload, dict) else {}
        kind = event.event_type
        if kind == "run.model_call":
            number = p.get("turn") if isinstance(p.get("turn"), int) else len(timeline.turns) + 1
            tokens = p.get("prompt_tokens")
            model_s = (p.get("prefill_s") or 0) + (p.get("decode_s") or 0)
            turn = Turn(
                number=number,
                started_at=_ts(event),
                prompt_tokens=tokens,
                completion_tokens=p.get("completion_tokens"),
                cached_tokens=p.get("cached_tokens"),
                model_s=model_s if ("prefill_s" in p or "decode_s" in p) else None,
                fill=(tokens / window) if isinstance(tokens, int) and window else None,
                elided=p.get("elided") or 0,
                parse_error=p.get("parse_error"),
                raw=p.get("raw") if p.get("parse_error") else None,
                model_call_id=event.id,
            )
            timeline.turns.append(turn)
        elif kind == "run.decision" and turn is not None:
            turn.decision = p.get("decision")
        elif kind == "run.tool_call" and turn is not None:
            turn.tool, turn.args = p.get("tool"), p.get("args")
            calls[event.id], call_ts[event.id] = turn, _ts(event)
        elif kind in ("run.tool_result", "run.error"):
            owner = calls.get(event.caused_by) if event.caused_by is not None else None
            target = owner or turn
            if target is None:
                continue
            if kind == "run.tool_result":
                target.result = p.get("result")
            else:
                target.error = str(p.get("error"))
            if owner is not None:
                target.tool_s = seconds_between(call_ts.get(event.caused_by), _ts(event))
        elif kind == "run.llm_call" and turn is not None:
            turn.llm_calls += 1
        elif kind == "run.outcome":
            timeline.outcome = p
            counts = p.get("counts")
            if p.get("kind") == "budget_exceeded" and isinstance(counts, dict) and counts:
                sizes = [n for n in counts.values() if isinstance(n, int)]
                timeline.over_budget_tokens = max(sizes) if sizes else None
            timeline.ended_at = _ts(event)
    return timeline


def load_timelines(bus_path: Any, run_ids: list[str]) -> list[Timeline]:
    """The timelines of many runs (in the order given), read in one query per 500 runs."""
    from bus.runs_queries import events_of_runs

    by_run: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    for event in events_of_runs(bus_path, run_ids):
        by_run[event.run_id].append(event)
    return [build_timeline(run_id, by_run[run_id]) for run_id in run_ids]


def load_timeline(bus_path: Any, run_id: str) -> Timeline:
    """Run ``run_id`` rebuilt from the bus file (read-only); RunNotFound if it is not there."""
    from bus.runs_queries import run_events

    return build_timeline(run_id, run_events(bus_path, run_id))


# --------------------------------------------------------------------------- exact prompts


def rebuild_prompt(timeline: Timeline, turn: int) -> list[dict[str, Any]]:
    """The exact chat messages of model call ``turn``, checked against its ``prompt_sha256``.

    The context is rebuilt from the run's events before that call (as a resume rebuilds it,
    with the call's recorded elision), the template is the last one the run recorded.
    """
    from agents.eventlog import EventLog, LogEvent
    from agents.runstate import context_view

    call = next((e for e in timeline.events if _is_call(e, turn)), None)
    if call is None:
        numbers = ", ".join(str(t.number) for t in timeline.turns) or "none"
        raise PromptUnavailable(
            f"run {timeline.run_id} has no model call for turn {turn} (its turns: {numbers})"
        )
    template = None
    for event in timeline.events:
        if event.id > call.id:
            break
        if event.event_type == "run.model_call" and "prompt_template" in event.payload:
            template = event.payload["prompt_template"]
    payload = call.payload
    if "prompt_messages" in payload:
        messages = payload["prompt_messages"]
    elif template is None:
        raise PromptUnavailable(
            f"run {timeline.run_id} recorded no prompt template (it predates prompt recording); "
            "only the prompt's sha256 is on the bus"
        )
    else:
        log = EventLog()
        for event in timeline.events:
            if event.id >= call.id:
                break
            try:
                view = context_view(event.event_type, event.payload)
            except (KeyError, TypeError) as exc:
                raise PromptUnavailable(
                    f"event {event.id} of run {timeline.run_id} is malformed ({exc!r})"
                ) from None
            if view is not None:
                pinned = event.event_type == "run.task"
                log.append(LogEvent(event.event_type, _ts(event), view), pinned=pinned)
        if payload.get("elided"):
            log.elide_oldest(int(payload["elided"]))
        events = log.render()
        messages = [
            {"role": m["role"], "content": m["content"].replace(EVENTS_PLACEHOLDER, events)}
            for m in template
        ]
    expected = payload.get("prompt_sha256")
    actual = _message_sha(messages)
    if expected != actual:
        raise PromptUnavailable(
            f"the prompt rebuilt for turn {turn} of run {timeline.run_id} does not match the "
            f"recorded hash (recorded {expected}, rebuilt {actual})"
        )
    return messages


def _is_call(event: Any, turn: int) -> bool:
    return (
        event.event_type == "run.model_call"
        and isinstance(event.payload, dict)
        and event.payload.get("turn") == turn
    )
