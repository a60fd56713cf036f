"""Declarative chain configuration: one TOML file describes a whole chain of agent processes.

Example (``agents/examples/review.toml``)::

    [chain]
    name = "review"
    model = "default"                 # model spec for every agent ("default" = embedded SmolLM2)
    workspace = "fixture_project"     # relative to this file; `loopbus up --workspace` overrides
    output = "out"                    # where writing tools put files: relative to the
                                      # current directory (never the config's, which may be
                                      # installed in site-packages); default: the bus file's folder

    [agents.reviewer]
    kind = "reviewer"                 # an agent (`loopbus agents`, or module:attr); default: table name
    subscribe = ["file.found"]        # fnmatch globs over event types
    task = "Review the file {payload[path]}."
    tools = ["check_file", "done"]    # optional: must be tools of that agent
    max_turns = 3
    budget = 0.4
    parallelism = 2                   # processes; instance i takes events with id % 2 == i
    emit = "review.done"              # published (with the cursor ack) when a run ends
    first_tool = "check_file"         # the first decision of every run (no model call)

    [agents.reviewer.sandbox]         # optional: RunPython sandbox limits (loopbus.agents.sandbox.core)
    fuel = 5_000_000_000              # wasm instructions per snippet
    memory_bytes = 33_554_432         # guest linear memory
    wall_clock_s = 5.0                # also max_stdout_bytes, max_stderr_bytes,
                                      # max_host_payload_bytes, max_host_calls

``emit`` makes fan-in independent of what the model chose: when a run reaches its terminal
outcome the agent process publishes ``emit`` with the trigger's payload fields plus
``trigger_id``, ``run_id``, ``outcome`` and ``summary``, in the same transaction as the cursor
ack, so it appears exactly once per triggering event. It must not match the agent's own
``subscribe`` globs (each run would trigger the next, forever).

``first_tool`` (a tool of the agent without arguments) is the first decision of every run,
answered without asking the model and recorded like a model decision (``finish_reason:
"forced"``), so resume and replay treat it like any other; it counts as a turn. Small models
(SmolLM2-135M) tend to answer ``done`` at once; this keeps the step that matters deterministic
and leaves the model the rest of the run.

Parsing and structural checks are pure (pydantic); :func:`check_registry` additionally resolves
each agent's ``kind`` (:func:`loopbus.agents.builtin.get_agent`) and checks its tools (it
imports the agent loop). A run records the kind, so resume and replay find the agent again.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from loopbus.agents.chains.tomlshape import shape_problem
from loopbus.agents.errors import AgentError, SandboxConfigError
from loopbus.agents.run.events import RUN_NAMESPACE, RunEventType
from loopbus.agents.sandbox.types import SandboxLimits

__all__ = [
    "AgentConfig",
    "BadSubscription",
    "BadTaskTemplate",
    "ChainConfig",
    "ConfigError",
    "ModelMissing",
    "SandboxConfig",
    "UnknownAgent",
    "UnknownTool",
    "check_registry",
    "consumer_name",
    "load_config",
    "parse_config",
    "render_task",
]


class ConfigError(AgentError):
    """A chain config file is missing, unreadable or invalid."""


class UnknownAgent(ConfigError):
    """A config names an agent kind that no reference resolves to."""


class UnknownTool(ConfigError):
    """A config lists a tool that does not exist or that the agent cannot call."""


class BadSubscription(ConfigError):
    """A subscription glob is malformed or would subscribe to the loop's own run.* events."""


class ModelMissing(ConfigError):
    """A model spec points at a model that is not available on this machine."""


class BadTaskTemplate(ConfigError):
    """A task template uses an unknown placeholder."""


# Glob characters on top of the event-type alphabet ([a-z0-9_-] and dots).
_GLOB_RE = re.compile(r"^[a-z0-9_.*?\[\]!-]+$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Placeholders of a task template: {id}, {type}, {agent}, {run_id}, {payload}, {payload[key]}.
_FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_FIELDS = {"id", "type", "agent", "run_id", "caused_by", "payload"}
# Events every run publishes; an agent triggered by them would start a run per run event.
_RUN_PROBES = tuple(
    t.value
    for t in (
        RunEventType.TASK,
        RunEventType.DECISION,
        RunEventType.TOOL_CALL,
        RunEventType.TOOL_RESULT,
        RunEventType.OUTCOME,
    )
)


def _check_glob(pattern: str) -> str:
    if not pattern or not _GLOB_RE.match(pattern):
        raise ValueError(
            f"bad subscription glob {pattern!r}: use lowercase event types with * ? [..] "
            "wildcards, e.g. 'file.found' or 'file.*'"
        )
    if pattern.count("[") != pattern.count("]"):
        raise ValueError(f"bad subscription glob {pattern!r}: unbalanced [ ]")
    hit = [t for t in _RUN_PROBES if fnmatch.fnmatchcase(t, pattern)]
    if hit:
        raise ValueError(
            f"subscription {pattern!r} matches the loop's own {hit[0]!r} events, so every run "
            "would trigger more runs; subscribe to explicit types (e.g. 'finding', 'file.*')"
        )
    return pattern


def _check_template(template: str) -> str:
    for match in _FIELD_RE.finditer(template):
        field = match.group(1)
        if field is None:  # an escaped {{ or }}
            continue
        root, _, key = field.partition("[")
        if root not in _FIELDS or (key and (root != "payload" or not key.endswith("]"))):
            raise ValueError(
                f"unknown placeholder {{{field}}} in task template; use one of "
                "{id} {type} {agent} {run_id} {caused_by} {payload} {payload[KEY]}"
            )
    return template


_SANDBOX_KEYS = (
    "fuel",
    "memory_bytes",
    "wall_clock_s",
    "max_stdout_bytes",
    "max_stderr_bytes",
    "max_host_payload_bytes",
    "max_host_calls",
)


class SandboxConfig(BaseModel):
    """``[agents.NAME.sandbox]``: limits of the agent's RunPython sandbox (unset = default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    fuel: int | None = None
    memory_bytes: int | None = None
    wall_clock_s: float | None = None
    max_stdout_bytes: int | None = None
    max_stderr_bytes: int | None = None
    max_host_payload_bytes: int | None = None
    max_host_calls: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "sandbox must be a table of limits, e.g. [agents.NAME.sandbox] fuel = 1000000000"
            )
        unknown = sorted(set(data) - set(_SANDBOX_KEYS))
        if unknown:
            raise ValueError(
                f"unknown sandbox limit(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(_SANDBOX_KEYS)}"
            )
        for key, value in data.items():
            # strict pydantic would accept neither 5 for a float nor reject True for an int.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"sandbox limit {key} must be a number, not {value!r}")
            if key != "wall_clock_s" and not isinstance(value, int):
                raise ValueError(f"sandbox limit {key} must be a whole number, not {value!r}")
        return {k: float(v) if k == "wall_clock_s" else v for k, v in data.items()}

    @model_validator(mode="after")
    def _in_range(self) -> SandboxConfig:
        try:
            self.limits()
        except SandboxConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def limits(self) -> SandboxLimits:
        """The effective limits: the configured ones over :class:`SandboxLimits` defaults."""
        return SandboxLimits(**self.model_dump(exclude_none=True))


class AgentConfig(BaseModel):
    """One agent of a chain: what it runs, what triggers it, its limits and process count."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str = ""
    subscribe: list[str] = Field(min_length=1)
    task: str = "Handle this {type} event: {payload}"
    tools: list[str] | None = None
    model: str | None = None
    workspace: Path | None = None
    # Strict: TOML's `true` is no count (bool is an int in Python), 2.0 no whole number, and
    # nan/inf no budget.
    max_turns: StrictInt = Field(default=6, ge=1, le=200)
    budget: StrictFloat = Field(default=0.4, gt=0.0, le=1.0, allow_inf_nan=False)
    elide: StrictBool = False
    parallelism: StrictInt = Field(default=1, ge=1, le=16)
    emit: str | None = None
    first_tool: str | None = None
    sandbox: SandboxConfig | None = None

    @field_validator("emit")
    @classmethod
    def _emit(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _TYPE_RE.match(value) or value.startswith(RUN_NAMESPACE):
            raise ValueError(
                f"emit {value!r} must be a lowercase dotted event type outside 'run.', "
                "e.g. 'review.done'"
            )
        return value

    @model_validator(mode="after")
    def _no_self_trigger(self) -> AgentConfig:
        # Each run publishes `emit`: an agent triggered by it would start a run per run, forever.
        if self.emit is not None:
            hit = [p for p in self.subscribe if fnmatch.fnmatchcase(self.emit, p)]
            if hit:
                raise ValueError(
                    f"emit {self.emit!r} matches the agent's own subscription {hit[0]!r}, so "
                    "each run would trigger another run forever; emit a type the agent does "
                    "not subscribe to (e.g. 'review.done' for 'file.found')"
                )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"agent name {value!r} must match [a-z][a-z0-9_-]*")
        return value

    @field_validator("subscribe")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        return [_check_glob(p) for p in value]

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return _check_template(value)

    def sandbox_limits(self) -> SandboxLimits | None:
        """The RunPython sandbox limits of this agent; None = the defaults."""
        return self.sandbox.limits() if self.sandbox is not None else None

    def consumers(self) -> list[str]:
        """Cursor names of this agent's processes (one per parallel instance)."""
        return [consumer_name(self.name, i, self.parallelism) for i in range(self.parallelism)]


class ChainConfig(BaseModel):
    """A whole chain: shared defaults plus its agents (in file order)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "chain"
    path: Path | None = None
    model: str | None = None
    workspace: Path | None = None
    output: Path | None = None
    # Modules imported before the kinds resolve (for their side effects, e.g. setting up a
    # user's client); a `module:attr` kind imports its own module.
    imports: list[str] = Field(default_factory=list)
    agents: dict[str, AgentConfig]

    @model_validator(mode="after")
    def _no_emit_cycle(self) -> ChainConfig:
        # Every run publishes its agent's `emit`, unconditionally: agents whose emits trigger
        # each other in a cycle would circulate every event forever.
        def triggered(agent: AgentConfig) -> list[AgentConfig]:
            if agent.emit is None:
                return []
            return [
                other
                for other in self.agents.values()
                if any(fnmatch.fnmatchcase(agent.emit, p) for p in other.subscribe)
            ]

        done: set[str] = set()  # agents no cycle passes through (DFS colours: O(V + E))
        for root in self.agents.values():
            if root.name in done:
                continue
            path, todo = [root], [iter(triggered(root))]
            while todo:
                nxt = next(todo[-1], None)
                if nxt is None:
                    done.add(path.pop().name)
                    todo.pop()
                elif nxt in path:
                    cycle = path[path.index(nxt) :]
                    steps = ", ".join(
                        f"{a.name} emits {a.emit!r} which triggers {b.name}"
                        for a, b in zip(cycle, [*cycle[1:], nxt], strict=True)
                    )
                    raise ValueError(f"emit cycle: {steps}; every event would circulate forever")
                elif nxt.name not in done:
                    path.append(nxt)
                    todo.append(iter(triggered(nxt)))
        return self

    def agent(self, name: str) -> AgentConfig:
        """The agent called ``name``; raises :class:`UnknownAgent` with the known names."""
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(self.agents) or "none"
            raise UnknownAgent(
                f"agent {name!r} is not in chain {self.name!r} ({self.path}); agents: {known}"
            ) from None

    def model_for(self, agent: AgentConfig) -> str | None:
        """The effective model spec of ``agent`` (its own, else the chain's, else embedded)."""
        return agent.model if agent.model is not None else self.model

    def workspace_for(self, agent: AgentConfig) -> Path | None:
        """The effective workspace of ``agent``."""
        return agent.workspace if agent.workspace is not None else self.workspace

    def with_overrides(
        self, *, workspace: Path | None = None, output: Path | None = None, model: str | None = None
    ) -> ChainConfig:
        """A copy with command-line overrides applied to the chain-level settings."""
        update: dict[str, Any] = {}
        if workspace is not None:
            update["workspace"] = Path(workspace).resolve()
        if output is not None:
            update["output"] = Path(output).resolve()
        if model is not None:
            update["model"] = model
        return self.model_copy(update=update)


def consumer_name(agent: str, index: int, count: int) -> str:
    """The cursor name of instance ``index`` of ``count``: the agent name, or ``name#i/n``."""
    return agent if count == 1 else f"{agent}#{index}/{count}"


def _format_validation(path: Path | str, exc: ValidationError) -> str:
    lines = [f"invalid chain config {path}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"].endswith(("_type", "finite_number")) and isinstance(
            value, bool | int | float | str
        ):
            # `parallelism = true` reads "should be a valid integer, not true".
            shown = str(value).lower() if isinstance(value, bool) else repr(value)[:60]
            msg = f"{msg}, not {shown}"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: dict[str, Any], *, base: Path | None = None, source: str = "<dict>"
) -> ChainConfig:
    """Validate a decoded TOML document; relative paths resolve against ``base``."""
    chain = dict(data.get("chain") or {})
    unknown_top = set(data) - {"chain", "agents"}
    if unknown_top:
        raise ConfigError(
            f"invalid chain config {source}: unknown section(s) {sorted(unknown_top)}; "
            "expected [chain] and [agents.NAME] tables"
        )
    agents_raw = data.get("agents") or {}
    if not isinstance(agents_raw, dict) or not agents_raw:
        raise ConfigError(f"invalid chain config {source}: no [agents.NAME] table defined")
    agents: dict[str, Any] = {}
    for name, table in agents_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"invalid chain config {source}: agents.{name} must be a table")
        if "name" in table and table["name"] != name:
            # The table's key is the agent's name (its cursor): two tables must not share one.
            raise ConfigError(
                f"invalid chain config {source}: agents.{name} sets name = "
                f"{str(table['name'])[:60]!r}; an agent is named by its table, [agents.NAME]"
            )
        entry = {**table, "name": name}
        entry.setdefault("kind", name)
        agents[name] = entry
    try:
        config = ChainConfig.model_validate({**chain, "agents": agents})
    except ValidationError as exc:
        raise _error_for(exc, source) from None
    if base is not None:
        config = _resolve_paths(config, base)
    for agent in config.agents.values():
        _check_model_spec(config.model_for(agent), agent.name, source)
    return config


def _error_for(exc: ValidationError, source: str) -> ConfigError:
    text = _format_validation(source, exc)
    cls: type[ConfigError] = ConfigError
    if any("subscribe" in map(str, e["loc"]) for e in exc.errors()):
        cls = BadSubscription
    elif any("task" in map(str, e["loc"]) for e in exc.errors()):
        cls = BadTaskTemplate
    return cls(text)


def _resolve_paths(config: ChainConfig, base: Path) -> ChainConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    agents = {
        name: a.model_copy(update={"workspace": fix(a.workspace)})
        for name, a in config.agents.items()
    }
    # Outputs are the user's, so relative to where they run loopbus: a config shipped in the
    # package (agents/examples, in site-packages once installed) must not write next to itself.
    output = None if config.output is None else (Path.cwd() / config.output).resolve()
    return config.model_copy(
        update={"workspace": fix(config.workspace), "output": output, "agents": agents}
    )


def _check_model_spec(spec: str | None, agent: str, source: str) -> None:
    """Refuse specs naming a model that is not on this machine (cheap: loads no weights)."""
    from loopbus.models.errors import ModelError
    from loopbus.models.runtime import parse_spec, resolve_mlx_target

    try:
        parsed = parse_spec(spec)
        if parsed.backend == "mlx":
            resolve_mlx_target(parsed.target)
    except ModelError as exc:
        raise ModelMissing(f"agent {agent!r} in {source}: model {spec!r}: {exc}") from None


def load_config(path: str | Path) -> ChainConfig:
    """Read and validate a chain TOML file (paths inside resolve relative to the file)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"chain config {file} not found; pass an existing TOML file")
    try:
        text = file.read_text(encoding="utf-8")
        if (problem := shape_problem(text)) is not None:
            raise ConfigError(f"chain config {file} {problem}")
        data = tomllib.loads(text)
        config = parse_config(data, base=file.resolve().parent, source=str(file))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"chain config {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"chain config {file} is not UTF-8 text") from None
    except RecursionError:
        # tomllib (and printing a value) recurse per nesting level.
        raise ConfigError(
            f"chain config {file} is nested too deeply (arrays or tables inside each other); "
            "a chain config needs only a few levels"
        ) from None
    return config.model_copy(update={"path": file.resolve()})


def check_registry(config: ChainConfig) -> None:
    """Check every agent kind and tool against the agents the kinds name (imports the loop).

    A ``kind`` is any reference :func:`loopbus.agents.builtin.get_agent` resolves: a built-in or
    example agent's name, ``module:attr`` of a user's Agent, or an entry-point name.
    """
    import importlib

    from loopbus.agents import builtin

    for module in config.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"chain {config.name!r}: cannot import {module!r}: {exc}") from None
    for agent in config.agents.values():
        workspace = config.workspace_for(agent)
        if workspace is not None and not Path(workspace).is_dir():
            raise ConfigError(
                f"agent {agent.name!r} in {config.path}: workspace {workspace} is not a directory"
            )
        try:
            spec = builtin.get_agent(agent.kind)
        except builtin.UnknownAgent as exc:
            if ":" in agent.kind:
                raise UnknownAgent(f"agent {agent.name!r} in {config.path}: {exc}") from None
            known = ", ".join(a.name for a in builtin.list_agents())
            raise UnknownAgent(
                f"agent {agent.name!r} in {config.path}: unknown kind {agent.kind!r}; "
                f"available agents: {known} (or module:attr of an Agent)"
            ) from None
        if agent.first_tool is not None:
            if agent.first_tool not in spec.tools or agent.first_tool == "done":
                raise UnknownTool(
                    f"agent {agent.name!r} in {config.path}: first_tool {agent.first_tool!r} "
                    f"is not one of {agent.kind!r}'s tools ({', '.join(spec.tools)})"
                )
            fields = set(spec.tool(agent.first_tool).cls.model_fields) - {"action"}
            if fields:
                raise ConfigError(
                    f"agent {agent.name!r} in {config.path}: first_tool {agent.first_tool!r} "
                    f"takes arguments ({', '.join(sorted(fields))}); only tools without "
                    "arguments can run before the model's first decision"
                )
        for tool in agent.tools or ():
            if tool not in spec.tools:
                known = {t for a in builtin.list_agents() for t in a.tools}
                what = "is not one of" if tool in known else "is an unknown tool; use one of"
                raise UnknownTool(
                    f"agent {agent.name!r} in {config.path}: tool {tool!r} {what} "
                    f"{agent.kind!r}'s tools ({', '.join(spec.tools)})"
                )


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return f"<no {key}>"


def render_task(template: str, event: Any) -> str:
    """Build a run's task from its triggering bus event (``{payload[path]}`` etc.)."""
    payload = event.payload
    values: dict[str, str] = {
        "id": str(event.id),
        "type": event.event_type,
        "agent": event.agent,
        "run_id": event.run_id or "",
        "caused_by": "" if event.caused_by is None else str(event.caused_by),
        "payload": json.dumps(payload, ensure_ascii=False, sort_keys=True),
    }
    items = _Missing(payload if isinstance(payload, dict) else {})

    def sub(match: re.Match[str]) -> str:
        whole, field = match.group(0), match.group(1)
        if field is None:
            return whole[0]
        root, _, key = field.partition("[")
        if key:
            value = items[key[:-1]]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return values[root]

    return _FIELD_RE.sub(sub, template)
