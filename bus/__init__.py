"""loopbus's event bus: durable, ordered, multi-process, with per-consumer cursors, on SQLite
(one host, :mod:`loopbus.bus.sqlite`) or PostgreSQL (many hosts, :mod:`loopbus.bus.postgres`).

Public API::

    from loopbus.bus import Bus, SyncBus, Event, NewEvent, query, default_bus_path
    from loopbus.bus import open, Store  # any backend by URL: path, sqlite:///path, postgresql://...
    from loopbus.bus.errors import BusError, InvalidEventType, PayloadTooLarge, InvalidPayload
    from loopbus.bus.errors import BusNotFound, SchemaTooNew, ReadOnlyViolation
    from loopbus.bus.errors import QueryInterrupted, QueryTimeout
    from loopbus.bus.lease import LeaseHeld  # store.lease(name): one live process per name

Names are imported lazily so that ``import loopbus.bus.errors`` (the CLI's error mapping) stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopbus.bus.events import CursorInfo, Event, NewEvent, PruneReport
    from loopbus.bus.sqlite.core import Bus, Transaction, default_bus_path
    from loopbus.bus.sqlite.readonly import QueryResult
    from loopbus.bus.sqlite.sync import SyncBus
    from loopbus.bus.store import Store, open, query

# A library logs but never configures output: the application (CLI, agent process) decides.
logging.getLogger("loopbus").addHandler(logging.NullHandler())

_LAZY = {
    "Bus": "loopbus.bus.sqlite.core",
    "Transaction": "loopbus.bus.sqlite.core",
    "default_bus_path": "loopbus.bus.sqlite.core",
    "Event": "loopbus.bus.events",
    "NewEvent": "loopbus.bus.events",
    "CursorInfo": "loopbus.bus.events",
    "PruneReport": "loopbus.bus.events",
    "query": "loopbus.bus.store",
    "open": "loopbus.bus.store",
    "Store": "loopbus.bus.store",
    "QueryResult": "loopbus.bus.sqlite.readonly",
    "SyncBus": "loopbus.bus.sqlite.sync",
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
