"""`loopbus serve`: the live page in real headless Chromium, its JSON endpoint, loopback only."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopbus.agents.observe.report import OUTCOME_COLOURS

from .conftest import ObservedBus, chromium_run
from .pngread import colour_pixels, read_png


@pytest.fixture
def served(observed: ObservedBus, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `loopbus serve --port 0` process on a copy of the observed bus: (base URL, bus)."""
    bus = tmp_path / "bus.db"
    shutil.copy(observed.path, bus)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopbus.agents.cli", "--bus", str(bus), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.stderr else "")
        url = line.split(" at ", 1)[1].split()[0]
        yield url, bus
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
        assert proc.wait(timeout=10) == 0


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_state_endpoint_and_reports(served: tuple[str, Path], observed: ObservedBus) -> None:
    from loopbus.bus import SyncBus

    url, bus = served
    status, body = _get(url + "api/state")
    assert status == 200
    state = json.loads(body)
    assert {r["run_id"] for r in state["runs"]} == set(observed.outcomes)
    assert state["events"][-1]["id"] == state["head_id"]
    head = state["head_id"]
    with SyncBus(bus) as writer:
        new = writer.publish("live.check", {"n": 1}, agent="tester")
        writer.ack("indexer", new)
    status, body = _get(f"{url}api/state?since={head}")
    later = json.loads(body)
    assert [e["event_type"] for e in later["events"]] == ["live.check"]
    assert later["cursors"] == [
        {
            "consumer": "indexer",
            "last_seen_id": new,
            "lag": 0,
            "updated_at": later["cursors"][0]["updated_at"],
        }
    ]
    run = observed.run_of("done")
    status, page = _get(f"{url}report?run={run}")
    assert status == 200 and page.startswith("<!DOCTYPE html>") and run in page
    assert _get(url + "report")[0] == 200
    assert _get(url + "report?run=nope")[0] == 404
    assert _get(url + "api/state?since=x")[0] == 400
    assert _get(url + "nothing")[0] == 404
    # DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing.
    status, body = _get(url + "api/state", host="attacker.example:80")
    assert status == 403 and "loopback" in body


def test_live_page_in_chromium(served: tuple[str, Path], tmp_path: Path) -> None:
    from loopbus.bus import SyncBus

    url, bus = served
    with SyncBus(bus) as writer:
        writer.publish("live.hostile", {"note": "<img src=x onerror=alert(1)>"}, agent="tester")
        writer.ack("indexer", 1)
    # The page's script fetches /api/state and builds the tables; --dump-dom prints the DOM
    # after it ran (virtual time lets the first polls finish).
    dom = chromium_run(url, tmp_path, "--dump-dom", "--virtual-time-budget=4000")
    assert "live.hostile" in dom and 'class="new event"' in dom
    assert "<img" not in dom and "&lt;img src=x onerror=alert(1)&gt;" in dom  # text, not markup
    assert dom.count('class="run"') >= 4 and '<span class="kind done">done</span>' in dom
    assert '<tr class="cursor"><td>indexer</td>' in dom
    assert "head id" in dom and "error:" not in dom
    shot = tmp_path / "live.png"
    chromium_run(url, tmp_path, f"--screenshot={shot}", "--virtual-time-budget=4000")
    image = read_png(shot)
    assert colour_pixels(image, "#ffffff", tolerance=8) < 0.97 * image.shape[0] * image.shape[1]
    assert colour_pixels(image, OUTCOME_COLOURS["done"]) > 100  # the runs' outcome badges
    assert colour_pixels(image, OUTCOME_COLOURS["max_turns"]) > 50


def test_serve_refuses_a_missing_bus(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loopbus.agents.cli", "--bus", str(tmp_path / "no.db"), "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0 and done.stderr.startswith("Error: no bus file")
    assert not (tmp_path / "no.db").exists()
