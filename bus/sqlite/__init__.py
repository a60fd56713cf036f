"""The SQLite bus backend: one file in WAL mode, the only coupling of agents on one host.

Modules: :mod:`~bus.sqlite.core` (the async :class:`Bus`), :mod:`~bus.sqlite.sync`
(:class:`SyncBus`, the blocking Store), :mod:`~bus.sqlite.sqlops` (the SQL work on the
worker threads), :mod:`~bus.sqlite.commit` / :mod:`~bus.sqlite.inline` (group and inline
commits), :mod:`~bus.sqlite.reading` / :mod:`~bus.sqlite.subscription` (reads, waiting),
:mod:`~bus.sqlite.transaction`, :mod:`~bus.sqlite.wakeup` (the doorbell),
:mod:`~bus.sqlite.readonly` (read-only SQL, read-only media), :mod:`~bus.sqlite.migrations`
(the numbered schema) and :mod:`~bus.sqlite.runs_queries` (what ``loopbus runs`` reads).

The old module names (``bus.core``, ``bus.sync``, ``bus.readonly``, ``bus.migrations``,
``bus.runs_queries``) stay importable: they are these very modules.
"""
