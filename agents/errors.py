"""Error hierarchy of the ``agents`` package.

The CLI maps :class:`AgentError` (and subclasses) to ``Error: <message>`` and exit code 1,
so messages are written for humans: say what is wrong and how to fix it.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised by the ``agents`` package."""


class SandboxError(AgentError):
    """The code sandbox could not be created or used (not a failure of the guest code)."""


class SandboxUnavailable(SandboxError):
    """wasmtime or the MicroPython WASI artifact is missing or unusable."""


class SandboxConfigError(SandboxError):
    """Invalid sandbox limits or mount directory."""


class SandboxClosed(SandboxError):
    """The sandbox (or session) was used after close()."""
