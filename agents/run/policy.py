"""Per-agent decoding policies: the JSON schema given to constrained decoding, built each turn.

A small model under a static schema may read a file that does not exist, answer before it has
looked at anything, or repeat the call that just failed. A :class:`Policy` (declared per agent
in :mod:`loopbus.agents.builtin`, recorded in the run's ``run.task`` settings) narrows the decision
union each turn from what the run has seen (:class:`RunFacts`, fed every event of the run):

* ``paths``: ``read_file.path`` is one of the workspace's files and ``list_dir.path`` one of its
  folders (an ``enum``): the workspace's bounded tree (breadth first, hidden names skipped, at
  most ``tree_limit`` entries) plus every path seen in a ``list_dir`` result;
* ``observe_first``: ``done`` is left out until a tool has returned a result (not an error),
  or one of ``observe_tools`` when that is set (``watcher``: until a file has been read);
* ``no_repeat``: a call identical to one already made is left out (its result or error is in
  the context already): its path is removed from the enum, and an argument-free tool that ran
  is left out whole.

A member left with no allowed value is dropped; if nothing would remain the union is kept
whole. :func:`turn_schema` returns the schema and its sha256 (recorded per model call, so a
replay checks that it rebuilt the same schema), and :func:`~loopbus.models.schema.violation` checks a decision
against it (for runtimes without constrained decoding, and for replays).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loopbus.agents.run.events import RunEventType
from loopbus.models.schema import member_action
from loopbus.models.schema import violation as violation  # re-exported for the loop and replay

#: The path field of each tool whose argument ``paths`` limits: files or folders.
PATH_TOOLS = {"read_file": "files", "list_dir": "dirs"}


class Policy(BaseModel):
    """How an agent's decisions are constrained beyond their types (all off by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    paths: bool = False
    observe_first: bool = False
    observe_tools: tuple[str, ...] = ()  # the tools whose result counts (empty: any)
    no_repeat: bool = False
    tree_limit: int = Field(default=300, ge=1, le=5000)

    @property
    def active(self) -> bool:
        """Whether the schema can differ from the static union schema."""
        return self.paths or self.observe_first or self.no_repeat


#: The ``assistant``'s policy: only existing paths, no call twice, no answer before a tool has
#: returned a result. A listing may answer (it ends with its count: "How many files...?");
#: with the shipped adapter this measured 17/20 on a development seed against 13/20 when
#: ``done`` had to wait for a file read (bench/RESULTS.md).
EXPLORE = Policy(paths=True, observe_first=True, no_repeat=True)
#: The ``watcher``'s policy: as EXPLORE, but ``done`` only once a file has been read (it
#: publishes what a file says; a listing alone gives it nothing to publish).
WATCH = Policy(paths=True, observe_first=True, no_repeat=True, observe_tools=("read_file",))
#: The policy of agents whose job is one tool, then done (the demo chains' agents): with
#: ``done`` left out of their first turn, the only member left is their tool, so no
#: ``first_tool`` is needed. An agent declares its policy: ``Agent(policy=...)``.
ACT_FIRST = Policy(observe_first=True, no_repeat=True)


@dataclass
class RunFacts:
    """What a run's events say that a policy needs; :meth:`observe` is fed every event."""

    succeeded: set[str] = field(default_factory=set)  # the tools that returned a result
    failed: set[str] = field(default_factory=set)  # call keys (see call_key) that failed
    made: set[str] = field(default_factory=set)  # call keys of every call that ran
    seen_files: set[str] = field(default_factory=set)  # from list_dir results
    seen_dirs: set[str] = field(default_factory=set)
    tree: tuple[frozenset[str], frozenset[str]] | None = None  # (files, dirs), built once
    _calls: dict[int | None, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    _last_call: tuple[str, dict[str, Any]] | None = None

    def observe(
        self,
        event_type: str,
        payload: Any,
        event_id: int | None = None,
        caused_by: int | None = None,
    ) -> None:
        """Update the facts with one event of the run (as published or read back)."""
        if not isinstance(payload, dict):
            return
        if event_type == RunEventType.TOOL_CALL:
            call = (str(payload.get("tool")), payload.get("args") or {})
            self._last_call = call
            self._calls[event_id] = call
        elif event_type in (RunEventType.TOOL_RESULT, RunEventType.ERROR):
            call = self._calls.pop(caused_by, None) or self._last_call
            if event_type == RunEventType.ERROR and payload.get("kind") == "parse":
                return
            self._last_call = None
            if call is None:
                return
            self.made.add(call_key(*call))
            if event_type == RunEventType.ERROR:
                self.failed.add(call_key(*call))
                return
            self.succeeded.add(call[0])
            if call[0] == "list_dir" and isinstance(payload.get("result"), str):
                self._add_listing(str(call[1].get("path", ".")), payload["result"])

    def _add_listing(self, folder: str, listing: str) -> None:
        base = _normal(folder)
        for line in listing.splitlines():
            name = line.strip()
            if not name or name.startswith(("(", "...[")) or "/" in name.rstrip("/"):
                continue
            is_dir = name.endswith("/")
            name = name.rstrip("/")
            path = name if base == "." else f"{base}/{name}"
            (self.seen_dirs if is_dir else self.seen_files).add(path)
        self.seen_dirs.add(base)

    def workspace_tree(self, root: Path, limit: int) -> tuple[frozenset[str], frozenset[str]]:
        """(files, folders) of ``root``, relative posix paths, breadth first, at most ``limit``
        entries in all; built once per run (the workspace is read-only)."""
        if self.tree is None:
            self.tree = _tree(root, limit)
        return self.tree


def _normal(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


def _tree(root: Path, limit: int) -> tuple[frozenset[str], frozenset[str]]:
    files: set[str] = set()
    dirs: set[str] = {"."}
    queue = [(root, "")]
    count = 0
    while queue and count < limit:
        folder, prefix = queue.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or count >= limit:
                continue  # hidden names: list_dir does not show them either
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir()  # follows links; a link out is refused when used
            except OSError:
                continue
            count += 1
            if is_dir:
                dirs.add(rel)
                queue.append((Path(entry.path), rel + "/"))
            else:
                files.add(rel)
    return frozenset(files), frozenset(dirs)


def call_key(tool: str, args: dict[str, Any]) -> str:
    """A canonical text of a tool call (its name and arguments, path normalised)."""
    args = {k: v for k, v in args.items() if k != "action"}
    if tool in PATH_TOOLS and isinstance(args.get("path"), str):
        args["path"] = _normal(args["path"])
    return json.dumps([tool, args], sort_keys=True, ensure_ascii=False)


def turn_schema(
    base: dict[str, Any], policy: Policy, facts: RunFacts, workspace: Path | None
) -> dict[str, Any]:
    """The union schema ``base`` narrowed by ``policy`` for this turn (``base`` if inactive)."""
    if not policy.active:
        return base
    members: list[dict[str, Any]] = []
    for member in base.get("anyOf", [base]):
        action = member_action(member)
        props = member.get("properties", {})
        if action == "done":
            wanted = set(policy.observe_tools) or facts.succeeded
            if policy.observe_first and not (facts.succeeded & wanted):
                continue
            members.append(member)
            continue
        if action in PATH_TOOLS and "path" in props and policy.paths and workspace is not None:
            files, dirs = facts.workspace_tree(workspace, policy.tree_limit)
            kind = PATH_TOOLS[action]
            allowed = set(files | facts.seen_files) if kind == "files" else set(dirs)
            if kind == "dirs":
                allowed |= facts.seen_dirs
            if policy.no_repeat:
                allowed = {p for p in allowed if call_key(action, {"path": p}) not in facts.made}
            if not allowed:
                continue
            member = copy.deepcopy(member)
            # "." first: the natural first step of an exploration
            values = sorted(allowed, key=lambda p: (p != ".", p))
            member["properties"]["path"] = {"type": "string", "enum": values}
            members.append(member)
            continue
        fields = set(props) - {"action"}
        if (
            policy.no_repeat
            and action is not None
            and not fields
            and call_key(action, {}) in facts.made
        ):
            continue
        members.append(member)
    if not members:
        return base
    schema = {k: v for k, v in base.items() if k != "anyOf"}
    schema["anyOf"] = members
    return schema


def schema_sha(schema: dict[str, Any]) -> str:
    """sha256 of a schema's canonical JSON (recorded with each model call)."""
    text = json.dumps(schema, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
