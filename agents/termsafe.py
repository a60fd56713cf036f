"""Terminal-safe text: what the CLI prints from files, model output and payloads.

Text that reaches a terminal raw can act on it: ESC / CSI / OSC sequences set the window title,
write the clipboard (OSC 52), clear the screen or move the cursor, C1 controls (U+0080-U+009F)
do the same on terminals that honour them, and bidirectional overrides reorder what is shown
("Trojan Source"). :func:`printable` shows every such character as a visible escape (``\\x1b``,
``\\u202e``), so the text is still readable and nothing is lost from view; :func:`safe_json`
does the same for JSON lines while keeping them valid, lossless JSON.

Rich markup (``[bold]``, ``[/]``) is a separate hazard: pass printed values to rich as
``rich.text.Text`` objects, never as markup strings. Only ``re`` and ``json`` are imported here,
so bus commands stay fast to start.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls, DEL, C1 controls, the line/paragraph separators and the bidirectional marks,
# embeddings, overrides and isolates (U+061C, U+200E/F, U+202A-E, U+2066-9).
_UNSAFE = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_RE = re.compile(f"[{_UNSAFE}]")
_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMES:
        return _NAMES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape_keeping_lines(match: re.Match[str]) -> str:
    char = match.group(0)
    return char if char in "\n\t" else _escape(match)


def printable(value: Any, *, keep_newlines: bool = False) -> str:
    """``value`` (``str()`` of it unless a string) with every terminal control character,
    C1 control and bidirectional override shown as a visible escape (``\\x1b``, ``\\u202e``).

    ``keep_newlines``: leave newlines and tabs as they are (multi-line text); otherwise they
    are shown as ``\\n`` / ``\\t`` too, so that one value stays on one line.
    """
    text = value if isinstance(value, str) else str(value)
    if keep_newlines:
        return _UNSAFE_RE.sub(_escape_keeping_lines, text)
    return _UNSAFE_RE.sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    char = match.group(0)
    # JSON whitespace between tokens (indented output) stays as it is.
    return char if char in "\n\t\r" else f"\\u{ord(char):04x}"


def safe_json(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)`` with C1 controls, DEL and
    bidirectional overrides written as ``\\uXXXX`` escapes: the same JSON value, and no raw
    character that a terminal would act on (``json`` already escapes C0 controls)."""
    return safe_json_text(json.dumps(value, ensure_ascii=False, **options))


def safe_json_text(text: str) -> str:
    """Already encoded JSON (``model_dump_json()``) with the same escapes as :func:`safe_json`."""
    # Outside strings, JSON text has no such characters (whitespace aside, which JSON allows
    # only as space, tab, newline and return): every other match is inside a string, where
    # \\uXXXX denotes the same character.
    return _UNSAFE_RE.sub(_json_escape, text)


__all__ = ["printable", "safe_json", "safe_json_text"]
