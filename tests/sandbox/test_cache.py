"""The on-disk compiled-module cache: keyed, atomic, shared by concurrent processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopbus.agents.sandbox.core import default_cache_dir, get_runtime

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from loopbus.agents.sandbox.core import Sandbox, get_runtime
t1 = time.perf_counter()
with Sandbox(cache_dir=sys.argv[1]) as box:
    r = box.run("print(6 * 7)")
    t2 = time.perf_counter()
rt = get_runtime(sys.argv[1])
print(json.dumps({"stdout": r.stdout, "from_cache": rt.from_cache, "file": str(rt.cache_file),
                  "import_s": t1 - t0, "first_run_s": t2 - t1}))
"""


def _child(cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(cache)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_default_location_follows_loopbus_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOOPBUS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "wasm"
    monkeypatch.delenv("LOOPBUS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "loopbus" / "wasm"


def test_session_cache_holds_one_keyed_file(cache_dir: Path) -> None:
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 2 and names[0] == ".hmac-key"  # the key that signs the .cwasm
    files = list(cache_dir.glob("*.cwasm"))
    assert len(files) == 1
    assert files[0].name.startswith("micropython-")
    assert get_runtime(cache_dir).cache_file == files[0]
    assert oct(cache_dir.stat().st_mode & 0o777) == "0o700"


def test_new_process_loads_from_warm_cache(cache_dir: Path) -> None:
    proc = _child(cache_dir)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Exception ignored" not in err and "panicked" not in err
    report = json.loads(out)
    assert report["stdout"] == "42\n" and report["from_cache"] is True


@pytest.mark.slow
def test_concurrent_processes_fill_an_empty_cache(tmp_path: Path) -> None:
    cache = tmp_path / "wasm"
    procs = [_child(cache) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert all(json.loads(out)["stdout"] == "42\n" for out, _ in results)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and not any(name.startswith(".tmp-") for name in files)
    # ...and the published file is a complete module the next process can load.
    proc = _child(cache)
    out, err = proc.communicate(timeout=60)
    assert json.loads(out)["from_cache"] is True, err


def test_corrupt_cache_file_is_recompiled(tmp_path: Path, cache_dir: Path) -> None:
    cache = tmp_path / "wasm"
    cache.mkdir()
    good = next(cache_dir.iterdir())
    (cache / good.name).write_bytes(b"not a compiled module")
    proc = _child(cache)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["from_cache"] is False and report["stdout"] == "42\n"
    assert (cache / good.name).stat().st_size == good.stat().st_size


def test_unwritable_cache_still_works(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    proc = _child(blocked / "wasm")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["file"] == "None"


def test_cache_dir_env_is_used_by_default(
    monkeypatch: pytest.MonkeyPatch, cache_root: Path
) -> None:
    monkeypatch.setenv("LOOPBUS_CACHE", str(cache_root))
    assert get_runtime() is get_runtime(cache_root / "wasm")
    assert os.environ["LOOPBUS_CACHE"] == str(cache_root)
