"""The LLM boundary: BAML renders the prompt and parses the answer; the model call is ours.

For one BAML decision function (``Assistant(events: string) -> ListDir | ReadFile | Done``):

* :meth:`Decider.messages` renders the chat messages with ``b.request.<Fn>(events=...)``;
* :attr:`Decider.schema` is the JSON schema of the return union, built from the pydantic classes
  in ``loopbus.baml_client.types`` (``anyOf`` of each member, discriminated by its literal ``action``),
  passed to the runtime for constrained decoding when it supports schemas;
* :meth:`Decider.parse` turns the model's text into the typed object with ``b.parse.<Fn>``.

Every decision function takes exactly one argument: ``events``, the rendered event log as one
string, or ``turns``, the same log split into alternating chat turns (:func:`log_turns`: the
task, tool results and errors as ``user`` turns holding their rendered events, each decision as
an ``assistant`` turn holding its JSON), so the history reads like the prompt's worked examples.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import inspect
import json
import os
import typing
from typing import Any

from pydantic import BaseModel

from loopbus.agents.errors import AgentError
from loopbus.agents.run.context import LogEvent, parse_log
from loopbus.agents.run.events import RunEventType

# BAML logs every failed parse with a backtrace on stderr; we record and feed back our own.
os.environ.setdefault("BAML_LOG", "off")


class DecisionParseError(AgentError):
    """The model's output is not one of the function's decision types."""


class PolicyViolation(DecisionParseError):
    """A parsed decision outside the turn's schema (loopbus.agents.run.policy); only possible when the
    runtime does not decode under the schema."""


class UnknownFunction(AgentError):
    """No BAML function of that name exists in baml_client (regenerate it?)."""


_last_hash: tuple[object, str] = (None, "")


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    """sha256 of the rendered chat messages; recorded for replay.

    Each message contributes ``role``, the UTF-8 length of its content and the content (length
    prefixes keep it unambiguous; ~5x cheaper than hashing canonical JSON of a long log). The
    last list hashed is remembered by identity (the loop and a replay runtime both hash the
    same prompt each turn): a messages list must not be changed once hashed.
    """
    global _last_hash
    last = _last_hash
    if last[0] is messages:
        return last[1]
    digest = hashlib.sha256()
    for message in messages:
        content = str(message["content"]).encode("utf-8")
        digest.update(f"{message['role']}\n{len(content)}\n".encode())
        digest.update(content)
    sha = digest.hexdigest()
    _last_hash = (messages, sha)
    return sha


def _text(content: Any) -> str:
    # openai-generic renders content as a string or as a list of typed parts.
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


#: Length caps for string fields by name: a small model stuck in a repetition loop would
#: otherwise fill max_tokens with one path (and a huge path then echoes through error events).
FIELD_MAX_LENGTH = {"path": 200, "event_type": 128}
#: Map fields (``map<string, string>``, e.g. Publish's payload) are bounded the same way:
#: snake_case keys of at most 40 characters, values of at most 400, at most 8 entries.
MAP_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
MAP_VALUE_MAX_LENGTH = 400
MAP_MAX_ENTRIES = 8
_PLACEHOLDER = "\u27e6loopbus:events\u27e7"
_PROBE = '<event type="a" ts="t">{"x":"\\u003c {{ y }} {% raw %}"}</event>\n  \t\u00e9\r\n<elided count="1"/>'


def _field_patterns() -> dict[str, str]:
    """Regex patterns for string fields by name: what the field's consumer accepts."""
    from loopbus.bus.events import EVENT_TYPE_PATTERN  # the bus refuses any other event type

    return {"event_type": EVENT_TYPE_PATTERN}


def _bound_map(prop: dict[str, Any]) -> None:
    """A ``map<string, string>`` property bounded in keys, values and entries (in place)."""
    values = prop.get("additionalProperties")
    if prop.get("type") != "object" or not isinstance(values, dict) or "properties" in prop:
        return
    if values.get("type") != "string":
        return
    values = {**values, "maxLength": values.get("maxLength", MAP_VALUE_MAX_LENGTH)}
    prop["patternProperties"] = {MAP_KEY_PATTERN: values}
    prop["additionalProperties"] = False
    prop.setdefault("maxProperties", MAP_MAX_ENTRIES)


def _union_schema(classes: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """``anyOf`` the members' schemas; nested definitions hoisted to one top-level ``$defs``."""
    members: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    patterns = _field_patterns()
    for cls in classes:
        schema = copy.deepcopy(cls.model_json_schema())
        defs.update(schema.pop("$defs", {}))
        schema["additionalProperties"] = False
        for name, prop in schema.get("properties", {}).items():
            if prop.get("type") == "string" and name in FIELD_MAX_LENGTH:
                prop.setdefault("maxLength", FIELD_MAX_LENGTH[name])
            if prop.get("type") == "string" and name in patterns:
                prop.setdefault("pattern", patterns[name])
            _bound_map(prop)
        members.append(schema)
    union: dict[str, Any] = {"anyOf": members}
    if defs:
        union["$defs"] = defs
    return union


def log_turns(events: str) -> list[dict[str, str]]:
    """A rendered event log as alternating chat turns (``role``, ``content``).

    A ``run.decision`` becomes an ``assistant`` turn with the decision's compact JSON (what the
    model answered); every other item (the task, tool results, errors, an elision marker) a
    ``user`` turn with its rendered event. Consecutive items of one role share a turn.
    """
    turns: list[dict[str, str]] = []
    for item in parse_log(events):
        if isinstance(item, LogEvent) and item.type == RunEventType.DECISION:
            role = "assistant"
            content = json.dumps(item.data, ensure_ascii=False, separators=(",", ":"))
        else:
            role, content = "user", item.render()
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + content
        else:
            turns.append({"role": role, "content": content})
    return turns


_PROBE_TURNS = [
    {"role": "user", "content": _PROBE},
    {"role": "assistant", "content": '{"action":"x","path":"{{ a }}"}'},
    {"role": "user", "content": '<event type="b" ts="t">{}</event>\n<elided count="2"/>'},
]


def _client(function: str) -> tuple[Any, str]:
    """The generated client package and bare function name of ``[client_module:]Function``.

    A bare name is looked up in loopbus's own ``baml_client``; ``myproject.baml_client:Fn``
    in a user's client (generated by ``baml-cli generate`` into their own package).
    """
    module_name, _, name = function.rpartition(":")
    try:
        return importlib.import_module(module_name or "loopbus.baml_client"), name
    except ImportError as exc:
        raise UnknownFunction(
            f"cannot import the BAML client {module_name!r} of {function!r}: {exc}"
        ) from None


class Decider:
    """Render / schema / parse for one BAML decision function (``Fn`` in loopbus's own
    ``baml_client``, or ``package.baml_client:Fn`` in a user's generated client)."""

    def __init__(self, function: str) -> None:
        client, name = _client(function)
        b = client.b
        method = getattr(
            importlib.import_module(client.__name__ + ".sync_client").BamlSyncClient, name, None
        )
        if method is None:
            how = (
                "`make generate`"
                if client.__name__ == "loopbus.baml_client"
                else "`baml-cli generate`"
            )
            raise UnknownFunction(
                f"{client.__name__} has no function {name!r}; add it to its baml_src/ and run {how}"
            )
        self.function = function
        self._types = client.types
        self._request = getattr(b.request, name)
        self._parse = getattr(b.parse, name)
        returned = typing.get_type_hints(method)["return"]
        members = typing.get_args(returned) or (returned,)
        self.classes: tuple[type[BaseModel], ...] = tuple(members)
        #: Whether the function takes the history as chat turns (else the log as one string).
        self.takes_turns = "turns" in inspect.signature(method).parameters

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        """The JSON schema constrained decoding follows (a union of the decision classes)."""
        return _union_schema(self.classes)

    def render(self, events: str) -> list[dict[str, Any]]:
        """The chat messages ``b.request.<Fn>(events=...)`` renders (one BAML call); a
        function that takes ``turns`` gets the log split by :func:`log_turns`."""
        if self.takes_turns:
            return self._render_turns(log_turns(events))
        body = self._request(events=events).body.json()
        return [{"role": m["role"], "content": _text(m["content"])} for m in body["messages"]]

    def _render_turns(self, turns: list[dict[str, str]]) -> list[dict[str, Any]]:
        turn_cls = self._types.Turn
        body = self._request(turns=[turn_cls(**t) for t in turns]).body.json()
        return [{"role": m["role"], "content": _text(m["content"])} for m in body["messages"]]

    @functools.cached_property
    def _turns_prefix(self) -> list[dict[str, Any]] | None:
        # The messages before the history (system prompt and worked examples), rendered once;
        # the history's turns are appended as they are. Verified on a hostile probe; None
        # (always call BAML) if BAML renders it differently.
        rendered = self._render_turns([{"role": "user", "content": _PLACEHOLDER}])
        if not rendered or rendered[-1] != {"role": "user", "content": _PLACEHOLDER}:
            return None
        prefix = rendered[:-1]
        if prefix + [dict(t) for t in _PROBE_TURNS] != self._render_turns(_PROBE_TURNS):
            return None
        return prefix

    @functools.cached_property
    def _template(self) -> list[dict[str, Any]] | None:
        # BAML's rendering cost grows with the log (a copy through its template engine each
        # turn); the prompt inserts `events` verbatim, so render once around a placeholder and
        # substitute. Verified here on a hostile probe; None (always call BAML) if it differs.
        template = self.render(_PLACEHOLDER)
        if sum(m["content"].count(_PLACEHOLDER) for m in template) != 1:
            return None
        if self._substitute(template, _PROBE) != self.render(_PROBE):
            return None
        return template

    @staticmethod
    def _substitute(template: list[dict[str, Any]], events: str) -> list[dict[str, Any]]:
        return [
            {"role": m["role"], "content": m["content"].replace(_PLACEHOLDER, events)}
            for m in template
        ]

    def messages(self, events: str) -> list[dict[str, Any]]:
        """The chat messages BAML renders for this event log (identical to :meth:`render`)."""
        # BAML trims each message, and drops an empty one: only substitute trimmed, non-empty
        # logs (a rendered event log always is: it starts with "<" and ends with ">").
        if not events or events.strip() != events:
            return self.render(events)
        if self.takes_turns:
            if self._turns_prefix is None:
                return self.render(events)
            turns = log_turns(events)
            if any(t["content"].strip() != t["content"] or not t["content"] for t in turns):
                return self._render_turns(turns)
            return self._turns_prefix + turns
        if self._template is None:
            return self.render(events)
        return self._substitute(self._template, events)

    def parse(self, text: str) -> BaseModel:
        """The typed decision in ``text``; DecisionParseError when there is none."""
        try:
            decision = self._parse(text)
        except Exception as exc:  # baml_py.BamlError and friends
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DecisionParseError(first[:300]) from None
        if not isinstance(decision, self.classes):
            raise DecisionParseError(f"parsed {type(decision).__name__}, not a decision type")
        return decision

    def load(self, data: dict[str, Any]) -> BaseModel:
        """Rebuild a recorded decision (its ``model_dump``) into its class, matched by ``action``."""
        for cls in self.classes:
            info = cls.model_fields.get("action")
            if info is not None and typing.get_args(info.annotation) == (data.get("action"),):
                return cls.model_validate(data)
        raise DecisionParseError(f"recorded decision {data!r} matches no decision type")

    def actions(self) -> list[str]:
        """The action names the model may choose."""
        from loopbus.agents.tools.core import action_name

        return [action_name(cls) for cls in self.classes]


@functools.cache
def get_decider(function: str) -> Decider:
    """The (cached) Decider of a BAML function: its schema and prompt template are built once."""
    return Decider(function)
