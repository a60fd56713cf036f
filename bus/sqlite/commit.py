"""The writing half of :class:`loopbus.bus.sqlite.core.Bus`: group commit, the fast path, exclusive access.

* Every write (publish, ack, register, ...) is an operation. Whenever the writer thread is
  free, everything queued goes into one transaction (one fsync) on the aiosqlite writer thread,
  in a single thread hop; each caller's future resolves after that commit.
* A lone write skips the hop and commits on the loop thread (:mod:`loopbus.bus.sqlite.inline`): at once when
  no other task is ready to run (:meth:`CommitQueue._alone`), else after one loop turn if no
  other write was queued meanwhile (concurrent writes join one batch). A task writing in a
  tight loop still gives the loop a turn every :data:`TIME_SLICE_S`.
* A transaction or a prune takes the writer exclusively; queued operations and waiting
  transactions alternate so that neither starves.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import aiosqlite

from loopbus.bus.sqlite import sqlops
from loopbus.bus.sqlite.inline import InlineWriter, passive_checkpoint

# Writes that skip the loop's turn (see CommitQueue._alone) do so for at most this long in a
# row: a task publishing in a tight loop still lets timers and I/O run every few commits.
TIME_SLICE_S = 0.002

if TYPE_CHECKING:
    from loopbus.bus.sqlite.core import BusStats
    from loopbus.bus.sqlite.wakeup import Doorbell, Listener


class CommitQueue:
    """Mixin of :class:`loopbus.bus.sqlite.core.Bus` that schedules its writes."""

    if TYPE_CHECKING:
        stats: BusStats
        _loop: asyncio.AbstractEventLoop
        _writer: aiosqlite.Connection
        _wconn: sqlite3.Connection
        _busy_ms: int
        _listener: Listener
        _doorbell: Doorbell
        _inline: InlineWriter
        _submit: Callable[[Any], None] | None
        _pending: list[tuple[int, Any, asyncio.Future[Any]]]
        _inflight: bool
        _flush_scheduled: bool
        _turned_at: float
        _exclusive: bool
        _exclusive_waiters: list[asyncio.Future[None]]
        _kicks: dict[Any, Callable[[], None]]
        _kick_lock: threading.Lock

        def _wrap(self, exc: BaseException) -> BaseException: ...

    async def _write(self, kind: int, arg: Any) -> Any:
        """Commit one operation; its result. Concurrent writes share a commit (group
        commit); a lone one commits on the loop thread when that is cheap (:mod:`loopbus.bus.sqlite.inline`)."""
        if (
            self._inflight
            or self._exclusive
            or self._flush_scheduled
            or not self._inline.available()
        ):
            return await self._enqueue(kind, arg)
        if not self._alone():
            # Let the tasks that are ready now run first: writes they make queue behind this
            # decision and go with this one as a batch; if none comes, commit right here.
            self._flush_scheduled = True
            try:
                await asyncio.sleep(0)
            finally:
                self._flush_scheduled = False
                self._turned_at = time.monotonic()
                if self._pending and not self._inflight and not self._exclusive:
                    self._flush_scheduled = True
                    self._loop.call_soon(self._flush)
            if self._pending or self._inflight or self._exclusive:
                return await self._enqueue(kind, arg)
        done, result = self._commit_inline((kind, arg))
        if not done:
            return await self._enqueue(kind, arg)
        if isinstance(result, BaseException):
            raise result
        return result

    def _alone(self) -> bool:
        """Whether a write may commit without first giving the loop a turn: nothing else is
        ready to run (so no other write can join it), and this bus gave the loop a turn less
        than :data:`TIME_SLICE_S` ago (so timers and I/O still get theirs).

        Skipping the turn saves ~20 us per publish at FULL on the 2-core VM (bench 1). It reads
        the ready queue of asyncio's own loop (``_ready``); on a loop without one (uvloop)
        every write takes the turn.
        """
        ready = getattr(self._loop, "_ready", None)
        if ready is None or ready:
            return False
        return time.monotonic() - self._turned_at < TIME_SLICE_S

    def _enqueue(self, kind: int, arg: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((kind, arg, fut))
        if not self._inflight and not self._exclusive and not self._flush_scheduled:
            # Decide after the tasks that are ready now have run, as in _write.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._inflight or self._exclusive or not self._pending:
            return
        if len(self._pending) == 1 and self._inline.available():
            op = self._pending[0]
            done, result = self._commit_inline(op)
            if done:
                self._pending = []
                fut = op[2]
                if not fut.done():
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                # A transaction or prune that queued while the writer was busy is woken only
                # by a batch ending or an exclusive holder leaving: none will come now.
                self._schedule(prefer_exclusive=True)
                return
        self._start_batch()

    def _commit_inline(self, op: sqlops.Op) -> tuple[bool, Any]:
        """Commit ``op`` on the loop thread (:mod:`loopbus.bus.sqlite.inline`): ``(True, result or
        exception)``, or ``(False, None)`` if the write lock is taken (use the writer thread)."""
        done, result = self._inline.commit(op, self._kick_read_aheads)
        if not done:
            return False, None
        published = 0
        if isinstance(result, BaseException):
            result = self._wrap(result)
        else:
            published = sqlops.count_events([op], [result])
            stats = self.stats
            stats.transactions += 1
            stats.events += published
            if published:
                self._doorbell.ring()
                self._listener.notify()
        if self._inline.checkpoint_due(op):
            # Writes queue until it is done (see loopbus.bus.sqlite.inline), then go as one batch.
            self._inflight = True
            self._submit_job(self._checkpoint_job)
        return True, result

    def _checkpoint_job(self) -> None:
        passive_checkpoint(self._wconn)
        try:
            self._loop.call_soon_threadsafe(self._batch_done, [], [], 0)
        except RuntimeError:  # pragma: no cover - the event loop is gone
            pass

    def _start_batch(self) -> None:
        ops, self._pending = self._pending, []
        self._inflight = True
        self._submit_job(partial(self._batch_job, ops), ops)

    def _submit_job(self, job: Callable[[], None], ops: list[Any] | None = None) -> None:
        """Queue ``job`` (which hands back its own results) on the writer thread."""
        submit = self._submit
        if submit is not None:
            # Straight onto aiosqlite's worker queue (its (future, function) protocol, with no
            # future): a batch job hands the results back with one call_soon_threadsafe, so
            # the callers' futures resolve in the first loop iteration after the commit.
            submit((None, job))
        else:  # pragma: no cover - an aiosqlite without the worker queue

            async def run() -> None:
                try:
                    await self._writer._execute(job)
                except BaseException as exc:  # noqa: BLE001
                    if ops is not None:
                        self._batch_done(ops, [exc] * len(ops), 0)

            self._loop.create_task(run())

    def _batch_job(self, ops: list[tuple[int, Any, asyncio.Future[Any]]]) -> None:
        """Writer thread: commit one batch, ring the doorbell, hand the results to the loop
        with one call_soon_threadsafe; never raises."""
        results: list[Any]
        published = 0
        try:
            try:
                results = sqlops.run_in_transaction(
                    self._wconn, ops, self._busy_ms, self._kick_read_aheads
                )
                committed = 1
            except sqlite3.OperationalError:
                raise
            except Exception:
                if len(ops) == 1:
                    raise
                # A row the database refused: retry one by one so only its caller fails.
                results, committed = [], 0
                for op in ops:
                    try:
                        results.append(
                            sqlops.run_in_transaction(self._wconn, [op], self._busy_ms)[0]
                        )
                        committed += 1
                    except Exception as exc:  # noqa: BLE001 - reported to that caller
                        results.append(self._wrap(exc))
            published = sqlops.count_events(ops, results)
            stats = self.stats
            stats.transactions += committed
            stats.events += published
            stats.batches += 1
            if len(ops) > stats.largest_batch:
                stats.largest_batch = len(ops)
        except BaseException as exc:  # noqa: BLE001 - every caller gets the error
            results = [self._wrap(exc)] * len(ops)
            published = 0
        if published:
            # Ring before handing the results back: the callers resume on the loop thread
            # and would hold the GIL that the ring needs, delaying other processes'
            # subscribers by a loop turn (measured: p50 0.45 -> 0.24 ms from commit).
            self._doorbell.ring()
        try:
            self._loop.call_soon_threadsafe(self._batch_done, ops, results, published)
        except RuntimeError:  # pragma: no cover - the event loop is gone: nobody is waiting
            pass

    def _kick_read_aheads(self) -> None:
        """Just before a COMMIT (on the writer thread, or the loop thread's fast path): start
        the subscriptions' pending read-aheads, so that they run while the commit waits for
        the disk."""
        if self._kicks:
            kicks, self._kicks = self._kicks, {}
            for kick in list(kicks.values()):
                kick()

    def _batch_done(
        self, ops: list[tuple[int, Any, asyncio.Future[Any]]], results: list[Any], published: int
    ) -> None:
        self._inflight = False
        for (_, _, fut), result in zip(ops, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)
        if published:
            self._listener.notify()
        self._schedule(prefer_exclusive=True)

    def _schedule(self, *, prefer_exclusive: bool) -> None:
        # Alternate between queued operations and waiting transactions so neither starves.
        if self._inflight or self._exclusive:
            return
        if self._exclusive_waiters and (prefer_exclusive or not self._pending):
            waiter = self._exclusive_waiters.pop(0)
            self._exclusive = True  # handed over: nobody can slip in before it resumes
            waiter.set_result(None)
        elif self._pending:
            self._flush()

    async def _acquire_exclusive(self) -> None:
        if not self._inflight and not self._exclusive and not self._exclusive_waiters:
            self._exclusive = True
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._exclusive_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._exclusive_waiters:
                self._exclusive_waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._release_exclusive()  # it was handed over just before the cancel
            raise

    def _release_exclusive(self) -> None:
        self._exclusive = False
        self._schedule(prefer_exclusive=False)
