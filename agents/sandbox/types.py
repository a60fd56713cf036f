"""Value types of the sandbox: limits, snippet results, trailing-expression rewrite, output
capture, traceback cleaning and what a stopped guest reports."""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from typing import Any

from loopbus.agents.errors import SandboxConfigError

MiB = 1024 * 1024
RESULT_VAR = "_loopbus_result_"


@dataclass(frozen=True)
class SandboxLimits:
    """Per-snippet limits (each snippet gets the full budget again)."""

    fuel: int = 20_000_000_000
    """wasm instructions; ~3-6 s of MicroPython on this class of machine (a printed line
    costs ~8k, a loop iteration ~0.8k, so a million-line print fits, in ~1 s)."""
    memory_bytes: int = 64 * MiB
    """Linear memory; 3/4 of it becomes the MicroPython heap (MemoryError past it)."""
    wall_clock_s: float = 10.0
    """Guest running time (time spent inside host functions is not counted)."""
    max_stdout_bytes: int = 32 * 1024
    max_stderr_bytes: int = 8 * 1024
    max_host_payload_bytes: int = 256 * 1024
    """Per host call, arguments and result each (JSON-encoded); also the snippet size limit."""
    max_host_calls: int = 100
    """Host function calls per snippet."""

    def __post_init__(self) -> None:
        checks = [
            ("fuel", self.fuel >= 1_000_000, "at least 1000000"),
            ("memory_bytes", 4 * MiB <= self.memory_bytes <= 4096 * MiB, "between 4 MiB and 4 GiB"),
            ("wall_clock_s", 0 < self.wall_clock_s <= 3600, "between 0 and 3600 seconds"),
            ("max_stdout_bytes", self.max_stdout_bytes >= 64, "at least 64"),
            ("max_stderr_bytes", self.max_stderr_bytes >= 64, "at least 64"),
            (
                "max_host_payload_bytes",
                1024 <= self.max_host_payload_bytes <= 64 * MiB,
                "between 1 KiB and 64 MiB",
            ),
            ("max_host_calls", self.max_host_calls >= 0, "at least 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise SandboxConfigError(
                    f"sandbox limit {name}={getattr(self, name)!r} must be {expected}"
                )

    @property
    def heap_bytes(self) -> int:
        return self.memory_bytes * 3 // 4


@dataclass(frozen=True)
class SnippetResult:
    """What one snippet did. ``error`` is the text the model should see when it failed."""

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    """repr() of the last expression's value, when the snippet ends with a non-None expression."""
    error: str | None = None
    error_type: str | None = None
    """The guest exception class (``NameError``...) or, for traps, ``FuelExhausted``,
    ``Timeout``, ``Crash``, ``Exit``, ``Stuck``, ``Closed`` (the sandbox was closed from
    another thread while the snippet ran); ``CodeTooLarge`` when nothing ran."""
    fuel_used: int = 0
    trapped: bool = False
    """The interpreter was stopped and the session discarded; state is gone."""
    fresh_session: bool = False
    """This snippet ran in a newly started interpreter (first snippet or after a trap)."""
    host_calls: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self, max_chars: int | None = None) -> str:
        """The tool-result text for the model: output, value, error, in that order."""
        parts: list[str] = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.result is not None:
            parts.append(f"[result] {self.result}")
        if self.error is not None:
            parts.append("[error] " + self.error.rstrip("\n"))
        if not parts:
            parts.append(
                "(no output: the code ran without printing anything; use print() to see values)"
            )
        text = "\n".join(parts)
        if max_chars is not None and len(text) > max_chars:
            keep = max(max_chars - 60, 0)
            text = (
                text[: keep // 2]
                + f"\n[... {len(text) - keep} characters cut ...]\n"
                + text[-(keep - keep // 2) :]
            )
        return text


def prepare(code: str) -> str:
    """Make the value of a trailing expression observable without moving any line.

    ``x + 1`` as the last statement becomes ``_loopbus_result_ = (x + 1)`` in place, so
    line numbers in tracebacks stay those of the original code. CPython's parser is used
    only to find the statement; code it rejects is run unchanged.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    node = tree.body[-1]
    if node.end_lineno is None or node.end_col_offset is None:
        return code
    lines = code.split("\n")

    # ast offsets count UTF-8 bytes; convert to str indexes.
    def col(lineno: int, offset: int) -> int:
        return len(lines[lineno - 1].encode()[:offset].decode(errors="ignore"))

    end_line, end_col = node.end_lineno - 1, col(node.end_lineno, node.end_col_offset)
    lines[end_line] = lines[end_line][:end_col] + ")" + lines[end_line][end_col:]
    start_line, start_col = node.lineno - 1, col(node.lineno, node.col_offset)
    lines[start_line] = (
        lines[start_line][:start_col] + f"{RESULT_VAR} = (" + lines[start_line][start_col:]
    )
    return "\n".join(lines)


class Capture:
    """A byte-capped text sink: keeps the first ``cap`` bytes, counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0
        self.inexact = False
        """The guest stopped before reporting what it discarded (a trap): ``dropped`` is a minimum."""

    def room(self) -> int:
        return self.cap - self.size

    def add(self, data: bytes, total: int) -> None:
        self.parts.append(data)
        self.size += len(data)
        self.dropped += total - len(data)

    @property
    def full(self) -> bool:
        return self.size >= self.cap

    def skip(self, count: Any) -> None:
        """Count output the guest discarded itself once it knew the cap was reached."""
        if isinstance(count, int) and count > 0:
            self.dropped += count

    def text(self) -> str:
        text = b"".join(self.parts).decode("utf-8", "replace")
        if self.dropped or self.inexact:
            more = f"at least {self.dropped}" if self.inexact else str(self.dropped)
            text += f"\n[... output truncated: {more} more bytes not shown ...]\n"
        return text


def clean_traceback(text: str, max_lines: int = 24) -> str:
    """Drop the bootstrap's own frames and shorten very deep tracebacks."""
    lines = [
        line for line in text.rstrip("\n").split("\n") if not line.startswith('  File "<stdin>"')
    ]
    if len(lines) > max_lines:
        lines = (
            lines[:4]
            + [f"  ... {len(lines) - max_lines + 4} more lines ..."]
            + lines[-(max_lines - 4) :]
        )
    return "\n".join(lines) + "\n"


def explain_trap(code: object, limits: SandboxLimits) -> tuple[str, str]:
    """The (kind, text) reported for a guest stopped by a wasm trap with this trap code."""
    from wasmtime import TrapCode  # loaded already: the guest runs in it

    if code == TrapCode.OUT_OF_FUEL:
        return "FuelExhausted", (
            f"the snippet used up its fuel ({limits.fuel:,} wasm instructions) and was stopped. "
            "Do less work per snippet (smaller inputs, fewer iterations) and check for endless loops."
        )
    if code == TrapCode.INTERRUPT:
        return "Timeout", (
            f"the snippet ran longer than the {limits.wall_clock_s:g} s wall-clock limit and was stopped "
            "(an endless loop?)."
        )
    if code == TrapCode.STACK_OVERFLOW:
        return (
            "Crash",
            "stack overflow: recursion too deep. Use a loop instead of deep recursion.",
        )
    name = getattr(code, "name", "unknown").lower().replace("_", " ")
    # Not "out of memory": the MicroPython heap is fixed at start, so running out of it is
    # a catchable MemoryError. A trap here is an interpreter fault (a wild pointer, an abort).
    return "Crash", (
        f"the interpreter crashed ({name}). Likely causes: a structure nested too deeply "
        "(printing, json or recursion), or an interpreter fault under heavy memory churn; "
        "simplify the data or do the work in smaller steps."
    )


def stop_outcome(exc: BaseException, limits: SandboxLimits) -> tuple[str, str]:
    """The (kind, text) of a guest whose interpreter ended with ``exc`` (not a stop of ours)."""
    import wasmtime as wt  # loaded already: the guest ran in it

    if isinstance(exc, wt.ExitTrap):
        return ("Exit", f"the interpreter exited with status {exc.code}.")
    if isinstance(exc, wt.Trap):
        return explain_trap(exc.trap_code, limits)
    if isinstance(exc, wt.WasmtimeError):
        first = (str(exc).splitlines() or [""])[0]
        return ("Crash", f"wasmtime refused to run the interpreter: {first}")
    # never let a worker die silently
    return ("Crash", f"sandbox host error: {type(exc).__name__}: {exc}")
