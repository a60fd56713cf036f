"""Progress that reads well outside a terminal: plain, timestamped lines for logs and CI.

A terminal gets rich live views (`loopbus up`, the demo); a pipe or a CI log gets these
instead: one line per supervisor message, one per run outcome, and a status line of every
agent process every ``every`` seconds, each starting with a UTC timestamp.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from loopbus.agents.termsafe import printable

__all__ = [
    "ChainProgress",
    "is_terminal",
    "model_call_rates",
    "stamped",
    "timestamp",
]


def timestamp(when: float | None = None) -> str:
    """``when`` (default: now) as an ISO-8601 UTC time to the second, e.g. 2026-12-03T07:30:01Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def stamped(line: str, when: float | None = None) -> str:
    """``line`` prefixed with :func:`timestamp`."""
    return f"{timestamp(when)} {line}"


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is an interactive terminal (live views make sense)."""
    out = sys.stdout if stream is None else stream
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream is not a terminal
        return False


def model_call_rates(payload: dict[str, Any]) -> tuple[float | None, float | None]:
    """Prefill and decode speeds (tokens/s) of a ``run.model_call`` payload, None when unknown.

    Prefill counts only the prompt tokens not served from the prefix cache.
    """

    def rate(tokens: Any, seconds: Any) -> float | None:
        if not isinstance(tokens, int | float) or not isinstance(seconds, int | float):
            return None
        return tokens / seconds if seconds > 0 and tokens > 0 else None

    prompt = payload.get("prompt_tokens")
    cached = payload.get("cached_tokens") or 0
    new = prompt - cached if isinstance(prompt, int) and isinstance(cached, int) else None
    return rate(new, payload.get("prefill_s")), rate(
        payload.get("completion_tokens"), payload.get("decode_s")
    )


def _short(value: Any, width: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    # One line per event in a log; terminal escapes are shown, not run (before the cut, so a
    # cut never leaves half an escape).
    text = printable(text.replace("\n", " "))
    return text if len(text) <= width else text[: width - 1] + "…"


class ChainProgress:
    """Plain progress of a supervised chain: pass :meth:`log` as the Supervisor's ``log`` and
    the instance itself as ``Supervisor.run``'s ``tick``.

    Every run outcome on the bus gets a line (read from the bus file itself, so none is missed
    however fast they come), and every ``every`` seconds a status line lists each process.
    """

    def __init__(
        self,
        bus_path: str | Path,
        echo: Callable[[str], None],
        *,
        every: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from loopbus.bus.store import sqlite_path

        self.bus_path = Path(sqlite_path(bus_path))
        self._bus_url = str(bus_path)  # a bus on a server is opened by its URL
        self.echo = echo
        self.every = every
        self.clock = clock
        self.started = clock()
        self._last_status: float | None = None
        self._seen = 0
        self._bus: Any = None
        self.outcomes: dict[str, int] = {}

    def log(self, line: str) -> None:
        """A supervisor message (process started, crashed, restarting...)."""
        # It can quote a process's stderr, an agent name or a run id: escapes are shown.
        self.echo(stamped(f"[up] {printable(line)}"))

    def __call__(self, sup: Any) -> None:
        """One supervisor tick: new run outcomes, and the status line when it is due."""
        self._print_outcomes()
        now = self.clock()
        if self._last_status is None or now - self._last_status >= self.every:
            self._last_status = now
            self.echo(stamped(self.status_line(sup)))

    def status_line(self, sup: Any) -> str:
        """Every agent process's state in one line, with the elapsed time and outcome counts."""
        parts = []
        for slot in sup.slots:
            part = f"{printable(slot.consumer)} {printable(slot.state)}"
            run_id = slot.status.get("run_id")
            if run_id:
                part += f" {_short(run_id, 200)}"
            part += f" ({slot.handled} handled"
            part += f", {slot.restarts} restarts)" if slot.restarts else ")"
            parts.append(part)
        outcomes = ", ".join(f"{printable(k)} {n}" for k, n in sorted(self.outcomes.items()))
        outcomes = outcomes or "none"
        elapsed = self.clock() - self.started
        return f"[status] {elapsed:.0f}s: " + "; ".join(parts) + f" | outcomes: {outcomes}"

    def finish(self, sup: Any) -> None:
        """The last outcomes and a final status line; closes the bus file."""
        try:
            self._print_outcomes()
            self.echo(stamped(self.status_line(sup)))
        finally:
            if self._bus is not None:
                self._bus.close()
                self._bus = None

    def _print_outcomes(self) -> None:
        from loopbus.agents.run.events import RunEventType

        if self._bus is None:
            import loopbus.bus as loopbus
            from loopbus.bus.store import backend_of

            if backend_of(self._bus_url) == "sqlite":
                if not self.bus_path.exists():  # the supervisor creates it when it starts
                    return
                self._bus = loopbus.open(self.bus_path, create=False)
            else:
                self._bus = loopbus.open(self._bus_url, create=False)
        for event in self._bus.events(
            since_id=self._seen, types=[RunEventType.OUTCOME], limit=1000
        ):
            self._seen = event.id
            p = event.payload if isinstance(event.payload, dict) else {}
            kind = str(p.get("kind", "?"))
            self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
            detail = p.get("summary") or p.get("reason") or ""
            # The agent and run id are the bus's too: anyone publishing can choose them.
            who = f"{_short(event.agent, 100)} {_short(event.run_id or '-', 200)}"
            self.echo(stamped(f"[run] {who} {_short(kind, 40)}: {_short(detail)}"))
