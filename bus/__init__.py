"""loopbus's event bus: durable, ordered, multi-process, with per-consumer cursors, on SQLite
(one host, :mod:`bus.sqlite`) or PostgreSQL (many hosts, :mod:`bus.postgres`).

Public API::

    from bus import Bus, SyncBus, Event, NewEvent, query, default_bus_path
    from bus import open, Store  # any backend by URL: path, sqlite:///path, postgresql://...
    from bus.errors import BusError, InvalidEventType, PayloadTooLarge, InvalidPayload
    from bus.errors import BusNotFound, SchemaTooNew, ReadOnlyViolation
    from bus.errors import QueryInterrupted, QueryTimeout
    from bus.lease import LeaseHeld  # store.lease(name): one live process per name

Names are imported lazily so that ``import bus.errors`` (the CLI's error mapping) stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus.events import CursorInfo, Event, NewEvent, PruneReport
    from bus.sqlite.core import Bus, Transaction, default_bus_path
    from bus.sqlite.readonly import QueryResult
    from bus.sqlite.sync import SyncBus
    from bus.store import Store, open, query

# A library logs but never configures output: the application (CLI, agent process) decides.
logging.getLogger("loopbus").addHandler(logging.NullHandler())

_LAZY = {
    "Bus": "bus.sqlite.core",
    "Transaction": "bus.sqlite.core",
    "default_bus_path": "bus.sqlite.core",
    "Event": "bus.events",
    "NewEvent": "bus.events",
    "CursorInfo": "bus.events",
    "PruneReport": "bus.events",
    "query": "bus.store",
    "open": "bus.store",
    "Store": "bus.store",
    "QueryResult": "bus.sqlite.readonly",
    "SyncBus": "bus.sqlite.sync",
}

__all__ = [
    "Bus",
    "CursorInfo",
    "Event",
    "NewEvent",
    "PruneReport",
    "QueryResult",
    "Store",
    "SyncBus",
    "Transaction",
    "default_bus_path",
    "open",
    "query",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
