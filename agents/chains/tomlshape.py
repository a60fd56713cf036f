"""A cheap look at a TOML text before :mod:`tomllib` parses it.

tomllib recurses once per nesting level and is quadratic in the parts of a dotted key, so a
hostile chain config could exhaust the stack or the memory; these limits refuse it first.
"""

from __future__ import annotations

import re

MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 32
MAX_KEY_PARTS = 32
# Strings and comments (their brackets and dots are text), and numbers/dates (one dot each).
_TOML_TEXT_RE = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*',
    re.S,
)
_TOML_NUMBER_RE = re.compile(r"[0-9][0-9_:T+-]*\.[0-9][0-9_eE+-]*")


def shape_problem(text: str) -> str | None:
    """What is wrong with the shape of ``text`` (to follow "chain config FILE "), else None."""
    if len(text) > MAX_CONFIG_BYTES:
        return (
            f"is {len(text)} characters; a chain config is a small file "
            f"(at most {MAX_CONFIG_BYTES} characters)"
        )
    bare = _TOML_TEXT_RE.sub('""', text)
    depth = deepest = 0
    for char in bare:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_NESTING:
        return (
            f"is nested too deeply ({deepest} levels of arrays or tables "
            f"inside each other; at most {MAX_NESTING})"
        )
    for number, line in enumerate(bare.splitlines(), 1):
        if line.count(".") > MAX_KEY_PARTS and (
            _TOML_NUMBER_RE.sub("0", line).count(".") > MAX_KEY_PARTS
        ):
            return f"line {number}: a dotted key or table name with more than {MAX_KEY_PARTS} parts"
    return None
