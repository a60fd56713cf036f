"""Checking a decision against a decision union's JSON schema, without a model.

Constrained decoding (:mod:`loopbus.models.constrained`) cannot produce a decision outside its
schema; a runtime without it (the scripted runtime, an HTTP backend) and a replay check the
decision here instead. Only what decoding policies narrow is checked: the ``action`` is one of
the union's members, and fields with an ``enum`` hold one of its values. Light: no mlx import.
"""

from __future__ import annotations

from typing import Any


def member_action(member: dict[str, Any]) -> str | None:
    """The ``action`` constant of one member of a decision union (None: not one)."""
    prop = member.get("properties", {}).get("action", {})
    if "const" in prop:
        return prop["const"]
    enum = prop.get("enum")
    return enum[0] if isinstance(enum, list) and len(enum) == 1 else None


def violation(decision: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """Why ``decision`` (a parsed decision as JSON) is outside this turn's ``schema``, or None.

    Checks what policies narrow: the action is a member, and enum'd fields hold allowed values.
    """
    members = schema.get("anyOf", [schema])
    action = decision.get("action")
    allowed_actions = [a for a in (member_action(m) for m in members) if a is not None]
    for member in members:
        if member_action(member) != action:
            continue
        for name, prop in member.get("properties", {}).items():
            enum = prop.get("enum") if isinstance(prop, dict) else None
            if name != "action" and isinstance(enum, list) and decision.get(name) not in enum:
                shown = ", ".join(str(v) for v in enum[:12])
                more = f" (and {len(enum) - 12} more)" if len(enum) > 12 else ""
                return f"{action} {name} {decision.get(name)!r} is not one of: {shown}{more}"
        return None
    return f"{action!r} is not allowed now; choose one of: {', '.join(allowed_actions)}"
