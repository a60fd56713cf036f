"""The SQLite bus backend: one file in WAL mode, the only coupling of agents on one host.

Modules: :mod:`~loopbus.bus.sqlite.core` (the async :class:`Bus`), :mod:`~loopbus.bus.sqlite.sync`
(:class:`SyncBus`, the blocking Store), :mod:`~loopbus.bus.sqlite.sqlops` (the SQL work on the
worker threads), :mod:`~loopbus.bus.sqlite.commit` / :mod:`~loopbus.bus.sqlite.inline` (group and inline
commits), :mod:`~loopbus.bus.sqlite.reading` / :mod:`~loopbus.bus.sqlite.subscription` (reads, waiting),
:mod:`~loopbus.bus.sqlite.transaction`, :mod:`~loopbus.bus.sqlite.wakeup` (the doorbell),
:mod:`~loopbus.bus.sqlite.readonly` (read-only SQL, read-only media), :mod:`~loopbus.bus.sqlite.migrations`
(the numbered schema) and :mod:`~loopbus.bus.sqlite.runs_queries` (what ``loopbus runs`` reads).

The old module names (``loopbus.bus.core``, ``loopbus.bus.sync``, ``loopbus.bus.readonly``, ``loopbus.bus.migrations``,
``loopbus.bus.runs_queries``) stay importable: they are these very modules.
"""
