"""The compiled-module cache runs native code, so it loads only what it verifiably wrote
itself (issue 14): signed files in a private directory of ours, anything else is rebuilt."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import wasmtime

from loopbus.agents.sandbox.core import get_runtime
from loopbus.agents.sandbox.runtime import (
    _KEY_FILE,
    _cache_key,
    _load,
    _read_signed,
    _sign,
    default_artifact,
)

NOBODY = 65534


def _planted(cache_dir: Path) -> tuple[str, bytes]:
    """The cache file name the runtime looks for, and a genuine compiled module (for this
    engine's settings) that is not MicroPython: what an attacker would plant there."""
    runtime = get_runtime(cache_dir)
    assert runtime.cache_file is not None
    return runtime.cache_file.name, wasmtime.Module(runtime.engine, "(module)").serialize()


def test_planted_module_in_an_open_directory_is_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    name, planted = _planted(cache_dir)
    cache = tmp_path / "wasm"
    cache.mkdir()
    os.chmod(cache, 0o777)  # anyone could have written into it
    (cache / name).write_bytes(planted)
    runtime = _load(cache, default_artifact())
    assert not runtime.from_cache  # the planted native code was not loaded
    assert oct(cache.stat().st_mode & 0o777) == "0o700"  # the directory was made private
    assert (cache / name).read_bytes() != planted and runtime.cache_file == cache / name
    assert oct((cache / _KEY_FILE).stat().st_mode & 0o777) == "0o600"
    again = _load(cache, default_artifact())
    assert again.from_cache  # what we signed ourselves is loaded


def test_modified_module_is_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    cache = tmp_path / "wasm"
    shutil.copytree(cache_dir, cache)
    assert _load(cache, default_artifact()).from_cache
    (target,) = cache.glob("*.cwasm")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the native code
    target.write_bytes(bytes(data))
    runtime = _load(cache, default_artifact())
    assert not runtime.from_cache
    assert target.read_bytes() != bytes(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_foreign_owned_cache_directory_is_not_used(tmp_path: Path, cache_dir: Path) -> None:
    name, planted = _planted(cache_dir)
    cache = tmp_path / "wasm"
    cache.mkdir(mode=0o700)
    (cache / name).write_bytes(planted)
    os.chown(cache, NOBODY, NOBODY)
    runtime = _load(cache, default_artifact())
    assert not runtime.from_cache and runtime.cache_file is None
    assert sorted(p.name for p in cache.iterdir()) == [name]  # nothing written into it


def test_symlinked_cache_directory_is_not_used(tmp_path: Path, cache_dir: Path) -> None:
    real = tmp_path / "elsewhere"
    shutil.copytree(cache_dir, real)
    (tmp_path / "wasm").symlink_to(real)
    runtime = _load(tmp_path / "wasm", default_artifact())
    assert not runtime.from_cache and runtime.cache_file is None


def test_key_file_open_to_others_is_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "wasm"
    key = _cache_key(cache)
    assert key is not None and len(key) == 32
    assert _cache_key(cache) == key  # stable while private
    os.chmod(cache / _KEY_FILE, 0o644)
    fresh = _cache_key(cache)
    assert fresh is not None and fresh != key
    assert oct((cache / _KEY_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_key_another_process_just_made_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes filling an empty cache: the one that finds no key file, then finds the
    other's key linked in before it could link its own, uses that key instead of replacing
    it (or the other's signed module would never verify)."""
    from loopbus.agents.sandbox import runtime

    cache = tmp_path / "wasm"
    cache.mkdir(mode=0o700)
    theirs = os.urandom(32)
    real_read = runtime._read_private
    calls = []

    def racing_read(path: Path, max_bytes: int, others: int = 0o022) -> bytes | None:
        calls.append(path)
        if len(calls) == 1:  # our first look: no key yet; the other process links one now
            made = cache / ".theirs"
            made.write_bytes(theirs)
            made.chmod(0o600)
            os.link(made, cache / _KEY_FILE)
            made.unlink()
            return None
        return real_read(path, max_bytes, others)

    monkeypatch.setattr(runtime, "_read_private", racing_read)
    assert _cache_key(cache) == theirs
    assert (cache / _KEY_FILE).read_bytes() == theirs
    assert sorted(p.name for p in cache.iterdir()) == [_KEY_FILE]  # no temporary file left


def test_signed_file_checks(tmp_path: Path) -> None:
    cache = tmp_path / "wasm"
    key = _cache_key(cache)
    assert key is not None
    path = cache / "m.cwasm"
    path.write_bytes(_sign(key, "digest-a", b"native code"))
    os.chmod(path, 0o600)
    assert _read_signed(path, key, "digest-a") == b"native code"
    assert _read_signed(path, key, "digest-b") is None  # signed for another artifact
    assert _read_signed(path, b"k" * 32, "digest-a") is None  # another key
    os.chmod(path, 0o666)
    assert _read_signed(path, key, "digest-a") is None  # others could have rewritten it
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
        assert _read_signed(path, key, "digest-a") is None  # not ours
