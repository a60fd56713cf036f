"""Bus benchmarks, each against a baseline measured in the same run.

1. single-event publish: loopbus (async Bus, and the blocking SyncBus) vs raw stdlib sqlite3
   with identical pragmas (FULL, NORMAL);
2. many concurrent publishers in one process (group commit) at FULL vs the raw single-commit
   rate;
3. publish -> consume latency across processes (p50/p99) and the idle consumer's CPU;
4. consume + ack throughput vs a raw cursor loop;
5. the backends side by side through ``bus.open`` (the blocking Store API): publish,
   consume + ack and cross-process latency on SQLite and on PostgreSQL, in one run.

Run: ``python -m bench bus`` (``python -m bench.bench_bus backends`` runs only #5). Numbers are noisy on a shared machine: each comparison
alternates short rounds of both sides and reports medians (and the median of the per-round
ratios).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopbus.bus import Bus, NewEvent, SyncBus

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 11


def _fresh(directory: Path, name: str) -> Path:
    """A new, migrated, empty bus file (same schema for raw and loopbus runs)."""
    path = directory / name

    async def create() -> None:
        async with Bus.connect(path):
            pass

    asyncio.run(create())
    return path


def _raw_conn(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


INSERT = "INSERT INTO outbox (agent, event_type, payload, run_id, caused_by) VALUES (?, ?, ?, ?, ?)"


# Each timed round stops after this many seconds even if it has not done all its events,
# so that a slow (shared) disk does not stretch the whole benchmark.
ROUND_BUDGET_S = 0.5


def raw_single_commits(path: Path, synchronous: str, n: int) -> float:
    """Events/s, one BEGIN IMMEDIATE ... COMMIT per event, stdlib sqlite3."""
    conn = _raw_conn(path, synchronous)
    started = time.perf_counter()
    done = 0
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, ("bench", "bench.raw", json.dumps({"i": i}), None, None))
        conn.execute("COMMIT")
        done += 1
        if i % 50 == 0 and time.perf_counter() - started > ROUND_BUDGET_S:
            break
    rate = done / (time.perf_counter() - started)
    conn.close()
    return rate


def bus_single_publishes(path: Path, synchronous: str, n: int) -> float:
    """Events/s, sequential ``await bus.publish`` (one event per commit)."""

    async def run() -> float:
        async with Bus.connect(path, synchronous=synchronous) as bus:
            started = time.perf_counter()
            done = 0
            for i in range(n):
                await bus.publish("bench.bus", {"i": i}, agent="bench")
                done += 1
                if i % 50 == 0 and time.perf_counter() - started > ROUND_BUDGET_S:
                    break
            return done / (time.perf_counter() - started)

    return asyncio.run(run())


def sync_single_publishes(path: Path, synchronous: str, n: int) -> float:
    """Events/s, sequential ``SyncBus.publish`` (the blocking API of the CLI and agent loop)."""
    with SyncBus(path, synchronous=synchronous) as bus:
        started = time.perf_counter()
        done = 0
        for i in range(n):
            bus.publish("bench.sync", {"i": i}, agent="bench")
            done += 1
            if i % 50 == 0 and time.perf_counter() - started > ROUND_BUDGET_S:
                break
        return done / (time.perf_counter() - started)


def bus_group_commit(path: Path, publishers: int, each: int) -> tuple[float, float]:
    """Events/s with many concurrent publishers at FULL; and events per transaction."""

    async def run() -> tuple[float, float]:
        async with Bus.connect(path) as bus:

            async def publisher(p: int) -> None:
                for i in range(each):
                    await bus.publish("bench.group", {"p": p, "i": i}, agent="bench")

            started = time.perf_counter()
            await asyncio.gather(*(publisher(p) for p in range(publishers)))
            elapsed = time.perf_counter() - started
            return publishers * each / elapsed, bus.stats.events / max(bus.stats.transactions, 1)

    return asyncio.run(run())


def _paired(
    raw: Callable[[], float], bus: Callable[[], float], rounds: int = ROUNDS
) -> tuple[float, float, float]:
    """Alternate raw and loopbus rounds; median raw rate, median bus rate, median of the
    per-round ratios (pairing adjacent rounds cancels most of a shared machine's drift)."""
    raws, buses, ratios = [], [], []
    for i in range(rounds):
        # Alternate which side goes first, so neither always gets the warmer cache.
        if i % 2:
            b, r = bus(), raw()
        else:
            r, b = raw(), bus()
        raws.append(r)
        buses.append(b)
        ratios.append(b / r)
    return statistics.median(raws), statistics.median(buses), statistics.median(ratios)


# --------------------------------------------------------------------------- latency

_CONSUMER = r"""
import asyncio, json, sys, time
from loopbus.bus import Bus

async def main(path, count):
    out = {"lat_ms": [], "recv": {}}
    async with Bus.connect(path) as bus:
        async for ev in bus.subscribe("bench-latency", ["bench.lat", "bench.idle.*"]):
            now = time.monotonic()
            if ev.event_type == "bench.lat":
                out["lat_ms"].append((now - ev.payload["t"]) * 1000)
                out["recv"][str(ev.id)] = now
            elif ev.event_type == "bench.idle.start":
                cpu0, wall0 = time.process_time(), now
            elif ev.event_type == "bench.idle.end":
                out["idle_cpu_s"] = time.process_time() - cpu0
                out["idle_wall_s"] = now - wall0
                break
    print(json.dumps(out), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


_SLEEPER = r"""
import asyncio, sys, time

async def main(seconds, period):
    cpu0, wall0 = time.process_time(), time.monotonic()
    while time.monotonic() - wall0 < seconds:
        await asyncio.sleep(period)
    print(100 * (time.process_time() - cpu0) / (time.monotonic() - wall0), flush=True)

asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""


def sleeper_cpu_pct(seconds: float, period: float) -> float:
    """CPU of a process that only wakes every ``period`` s (the idle consumer's safety poll):
    the baseline for the idle figure. Each wake-up of an idle core is expensive on a small VM
    (measured up to ~0.5 ms of CPU per wake-up here), whatever the process does then."""
    out = subprocess.run(
        [sys.executable, "-c", _SLEEPER, str(seconds), str(period)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


def latency(
    path: Path, synchronous: str, count: int, gap_s: float, idle_s: float
) -> dict[str, float]:
    """Publish ``count`` events ``gap_s`` apart to a consumer in another process.

    Latency "from publish() call" includes the durable commit (an fsync at FULL); "from
    commit" is from publish() returning to the consumer having the Event (the doorbell rings
    just before publish() returns; when the write goes through the writer thread, a thread
    hop before, so that figure can even be slightly negative).
    """
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONSUMER, str(path), str(count)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    wake_dir = Path(os.path.realpath(path) + ".wake")

    async def run() -> dict[int, float]:
        committed: dict[int, float] = {}
        async with Bus.connect(path, synchronous=synchronous) as bus:
            deadline = time.monotonic() + 30
            while not (wake_dir.is_dir() and any(wake_dir.glob("*.sock"))):
                if time.monotonic() > deadline:
                    raise RuntimeError("latency consumer did not start")
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            for _ in range(count):
                event_id = await bus.publish("bench.lat", {"t": time.monotonic()})
                committed[event_id] = time.monotonic()
                await asyncio.sleep(gap_s)
            await bus.publish("bench.idle.start", {})
            await asyncio.sleep(idle_s)
            await bus.publish("bench.idle.end", {})
        return committed

    committed = asyncio.run(run())
    out, _ = proc.communicate(timeout=60)
    data = json.loads(out)
    lat = sorted(data["lat_ms"])
    after_commit = sorted((data["recv"][str(i)] - t) * 1000 for i, t in committed.items())
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(len(lat) * 0.99) - 1],
        "p50_after_commit_ms": statistics.median(after_commit),
        "p99_after_commit_ms": after_commit[int(len(after_commit) * 0.99) - 1],
        "idle_cpu_pct": 100 * data["idle_cpu_s"] / data["idle_wall_s"],
    }


# --------------------------------------------------------------------------- consume + ack


def _prefill(path: Path, n: int) -> None:
    async def run() -> None:
        async with Bus.connect(path, synchronous="NORMAL") as bus:
            for start in range(0, n, 1000):
                await bus.publish_many(
                    NewEvent(event_type="bench.consume", payload={"i": i, "text": "x" * 40})
                    for i in range(start, min(n, start + 1000))
                )

    asyncio.run(run())


# The same cursor upsert as loopbus's ack (a real timestamp, never moving backwards), so both
# arms write the same row; loopbus additionally checks the id against the last event id.
RAW_ACK = (
    "INSERT INTO cursors (consumer, last_seen_id, updated_at) "
    "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
    "ON CONFLICT (consumer) DO UPDATE "
    "SET last_seen_id = excluded.last_seen_id, updated_at = excluded.updated_at "
    "WHERE excluded.last_seen_id > cursors.last_seen_id"
)


def raw_consume(path: Path, n: int, batch: int, consumer: str) -> float:
    """Events/s for a raw loop: SELECT a batch after the cursor, decode, UPDATE cursor, COMMIT."""
    conn = _raw_conn(path, "FULL")
    cursor = 0
    seen = 0
    started = time.perf_counter()
    while seen < n:
        rows = conn.execute(
            "SELECT id, agent, event_type, payload, run_id, caused_by, created_at FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, batch),
        ).fetchall()
        for row in rows:
            json.loads(row[3])
        seen += len(rows)
        cursor = rows[-1][0]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_ACK, (consumer, cursor))
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - started)
    conn.close()
    return rate


def bus_consume(path: Path, n: int, batch: int, consumer: str) -> float:
    """Events/s for ``async for ev in bus.subscribe(...)`` with an ack per batch."""

    async def run() -> float:
        async with Bus.connect(path) as bus:
            seen = 0
            started = time.perf_counter()
            async for event in bus.subscribe(consumer, batch_size=batch):
                seen += 1
                if seen % batch == 0 or seen == n:
                    await bus.ack(consumer, event.id)
                if seen >= n:
                    break
            return n / (time.perf_counter() - started)

    return asyncio.run(run())


# --------------------------------------------------------------------------- backends

_STORE_CONSUMER = r"""
import json, sys, time
from loopbus import bus

with bus.open(sys.argv[1]) as store:
    lat = []
    print("ready", flush=True)
    for ev in store.subscribe("bench-latency", ["bench.lat", "bench.end"]):
        now = time.time()
        if ev.event_type == "bench.end":
            break
        lat.append((now - ev.payload["t"]) * 1000)
        store.ack("bench-latency", ev.id)
print(json.dumps(lat), flush=True)
"""


def store_publish(target: str, n: int) -> float:
    """Events/s for ``n`` single publishes (one durable commit each) through ``bus.open``."""
    import loopbus.bus as loopbus

    with loopbus.open(target) as store:
        started = time.perf_counter()
        for i in range(n):
            store.publish("bench.pub", {"i": i, "pad": "x" * 64})
        return n / (time.perf_counter() - started)


def store_consume(target: str, n: int, batch: int, consumer: str) -> float:
    """Events/s for ``store.subscribe(...)`` with an ack per batch (events prefilled)."""
    import loopbus.bus as loopbus

    with loopbus.open(target) as store:
        seen = 0
        started = time.perf_counter()
        for event in store.subscribe(consumer, ["bench.pub"], timeout=5, batch_size=batch):
            seen += 1
            if seen % batch == 0 or seen == n:
                store.ack(consumer, event.id)
            if seen >= n:
                break
        return seen / (time.perf_counter() - started)


def store_latency(target: str, count: int, gap_s: float) -> dict[str, float]:
    """publish() call -> another process has the event (it acks each one), p50/p99 in ms."""
    import loopbus.bus as loopbus

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _STORE_CONSUMER, target],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("latency consumer did not start")
    with loopbus.open(target) as store:
        time.sleep(0.5)  # its subscription registered and waiting
        for _ in range(count):
            store.publish("bench.lat", {"t": time.time()})
            time.sleep(gap_s)
        store.publish("bench.end", {})
    out, _ = proc.communicate(timeout=60)
    lat = sorted(json.loads(out.strip().splitlines()[-1]))
    return {"p50_ms": statistics.median(lat), "p99_ms": lat[int(len(lat) * 0.99) - 1]}


def backends(quick: bool = False) -> None:
    """#5: SQLite and PostgreSQL through the same Store API, one after the other."""
    import loopbus.bus as loopbus

    n_pub, n_consume, n_lat = (300, 2000, 100) if quick else (2000, 10_000, 250)
    print(
        f"5. backends through bus.open (blocking Store API, FULL / synchronous_commit on): "
        f"{n_pub} publishes, consume + ack of {n_consume} (batches of 100), {n_lat} events "
        "across processes"
    )
    targets: list[tuple[str, str, Any]] = []
    tmp = tempfile.TemporaryDirectory(prefix="loopbus-bench-")
    targets.append(("sqlite", str(Path(tmp.name) / "store.db"), None))
    try:
        import psycopg

        from loopbus.bus.postgres.testing import fresh_schema, server_url

        psycopg.connect(server_url(), connect_timeout=3).close()
        pg = fresh_schema("bench")
        url = pg.__enter__()
        targets.append(("postgres", url, pg))
    except Exception as exc:  # no server: report it, measure SQLite alone
        print(f"   postgres: skipped ({type(exc).__name__}: {exc})".splitlines()[0])
    try:
        for name, target, _ in targets:
            pub = statistics.median(store_publish(target, n_pub) for _ in range(3))
            with loopbus.open(target) as store:  # top the backlog up for the consume rounds
                store.publish_many(
                    [{"event_type": "bench.pub", "payload": {"i": i}} for i in range(n_consume)]
                )
            rounds = iter(range(100))
            consume = statistics.median(
                store_consume(target, n_consume, 100, f"c{next(rounds)}") for _ in range(3)
            )
            lat = store_latency(target, n_lat, 0.005)
            print(
                f"   {name:<8} publish {pub:>8,.0f} ev/s   consume + ack {consume:>9,.0f} ev/s"
                f"   publish() -> other process p50 {lat['p50_ms']:.2f} ms"
                f"  p99 {lat['p99_ms']:.2f} ms"
            )
    finally:
        for _, _, cleanup in targets:
            if cleanup is not None:
                cleanup.__exit__(None, None, None)
        tmp.cleanup()


# --------------------------------------------------------------------------- main


def main() -> None:
    """Run the four benchmarks and print their figures and ratios."""
    with tempfile.TemporaryDirectory(prefix="loopbus-bench-") as tmp:
        tmpdir = Path(tmp)
        print(f"1. single-event publish, one commit per event (medians of {ROUNDS} paired rounds)")
        raw_full = 0.0
        for mode, n in (("FULL", 5000), ("NORMAL", 50000)):
            raw_path = _fresh(tmpdir, f"raw-{mode}.db")
            bus_path = _fresh(tmpdir, f"bus-{mode}.db")
            raw_rate, bus_rate, ratio = _paired(
                lambda p=raw_path, m=mode, n=n: raw_single_commits(p, m, n),
                lambda p=bus_path, m=mode, n=n: bus_single_publishes(p, m, n),
            )
            raw_full = raw_rate if mode == "FULL" else raw_full
            print(
                f"   {mode:<6} raw sqlite3 {raw_rate:>9,.0f} ev/s   loopbus {bus_rate:>9,.0f} ev/s"
                f"   ratio {ratio:.0%}" + ("   (target >= 80%)" if mode == "FULL" else "")
            )
            sync_path = _fresh(tmpdir, f"sync-{mode}.db")
            raw_rate, sync_rate, ratio = _paired(
                lambda p=raw_path, m=mode, n=n: raw_single_commits(p, m, n),
                lambda p=sync_path, m=mode, n=n: sync_single_publishes(p, m, n),
            )
            print(
                f"   {mode:<6} raw sqlite3 {raw_rate:>9,.0f} ev/s   SyncBus {sync_rate:>9,.0f} ev/s"
                f"   ratio {ratio:.0%}   (the blocking API"
                + (", target >= 80%)" if mode == "FULL" else ")")
            )

        print("2. group commit: 200 concurrent publishers x 50 events, FULL")
        group_path = _fresh(tmpdir, "group.db")
        rate, per_txn = max(bus_group_commit(group_path, 200, 50) for _ in range(2))
        ceiling = raw_full
        print(
            f"   loopbus {rate:,.0f} ev/s ({per_txn:.0f} events per commit) vs raw single-commit "
            f"{ceiling:,.0f} ev/s = {rate / ceiling:.1f}x   (target >= 5x)"
        )

        print("3. publish -> consume latency across processes; idle consumer CPU")
        print("   (target p50 <= 0.5 ms, p99 <= 3 ms, idle CPU <= 0.1% of a core)")
        for mode, idle_s in (("FULL", 6.0), ("NORMAL", 0.2)):
            lat = latency(
                _fresh(tmpdir, f"latency-{mode}.db"), mode, count=250, gap_s=0.005, idle_s=idle_s
            )
            print(
                f"   {mode:<6} from publish() call: p50 {lat['p50_ms']:.2f} ms  "
                f"p99 {lat['p99_ms']:.2f} ms;  from commit (doorbell + read): "
                f"p50 {lat['p50_after_commit_ms']:.2f} ms  p99 {lat['p99_after_commit_ms']:.2f} ms"
            )
            if mode == "FULL":
                idle = lat["idle_cpu_pct"]
                base = sleeper_cpu_pct(idle_s, 1.0)
                print(
                    f"   idle consumer CPU over {idle_s:g} s: {idle:.3f}% of a core   (a process "
                    f"that only wakes once a second, as its safety poll does: {base:.3f}%)"
                )

        print("4. consume + ack throughput, batches of 100, ack per batch at FULL")
        n = 10_000
        consume_path = _fresh(tmpdir, "consume.db")
        _prefill(consume_path, n)
        counter = iter(range(1000))
        raw_rate, bus_rate, ratio = _paired(
            lambda: raw_consume(consume_path, n, 100, f"raw{next(counter)}"),
            lambda: bus_consume(consume_path, n, 100, f"bus{next(counter)}"),
            rounds=9,
        )
        print(
            f"   raw cursor loop {raw_rate:>9,.0f} ev/s   loopbus {bus_rate:>9,.0f} ev/s"
            f"   ratio {ratio:.0%}   (target >= 70%)"
        )

    backends()


if __name__ == "__main__":
    if sys.argv[1:2] == ["backends"]:
        backends(quick="--quick" in sys.argv)
    else:
        main()
