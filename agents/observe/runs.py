"""What agents did: the runs on a bus, each run's turn-by-turn timeline, and its exact prompts.

Everything here is read from the bus alone (read-only, :mod:`loopbus.bus.runs_queries`):

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
import math
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from loopbus.agents.errors import AgentError
from loopbus.agents.run.events import RunEventType

# Stands for the event log inside a recorded prompt template.
EVENTS_PLACEHOLDER = "\u27e6loopbus:events\u27e7"
# The last template each run recorded, keyed by run id, with a weak reference to its RunState:
# a new state (a resumed run, a replay) records it again, even one that reuses a dead state's
# address (an id() would match it). Bounded: a long-lived agent process runs many runs.
_recorded: OrderedDict[str, tuple[Any, str]] = OrderedDict()
_RECORDED_MAX = 256


class RunNotFound(AgentError):
    """The bus has no run with this id (no ``run.task`` event). The one class for it: also
    importable as ``loopbus.agents.run.turn.RunNotFound``."""


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
    key = state.run_id
    last = _recorded.get(key)
    if last is not None and last[0]() is state and last[1] == sha:
        return {"prompt_template_sha256": sha}
    _recorded[key] = (weakref.ref(state), sha)
    _recorded.move_to_end(key)
    while len(_recorded) > _RECORDED_MAX:
        _recorded.popitem(last=False)
    return {"prompt_template_sha256": sha, "prompt_template": template}


def _message_sha(messages: list[dict[str, Any]]) -> str:
    # loopbus.agents.run.decide.prompt_hash, without importing it (it would pull pydantic into `runs`).
    digest = hashlib.sha256()
    for message in messages:
        content = str(message["content"]).encode("utf-8")
        digest.update(f"{message['role']}\n{len(content)}\n".encode())
        digest.update(content)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading runs


@dataclass
class RunSummary:
    """One run as ``loopbus runs`` lists it (``outcome`` None: no outcome yet; ``?``: an
    outcome without a kind). A malformed field of the outcome (a kind, turns or summary that
    is not of its type) is given as its JSON text."""

    run_id: str
    agent: str
    task: str
    started_at: str
    ended_at: str | None
    outcome: str | None
    turns: int | str | None
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
    from loopbus.bus.runs_queries import runs

    rows = runs(bus_path, agent=agent, outcome=outcome, limit=limit)
    found: dict[str, RunSummary] = {}
    for r in rows:
        if r["run_id"] in found:  # a second run.task or run.outcome with this run id
            continue
        kind = as_text(r["outcome"])
        turns = r["turns"]
        found[r["run_id"]] = RunSummary(
            run_id=r["run_id"],
            agent=r["agent"],
            task=r["task"] if isinstance(r["task"], str) else json.dumps(r["task"]),
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            outcome=kind if kind is not None or r["ended_at"] is None else "?",
            turns=turns if turns is None or _count(turns) is not None else as_text(turns),
            detail=as_text(r["detail"]),
            caused_by=r["caused_by"],
        )
    return list(found.values())


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
    outcome: Any = None  # the run.outcome payload (a dict, unless malformed)
    turns: list[Turn] = field(default_factory=list)
    # A run that ended budget_exceeded: the size of the prompt that did not fit.
    over_budget_tokens: int | None = None
    events: list[Any] = field(default_factory=list, repr=False)  # bus.Event, id order

    @property
    def context_window(self) -> int:
        """The model's context window in tokens (0: unknown or malformed)."""
        return _count(self.settings.get("context_window")) or 0

    @property
    def budget(self) -> float:
        """The run's budget, a share of the window (0.4 when unknown or malformed)."""
        budget = self.settings.get("budget")
        if isinstance(budget, int | float) and not isinstance(budget, bool):
            if math.isfinite(budget) and 0 < budget <= 1:
                return float(budget)
        return 0.4

    @property
    def kind(self) -> str:
        """The outcome's kind: ``running`` without one, ``?`` for an outcome without a kind,
        a malformed kind as its JSON text."""
        if self.outcome is None:
            return "running"
        kind = self.outcome.get("kind") if isinstance(self.outcome, dict) else None
        return as_text(kind) or "?"

    @property
    def detail(self) -> str:
        """The outcome's summary or reason (an outcome that is not an object: its JSON text)."""
        if self.outcome is None:
            return ""
        if not isinstance(self.outcome, dict):
            return as_text(self.outcome) or ""
        return as_text(self.outcome.get("summary") or self.outcome.get("reason")) or ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("events")
        data["context_window"], data["budget"] = self.context_window, self.budget
        return data


def parse_time(ts: Any) -> datetime | None:
    """An ISO-8601 timestamp (the bus's format) as an aware datetime (UTC when it names no
    zone); None for anything else, so a forged ``ts`` never breaks arithmetic."""
    if not isinstance(ts, str) or not ts:
        return None
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one ISO-8601 UTC timestamp (the bus's format) to another."""
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def _ts(event: Any) -> str:
    payload = event.payload if isinstance(event.payload, dict) else {}
    ts = payload.get("ts")
    return ts if isinstance(ts, str) and parse_time(ts) is not None else event.created_at


# Payload fields come from the bus: any agent (or a hand-written publish) can put any JSON
# there, so each field is checked here once and the renderers (runs, show, report, serve)
# only ever see text, sane counts and finite seconds.
_MAX_COUNT = 1 << 53


def as_text(value: Any) -> str | None:
    """``value`` as text: a string as it is, None as None, anything else (a malformed field)
    as its JSON text, so it is shown rather than breaking what renders it."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _count(value: Any) -> int | None:
    """A token count or turn number: an int in [0, 2**53), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT:
        return value
    return None


def _seconds(value: Any) -> float | None:
    """A duration: a finite number of seconds in [0, 10**7], else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and 0 <= number <= 1e7:
            return number
    return None


def build_timeline(run_id: str, events: list[Any]) -> Timeline:
    """The :class:`Timeline` of a run from its events (id order); RunNotFound without a task.

    Malformed events (wrong types, payloads that are not objects) never raise: a field of
    the wrong type is left out (counts, seconds) or kept as text (kinds, tools, errors).
    """
    first = next((e for e in events if e.event_type == RunEventType.TASK), None)
    if first is None:
        raise RunNotFound(f"no run {run_id!r} on this bus; `loopbus runs` lists the run ids")
    task = first.payload
    if isinstance(task, dict):
        settings = task.get("settings")
        task = task.get("task")
    else:
        settings = None
    timeline = Timeline(
        run_id=run_id,
        agent=first.agent,
        task=as_text(task) or "",
        settings=settings if isinstance(settings, dict) else {},
        started_at=_ts(first),
        events=events,
    )
    window = timeline.context_window
    turn: Turn | None = None
    calls: dict[int, Turn] = {}  # tool_call id -> its turn
    call_ts: dict[int, str] = {}
    for event in events:
        if event is first:
            continue
        raw = event.payload
        p = raw if isinstance(raw, dict) else {}
        kind = event.event_type
        if kind == RunEventType.MODEL_CALL:
            number = _count(p.get("turn"))
            tokens = _count(p.get("prompt_tokens"))
            prefill, decode = _seconds(p.get("prefill_s")), _seconds(p.get("decode_s"))
            parse_error = as_text(p.get("parse_error"))
            turn = Turn(
                number=len(timeline.turns) + 1 if number is None else number,
                started_at=_ts(event),
                prompt_tokens=tokens,
                completion_tokens=_count(p.get("completion_tokens")),
                cached_tokens=_count(p.get("cached_tokens")),
                model_s=None
                if prefill is None and decode is None
                else (prefill or 0) + (decode or 0),
                fill=(tokens / window) if tokens is not None and window else None,
                elided=_count(p.get("elided")) or 0,
                parse_error=parse_error,
                raw=as_text(p.get("raw")) if parse_error else None,
                model_call_id=event.id,
            )
            timeline.turns.append(turn)
        elif kind == RunEventType.DECISION and turn is not None:
            turn.decision = p.get("decision") if isinstance(raw, dict) else raw
        elif kind == RunEventType.TOOL_CALL and turn is not None:
            turn.tool, turn.args = as_text(p.get("tool")) or "?", p.get("args")
            calls[event.id], call_ts[event.id] = turn, _ts(event)
        elif kind in (RunEventType.TOOL_RESULT, RunEventType.ERROR):
            owner = calls.get(event.caused_by) if event.caused_by is not None else None
            target = owner or turn
            if target is None:
                continue
            if kind == RunEventType.TOOL_RESULT:
                target.result = p.get("result") if isinstance(raw, dict) else raw
            else:
                target.error = as_text(p.get("error") if isinstance(raw, dict) else raw) or "?"
            if owner is not None:
                start = call_ts.get(event.caused_by) if event.caused_by is not None else None
                target.tool_s = seconds_between(start, _ts(event))
        elif kind == RunEventType.LLM_CALL and turn is not None:
            turn.llm_calls += 1
        elif kind == RunEventType.OUTCOME:
            timeline.outcome = raw
            counts = p.get("counts")
            if p.get("kind") == "budget_exceeded" and isinstance(counts, dict) and counts:
                sizes = [n for n in map(_count, counts.values()) if n is not None]
                timeline.over_budget_tokens = max(sizes) if sizes else None
            timeline.ended_at = _ts(event)
    return timeline


def load_timelines(bus_path: Any, run_ids: list[str]) -> list[Timeline]:
    """The timelines of many runs (in the order given), read in one query per 500 runs."""
    from loopbus.bus.runs_queries import events_of_runs

    by_run: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    for event in events_of_runs(bus_path, run_ids):
        if event.run_id is not None:  # always: they are selected by run id
            by_run[event.run_id].append(event)
    return [build_timeline(run_id, by_run[run_id]) for run_id in run_ids]


def load_timeline(bus_path: Any, run_id: str) -> Timeline:
    """Run ``run_id`` rebuilt from the bus file (read-only); RunNotFound if it is not there."""
    from loopbus.bus.runs_queries import run_events

    return build_timeline(run_id, run_events(bus_path, run_id))


# --------------------------------------------------------------------------- exact prompts


def rebuild_prompt(timeline: Timeline, turn: int) -> list[dict[str, Any]]:
    """The exact chat messages of model call ``turn``, checked against its ``prompt_sha256``.

    The context is rebuilt from the run's events before that call (as a resume rebuilds it,
    with the call's recorded elision), the template is the last one the run recorded.
    """
    from loopbus.agents.run.context import EventLog, LogEvent
    from loopbus.agents.run.state import context_view

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
        if event.event_type == RunEventType.MODEL_CALL and isinstance(event.payload, dict):
            template = event.payload.get("prompt_template", template)
    payload = call.payload
    if "prompt_messages" in payload:
        messages = _messages(timeline, turn, payload["prompt_messages"])
    elif template is None:
        raise PromptUnavailable(
            f"run {timeline.run_id} recorded no prompt template (it predates prompt recording); "
            "only the prompt's sha256 is on the bus"
        )
    else:
        template = _messages(timeline, turn, template)
        log = EventLog()
        for event in timeline.events:
            if event.id >= call.id:
                break
            try:
                view = context_view(event.event_type, event.payload)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise PromptUnavailable(
                    f"event {event.id} of run {timeline.run_id} is malformed ({exc!r})"
                ) from None
            if view is not None:
                pinned = event.event_type == RunEventType.TASK
                log.append(LogEvent(event.event_type, _ts(event), view), pinned=pinned)
        if _count(payload.get("elided")):
            log.elide_oldest(payload["elided"])
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


def _messages(timeline: Timeline, turn: int, value: Any) -> list[dict[str, Any]]:
    """A recorded prompt (or template): a list of ``{role, content}`` strings, or
    PromptUnavailable."""
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        return value
    raise PromptUnavailable(
        f"the prompt recorded for turn {turn} of run {timeline.run_id} is malformed "
        "(not a list of role/content messages)"
    )


def _is_call(event: Any, turn: int) -> bool:
    return (
        event.event_type == RunEventType.MODEL_CALL
        and isinstance(event.payload, dict)
        and event.payload.get("turn") == turn
    )
