"""Fast CPU matmuls on Linux: OpenBLAS preloading and the compute dtype.

Why: the ``mlx[cpu]`` wheel links a *reference* BLAS (``mlx_cpu.libs/libblas-*.so``); a
1024^3 float32 matmul runs at ~3-6 GFLOP/s on this 2-core machine. MLX calls the standard
``cblas_sgemm`` symbol, so preloading an OpenBLAS (``LD_PRELOAD=.../libopenblas.so.0``) makes
the dynamic linker bind MLX to OpenBLAS instead: ~200+ GFLOP/s, and SmolLM2-135M decodes
~3x faster. Only float32 matmuls go through BLAS; bfloat16/float16 and MLX-quantized matmuls
use MLX's own (slow) CPU kernels whatever BLAS is loaded.

Decisions:

* **Compute dtype.** On Linux (and any non-Apple-Silicon host) models run in float32:
  :func:`default_weight_dtype` makes the GGUF importer store float32 weights (exact for
  dequantized GGUF values; the embedded SmolLM2 takes ~540 MB on disk), and
  :func:`compute_dtype` states the rule for other checkpoints: the mlx backend
  (``loopbus.models.mlx_backend``) casts bfloat16/float16 weights to float32 at load time on CPU hosts
  (``LOOPBUS_DTYPE=native`` keeps them). On Apple Silicon, Metal is fast for every dtype: weights keep their dtype and imports
  are stored as bfloat16 (half the disk).
* **Which OpenBLAS.** :func:`openblas_path` searches, in order: ``$LOOPBUS_OPENBLAS`` (a path,
  or ``0``/``off`` to disable preloading), the distribution packages (Debian/Ubuntu
  ``libopenblas0-pthread``: ``/usr/lib/<triplet>/openblas-pthread/libopenblas.so.0``; Fedora
  ``/usr/lib64/libopenblas.so.0``; ...), then the PyPI wheel ``cmeel-openblas`` (a loopbus
  dependency on Linux x86-64, so ``pip install`` alone gives the fast path). The
  ``scipy-openblas32/64`` wheels (and numpy's bundled copy) are useless here: their symbols
  are renamed (``scipy_cblas_sgemm``), so preloading them changes nothing.
  ``cmeel-openblas`` needs ``libgfortran.so.5``; when the system has none, a directory of
  symlinks to the copy the ``mlx[cpu]`` wheel already ships (``mlx_cpu.libs``) is created in
  the loopbus cache (one per environment) and put on ``LD_LIBRARY_PATH``. Every candidate is checked once by
  starting a child Python with it preloaded that multiplies two small matrices through
  ``cblas_sgemm`` (a build for a newer CPU loads fine, then dies with SIGILL on its first
  matmul); the verdict is cached in ``$LOOPBUS_CACHE/blas.json``, per library and CPU. The
  wheel is pinned to 0.3.29, a ZEN (AVX2) build; 0.3.31 is AVX-512 only.
* **Which processes.** A running process cannot swap its BLAS, so :func:`blas_env` adds the
  preload to the environment of the processes loopbus starts (agent processes, the demo, the
  benchmark's children), with ``OPENBLAS_NUM_THREADS=1`` unless ``OPENBLAS_NUM_THREADS`` or
  ``$LOOPBUS_BLAS_THREADS`` says otherwise: several agent processes share few cores, and
  OpenBLAS threads spin-wait, so more threads per process make everything slower under load. :func:`reexec_with_openblas` lets an entry point restart itself once
  with the preload so that in-process generation benefits too.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import site
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

#: Environment variable: path of an OpenBLAS to preload, or 0/off/false/no to disable.
OPENBLAS_ENV = "LOOPBUS_OPENBLAS"
#: Environment variable: OpenBLAS threads per process started through :func:`blas_env` (default 1).
THREADS_ENV = "LOOPBUS_BLAS_THREADS"
_DISABLED = {"0", "off", "false", "no", "none", ""}
_REEXEC_MARK = "LOOPBUS_BLAS_REEXEC"

_SYSTEM_CANDIDATES = (
    "/usr/lib/{triplet}/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{triplet}/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{triplet}/openblas-serial/libopenblas.so.0",
    "/usr/lib/{triplet}/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)


def is_apple_silicon() -> bool:
    """True on macOS/arm64, where MLX runs on Metal."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def default_weight_dtype() -> str:
    """The dtype the GGUF importer stores: float32 unless Metal makes bfloat16 equally fast."""
    return "bfloat16" if is_apple_silicon() else "float32"


def compute_dtype() -> str | None:
    """The dtype models should run in here: ``"float32"`` on CPU hosts, None (keep) on Metal."""
    return None if is_apple_silicon() else "float32"


def _cache_root() -> Path:
    return Path(os.environ.get("LOOPBUS_CACHE") or Path.home() / ".cache" / "loopbus").expanduser()


def _site_dirs() -> list[Path]:
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # some virtualenv flavours
        pass
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    return [Path(d) for d in dict.fromkeys(dirs)]


def _wheel_candidates() -> list[Path]:
    return [d / "cmeel.prefix" / "lib" / "libopenblas.so.0" for d in _site_dirs()]


def _system_candidates() -> list[Path]:
    triplet = f"{platform.machine()}-linux-gnu"
    return [Path(p.format(triplet=triplet)) for p in _SYSTEM_CANDIDATES]


def _has_system_gfortran() -> bool:
    import ctypes.util

    return ctypes.util.find_library("gfortran") is not None


def _gfortran_shim_dir() -> Path | None:
    """A directory with ``libgfortran.so.5`` -> the copy bundled in the mlx[cpu] wheel."""
    for site_dir in _site_dirs():
        libs = site_dir / "mlx_cpu.libs"
        bundled = sorted(libs.glob("libgfortran-*.so*"))
        if not bundled:
            continue
        # One shim per environment: venvs sharing the cache must not re-point each other's links
        # (a deleted venv would leave the other's processes without libgfortran).
        tag = hashlib.sha256(str(libs.resolve()).encode()).hexdigest()[:12]
        shim = _cache_root() / "blas-shim" / tag
        shim.mkdir(parents=True, exist_ok=True)
        links = {"libgfortran.so.5": bundled[0]}
        # libgfortran finds its own (renamed) dependencies next to itself via $ORIGIN.
        links.update(
            {
                p.name: p
                for p in libs.glob("lib*.so*")
                if "fortran" in p.name or "quadmath" in p.name
            }
        )
        for name, target in links.items():
            link = shim / name
            if not (link.is_symlink() and os.readlink(link) == str(target)):
                tmp = shim / f".{name}.{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(target)
                os.replace(tmp, link)
        return shim
    return None


def _library_dirs_for(lib: Path) -> list[str]:
    """Extra LD_LIBRARY_PATH entries ``lib`` needs (only the wheel's gfortran dependency)."""
    if "cmeel.prefix" not in lib.parts or _has_system_gfortran():
        return []
    shim = _gfortran_shim_dir()
    return [str(shim)] if shim is not None else []


def _with_preload(env: Mapping[str, str], lib: Path, lib_dirs: list[str]) -> dict[str, str]:
    out = dict(env)
    preload = [p for p in out.get("LD_PRELOAD", "").split(":") if p]
    if str(lib) not in preload:
        out["LD_PRELOAD"] = ":".join([str(lib), *preload])
    if lib_dirs:
        current = [p for p in out.get("LD_LIBRARY_PATH", "").split(":") if p]
        out["LD_LIBRARY_PATH"] = ":".join([*lib_dirs, *(p for p in current if p not in lib_dirs)])
    return out


# The probe multiplies two small matrices through ``cblas_sgemm``: a library can load and
# export the symbol, yet be built for a newer CPU (cmeel-openblas 0.3.31 is a SKYLAKEX build:
# AVX-512 only) and die with SIGILL on its first matmul. Checking the product also rejects a
# library whose sgemm is wrong.
_PROBE = """
import ctypes
n = 64
lib = ctypes.CDLL(None)
Mat = ctypes.c_float * (n * n)
a = Mat(*[float((i * 7) % 5 - 2) for i in range(n * n)])
b = Mat(*[float((i * 3) % 7 - 3) for i in range(n * n)])
c = Mat()
# cblas_sgemm(RowMajor=101, NoTrans=111, NoTrans=111, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
lib.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, Mat, ctypes.c_int, Mat,
                                                   ctypes.c_int, ctypes.c_float, Mat, ctypes.c_int]
lib.cblas_sgemm(101, 111, 111, n, n, n, 1.0, a, n, b, n, 0.0, c, n)
for i, j in ((0, 0), (5, 17), (n - 1, n - 1)):
    want = sum(a[i * n + k] * b[k * n + j] for k in range(n))
    assert c[i * n + j] == want, (i, j, c[i * n + j], want)
"""
_PROBE_VERSION = "2"  # bump when _PROBE changes, so cached verdicts are redone


def _cpu_tag() -> str:
    """A short hash of this CPU's model and feature flags: a cache shared between machines
    (a home directory on a network share) keeps one verdict per kind of CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return hashlib.sha256("\n".join(dict.fromkeys(lines)).encode()).hexdigest()[:12]


def _works(lib: Path, lib_dirs: list[str]) -> bool:
    """Whether a child Python can multiply two matrices with ``lib`` preloaded (verdict
    cached on disk, per library, probe version and CPU)."""
    stamp = (
        f"{lib}:{lib.stat().st_mtime_ns}:{':'.join(lib_dirs)}"
        f":probe{_PROBE_VERSION}:cpu-{_cpu_tag()}"
    )
    cache_file = _cache_root() / "blas.json"
    try:
        verdicts = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if stamp in verdicts:
        return bool(verdicts[stamp])
    env = _with_preload(os.environ, lib, lib_dirs)
    env["OPENBLAS_NUM_THREADS"] = "1"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
        )
        ok = proc.returncode == 0 and "preloaded" not in proc.stderr
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    verdicts[stamp] = ok
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".blas.json.{os.getpid()}")
        tmp.write_text(json.dumps(verdicts, indent=2))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return ok


def _find() -> tuple[Path, list[str]] | None:
    if not sys.platform.startswith("linux"):
        return None
    explicit = os.environ.get(OPENBLAS_ENV)
    if explicit is not None:
        if explicit.strip().lower() in _DISABLED:
            return None
        candidates = [Path(explicit).expanduser()]
    else:
        candidates = _system_candidates() + _wheel_candidates()
    for lib in candidates:
        if lib.is_file():
            lib_dirs = _library_dirs_for(lib)
            if _works(lib, lib_dirs):
                return lib, lib_dirs
    return None


def openblas_path() -> str | None:
    """Path of a usable OpenBLAS to preload on Linux, or None (not Linux, none found, disabled)."""
    found = _find()
    return str(found[0]) if found else None


def blas_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) that preloads OpenBLAS when one is usable.

    Use it for every process loopbus starts (``subprocess.Popen(..., env=blas_env())``).
    Elsewhere (macOS, no OpenBLAS, ``LOOPBUS_OPENBLAS=0``) the copy is unchanged.
    """
    base = dict(os.environ if env is None else env)
    found = _find()
    if found is None:
        return base
    out = _with_preload(base, *found)
    # One BLAS thread per process unless told otherwise: loopbus runs several agent processes
    # at once, and OpenBLAS threads spin-wait, so N processes x M threads on few cores collapse
    # (measured on 2 loaded cores: 105 GFLOP/s with 1 thread, 25 with 2).
    if "OPENBLAS_NUM_THREADS" not in out:
        out["OPENBLAS_NUM_THREADS"] = base.get(THREADS_ENV) or "1"
    return out


def openblas_loaded() -> bool:
    """Whether an OpenBLAS is mapped into the current process (Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "libopenblas" in maps


def _gfortran_by_soname(shim: Path) -> Path:
    """A copy of the wheel's ``libgfortran-<hash>.so.5.0.0`` whose SONAME is ``libgfortran.so.5``.

    Why: ``LD_LIBRARY_PATH`` is read once at process start, so a running process can only
    satisfy OpenBLAS's ``NEEDED libgfortran.so.5`` with a library already loaded under that
    SONAME; the wheel's copy is renamed (auditwheel). The SONAME string is overwritten in place
    (same length, NUL-padded), nothing else changes; the copy lives in the loopbus cache.
    """
    source = (shim / "libgfortran.so.5").resolve()
    target = shim / f"soname-{source.stat().st_mtime_ns}-libgfortran.so.5"
    if target.is_file():
        return target
    data = bytearray(source.read_bytes())
    old = b"\0" + source.name.encode() + b"\0"
    if data.count(old) != 1 or len(source.name) < len("libgfortran.so.5"):
        raise ValueError(f"no unique SONAME string in {source}")
    index = data.index(old)
    data[index : index + len(old)] = (
        b"\0" + b"libgfortran.so.5".ljust(len(source.name), b"\0") + b"\0"
    )
    tmp = shim / f".{target.name}.{os.getpid()}"
    tmp.write_bytes(bytes(data))
    os.replace(tmp, target)
    return target


def load_in_process() -> bool:
    """Load OpenBLAS into this process before MLX is first imported; True when it is loaded.

    Library users (``import loopbus.agents.run.loop; load_runtime(...)`` in plain ``python``) get the fast
    BLAS too: the library is opened with ``RTLD_GLOBAL`` (after the ``libgfortran`` it needs),
    so when MLX's own library is loaded later, the dynamic linker binds its ``cblas_sgemm`` to
    OpenBLAS, as ``LD_PRELOAD`` would. Once MLX is loaded without it, it is too late: a
    warning says so (and how to fix it). ``OPENBLAS_NUM_THREADS`` defaults as in
    :func:`blas_env`.
    """
    if openblas_loaded():
        return True
    if "mlx.core" in sys.modules:
        if sys.platform.startswith("linux") and _find() is not None:
            import warnings

            warnings.warn(
                "mlx was imported before loopbus could load OpenBLAS: float32 matmuls use the "
                "mlx[cpu] wheel's reference BLAS (prefill ~15x slower). Import loopbus "
                "before mlx, or start Python with `python -m loopbus.models.blas exec python ...`.",
                RuntimeWarning,
                stacklevel=2,
            )
        return False
    found = _find()
    if found is None:
        return False
    import ctypes

    lib, lib_dirs = found
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ.get(THREADS_ENV) or "1"
    try:
        for directory in lib_dirs:  # the gfortran of the mlx[cpu] wheel (see _gfortran_by_soname)
            for dep in sorted(Path(directory).glob("libquadmath*")):
                ctypes.CDLL(str(dep.resolve()), mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(_gfortran_by_soname(Path(directory))), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except (OSError, ValueError):
        return False
    return openblas_loaded()


def reexec_with_openblas() -> None:
    """Restart the current program once with OpenBLAS preloaded, when that would help.

    Call it first thing in an entry point that generates in process. Does nothing when
    OpenBLAS is already loaded, none is usable, or after one attempt (guarded by an env mark).
    """
    if os.environ.get(_REEXEC_MARK) or openblas_loaded():
        return
    env = blas_env()
    if "LD_PRELOAD" not in env or env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return
    env[_REEXEC_MARK] = "1"
    # orig_argv keeps `-m module` and interpreter flags; argv[0] of `-m` runs is a file path.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def all_candidates() -> list[str]:
    """Every location searched, for diagnostics (``loopbus models info`` and the benchmark)."""
    return [str(p) for p in _system_candidates() + _wheel_candidates()]


def main(argv: list[str]) -> int:
    """``python -m loopbus.models.blas exec CMD ...``: run CMD with the OpenBLAS environment.

    The Makefile starts the test suite, the demo and the benchmarks this way, so everything
    they generate in process gets the fast float32 BLAS without re-executing itself.
    """
    if len(argv) < 2 or argv[0] != "exec":
        print("usage: python -m loopbus.models.blas exec CMD [ARG ...]", file=sys.stderr)
        return 2
    os.execvpe(argv[1], argv[1:], blas_env())
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
