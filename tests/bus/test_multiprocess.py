"""Real processes: concurrent writers, and a consumer SIGKILLed while a publisher runs."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import SyncBus


@pytest.mark.slow
def test_four_writer_processes(bus_path: Path, bh: SimpleNamespace) -> None:
    with SyncBus(bus_path):
        pass  # create + migrate once; the writers also cope with a fresh file
    writers, count, tasks = 4, 1000, 4
    procs = [
        bh.spawn(
            "proc_writer.py",
            bus_path,
            w,
            count,
            tasks,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    rows = bh.raw_rows(bus_path, "SELECT id, payload FROM outbox ORDER BY id")
    assert len(rows) == writers * count
    ids = [r[0] for r in rows]
    assert ids == sorted(set(ids))  # strictly increasing, unique
    keys = Counter()
    per_stream: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for event_id, payload in rows:
        p = json.loads(payload)
        keys[(p["w"], p["t"], p["seq"])] += 1
        per_stream.setdefault((p["w"], p["t"]), []).append((p["seq"], event_id))
    assert len(keys) == writers * count and set(keys.values()) == {1}  # exactly once
    for stream in per_stream.values():
        # Each publisher's events got increasing ids in the order it published them.
        assert [i for _, i in sorted(stream)] == sorted(i for _, i in stream)


def _lines(path: Path) -> int:
    return len(path.read_bytes().split()) if path.exists() else 0


@pytest.mark.slow
def test_consumer_killed_repeatedly_loses_nothing(
    bus_path: Path, tmp_path: Path, bh: SimpleNamespace
) -> None:
    batch, kills_wanted = 10, 6
    rng = random.Random(20261121)
    out = tmp_path / "handled.txt"
    with SyncBus(bus_path) as bus:
        bus.publish("seed", 0)
    # A paced publisher that keeps running until every kill has landed.
    publisher = subprocess.Popen(
        bh.helper_cmd("proc_writer.py", bus_path, 9, 1_000_000, 1, 0.002),
        env=bh.helper_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress: list[int] = []  # events handled when each kill landed
    try:
        for _ in range(kills_wanted):
            before = _lines(out)
            consumer = bh.spawn("proc_consumer.py", bus_path, out, batch, 0)
            deadline = time.monotonic() + 30
            # Kill at a random point after it has started handling events.
            while _lines(out) == before and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            consumer.send_signal(signal.SIGKILL)
            consumer.wait()
            assert publisher.poll() is None, publisher.communicate()[1]
            progress.append(_lines(out))
    finally:
        publisher.terminate()  # dies between (atomic) commits
        publisher.wait(timeout=30)
    # A last consumer drains what is left and stops when idle.
    final = bh.spawn("proc_consumer.py", bus_path, out, batch, 1.0)
    assert final.wait(timeout=60) == 0
    published = {row[0] for row in bh.raw_rows(bus_path, "SELECT id FROM outbox")}
    handled = [int(line) for line in out.read_text().split()]
    counts = Counter(handled)
    assert set(counts) == published, "events were lost"
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= kills_wanted * batch
    # Every kill interrupted a consumer that was handling events.
    assert all(b > a for a, b in zip([0, *progress], progress, strict=False)), progress
    assert progress[-1] < len(handled), progress
    print(f"published={len(published)} progress={progress} duplicates={duplicates}")
    with SyncBus(bus_path) as bus:
        assert [(c.consumer, c.lag) for c in bus.cursors()] == [("crashy", 0)]
