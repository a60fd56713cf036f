"""`loopbus up`: start every agent of a chain as its own OS process and keep them running.

Each agent instance (``parallelism`` processes per agent) is a child process running
``loopbus agent NAME --config FILE --instance I/N``. The supervisor

* restarts a child that exits unexpectedly, with exponential backoff (0.5 s, 1 s, 2 s, ... 8 s),
  and gives up on an instance loudly when it crashes ``max_crashes`` times within
  ``crash_window`` seconds (or cannot start at all): that instance is not restarted, every
  other agent keeps running, and :meth:`Supervisor.run` raises :class:`ChainGaveUp` when it
  ends (after stopping the others as usual), so the exit status reports the failure;
* shows their status (from small JSON status files the workers keep up to date) and the
  events flowing on the bus;
* stops everything cleanly: SIGTERM, wait ``grace`` seconds, then SIGKILL;
* optionally returns once the chain is idle: every process is waiting and no consumer of
  the chain has a matching event beyond its cursor (``until_idle``).

One live process per instance: each worker holds a lease named after its consumer
(:mod:`loopbus.bus.lease`), and :meth:`Supervisor.start` refuses to start when one of its instances
already runs on the bus (a second ``up``). To spread a chain over hosts sharing one bus
(``--bus postgresql://...``), give each supervisor a ``share=(K, M)``: it runs every M-th
instance of the chain, starting at K.

Children run in their own session so that a Ctrl-C in the terminal reaches only the
supervisor, which then stops them in order; a watchdog in each worker makes it exit if the
supervisor dies without stopping it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopbus.agents.chains.config import AgentConfig, ChainConfig, consumer_name
from loopbus.agents.errors import AgentError
from loopbus.agents.run.events import RUN_NAMESPACE, RunEventType

__all__ = ["ChainGaveUp", "Slot", "Supervisor", "parse_share", "state_dir_for", "worker_command"]

# Exit code a worker uses for errors a restart cannot fix (bad config, unknown agent).
FATAL_EXIT = 3
# How long start() waits for an instance's lease to be freed before refusing to start.
LEASE_WAIT_S = 2.0


class ChainGaveUp(AgentError):
    """An agent process crashed too often (or could not start at all) and was not restarted;
    raised when the supervisor ends, after every other process was stopped."""


def state_dir_for(bus_path: str | Path) -> Path:
    """Where status files and per-process logs of the chain on ``bus_path`` live: next to a
    bus file; for a bus on a server (a URL), ``./loopbus-<schema>-<digest>.agents`` here."""
    from loopbus.bus.store import backend_of, is_url, sqlite_path

    if is_url(str(bus_path)) and backend_of(str(bus_path)) != "sqlite":
        from loopbus.bus.postgres.connect import parse_url

        schema = parse_url(str(bus_path)).schema
        digest = hashlib.sha256(str(bus_path).encode()).hexdigest()[:8]
        return Path.cwd() / f"loopbus-{schema}-{digest}.agents"
    return Path(f"{Path(sqlite_path(str(bus_path))).resolve()}.agents")


def parse_share(text: str) -> tuple[int, int]:
    """``K/M`` (this supervisor's share of a chain split over M supervisors) as ``(K, M)``."""
    try:
        k, m = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"share {text!r} must look like K/M, e.g. 0/2") from None
    if m < 1 or not 0 <= k < m:
        raise ValueError(f"share {text!r}: need 0 <= K < M")
    return k, m


def _file_stem(consumer: str) -> str:
    return consumer.replace("#", "-").replace("/", "of")


def worker_command(
    config_path: Path,
    agent: str,
    bus_path: str | Path,
    *,
    index: int = 0,
    count: int = 1,
    status_file: Path | None = None,
    workspace: Path | None = None,
    output: Path | None = None,
    model: str | None = None,
) -> list[str]:
    """The argv that runs one agent instance with the same interpreter as this process."""
    if importlib.util.find_spec("loopbus.agents.cli.__main__") is not None:
        head = [sys.executable, "-m", "loopbus.agents.cli"]
    else:
        head = [sys.executable, "-c", "from loopbus.agents.cli import main; main()"]
    cmd = [*head, "--bus", str(bus_path), "agent", agent, "--config", str(config_path)]
    cmd += ["--instance", f"{index}/{count}", "--parent-pid", str(os.getpid())]
    if status_file is not None:
        cmd += ["--status-file", str(status_file)]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    if output is not None:
        cmd += ["--output", str(output)]
    if model is not None:
        cmd += ["--model", model]
    return cmd


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for agent processes: the fast OpenBLAS when loopbus.models.blas offers it."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        from loopbus.models.blas import blas_env
    except ImportError:
        return env
    return blas_env(env)


@dataclass
class Slot:
    """One agent instance: its current process, restart bookkeeping and last status."""

    agent: AgentConfig
    index: int
    count: int
    status_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    state: str = "pending"
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    next_start: float = 0.0
    handled_before: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    last_exit: int | None = None

    @property
    def consumer(self) -> str:
        return consumer_name(self.agent.name, self.index, self.count)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def handled(self) -> int:
        return self.handled_before + int(self.status.get("handled", 0))

    def owns(self, event_id: int) -> bool:
        return event_id % self.count == self.index


class Supervisor:
    """Runs a chain's agent processes; see the module docstring for the policy."""

    def __init__(
        self,
        config: ChainConfig,
        bus_path: str | Path,
        *,
        state_dir: Path | None = None,
        max_crashes: int = 5,
        crash_window: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        grace: float = 5.0,
        log: Callable[[str], None] | None = None,
        share: tuple[int, int] | None = None,
    ) -> None:
        from loopbus.bus.store import backend_of, is_url, sqlite_path

        if config.path is None:
            raise AgentError("the supervisor needs a config loaded from a file (load_config)")
        self.config = config
        # A bus on a server is passed on as its URL; a file as its absolute path.
        self.bus_path: str | Path = (
            str(bus_path)
            if is_url(str(bus_path)) and backend_of(str(bus_path)) != "sqlite"
            else Path(sqlite_path(str(bus_path))).resolve()
        )
        self.state_dir = state_dir or state_dir_for(self.bus_path)
        # Several supervisors (hosts) on one bus each run a share of the instances: every
        # M-th one of the chain's instances, in config order, starting at K.
        self.share = share or (0, 1)
        self.max_crashes = max_crashes
        self.crash_window = crash_window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.grace = grace
        self.log = log or (lambda line: None)
        self.slots: list[Slot] = []
        number = -1
        for agent in config.agents.values():
            for i in range(agent.parallelism):
                number += 1
                if number % self.share[1] != self.share[0]:
                    continue
                stem = _file_stem(consumer_name(agent.name, i, agent.parallelism))
                self.slots.append(
                    Slot(
                        agent=agent,
                        index=i,
                        count=agent.parallelism,
                        status_file=self.state_dir / f"{stem}.status.json",
                        log_file=self.state_dir / f"{stem}.log",
                    )
                )
        self.recent: deque[Any] = deque(maxlen=12)
        self.counts: dict[str, int] = {}
        self._seen_id = 0
        self._bus: Any = None
        self.env = child_env()
        self.stopping = False
        self.failures: list[str] = []  # one message per instance given up on

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Create the bus (so children never race on migrations) and start every process.

        Raises AgentError when an instance already runs on the bus (another `loopbus up` or
        `loopbus agent`): each instance takes a lease, so a second one would only crash-loop.
        """
        import loopbus.bus as loopbus
        from loopbus.bus.lease import held_message

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._bus = loopbus.open(self.bus_path)
        try:
            # The workers of a supervisor that was just killed exit within half a second (their
            # watchdog) and free their leases: a restart right after it must not fail.
            deadline = time.monotonic() + LEASE_WAIT_S
            while held := [
                (slot, holder)
                for slot in self.slots
                if (holder := self._bus.lease_holder(slot.consumer)) is not None
            ]:
                if time.monotonic() >= deadline:
                    slot, holder = held[0]
                    raise AgentError(held_message(slot.consumer, str(self._bus.path), holder))
                time.sleep(0.1)
        except BaseException:
            self._bus.close()
            self._bus = None
            raise
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        with contextlib.suppress(FileNotFoundError):
            slot.status_file.unlink()
        cmd = worker_command(
            self.config.path,  # type: ignore[arg-type]
            slot.agent.name,
            self.bus_path,
            index=slot.index,
            count=slot.count,
            status_file=slot.status_file,
            workspace=self.config.workspace,
            output=self.config.output,
            model=self.config.model,
        )
        logf = slot.log_file.open("ab")
        try:
            slot.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        finally:
            logf.close()
        slot.status = {}
        slot.state = "starting"
        self.log(f"{slot.consumer}: started pid {slot.proc.pid}")

    def poll(self) -> None:
        """Reap exited children, schedule/perform restarts, refresh statuses and events."""
        now = time.monotonic()
        for slot in self.slots:
            self._read_status(slot)
            if slot.proc is not None and slot.proc.poll() is not None:
                self._on_exit(slot, now)
            elif slot.proc is None and slot.state == "backoff" and now >= slot.next_start:
                slot.restarts += 1
                self._spawn(slot)
        self._read_events()

    def _on_exit(self, slot: Slot, now: float) -> None:
        assert slot.proc is not None
        code = slot.proc.returncode
        slot.last_exit = code
        slot.handled_before += int(slot.status.get("handled", 0))
        slot.status = {}
        slot.proc = None
        if self.stopping:
            slot.state = "stopped"
            return
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > self.crash_window:
            slot.crashes.popleft()
        if code == FATAL_EXIT or len(slot.crashes) >= self.max_crashes:
            self._give_up(slot, code)
            return
        delay = min(self.backoff * 2 ** (len(slot.crashes) - 1), self.max_backoff)
        slot.state = "backoff"
        slot.next_start = now + delay
        self.log(f"{slot.consumer}: exited with code {code}; restarting in {delay:.1f} s")

    def _give_up(self, slot: Slot, code: int | None) -> None:
        """Stop restarting ``slot`` (only it: a crashing agent must not take the healthy
        ones down); the failure is reported loudly now and raised when the run ends."""
        slot.state = "gave up"
        why = (
            "cannot start (configuration error)"
            if code == FATAL_EXIT
            else f"crashed {len(slot.crashes)} times in {self.crash_window:.0f} s"
        )
        others = sum(1 for s in self.slots if s.state != "gave up")
        rest = (
            "no other process is left"
            if others == 0
            else f"{others} other process{'es keep' if others != 1 else ' keeps'} running"
        )
        self.log(
            f"{slot.consumer}: {why}; giving up on it (last exit code {code}); {rest}. "
            f"Log: {slot.log_file}"
        )
        self.failures.append(
            f"agent {slot.consumer} {why} (last exit code {code}); gave up on it.\n"
            f"Log: {slot.log_file}\n{_tail(slot.log_file)}"
        )

    def _read_status(self, slot: Slot) -> None:
        try:
            data = json.loads(slot.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if slot.proc is not None and data.get("pid") == slot.proc.pid:
            slot.status = data
            slot.state = str(data.get("state", slot.state))

    def _read_events(self) -> None:
        if self._bus is None:
            return
        for event in self._bus.events(since_id=self._seen_id, limit=500):
            self._seen_id = event.id
            self.counts[event.event_type] = self.counts.get(event.event_type, 0) + 1
            kind = event.event_type
            if not kind.startswith(RUN_NAMESPACE) or kind == RunEventType.OUTCOME:
                self.recent.append(event)

    def stop(self) -> None:
        """SIGTERM every child, wait up to ``grace`` seconds, then SIGKILL the rest."""
        self.stopping = True
        live = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.grace
        for slot in live:
            try:
                slot.proc.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.log(f"{slot.consumer}: did not stop in {self.grace:.0f} s; killing it")
                slot.proc.kill()  # type: ignore[union-attr]
                slot.proc.wait()  # type: ignore[union-attr]
        for slot in self.slots:
            if slot.proc is not None:
                slot.handled_before += int(slot.status.get("handled", 0))
                slot.status = {"activity": slot.status.get("activity", "")}
                slot.proc = None
            if slot.state != "gave up":
                slot.state = "stopped"
        if self._bus is not None:
            self._bus.__exit__(None, None, None)
            self._bus = None

    # -- idleness ----------------------------------------------------------------------------
    def pending(self) -> int:
        """Events that some instance of the chain still has to handle (beyond its cursor)."""
        if self._bus is None:
            return 0
        cursors = {c.consumer: c.last_seen_id for c in self._bus.cursors()}
        total = 0
        for slot in self.live_slots():
            since = cursors.get(slot.consumer, 0)
            for event in self._bus.events(since_id=since, types=list(slot.agent.subscribe)):
                if slot.owns(event.id) and any(
                    fnmatch.fnmatchcase(event.event_type, g) for g in slot.agent.subscribe
                ):
                    total += 1
        return total

    def live_slots(self) -> list[Slot]:
        """The instances still supervised (not given up on)."""
        return [s for s in self.slots if s.state != "gave up"]

    def idle(self) -> bool:
        """True when every process still supervised waits for events and none of them has
        anything left to handle (the events of an agent given up on stay unhandled)."""
        if any(s.proc is None or s.state != "idle" for s in self.live_slots()):
            return False
        return self.pending() == 0

    def run(
        self,
        *,
        until_idle: bool = False,
        timeout: float | None = None,
        tick: Callable[[Supervisor], None] | None = None,
        interval: float = 0.25,
    ) -> bool:
        """Supervise until stopped (Ctrl-C / SIGTERM), or until idle when ``until_idle``.

        Returns True when the chain went idle, False on timeout. Always stops the children.
        Raises :class:`ChainGaveUp` at the end (whatever ended the run, Ctrl-C included) when
        some instance was given up on; it also ends the run once every instance was.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        idle_since: float | None = None
        try:
            if self._bus is None:
                self.start()
            while True:
                self.poll()
                if tick is not None:
                    tick(self)
                if not self.live_slots():
                    return False  # nothing left to supervise: ChainGaveUp below
                if until_idle:
                    # Idle twice in a row, a second apart: an agent may be between
                    # acking one event and seeing the next.
                    if self.idle():
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since >= 1.0:
                            return True
                    else:
                        idle_since = None
                if deadline is not None and time.monotonic() > deadline:
                    return False
                time.sleep(interval)
        finally:
            if not self.stopping:
                self.stop()
            if self.failures:
                # Raised even over Ctrl-C/SIGTERM: the exit status must report the failure.
                raise ChainGaveUp("\n".join(self.failures))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def install_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C so ``Supervisor.run``'s cleanup always runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
